"""Running a detector on a scan: class and centre maps on every sagittal slice -> a ``LevelSet``.

1. the scan is resampled onto the canonical grid (``grid``) and every slice ``k`` is predicted
   from slices ``k-context .. k+context``: a class map (background / above T12 / T12 ... S1 /
   sacrum) and a centre map;
2. the mid-sagittal slice of the spine is the slice with the most vertebra x centre mass; the
   maps averaged over it and its neighbours give vertebra candidates = connected vertebra
   regions (a region much larger than a typical body - bodies merged where a collapsed disc was
   not seen - or a somewhat larger one with two strong centre-map peaks, e.g. T12 fused with
   L1, is split between the centre-map peaks inside it; not the lowest region, where S1 often
   carries a piece of the sacrum), each with its in-plane centroid (the region's mean, or the
   centre map's main peak when a fused piece would pull the mean), its strength (mean vertebra
   probability) and its class distribution (``assign.EVIDENCE``);
3. ``assign.assign_instances`` labels the candidates with one chain counted from S1 (the anchor,
   on top of the sacrum) upward (one instance per level for the whole scan, hence consistent
   across slices); its confidences come from the model's ``calibration.json`` when it has one;
4. per level: the slice range = slices where vertebra still covers its region; the lateral
   centroid = the middle of that range (interpolated half-coverage crossings) or, when the body
   runs past the first or last slice, the centre of the Gaussian fall-off of the centre map's
   profile across slices (a fixed-width log-parabola fitted to both flanks, the width being the
   training ``sigma_lateral_mm``); the corners = the region's extreme points along the
   local spine axis and its perpendicular, on the band around the mid slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import LEVEL_NAMES
from ..io import Scan
from ..levels import Level, LevelSet
from .assign import Assignment, Peak, assign_instances
from .grid import SagittalGrid, make_grid, resample
from .model import Detector
from .targets import ABOVE, BACKGROUND, CENTRE, N_CLASSES, S1_CLASS, SACRUM


@dataclass
class Prediction:
    grid: SagittalGrid
    image: np.ndarray  # (K, H, W) resampled input
    maps: np.ndarray  # (K, C, H, W) sigmoid outputs
    mid_slice: int
    assignment: Assignment
    levels: LevelSet


def stack_input(image: np.ndarray, k: int, context: int) -> np.ndarray:
    K = image.shape[0]
    idx = np.clip(np.arange(k - context, k + context + 1), 0, K - 1)
    return image[idx]


def predict_maps(detector: Detector, image: np.ndarray, batch_size: int = 8) -> np.ndarray:
    import torch

    net = detector.network
    device = next(net.parameters()).device
    ctx = detector.config.context
    outs = []
    with torch.inference_mode():
        for k0 in range(0, image.shape[0], batch_size):
            ks = range(k0, min(image.shape[0], k0 + batch_size))
            x = torch.from_numpy(np.stack([stack_input(image, k, ctx) for k in ks])).to(device)
            amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                   else torch.autocast("cpu", enabled=False))
            with amp:
                y = net(x).float()
            y = torch.cat([torch.softmax(y[:, :N_CLASSES], dim=1), torch.sigmoid(y[:, N_CLASSES:])], dim=1)
            outs.append(y.cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


def _profile(centre: np.ndarray, row: float, col: float) -> np.ndarray:
    K, H, W = centre.shape
    r, c = int(round(row)), int(round(col))
    r0, r1, c0, c1 = max(0, r - 1), min(H, r + 2), max(0, c - 1), min(W, c + 2)
    return centre[:, r0:r1, c0:c1].reshape(K, -1).max(axis=1)


def _slice_range(p: np.ndarray) -> tuple[int, int]:
    """Contiguous slices around the profile's maximum where it exceeds 0.5 (or half its max)."""
    K = len(p)
    k_max = int(np.argmax(p))
    thr = min(0.5, 0.5 * float(p[k_max]))
    lo = hi = k_max
    while lo > 0 and p[lo - 1] >= thr:
        lo -= 1
    while hi < K - 1 and p[hi + 1] >= thr:
        hi += 1
    return lo, hi


def _range_middle(p: np.ndarray, lo: int, hi: int) -> float | None:
    """Middle of the interpolated half-coverage crossings on both sides of [lo, hi], or None when
    the range touches the first or last slice (the body continues beyond the stack)."""
    K = len(p)
    if lo <= 0 or hi >= K - 1:
        return None
    thr = min(0.5, 0.5 * float(p[lo:hi + 1].max()))
    f_lo = lo - float(np.clip((p[lo] - thr) / max(p[lo] - p[lo - 1], 1e-6), 0.0, 1.0))
    f_hi = hi + float(np.clip((p[hi] - thr) / max(p[hi] - p[hi + 1], 1e-6), 0.0, 1.0))
    return 0.5 * (f_lo + f_hi)


def _peak_slice(p: np.ndarray, lo: int, hi: int) -> float:
    """Fractional slice of the profile's peak within [lo, hi]: centre of mass of its upper half
    (robust when the profile is flat-topped, exact for a symmetric peak)."""
    seg = np.asarray(p[lo:hi + 1], dtype=np.float64)
    w = np.clip(seg - 0.5 * seg.max(), 0.0, None)
    if w.sum() <= 0:
        return 0.5 * (lo + hi)
    return float(lo + (w * np.arange(len(seg))).sum() / w.sum())


def _lateral_fit(p: np.ndarray, slice_mm: float, sigma_mm: float, rel: float = 0.1) -> float | None:
    """Fractional slice of the body's mid-sagittal plane from the centre map's profile across
    slices ``p``: the network is trained to make it exp(-(z - z0)^2 / (2 sigma^2)) (``sigma`` =
    the training ``sigma_lateral_mm``), so log p(z) + z^2 / (2 sigma^2) is linear in z with slope
    z0 / sigma^2 - a weighted least-squares fit over every slice above ``rel`` x the maximum
    (both flanks, also when the peak is flat or at the stack's edge).  None when fewer than two
    slices qualify."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0 or p.max() <= 0:
        return None
    w = np.where(p > rel * p.max(), p, 0.0)
    if np.count_nonzero(w) < 2:
        return None
    z = np.arange(len(p)) * slice_mm
    y = np.log(np.maximum(p, 1e-6)) + z**2 / (2 * sigma_mm**2)
    sw = np.sqrt(w)
    A = np.column_stack([np.ones_like(z), z]) * sw[:, None]
    slope = np.linalg.lstsq(A, y * sw, rcond=None)[0][1]
    return float(np.clip(slope * sigma_mm**2 / slice_mm, -0.5, len(p) - 0.5))


def _axes(name: str, pos: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Local superior and anterior unit vectors (row, col) at a level from its neighbours."""
    v = LEVEL_NAMES.index(name)
    up = LEVEL_NAMES[v - 1] if v > 0 else None
    down = LEVEL_NAMES[v + 1] if v + 1 < len(LEVEL_NAMES) else None
    a = pos.get(up, pos[name]) if up else pos[name]
    b = pos.get(down, pos[name]) if down else pos[name]
    sup = a - b
    if np.linalg.norm(sup) < 1e-6:
        sup = np.array([-1.0, 0.0])
    sup = sup / np.linalg.norm(sup)
    ant = np.array([sup[1], -sup[0]])
    if ant[1] > 0:  # anterior = towards smaller column
        ant = -ant
    return sup, ant


def _corners(mask: np.ndarray, sup: np.ndarray, ant: np.ndarray) -> np.ndarray:
    """AS, PS, PI, AI corners (4, 2) of a region: its extreme pixels along the diagonals of the
    local (superior, anterior) frame, moved half a pixel outwards to the region's edge."""
    rr, cc = np.nonzero(mask)
    pts = np.column_stack([rr, cc]).astype(np.float64)
    out = np.zeros((4, 2))
    for c, (s, a) in enumerate(((1, 1), (1, -1), (-1, -1), (-1, 1))):
        d = s * sup + a * ant
        i = int(np.argmax(pts @ d))
        out[c] = pts[i] + 0.5 * d
    return out


@dataclass
class Candidate:
    peak: Peak
    evidence: np.ndarray  # (9,) class distribution over assign.EVIDENCE (above, T12..S1, sacrum)
    mask: np.ndarray  # (H, W) bool


SPLIT_PEAK = 0.2  # centre-map peaks above this (at least 14 mm apart) seed the split of a merged region
SPLIT_IF_LARGER = 1.6  # a region larger than this x the typical body is split even without 2 peaks
SPLIT_IF_PEAKS = 1.25  # ... and one with two strong centre peaks already when larger than this x typical
STRONG_PEAK = 0.25  # a second body: a centre peak above this (a partial T12 at the top edge is faint)


def _region_peaks(mask: np.ndarray, centre: np.ndarray, spacing_mm: float):
    from .assign import find_peaks

    return find_peaks(np.where(mask, centre, 0.0), SPLIT_PEAK, 14.0 / spacing_mm)


def _split(mask: np.ndarray, centre: np.ndarray, spacing_mm: float, typical: float) -> list[np.ndarray]:
    """Split a region of merged bodies (a collapsed disc not seen): pixels go to the nearest
    centre-map peak inside the region; without two such peaks, into equal-area slabs across
    the region's long axis (the spine direction)."""
    rr, cc = np.nonzero(mask)
    pts = np.column_stack([rr, cc]).astype(np.float64)
    peaks = _region_peaks(mask, centre, spacing_mm)
    if len(peaks) >= 2:
        seeds = np.array([[p.row, p.col] for p in peaks])
        owner = np.argmin(((pts[:, None, :] - seeds[None]) ** 2).sum(axis=2), axis=1)
    else:
        n = max(2, int(round(mask.sum() / typical)))
        centred = pts - pts.mean(axis=0)
        t = centred @ np.linalg.eigh(centred.T @ centred)[1][:, -1]
        owner = np.clip(np.searchsorted(np.quantile(t, np.linspace(0, 1, n + 1))[1:-1], t, side="right"), 0, n - 1)
    out = []
    for a in np.unique(owner):
        pm = np.zeros_like(mask)
        pm[rr[owner == a], cc[owner == a]] = True
        if pm.sum() >= 0.25 * typical:
            out.append(pm)
    return out or [mask]


def _centre_position(mask: np.ndarray, fg: np.ndarray, centre: np.ndarray, fused: bool) -> tuple[float, float]:
    """In-plane centroid of a vertebra region.  Normally the region's vertebra-weighted mean;
    for a region with a piece of a neighbouring vertebra fused to it (``fused``: T11 above
    T12, the sacrum below S1) the centre of mass of the centre map's main peak (its upper half
    around the region's maximum), which the fused piece does not pull."""
    from scipy import ndimage

    rr, cc = np.nonzero(mask)
    if fused and rr.size:
        r0, c0 = rr.min(), cc.min()
        c = np.where(mask, centre, 0.0)[r0:rr.max() + 1, c0:cc.max() + 1].astype(np.float64)
        top = np.unravel_index(int(np.argmax(c)), c.shape)
        lab, _ = ndimage.label(c > 0.5 * c[top])
        blob = lab == lab[top]
        w = (c - 0.5 * c[top])[blob]
        if c[top] > 0 and w.sum() > 1e-9:
            br, bc = np.nonzero(blob)
            return float(r0 + (br * w).sum() / w.sum()), float(c0 + (bc * w).sum() / w.sum())
    w = fg[rr, cc].astype(np.float64)
    return float((rr * w).sum() / w.sum()), float((cc * w).sum() / w.sum())


def candidates(agg: np.ndarray, spacing_mm: float, min_region_mm2: float, centroid: str = "region") -> list[Candidate]:
    """Vertebra candidates on band-averaged maps (C, H, W): regions of vertebral body (above T12,
    T12..S1; the sacrum below S1 is not a candidate)."""
    from scipy import ndimage

    fg = agg[ABOVE:S1_CLASS + 1].sum(axis=0)
    cls = agg[ABOVE:SACRUM + 1]
    any_fg = np.maximum(1.0 - agg[BACKGROUND], 1e-6)
    min_px = max(1.0, min_region_mm2 / spacing_mm**2)
    lab, n = ndimage.label(fg > 0.5)
    regions = [m for m in (lab == i for i in range(1, n + 1)) if m.sum() >= min_px]
    # typical body: the median region, at most ~1000 mm^2 (a lumbar body's mid-sagittal area), so
    # that a scan whose discs are all collapsed still has its merged regions split
    typical = min(float(np.median([m.sum() for m in regions])), 1000.0 / spacing_mm**2) if regions else 0.0
    lowest = int(np.argmax([np.argwhere(m)[:, 0].mean() for m in regions])) if regions else -1
    out = []
    for i, m in enumerate(regions):
        # merged bodies (a collapsed disc, or T12 fused with T11 or L1): a region much larger than
        # a typical body, or a somewhat larger one with two strong centre peaks - except the lowest
        # region, where a second peak is usually the sacrum below S1 (S2), not another body
        size = float(m.sum())
        merged = size > SPLIT_IF_LARGER * typical or (
            size > SPLIT_IF_PEAKS * typical and i != lowest
            and sum(p.height >= STRONG_PEAK for p in _region_peaks(m, agg[CENTRE], spacing_mm)) >= 2)
        parts = _split(m, agg[CENTRE], spacing_mm, typical) if merged else [m]
        for pm in parts:
            w = fg[pm]
            ev = cls[:, pm].sum(axis=1) / max(float(any_fg[pm].sum()), 1e-6)
            row, col = _centre_position(pm, fg, agg[CENTRE], centroid == "centre" or pm.sum() > SPLIT_IF_PEAKS * typical)
            out.append(Candidate(Peak(row, col, float(w.mean())), np.clip(ev, 0.0, 1.0), pm))
    return out


def detect_scan(detector: Detector, scan: Scan, path=None, source: str | None = None) -> Prediction:
    """Detect and label T12..S1 in ``scan``; low-confidence levels are kept and flagged in
    ``levels.issues`` (confidence < ``assign.low_confidence``)."""
    cfg = detector.config
    grid = make_grid(scan, cfg.spacing_mm, cfg.multiple, path)
    image = resample(scan, grid, path)
    maps = predict_maps(detector, image)
    src = source or f"detect:{detector.meta.get('config', {}).get('name') or detector.path.name}"
    return levels_from_maps(grid, image, maps, cfg, src, calibration=detector.calibration)


def sacrum_evidence(agg: np.ndarray, spacing_mm: float) -> float:
    """How much sacrum the band-averaged maps show: its area (pixels with sacrum probability
    > 0.5) relative to 600 mm^2 (about one sacral segment), clipped to [0, 1]."""
    return float(np.clip((agg[SACRUM] > 0.5).sum() * spacing_mm**2 / 600.0, 0.0, 1.0))


def levels_from_maps(grid: SagittalGrid, image: np.ndarray, maps: np.ndarray, cfg, source: str = "detect",
                     calibration=None) -> Prediction:
    """Post-processing of the network's maps (K, C, H, W) on ``grid`` (steps 2-4 of the module
    docstring); ``cfg``: the ``DetectorConfig``; ``calibration``: a ``calibrate.Calibration``."""
    K = maps.shape[0]
    fg = maps[:, ABOVE:S1_CLASS + 1].sum(axis=1)
    centre = maps[:, CENTRE]
    mass = (fg * centre).reshape(K, -1).sum(axis=1)
    mid = int(np.argmax(np.convolve(mass, [1, 2, 1], mode="same")))
    agg = maps[max(0, mid - 1):min(K, mid + 2)].mean(axis=0)
    cands = candidates(agg, cfg.spacing_mm, cfg.min_region_mm2, cfg.centroid)
    res = assign_instances([c.peak for c in cands], [c.evidence for c in cands], cfg.spacing_mm, cfg.assign,
                           sacrum=sacrum_evidence(agg, cfg.spacing_mm), calibration=calibration)
    by_pos = {(c.peak.row, c.peak.col): c for c in cands}
    pos = {n: np.array([a.row, a.col]) for n, a in res.levels.items()}
    levels: dict[str, Level] = {}
    issues = list(res.issues)
    for name, a in res.levels.items():
        mask = by_pos[(a.row, a.col)].mask
        cover = np.array([fg[k][mask].mean() for k in range(K)])  # vertebral body (the chain named it)
        lo, hi = _slice_range(cover)
        kf = _range_middle(cover, lo, hi)
        if kf is None:  # the body spans the stack: the centre map's lateral fall-off places it
            prof = _profile(centre, a.row, a.col)
            kf = _lateral_fit(prof, grid.slice_mm, cfg.sigma_lateral_mm)
            if kf is None:
                kf = _peak_slice(prof, lo, hi)
        mid_k = int(np.clip(np.floor(kf + 0.5), lo, hi))
        sup, ant = _axes(name, pos)
        crc = _corners(mask, sup, ant)
        centroid = grid.to_lps([a.row, a.col, kf])
        corners = grid.to_lps(np.column_stack([crc, np.full(4, float(mid_k))]))
        levels[name] = Level(name, centroid, corners, (lo, hi), mid_k, float(np.clip(a.confidence, 0.0, 1.0)))
    return Prediction(grid, image, maps, mid, res, LevelSet(levels, issues, source))


_LOADED: dict = {}


def usable_levels(levels: LevelSet, min_confidence: float = 0.5) -> LevelSet:
    """The levels a downstream stage may use: low-confidence levels are removed and named in
    ``issues`` (flagged, never silently used)."""
    keep, issues = {}, list(levels.issues)
    for lv in levels:
        if lv.confidence >= min_confidence:
            keep[lv.name] = lv
        else:
            issues.append(f"{lv.name}: detection confidence {lv.confidence:.2f} < {min_confidence:g}; not used")
    return LevelSet(keep, issues, levels.source)


def detect_levels(scan: Scan, model=None, device: str = "auto", min_confidence: float | None = None,
                  where=None) -> LevelSet:
    """One-call automatic levels for a scan (the level source ``detect`` of ``spine-ssl extract``
    and the Slicer module's automatic option).  ``model``: a model folder (default: the bundled
    model), loaded once per process.  With ``min_confidence`` low-confidence levels are dropped
    (see ``usable_levels``); without it they are kept and flagged in ``issues``."""
    from ..train import select_device
    from .model import load_detector

    dev = str(select_device(device))
    key = (str(model) if model else "", dev)
    if key not in _LOADED:
        _LOADED[key] = load_detector(model or None, device=dev)
    levels = detect_scan(_LOADED[key], scan, where).levels
    return usable_levels(levels, min_confidence) if min_confidence is not None else levels
