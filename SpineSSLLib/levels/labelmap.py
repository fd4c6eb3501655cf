"""Levels from label maps (SPIDER / synthetic numbering, the TotalSegmentator and TotalSpineSeg presets
of ``labelmaps``, or a user mapping file) on the scan's voxel grid."""

from __future__ import annotations

import os

import numpy as np

from .. import LEVEL_NAMES
from ..labelmaps import TOOL_PRESETS, LabelMapping, check_values, disc_order_issues, s1_from_sacrum, vertebral_body
from .core import Level, LevelSet
from .geometry import _SUPERIOR, _inplane_frame, spine_axis
from .readers import _load_json

# --------------------------------------------------------------------------------------------
# Source 3: label maps
# --------------------------------------------------------------------------------------------

# SPIDER (van der Graaf et al. 2024): vertebrae numbered from the bottom, L5 = 1 (no sacrum
# label in the vertebra numbering); discs 201.. (L5/S1 = 201); 100 = spinal canal.
# SpineSSL's synthetic label maps use the SPIDER numbering plus 26 for the S1 segment.
# TotalSegmentator (vertebrae_mr) and TotalSpineSeg: ``labelmaps`` (class tables cited there).
LABEL_PRESETS: dict[str, dict[int, str]] = {
    "spider": {6: "T12", 5: "L1", 4: "L2", 3: "L3", 2: "L4", 1: "L5"},
    "synthetic": {6: "T12", 5: "L1", 4: "L2", 3: "L3", 2: "L4", 1: "L5", 26: "S1"},
    **TOOL_PRESETS,
}


def load_label_mapping(path) -> dict[int, str]:
    """User label->level mapping: JSON ``{"L4": 2, ...}`` (or ``{"2": "L4"}``), or a CSV/TSV with
    columns ``label,level``."""
    import csv

    from ..errors import LevelsError

    path = os.fspath(path)
    mapping: dict[int, str] = {}
    try:
        if path.lower().endswith(".json"):
            d = _load_json(path)
            if not isinstance(d, dict):
                raise LevelsError("mapping JSON must be an object", path)
            for k, v in d.items():
                if str(k).upper() in LEVEL_NAMES:
                    mapping[int(v)] = str(k).upper()
                elif str(k).strip().lstrip("-").isdigit():
                    mapping[int(k)] = str(v).upper()
                else:
                    raise LevelsError(f"mapping names unknown level(s) [{str(k)!r}]", path)
        else:
            with open(path, newline="", encoding="utf-8") as f:
                sample = f.read(2048)
                f.seek(0)
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else csv.excel
                for row in csv.DictReader(f, dialect=dialect):
                    row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                    mapping[int(row["label"])] = row["level"].upper()
    except FileNotFoundError as e:
        raise LevelsError("file not found", path) from e
    except (KeyError, ValueError, TypeError) as e:
        raise LevelsError(f"malformed label mapping ({type(e).__name__}: {e})", path) from e
    bad = sorted({v for v in mapping.values() if v not in LEVEL_NAMES})
    if bad:
        raise LevelsError(f"mapping names unknown level(s) {bad}", path)
    if len(set(mapping.values())) != len(mapping):
        raise LevelsError("mapping gives two labels the same level", path)
    return mapping


def resolve_label_mapping(spec: str) -> dict[int, str]:
    """A preset name (``spider``, ``synthetic``, ``totalseg_mr``, ``totalspineseg``) or a mapping file path."""
    from ..errors import ConfigError

    if spec.lower() in LABEL_PRESETS:
        preset = LABEL_PRESETS[spec.lower()]
        return preset.copy() if isinstance(preset, LabelMapping) else dict(preset)
    if os.path.exists(spec):
        return load_label_mapping(spec)
    raise ConfigError(f"unknown label mapping {spec!r}: use one of {sorted(LABEL_PRESETS)} or a mapping file")


def align_to_grid(labels, scan, where):
    """Re-index a label map onto the scan's voxel grid when both describe the same physical
    grid with voxel axes permuted or flipped (e.g. a DICOM series re-ordered along its normal);
    anything else -> ``LevelsError`` (wrong shape or geometry)."""
    from ..errors import LevelsError
    from ..io import Scan

    M = np.linalg.inv(scan.affine) @ labels.affine  # label voxel -> scan voxel
    R = np.rint(M[:3, :3])
    ok = (np.abs(M[:3, :3] - R).max() < 1e-3 and np.all(np.abs(R).sum(axis=0) == 1)
          and np.all(np.abs(R).sum(axis=1) == 1) and np.abs(M[:3, 3] - np.rint(M[:3, 3])).max() < 1e-2)
    if not ok:
        if sorted(labels.shape) != sorted(scan.shape):
            raise LevelsError(f"label map shape {labels.shape} does not match the scan {scan.shape}", where)
        raise LevelsError("label map geometry (origin/spacing/direction) does not match the scan", where)
    t = np.rint(M[:3, 3]).astype(int)
    K, J, I = scan.shape
    # scan index along each scan axis a (0=i,1=j,2=k) = sign * label index along axis src + t
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    scan_ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3)
    lab_ijk = (scan_ijk - t) @ np.linalg.inv(R).T
    lab_ijk = np.rint(lab_ijk).astype(int)
    Kl, Jl, Il = labels.shape
    inside = ((lab_ijk >= 0) & (lab_ijk < np.array([Il, Jl, Kl]))).all(axis=1)
    if not inside.all():
        if sorted(labels.shape) != sorted(scan.shape):
            raise LevelsError(f"label map shape {labels.shape} does not match the scan {scan.shape}", where)
        raise LevelsError("label map geometry (origin/spacing/direction) does not match the scan", where)
    arr = labels.array[lab_ijk[:, 2], lab_ijk[:, 1], lab_ijk[:, 0]].reshape(K, J, I)
    return Scan(arr, scan.affine)


def from_labelmap(labels, scan, mapping: dict[int, str], where=None) -> LevelSet:
    """Levels from a label map on the scan's grid.

    ``labels``: a path (NIfTI/NRRD/MHA) or a ``Scan`` holding the labels.  The label map must
    lie on the scan's voxel grid (any axis order or flips, see ``align_to_grid``) or
    ``LevelsError`` is raised.  Per level: centroid = mean voxel position; mid slice = slice of
    the centroid; corners = the oriented bounding rectangle of the level's voxels on its mid
    slice, in the frame (spine axis from neighbouring centroids, its in-plane perpendicular).
    """
    from ..io import Scan, read_image

    if not isinstance(labels, Scan):
        where = where or os.fspath(labels)
        labels = read_image(labels)
    where = where or "label map"
    labels = align_to_grid(labels, scan, where)
    lab = np.rint(labels.array).astype(np.int32)
    present = set(np.unique(lab).tolist())
    check_values(present, mapping, where)  # a tool preset meeting another numbering
    voxels = {}
    issues = []
    for value, name in sorted(mapping.items(), key=lambda kv: LEVEL_NAMES.index(kv[1])):
        if value not in present:
            issues.append(f"{name}: label {value} not in label map")
            continue
        kji = np.argwhere(lab == value)
        voxels[name] = kji[:, ::-1].astype(np.float64)
    # whole vertebrae (body + posterior elements, as real tools label them) -> vertebral bodies
    whole = LevelSet({n: Level(n, scan.index_to_lps(v.mean(axis=0))) for n, v in voxels.items()})
    voxels = {n: vertebral_body(v, scan, _axis(whole, n)) for n, v in voxels.items()}
    if getattr(mapping, "sacrum", None) is not None and "S1" not in mapping.values():
        s1, issue = _s1_voxels(lab, present, mapping, voxels, scan)
        if s1 is not None:
            voxels["S1"] = s1
        if issue:
            issues.append(issue)
    cents = {n: scan.index_to_lps(v.mean(axis=0)) for n, v in voxels.items()}
    proto = LevelSet({n: Level(n, c) for n, c in cents.items()})
    normal = scan.affine[:3, 2] / np.linalg.norm(scan.affine[:3, 2])
    out = {}
    for name, ijk in voxels.items():
        kmid = int(np.floor(ijk[:, 2].mean() + 0.5))
        sl = ijk[np.abs(ijk[:, 2] - kmid) < 0.5]
        if len(sl) < 4:
            issues.append(f"{name}: too few voxels on its mid slice; skipped")
            continue
        axis = spine_axis(proto, name)
        if axis is None:
            axis = -_SUPERIOR
        u, v = _inplane_frame(axis, normal)
        pts = scan.index_to_lps(sl)
        c = pts.mean(axis=0)
        pu, pv = (pts - c) @ u, (pts - c) @ v
        sp = scan.spacing
        half = 0.5 * float(np.mean(sp[:2]))
        u0, u1 = pu.min() - half, pu.max() + half
        v0, v1 = pv.min() - half, pv.max() + half
        corners = np.stack([c + u0 * u + v0 * v, c + u1 * u + v0 * v, c + u1 * u + v1 * v, c + u0 * u + v1 * v])
        k_lo, k_hi = int(ijk[:, 2].min()), int(ijk[:, 2].max())
        out[name] = Level(name, cents[name], corners, (k_lo, k_hi), kmid)
    for name in LEVEL_NAMES:
        if name not in mapping.values() and not (name == "S1" and getattr(mapping, "sacrum", None) is not None):
            issues.append(f"{name}: no label for this level in the mapping")
    result = LevelSet(out, issues, f"labelmap:{os.path.basename(str(where))}")
    discs = {d: scan.index_to_lps(np.argwhere(lab == v)[:, ::-1].mean(axis=0))
             for v, d in getattr(mapping, "discs", {}).items() if v in present}
    result.issues.extend(disc_order_issues(discs, result))
    return result


def _axis(levels: LevelSet, name: str) -> np.ndarray:
    axis = spine_axis(levels, name)
    return -_SUPERIOR if axis is None else axis


def _s1_voxels(lab, present: set, mapping, voxels: dict, scan):
    """(S1 voxels or None, issue or "") from the whole-sacrum label of a tool preset."""
    value = mapping.sacrum
    if value not in present:
        return None, f"S1: sacrum label {value} not in label map"
    odd = [v for v in mapping.transitional if v in present]
    if odd:
        return None, (f"S1: label {odd[0]} (a transitional lumbosacral vertebra, L6) is present; S1 is not "
                      f"taken from the sacrum")
    if "L5" not in voxels:
        return None, "S1: the S1 segment of the sacrum is found from L5, which is missing; skipped"
    bodies = LevelSet({n: Level(n, scan.index_to_lps(v.mean(axis=0))) for n, v in voxels.items()})
    axis = _axis(bodies, "L5")
    l5 = voxels["L5"]
    on = np.abs(l5[:, 2] - np.floor(l5[:, 2].mean() + 0.5)) < 0.5
    _, v = _inplane_frame(axis, scan.affine[:3, 2])
    height = float(np.ptp(scan.index_to_lps(l5[on]) @ v)) + float(np.mean(scan.spacing[:2]))
    s1 = s1_from_sacrum(np.argwhere(lab == value)[:, ::-1].astype(np.float64), scan, bodies["L5"].centroid,
                        height, axis)
    if len(s1) < 4:
        return None, "S1: too few sacrum voxels for the S1 segment; skipped"
    return s1, "S1: taken from the sacrum label (its top segment, one L5 height)"
