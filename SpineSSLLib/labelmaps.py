"""Label maps of real segmentation tools: their numbering, and their structures turned into levels.

Presets (``--label-mapping NAME``; class IDs are facts read from each project's own class
table, cited with the version they were read from):

- ``totalseg_mr``: TotalSegmentator's MR vertebra classes, task ``vertebrae_mr``
  (``totalsegmentator/map_to_binary.py``, ``class_map["vertebrae_mr"]``; read at v2.18.0, commit
  184fa4765456492b2ab81a981cc387465906b003, the table is unchanged since v2.5.0 where the task
  appeared): 1 sacrum, 2 L5, 3 L4, 4 L3, 5 L2, 6 L1, 7 T12, 8 T11 ... 25 C1.  TotalSegmentator's
  default MR task ``total_mr`` has one class for all vertebrae (19 ``vertebrae``, with 18
  ``sacrum``), which cannot give levels: a ``total_mr`` map (labels up to 50) is refused with
  that explanation.
- ``totalspineseg``: TotalSpineSeg (README "List of Classes" and
  ``totalspineseg/resources/labels_maps/tss_map.json``; read at release r20251124, commit
  be78ad4dbcc8ffbeded5599addc60a0c5e0d744f, the table is the same in r20241115 and r20250224):
  1 spinal cord, 2 spinal canal, 11-17 C1-C7, 21-32 T1-T12, 41-45 L1-L5 (46/47 L6/L7 in
  tss_map.json), 50 sacrum, discs 63-67 C2-C3..C6-C7, 71-82 C7-T1..T11-T12, 91-95 T12-L1..L4-L5,
  100 L5-S.

Both tools label whole bones: a vertebra label holds the body and its posterior elements, the
sacrum label the whole sacrum (S1-S5, alae and crest).  SpineSSL's levels are vertebral
*bodies*, so ``vertebral_body`` keeps, on the level's mid-sagittal slice, the most anterior
piece of the label (the body; the spinous process and laminae lie behind the spinal canal) and
drops the voxels behind the body's posterior wall (pedicles, articular and transverse
processes).  ``s1_from_sacrum`` takes the S1 segment from the sacrum: the top of the sacral
body column, one L5 body height thick, cut perpendicular to the L5->S1 axis (found by
iteration), within half the body's depth of the midline (leaving the alae out).  Disc labels
(TotalSpineSeg) check the numbering: each disc must lie between its two vertebrae.
"""

from __future__ import annotations

import re

import numpy as np

from . import DISC_NAMES, LEVEL_NAMES


class LabelMapping(dict):
    """Label value -> level name (T12..S1), plus what a tool's numbering says beyond that:
    ``sacrum`` (value of a whole-sacrum class, from which S1 is taken), ``discs`` (value -> disc
    name), ``transitional`` (values of L6/L7: S1 is then not taken from the sacrum), ``known``
    (every value the tool writes; others mean a different numbering), ``name`` and ``source``."""

    def __init__(self, levels: dict, name: str = "", sacrum: int | None = None, discs: dict | None = None,
                 transitional: tuple = (), known: frozenset | None = None, source: str = "",
                 wrong_hint: str = ""):
        super().__init__(levels)
        self.name, self.sacrum, self.discs = name, sacrum, dict(discs or {})
        self.transitional, self.known, self.source, self.wrong_hint = tuple(transitional), known, source, wrong_hint

    def copy(self) -> "LabelMapping":
        return LabelMapping(dict(self), self.name, self.sacrum, self.discs, self.transitional, self.known,
                            self.source, self.wrong_hint)


# TotalSegmentator class_map["vertebrae_mr"] (v2.5.0 .. v2.18.0)
_TS_VERTEBRAE_MR = {1: "sacrum", 2: "L5", 3: "L4", 4: "L3", 5: "L2", 6: "L1", 7: "T12", 8: "T11", 9: "T10",
                    10: "T9", 11: "T8", 12: "T7", 13: "T6", 14: "T5", 15: "T4", 16: "T3", 17: "T2", 18: "T1",
                    19: "C7", 20: "C6", 21: "C5", 22: "C4", 23: "C3", 24: "C2", 25: "C1"}
# TotalSpineSeg README "List of Classes" / tss_map.json (r20241115 .. r20251124)
_TSS = {1: "spinal_cord", 2: "spinal_canal", **{10 + i: f"C{i}" for i in range(1, 8)},
        **{20 + i: f"T{i}" for i in range(1, 13)}, **{40 + i: f"L{i}" for i in range(1, 8)}, 50: "sacrum",
        **{60 + i: f"C{i - 1}-C{i}" for i in range(3, 8)}, 71: "C7-T1",
        **{70 + i: f"T{i - 1}-T{i}" for i in range(2, 13)}, 91: "T12-L1",
        **{90 + i: f"L{i - 1}-L{i}" for i in range(2, 6)}, 100: "L5-S1"}

TOTALSEG_MR = LabelMapping(
    {v: n for v, n in _TS_VERTEBRAE_MR.items() if n in LEVEL_NAMES}, "totalseg_mr", sacrum=1,
    known=frozenset(_TS_VERTEBRAE_MR),
    source="TotalSegmentator task vertebrae_mr, class_map in totalsegmentator/map_to_binary.py "
           "(v2.18.0, commit 184fa476; unchanged since v2.5.0)",
    wrong_hint="TotalSegmentator --task vertebrae_mr writes 1-25; total_mr has a single 'vertebrae' class "
               "without levels")
TOTALSPINESEG = LabelMapping(
    {v: n for v, n in _TSS.items() if n in LEVEL_NAMES}, "totalspineseg", sacrum=50,
    discs={v: n for v, n in _TSS.items() if n in DISC_NAMES}, transitional=(46, 47), known=frozenset(_TSS),
    source="TotalSpineSeg README 'List of Classes' and resources/labels_maps/tss_map.json "
           "(release r20251124, commit be78ad4d)",
    wrong_hint="TotalSpineSeg's final output (step2_output) holds 1, 2, 11-17, 21-32, 41-47, 50, 63-67, 71-82, "
               "91-95, 100")

TOOL_PRESETS = {m.name: m for m in (TOTALSEG_MR, TOTALSPINESEG)}


def check_values(present, mapping, where) -> None:
    """``LevelsError`` when a tool preset meets label values its tool never writes."""
    from .errors import LevelsError

    known = getattr(mapping, "known", None)
    if known is None:
        return
    odd = sorted(v for v in present if v != 0 and v not in known)
    if odd:
        shown = ", ".join(str(v) for v in odd[:6]) + (", ..." if len(odd) > 6 else "")
        raise LevelsError(f"label value(s) {shown} are not in the {mapping.name} numbering "
                          f"({mapping.wrong_hint})", where)


# --------------------------------------------------------------------------------------------
# segment names (Slicer segmentation nodes)
# --------------------------------------------------------------------------------------------

_LEVEL = r"(T12|L[1-5]|S1)"


def segment_structure(name: str) -> str | None:
    """The structure a segment name stands for: a level (``'L3'``), ``'sacrum'``, a disc
    (``'L4-L5'``) or ``None``.  Understood: SpineSSL's names (``L3``, ``L4-L5``), TotalSegmentator's
    (``vertebrae_L3``, ``sacrum``, ``vertebrae_S1``) and its Slicer standard names (``L3 vertebra``,
    ``Sacrum``), TotalSpineSeg's (``vertebrae_L3``, ``disc_L4_L5``, ``disc_L5_S1``)."""
    s = name.strip()
    for pat in (rf"{_LEVEL}", rf"vertebrae?[\s_-]*{_LEVEL}", rf"{_LEVEL}[\s_-]*vertebra"):
        m = re.fullmatch(pat, s, flags=re.IGNORECASE)
        if m:
            return m.group(1).upper()
    if re.fullmatch(r"sacrum", s, flags=re.IGNORECASE):
        return "sacrum"
    m = re.fullmatch(rf"(?:disc[\s_-]*)?{_LEVEL}[\s_/-]+(L[1-5]|S1?)", s, flags=re.IGNORECASE)
    if m:
        lower = m.group(2).upper()
        disc = f"{m.group(1).upper()}-{'S1' if lower == 'S' else lower}"
        return disc if disc in DISC_NAMES else None
    return None


# --------------------------------------------------------------------------------------------
# whole bones -> vertebral bodies
# --------------------------------------------------------------------------------------------

_POSTERIOR = np.array([0.0, 1.0, 0.0])


def frame(axis_inf, normal) -> tuple[np.ndarray, np.ndarray]:
    """(u anterior->posterior, v superior->inferior), unit, in the slice plane."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    v = np.asarray(axis_inf, dtype=np.float64)
    v = v - (v @ n) * n
    v = v / np.linalg.norm(v)
    u = np.cross(n, v)
    return (u if u @ _POSTERIOR >= 0 else -u), v


def _mid_slice(ijk: np.ndarray) -> int:
    return int(np.floor(ijk[:, 2].mean() + 0.5))


def _anterior_component(sl: np.ndarray, pu: np.ndarray, min_fraction: float = 0.25) -> np.ndarray:
    """Boolean mask over the mid-slice voxels ``sl`` (i, j) of the most anterior connected piece
    among those at least ``min_fraction`` of the largest (8-connected)."""
    from scipy import ndimage

    ij = sl[:, :2].astype(int)
    lo = ij.min(axis=0)
    grid = np.zeros(tuple(ij.max(axis=0) - lo + 1), dtype=bool)
    grid[tuple((ij - lo).T)] = True
    lab, n = ndimage.label(grid, structure=np.ones((3, 3), dtype=bool))
    comp = lab[tuple((ij - lo).T)]
    if n <= 1:
        return np.ones(len(sl), dtype=bool)
    sizes = np.bincount(comp, minlength=n + 1)
    keep = [c for c in range(1, n + 1) if sizes[c] >= min_fraction * sizes.max()]
    best = min(keep, key=lambda c: float(pu[comp == c].mean()))
    return comp == best


def vertebral_body(ijk: np.ndarray, scan, axis_inf) -> np.ndarray:
    """The vertebral-body voxels of a whole-vertebra label (``ijk``: (N, 3) voxel indices).

    On the mid slice the most anterior substantial piece is the body; voxels further posterior
    than its posterior wall (plus half a pixel) are dropped in every slice.  A body-only label
    comes back unchanged."""
    a = scan.affine[:3, :3]
    u, _ = frame(axis_inf, a[:, 2])
    kmid = _mid_slice(ijk)
    on = np.abs(ijk[:, 2] - kmid) < 0.5
    if on.sum() < 4:
        return ijk
    pu = scan.index_to_lps(ijk) @ u
    body = _anterior_component(ijk[on], pu[on])
    half = 0.5 * float(np.mean(np.linalg.norm(a[:, :2], axis=0)))
    return ijk[pu <= pu[on][body].max() + half]


def s1_from_sacrum(ijk: np.ndarray, scan, l5_centroid, l5_height: float, axis_inf) -> np.ndarray:
    """The S1-segment voxels of a whole-sacrum label (see the module docstring).

    ``l5_centroid``/``l5_height``: the L5 body's centroid (LPS) and height (mm, along the spine);
    ``axis_inf``: the spine's superior->inferior direction at L5 (the first guess of the L5->S1
    axis).  A sacrum label no taller than 1.3 L5 heights is taken whole (S1 only, or cut by the
    field of view)."""
    a = scan.affine[:3, :3]
    normal = a[:, 2] / np.linalg.norm(a[:, 2])
    pts = scan.index_to_lps(ijk)
    c5 = np.asarray(l5_centroid, dtype=np.float64)
    axis = np.asarray(axis_inf, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    kmid = _mid_slice(ijk)
    on = np.abs(ijk[:, 2] - kmid) < 0.5
    if on.sum() < 4:
        return ijk
    u, _ = frame(axis, normal)
    column = _anterior_component(ijk[on], pts[on] @ u)  # sacral bodies, not the crest behind the canal
    q = pts[on][column]
    for _ in range(4):  # the slab perpendicular to the L5 -> S1 axis, iterated to agree with it
        s = (q - c5) @ axis
        top = float(np.percentile(s, 0.5))
        if s.max() - top <= 1.3 * l5_height:
            sel = np.ones(len(q), dtype=bool)
        else:
            sel = s <= top + l5_height
        new = q[sel].mean(axis=0) - c5
        new /= np.linalg.norm(new)
        if np.allclose(new, axis, atol=1e-6):
            break
        axis = new
    u, _ = frame(axis, normal)
    seg = q[sel]
    depth = float(np.ptp(seg @ u))
    s_all = (pts - c5) @ axis
    half = 0.5 * float(np.mean(np.linalg.norm(a[:, :2], axis=0)))
    keep = (s_all >= top - half) & ((pts @ u) <= (seg @ u).max() + half)
    if not sel.all():
        keep &= s_all <= top + l5_height
    mid = seg.mean(axis=0)
    keep &= np.abs((pts - mid) @ normal) <= max(depth / 2, float(np.linalg.norm(a[:, 2])))
    return ijk[keep]


def disc_order_issues(disc_centroids: dict, levels) -> list[str]:
    """Issues for disc labels that do not lie between their two vertebrae (a numbering error)."""
    out = []
    for disc, c in disc_centroids.items():
        up, lo = disc.split("-")
        if up not in levels or lo not in levels:
            continue
        a, b = levels[up].centroid, levels[lo].centroid
        t = float((c - a) @ (b - a) / max((b - a) @ (b - a), 1e-9))
        if not 0.15 < t < 0.85:
            out.append(f"{disc}: the disc label is not between {up} and {lo} (check the label numbering)")
    return out
