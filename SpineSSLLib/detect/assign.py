"""Anatomy-respecting level assignment: the ordered chain of detected vertebral bodies is counted
from its anchor, S1 (the body under the L5-S1 disc, on top of the sacrum), upwards - where a
radiologist counts from (pure numpy, no model needed).

The detector gives, per vertebra candidate (a body on the canonical sagittal plane: rows run
superior -> inferior, columns anterior -> posterior, square pixels of ``spacing_mm``), its
position, its detection strength and its class *evidence* (``EVIDENCE``: the share of the
region's vertebra probability that goes to "above T12", T12 ... L5, S1 and "sacrum").

1. candidates are ordered along the spine (inferior first) and labelled by a Viterbi chain that
   walks from the sacrum upward.  Labels may only decrease going up (S1 -> L5 -> ... -> T12 ->
   T11 -> ... T8), a missing level between two kept candidates (a *gap*) is allowed when the
   distance between them is about (gap + 1) vertebral spacings, and a candidate may be dropped
   as a false positive at a cost proportional to its strength.
2. the labels' scores: *S1 or not* comes from the S1 evidence with a strong weight
   (``anchor_weight``: the anchor; "sacrum" evidence makes S2/S3), which mobile level it is
   comes from the chain - counted from the anchor - and only weakly (``evidence_weight``) from
   the per-level evidence, which breaks ties.  Vertebrae above T12 (T11, T10, T9, T8: the field of
   view may start there) get labels of their own and are never forced into T12..L5.
3. each kept level gets a confidence: by default detection strength x chain certainty (a
   softmax over max-marginals of its label) x anchor strength x local agreement; a fitted
   ``Calibration`` (``calibrate``) turns the same features into the probability that the label
   is right.  Without an anchor (no S1 / sacrum found: a field of view that ends above the
   sacrum) every level is flagged and its confidence capped at ``no_anchor_cap``: the levels
   are then a guess and ``extract --levels detect`` does not use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import LEVEL_NAMES

N_LEVELS = len(LEVEL_NAMES)
EVIDENCE = ("above",) + LEVEL_NAMES + ("sacrum",)  # columns of the candidates' class evidence
E_ABOVE, E_S1, E_SACRUM = 0, N_LEVELS, N_LEVELS + 1


@dataclass
class AssignConfig:
    """Knobs of the level assignment (units: mm and heatmap values in [0, 1])."""

    peak_threshold: float = 0.25  # minimum centre-map value of a vertebra candidate
    min_separation_mm: float = 14.0  # two candidates closer than this are one vertebra
    max_gap: int = 2  # at most this many consecutive levels may be missing between two kept ones
    spacing_weight: float = 4.0  # cost of (log(distance / expected distance))^2
    gap_cost: float = 1.0  # extra cost per missing level inside the chain
    drop_weight: float = 6.0  # cost of discarding a candidate, times its detection strength
    extra_above: int = 4  # labels allowed above T12 (T11, T10, T9, T8)
    extra_below: int = 2  # labels allowed below S1 (S2, S3: a sacral segment taken for a body)
    outside_penalty: float = 1.2  # extra log-cost of a sacral (S2, S3) label
    anchor_weight: float = 1.5  # weight of the S1 / not-S1 (and sacrum) evidence: the anchor
    evidence_weight: float = 0.2  # weight of the per-level evidence: tie-breaks only
    evidence_floor: float = 0.1  # per-level evidence (share among the mobile labels) counts from here
    evidence_radius_px: int = 1  # level evidence = max of the level map in this neighbourhood
    weak_evidence: float = 0.3  # local level evidence below this is flagged
    low_confidence: float = 0.5  # confidence below this is flagged
    min_anchor: float = 0.3  # S1 evidence below this (and no sacrum seen): no anchor
    no_anchor_cap: float = 0.3  # confidence cap without an anchor
    eps: float = 1e-4

    def __post_init__(self):
        if self.min_separation_mm <= 0 or self.peak_threshold <= 0 or self.max_gap < 0:
            raise ValueError("AssignConfig: min_separation_mm, peak_threshold > 0 and max_gap >= 0")


@dataclass
class Peak:
    row: float  # sub-pixel position on the canonical grid
    col: float
    height: float  # centre-map value at the peak


@dataclass
class AssignedLevel:
    name: str
    row: float
    col: float
    confidence: float
    detection: float  # detection strength (clipped to [0, 1])
    chain: float  # certainty of the label given the whole chain
    evidence: float  # local evidence for the assigned label (S1 evidence for S1)
    agreement: float = 1.0  # local evidence of the label relative to the best label of its kind
    anchor: float = 0.0  # S1 evidence of the scan's anchor (0: no S1 labelled)
    sacrum: float = 0.0  # how much sacrum the scan shows (0..1)

    def features(self) -> dict[str, float]:
        """The inputs of the confidence (``calibrate.FEATURES``)."""
        return {"chain": self.chain, "detection": self.detection, "agreement": self.agreement,
                "anchor": self.anchor, "sacrum": self.sacrum,
                "steps": (N_LEVELS - 1 - LEVEL_NAMES.index(self.name)) / (N_LEVELS - 1)}


@dataclass
class Assignment:
    levels: dict[str, AssignedLevel] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)
    dropped: list[Peak] = field(default_factory=list)  # candidates judged false positives
    outside: list[tuple[str, Peak]] = field(default_factory=list)  # vertebrae beyond T12..S1
    spacing_mm: float | None = None  # estimated distance between neighbouring vertebrae
    anchored: bool = False  # an S1 with enough evidence (or a sacrum below the chain) was found


def label_name(v: int) -> str:
    """Name of an extended label index: 0..6 = T12..S1, -1 = T11, -2 = T10, ..., 7 = S2, 8 = S3."""
    if 0 <= v < N_LEVELS:
        return LEVEL_NAMES[v]
    if v < 0:
        return f"T{12 + v}"
    return f"S{v - N_LEVELS + 2}"


# ----------------------------------------------------------------------------------- peaks

def find_peaks(heatmap: np.ndarray, threshold: float, min_distance_px: float) -> list[Peak]:
    """Local maxima of a 2D map above ``threshold``, greedy NMS at ``min_distance_px``,
    sub-pixel positions (log-parabola fit on each axis), strongest first."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"find_peaks: expected a 2D map, got shape {h.shape}")
    H, W = h.shape
    pad = np.pad(h, 1, mode="constant", constant_values=-np.inf)
    core = pad[1:-1, 1:-1]
    is_max = core >= threshold
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            is_max &= core >= pad[1 + dr:1 + dr + H, 1 + dc:1 + dc + W]
    rows, cols = np.nonzero(is_max)
    order = np.argsort(-h[rows, cols], kind="stable")
    kept: list[tuple[int, int]] = []
    for idx in order:
        r, c = int(rows[idx]), int(cols[idx])
        if all((r - kr) ** 2 + (c - kc) ** 2 >= min_distance_px ** 2 for kr, kc in kept):
            kept.append((r, c))
    return [Peak(*_subpixel(h, r, c), height=float(h[r, c])) for r, c in kept]


def _subpixel(h: np.ndarray, r: int, c: int) -> tuple[float, float]:
    def offset(fm, f0, fp):
        lm, l0, lp = (np.log(max(v, 1e-6)) for v in (fm, f0, fp))
        den = lm - 2 * l0 + lp
        if den >= -1e-12:
            return 0.0
        return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))

    H, W = h.shape
    dr = offset(h[r - 1, c], h[r, c], h[r + 1, c]) if 0 < r < H - 1 else 0.0
    dc = offset(h[r, c - 1], h[r, c], h[r, c + 1]) if 0 < c < W - 1 else 0.0
    return r + dr, c + dc


def level_evidence(level_maps: np.ndarray, row: float, col: float, radius: int = 1) -> np.ndarray:
    """Per-level evidence (N_LEVELS,) at a position: max of each level map in a small window."""
    L, H, W = level_maps.shape
    r, c = int(round(row)), int(round(col))
    r0, r1 = max(0, r - radius), min(H, r + radius + 1)
    c0, c1 = max(0, c - radius), min(W, c + radius + 1)
    if r0 >= r1 or c0 >= c1:
        return np.zeros(L)
    return level_maps[:, r0:r1, c0:c1].reshape(L, -1).max(axis=1).clip(0.0, 1.0)


# ----------------------------------------------------------------------------------- chain

def assign_levels(centre_map: np.ndarray, level_maps: np.ndarray, spacing_mm: float,
                  config: AssignConfig | None = None) -> Assignment:
    """Label vertebrae T12..S1 on one canonical sagittal plane (see the module docstring).

    ``centre_map``: (H, W); ``level_maps``: (7, H, W) in T12..S1 order; values in [0, 1].
    Positions in the result are sub-pixel (row, col) on that plane.
    """
    cfg = config or AssignConfig()
    centre_map = np.asarray(centre_map, dtype=np.float64)
    level_maps = np.asarray(level_maps, dtype=np.float64)
    if level_maps.shape != (N_LEVELS,) + centre_map.shape:
        raise ValueError(f"assign_levels: level maps {level_maps.shape} do not match centre map "
                         f"{centre_map.shape} x {N_LEVELS} levels")
    peaks = find_peaks(centre_map, cfg.peak_threshold, cfg.min_separation_mm / spacing_mm)
    ev = [level_evidence(level_maps, p.row, p.col, cfg.evidence_radius_px) for p in peaks]
    return assign_instances(peaks, ev, spacing_mm, cfg)


def as_evidence(evidence, n: int) -> np.ndarray:
    """Candidates' evidence as (n, len(EVIDENCE)); a (n, 7) T12..S1 evidence (level maps only)
    gets zero "above" and "sacrum" columns."""
    ev = np.clip(np.asarray(evidence, dtype=np.float64).reshape(n, -1), 0.0, 1.0)
    if ev.shape[1] == N_LEVELS:
        ev = np.column_stack([np.zeros(n), ev, np.zeros(n)])
    if ev.shape[1] != len(EVIDENCE):
        raise ValueError(f"evidence must have {N_LEVELS} or {len(EVIDENCE)} columns, got {ev.shape[1]}")
    return ev


def assign_instances(peaks: list[Peak], evidence, spacing_mm: float, config: AssignConfig | None = None,
                     sacrum: float = 0.0, calibration=None) -> Assignment:
    """The chain labelling of given vertebra candidates: ``peaks`` (position on the canonical
    plane and detection strength in [0, 1]) and their ``evidence`` (n, 9) over ``EVIDENCE`` (or
    (n, 7) over T12..S1).  ``sacrum``: how much sacrum the scan shows below the chain (0..1);
    ``calibration``: a ``calibrate.Calibration`` (default: the uncalibrated product)."""
    cfg = config or AssignConfig()
    order = sorted(range(len(peaks)), key=lambda i: -peaks[i].row)  # inferior first: from the sacrum up
    peaks = [peaks[i] for i in order]
    out = Assignment()
    if not peaks:
        out.issues.append("no vertebra found (no candidate above threshold)")
        return out
    ev = as_evidence(evidence, len(order))[order]
    labels, chain_conf, spacing = _viterbi(peaks, ev, spacing_mm, cfg)
    out.spacing_mm = spacing
    s1 = [i for i, v in enumerate(labels) if v == N_LEVELS - 1]
    anchor = float(ev[s1[0], E_S1]) if s1 else 0.0
    sacrum = float(np.clip(sacrum, 0.0, 1.0))
    out.anchored = bool(anchor >= cfg.min_anchor or (s1 and sacrum >= 0.5))
    for i, p in enumerate(peaks):
        v = labels[i]
        if v is None:
            out.dropped.append(p)
            continue
        name = label_name(v)
        if not 0 <= v < N_LEVELS:
            out.outside.append((name, p))
            continue
        det = float(np.clip(p.height, 0.0, 1.0))
        if v == N_LEVELS - 1:
            evid = agree = float(ev[i, E_S1])
        else:
            mob = ev[i, :N_LEVELS]  # above, T12..L5
            evid = float(ev[i, 1 + v])
            agree = float(evid / max(mob.max(), cfg.eps))
        a = AssignedLevel(name, p.row, p.col, 0.0, det, float(chain_conf[i]), evid, agree, anchor, sacrum)
        if calibration is not None:
            conf = calibration.predict(a.features())
        else:
            conf = det * a.chain * min(1.0, anchor / 0.5) * min(1.0, agree / cfg.weak_evidence)
        a.confidence = float(conf if out.anchored else min(conf, cfg.no_anchor_cap))
        out.levels[name] = a
    kept = [n for n in LEVEL_NAMES if n in out.levels]
    if not kept:
        out.issues.append(f"no vertebra could be labelled T12..S1 ({len(peaks)} candidate(s): "
                          f"{len(out.dropped)} rejected, {len(out.outside)} outside T12..S1)")
        return out
    if not out.anchored:
        out.issues.append("no S1 / sacrum found to count the levels from (does the field of view end above "
                          "the sacrum?): every level is a guess, confidence capped at "
                          f"{cfg.no_anchor_cap:g}")
    top, bottom = LEVEL_NAMES.index(kept[0]), LEVEL_NAMES.index(kept[-1])
    for v in range(N_LEVELS):
        name = LEVEL_NAMES[v]
        if name in out.levels:
            continue
        where = "gap in the chain" if top < v < bottom else "not in the field of view or not detected"
        out.issues.append(f"{name}: not found ({where})")
    for name in kept:
        a = out.levels[name]
        if a.evidence < cfg.weak_evidence and out.anchored:
            extra = " - possible transitional vertebra" if name in ("S1", "L5") else ""
            out.issues.append(f"{name}: weak level evidence ({a.evidence:.2f}), label inferred from "
                              f"the chain{extra}")
        elif a.confidence < cfg.low_confidence and out.anchored:
            out.issues.append(f"{name}: low confidence ({a.confidence:.2f})")
    return out


def _expected_spacing(peaks: list[Peak], spacing_mm: float, cfg: AssignConfig) -> float:
    pos = np.array([[p.row, p.col] for p in peaks]) * spacing_mm
    if len(pos) < 2:
        return 30.0
    d = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    d = d[d >= cfg.min_separation_mm]
    if len(d) == 0:
        return 30.0
    # neighbouring distances are mostly one spacing; gaps make some of them multiples
    med = float(np.median(d))
    single = d[d < 1.5 * med]
    return float(np.median(single)) if len(single) else med


def _viterbi(peaks: list[Peak], ev: np.ndarray, spacing_mm: float, cfg: AssignConfig):
    """Best chain labelling; returns (labels per peak or None if dropped, chain certainty per
    peak, expected spacing mm).  Peaks are ordered inferior first."""
    n = len(peaks)
    vals = np.arange(-cfg.extra_above, N_LEVELS + cfg.extra_below)  # extended label values
    V = len(vals)
    # unary log-scores of the labels, relative to the best label of that candidate: S1 or not
    # (and sacrum) from the anchor evidence, strongly; which mobile level from the per-level
    # evidence, weakly (ties only); whether a candidate is kept is decided by its strength (drop
    # cost) and the chain geometry
    e = cfg.eps
    p_s1, p_sac = ev[:, E_S1], ev[:, E_SACRUM]
    p_mob = np.clip(1.0 - p_s1 - p_sac, 0.0, 1.0)
    q = ev[:, :N_LEVELS] / np.maximum(ev[:, :N_LEVELS].sum(axis=1, keepdims=True), e)  # above, T12..L5
    u = np.empty((n, V))
    for a, v in enumerate(vals):
        if v == N_LEVELS - 1:
            u[:, a] = cfg.anchor_weight * np.log(p_s1 + e)
        elif v >= N_LEVELS:
            u[:, a] = cfg.anchor_weight * np.log(p_sac + e) - cfg.outside_penalty
        else:
            u[:, a] = cfg.anchor_weight * np.log(p_mob + e) + cfg.evidence_weight * np.log(
                np.maximum(q[:, 1 + v if v >= 0 else 0], cfg.evidence_floor))
    u -= u.max(axis=1, keepdims=True)
    drop = cfg.drop_weight * np.array([max(p.height, 0.0) for p in peaks])
    cum_drop = np.concatenate([[0.0], np.cumsum(drop)])  # cum_drop[k] = sum drop[0:k]

    def dropped_between(i, j):  # peaks strictly between i and j (i < j)
        return cum_drop[j] - cum_drop[i + 1]

    s = _expected_spacing(peaks, spacing_mm, cfg)
    pos = np.array([[p.row, p.col] for p in peaks]) * spacing_mm
    # pairwise transition matrices T[i, j] (V x V): from label a at i (inferior) to b at j
    NEG = -1e9
    gap = vals[:, None] - vals[None, :] - 1  # from a to b: b must be above a, gap >= 0
    valid = (gap >= 0) & (gap <= cfg.max_gap)

    def trans(i, j):
        d = max(np.linalg.norm(pos[j] - pos[i]), 1e-6)
        expect = (gap + 1) * s
        t = -cfg.spacing_weight * np.log(d / np.maximum(expect, 1e-6)) ** 2 - cfg.gap_cost * np.maximum(gap, 0)
        return np.where(valid, t, NEG)

    T = {(i, j): trans(i, j) for i in range(n) for j in range(i + 1, n)}
    fwd = np.full((n, V), NEG)
    bwd = np.full((n, V), NEG)
    back: list[list[tuple[int, int] | None]] = [[None] * V for _ in range(n)]
    for j in range(n):
        best = np.full(V, -cum_drop[j])  # start of the chain: everything below dropped
        arg = [None] * V
        for i in range(j):
            cand = fwd[i][:, None] + T[(i, j)] - dropped_between(i, j)  # (a, b)
            a_best = cand.argmax(axis=0)
            sc = cand[a_best, np.arange(V)]
            better = sc > best
            for b in np.nonzero(better)[0]:
                arg[b] = (i, int(a_best[b]))
            best = np.where(better, sc, best)
        fwd[j] = best + u[j]
        back[j] = arg
    for i in range(n - 1, -1, -1):
        best = np.full(V, -(cum_drop[n] - cum_drop[i + 1]))  # end: everything above dropped
        for j in range(i + 1, n):
            cand = T[(i, j)] + (u[j] + bwd[j])[None, :] - dropped_between(i, j)  # (a, b)
            best = np.maximum(best, cand.max(axis=1))
        bwd[i] = best
    total = fwd + bwd  # max-marginal of (peak i has label a), includes u once
    all_dropped = -cum_drop[n]
    best_total = max(total.max(), all_dropped)
    labels: list[int | None] = [None] * n
    chain = np.zeros(n)
    if best_total == all_dropped:
        return labels, chain, s
    # backtrack from the best end point
    end_scores = fwd + np.array([-(cum_drop[n] - cum_drop[j + 1]) for j in range(n)])[:, None]
    j, b = np.unravel_index(int(end_scores.argmax()), end_scores.shape)
    j, b = int(j), int(b)
    while True:
        labels[j] = int(vals[b])
        prev = back[j][b]
        if prev is None:
            break
        j, b = prev
    for i in range(n):
        if labels[i] is None:
            continue
        a = int(np.nonzero(vals == labels[i])[0][0])
        z = total[i] - total[i, a]
        chain[i] = float(1.0 / np.exp(np.clip(z, -50, 50)).sum())
    return labels, chain, s
