"""Vertebra levels: the one internal structure every level source fills.

A ``Level`` is a vertebral body T12...S1 in *patient LPS millimetres* (DICOM convention):
its centroid, the four corners of its mid-sagittal outline and the sagittal slices it spans.

Corner order (all sources, all files): anterior-superior, posterior-superior,
posterior-inferior, anterior-inferior.  "Anterior" is -P (towards the belly: smaller LPS y),
"superior" is +S (larger LPS z).

Adapters that fill a ``LevelSet`` from ground-truth JSON, Slicer markups, label maps and
SpineNet output live in this module too (added by the extraction work).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from . import DISC_NAMES, LEVEL_NAMES
from .labelmaps import TOOL_PRESETS, LabelMapping, check_values, disc_order_issues, s1_from_sacrum, vertebral_body

CORNER_NAMES = ("anterior-superior", "posterior-superior", "posterior-inferior", "anterior-inferior")


@dataclass
class Level:
    name: str
    centroid: np.ndarray  # (3,) LPS mm
    corners: np.ndarray | None = None  # (4, 3) LPS mm, CORNER_NAMES order
    slice_range: tuple[int, int] | None = None  # first, last sagittal slice index (inclusive)
    mid_slice: int | None = None
    confidence: float = 1.0

    def __post_init__(self):
        self.centroid = np.asarray(self.centroid, dtype=np.float64).reshape(3)
        if self.corners is not None:
            self.corners = np.asarray(self.corners, dtype=np.float64).reshape(4, 3)
        if self.slice_range is not None:
            self.slice_range = (int(self.slice_range[0]), int(self.slice_range[1]))
        if self.mid_slice is not None:
            self.mid_slice = int(self.mid_slice)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "centroid_lps": [round(float(v), 4) for v in self.centroid],
            "corners_lps": None if self.corners is None else [[round(float(v), 4) for v in c] for c in self.corners],
            "slice_range": None if self.slice_range is None else list(self.slice_range),
            "mid_slice": self.mid_slice,
            "confidence": round(float(self.confidence), 4),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Level":
        return cls(
            name=d["name"],
            centroid=d["centroid_lps"],
            corners=d.get("corners_lps"),
            slice_range=d.get("slice_range"),
            mid_slice=d.get("mid_slice"),
            confidence=d.get("confidence", 1.0),
        )


@dataclass
class LevelSet:
    """Levels of one scan, keyed by name, plus the problems found while building it."""

    levels: dict[str, Level] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)  # human-readable flags, e.g. "S1: outside volume"
    source: str = ""

    def __post_init__(self):
        self.levels = {n: self.levels[n] for n in LEVEL_NAMES if n in self.levels} | {
            n: v for n, v in self.levels.items() if n not in LEVEL_NAMES
        }

    def __contains__(self, name: str) -> bool:
        return name in self.levels

    def __getitem__(self, name: str) -> Level:
        return self.levels[name]

    def __iter__(self):
        return iter(self.levels.values())

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def names(self) -> list[str]:
        return list(self.levels)

    def discs(self) -> list[tuple[str, Level, Level]]:
        """(disc name, upper VB, lower VB) for every disc whose two neighbours are present."""
        out = []
        for disc, (a, b) in zip(DISC_NAMES, zip(LEVEL_NAMES[:-1], LEVEL_NAMES[1:])):
            if a in self.levels and b in self.levels:
                out.append((disc, self.levels[a], self.levels[b]))
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "levels": [l.to_dict() for l in self], "issues": list(self.issues)}

    @classmethod
    def from_dict(cls, d: dict) -> "LevelSet":
        return cls({x["name"]: Level.from_dict(x) for x in d["levels"]}, list(d.get("issues", [])), d.get("source", ""))

    def replace(self, **kw) -> "LevelSet":
        return dataclasses.replace(self, **kw)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

_SUPERIOR = np.array([0.0, 0.0, 1.0])  # LPS +z
_POSTERIOR = np.array([0.0, 1.0, 0.0])  # LPS +y

# When only a centre point is known, corners are estimated from the distance between
# neighbouring centres (lumbar VB: width ~1.05x, height ~0.72x the centre-to-centre distance).
EST_WIDTH_FACTOR = 1.05
EST_HEIGHT_FACTOR = 0.72


def order_corners(points) -> np.ndarray:
    """Put 4 outline points (LPS) in CORNER_NAMES order: the two most superior points are the
    superior corners, and of each pair the more anterior (smaller y) comes first/last."""
    p = np.asarray(points, dtype=np.float64).reshape(4, 3)
    by_sup = np.argsort(-(p @ _SUPERIOR), kind="stable")
    sup, inf = p[by_sup[:2]], p[by_sup[2:]]
    sup = sup[np.argsort(sup @ _POSTERIOR, kind="stable")]  # anterior first
    inf = inf[np.argsort(inf @ _POSTERIOR, kind="stable")]
    return np.stack([sup[0], sup[1], inf[1], inf[0]])


def spine_axis(levels: "LevelSet", name: str) -> np.ndarray | None:
    """Unit superior->inferior direction at level ``name`` from its neighbours' centroids."""
    names = [n for n in LEVEL_NAMES if n in levels]
    if name not in names or len(names) < 2:
        return None
    i = names.index(name)
    above = levels[names[i - 1]].centroid if i > 0 else levels[name].centroid
    below = levels[names[i + 1]].centroid if i + 1 < len(names) else levels[name].centroid
    d = below - above
    n = np.linalg.norm(d)
    return None if n < 1e-6 else d / n


def _inplane_frame(v_inf: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u anterior->posterior, v superior->inferior), both unit and in the slice plane."""
    n = normal / np.linalg.norm(normal)
    v = v_inf - (v_inf @ n) * n
    v /= np.linalg.norm(v)
    u = np.cross(n, v)
    if u @ _POSTERIOR < 0:
        u = -u
    return u, v


def estimate_corners(levels: "LevelSet", normal) -> "LevelSet":
    """Fill missing corners of centre-only levels from neighbouring centres (flagged)."""
    names = [n for n in LEVEL_NAMES if n in levels]
    out = {}
    issues = list(levels.issues)
    for name, lev in levels.levels.items():
        if lev.corners is not None or name not in names:
            out[name] = lev
            continue
        i = names.index(name)
        nb = [levels[names[j]].centroid for j in (i - 1, i + 1) if 0 <= j < len(names)]
        if not nb:
            issues.append(f"{name}: only a centre point and no neighbour to estimate its size; skipped")
            continue
        dist = float(np.mean([np.linalg.norm(c - lev.centroid) for c in nb]))
        axis = spine_axis(levels, name)
        u, v = _inplane_frame(axis, np.asarray(normal, dtype=np.float64))
        w, h = EST_WIDTH_FACTOR * dist / 2, EST_HEIGHT_FACTOR * dist / 2
        c = lev.centroid
        corners = np.stack([c - w * u - h * v, c + w * u - h * v, c + w * u + h * v, c - w * u + h * v])
        out[name] = dataclasses.replace(lev, corners=corners)
        issues.append(f"{name}: corners estimated from the centre points")
    return LevelSet(out, issues, levels.source)


def check_in_volume(levels: "LevelSet", scan, margin_vox: float = 0.5) -> "LevelSet":
    """Drop (and flag) levels whose centroid or corners fall outside the scan."""
    K, J, I = scan.shape
    hi = np.array([I - 1, J - 1, K - 1], dtype=np.float64) + margin_vox
    out, issues = {}, list(levels.issues)
    for name, lev in levels.levels.items():
        pts = lev.centroid[None] if lev.corners is None else np.vstack([lev.centroid[None], lev.corners])
        ijk = scan.lps_to_index(pts)
        if np.any(ijk < -margin_vox) or np.any(ijk > hi):
            issues.append(f"{name}: outside the image volume")
            continue
        out[name] = lev
    zs = [out[n].centroid[2] for n in LEVEL_NAMES if n in out]
    if any(b >= a for a, b in zip(zs, zs[1:])):
        issues.append("level order: centroids are not superior-to-inferior in T12..S1 order")
    return LevelSet(out, issues, levels.source)


# --------------------------------------------------------------------------------------------
# Source 1: synthetic ground-truth JSON
# --------------------------------------------------------------------------------------------

def _load_json(path) -> dict:
    import json

    from .errors import LevelsError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise LevelsError("file not found", path) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LevelsError(f"not valid JSON ({type(e).__name__})", path) from e


def from_truth_json(path) -> LevelSet:
    """Levels from a synthetic cohort's truth JSON (``spinessl.synth.truth/1``) or a saved level
    set (``spinessl.levels/1``, as written by ``spine-ssl detect``)."""
    from .errors import LevelsError

    d = _load_json(path)
    lv = d.get("levels")
    if isinstance(lv, list):  # a saved level set (``spine-ssl detect`` output, spinessl.levels/1)
        lv = d
    if not isinstance(lv, dict) or not isinstance(lv.get("levels"), list):
        raise LevelsError("no 'levels' structure (not a SpineSSL truth or level file?)", path)
    try:
        ls = LevelSet.from_dict(lv)
    except (KeyError, TypeError, ValueError) as e:
        raise LevelsError(f"malformed level entry ({type(e).__name__}: {e})", path) from e
    unknown = [n for n in ls.names if n not in LEVEL_NAMES]
    if unknown:
        raise LevelsError(f"unknown level name(s) {unknown}", path)
    return ls.replace(source=f"truth:{os.path.basename(path)}")


def truth_grades(path) -> dict[str, int]:
    """Disc name -> grade (1..4) from a truth JSON; ungraded discs are left out."""
    d = _load_json(path)
    out = {}
    for disc in d.get("discs", []) or []:
        g = disc.get("grade")
        if g is not None and disc.get("name") in DISC_NAMES:
            out[disc["name"]] = int(g)
    return out


# --------------------------------------------------------------------------------------------
# Source 2: Slicer markups (.mrk.json)
# --------------------------------------------------------------------------------------------

_CORNER_ALIASES = {
    "as": 0, "anterior-superior": 0, "antsup": 0, "superior-anterior": 0,
    "ps": 1, "posterior-superior": 1, "postsup": 1, "superior-posterior": 1,
    "pi": 2, "posterior-inferior": 2, "postinf": 2, "inferior-posterior": 2,
    "ai": 3, "anterior-inferior": 3, "antinf": 3, "inferior-anterior": 3,
}
_CENTRE_ALIASES = {"", "c", "centre", "center", "centroid"}


def parse_point_label(label: str) -> tuple[str, int | None] | None:
    """'L4' -> ('L4', None) centre; 'L4-AS', 'L4 anterior-superior', 'l4_pi' -> (level, corner
    index); anything else -> None."""
    import re

    m = re.fullmatch(r"\s*(T12|L[1-5]|S1)(?:[\s_:/.-]+([A-Za-z-]*))?\s*", label, flags=re.IGNORECASE)
    if not m:
        return None
    level = m.group(1).upper()
    part = (m.group(2) or "").strip().lower().replace("_", "-")
    if part in _CENTRE_ALIASES:
        return level, None
    if part in _CORNER_ALIASES:
        return level, _CORNER_ALIASES[part]
    return None


def from_markups(path) -> LevelSet:
    """Levels from a Slicer markups file: control points labelled 'L4' (centre) and/or
    'L4-AS', 'L4-PS', 'L4-PI', 'L4-AI' (corners).  ``coordinateSystem`` LPS or RAS honoured
    (RAS = diag(-1,-1,1) LPS).  Unknown labels -> ``LevelsError``; duplicates and incomplete
    corner sets are flagged and the level skipped or reduced to its centre."""
    from .errors import LevelsError

    d = _load_json(path)
    markups = d.get("markups")
    if not isinstance(markups, list) or not markups:
        raise LevelsError("no 'markups' list (not a Slicer .mrk.json file?)", path)
    pts: dict[str, dict] = {}
    dup: set[str] = set()
    for mk in markups:
        cs = str(mk.get("coordinateSystem", "LPS")).upper()
        if cs not in ("LPS", "RAS"):
            raise LevelsError(f"unsupported coordinateSystem {cs!r}", path)
        flip = np.array([-1.0, -1.0, 1.0]) if cs == "RAS" else np.ones(3)
        for cp in mk.get("controlPoints", []) or []:
            label = str(cp.get("label", ""))
            if cp.get("positionStatus", "defined") not in ("defined", "preview"):
                continue
            parsed = parse_point_label(label)
            if parsed is None:
                raise LevelsError(f"unknown control point label {label!r} (expected e.g. 'L4' or "
                                  f"'L4-AS'/'L4-PS'/'L4-PI'/'L4-AI')", path)
            pos = np.asarray(cp.get("position"), dtype=np.float64)
            if pos.shape != (3,) or not np.all(np.isfinite(pos)):
                raise LevelsError(f"control point {label!r} has no valid position", path)
            level, corner = parsed
            key = "c" if corner is None else corner
            slot = pts.setdefault(level, {})
            if key in slot:
                dup.add(level)
            slot[key] = pos * flip
    levels, issues = {}, []
    for name in LEVEL_NAMES:
        if name not in pts:
            issues.append(f"{name}: not in markups")
            continue
        if name in dup:
            issues.append(f"{name}: duplicate label in markups; skipped")
            continue
        slot = pts[name]
        corners_given = [k for k in range(4) if k in slot]
        corners = None
        if len(corners_given) == 4:
            corners = np.stack([slot[k] for k in range(4)])
        elif corners_given:
            issues.append(f"{name}: only {len(corners_given)} of 4 corners; corners ignored")
        if "c" in slot:
            centroid = slot["c"]
        elif corners is not None:
            centroid = corners.mean(axis=0)
        else:
            issues.append(f"{name}: no centre and incomplete corners; skipped")
            continue
        levels[name] = Level(name, centroid, corners)
    return LevelSet(levels, issues, f"markups:{os.path.basename(path)}")


def to_markups_dict(levels: LevelSet, coordinate_system: str = "LPS", corners: bool = True) -> dict:
    """A Slicer markups (.mrk.json) document holding the levels' centres (and corners)."""
    flip = np.array([-1.0, -1.0, 1.0]) if coordinate_system.upper() == "RAS" else np.ones(3)
    cps = []
    for lev in levels:
        items = [(lev.name, lev.centroid)]
        if corners and lev.corners is not None:
            items += [(f"{lev.name}-{s}", c) for s, c in zip(("AS", "PS", "PI", "AI"), lev.corners)]
        for label, p in items:
            cps.append({"id": str(len(cps) + 1), "label": label, "position": [float(v) for v in p * flip],
                        "positionStatus": "defined"})
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": coordinate_system.upper(),
                     "coordinateUnits": "mm", "controlPoints": cps}],
    }


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

    from .errors import LevelsError

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
    from .errors import ConfigError

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
    from .errors import LevelsError
    from .io import Scan

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
    from .errors import LevelsError
    from .io import Scan, read_image

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


# --------------------------------------------------------------------------------------------
# Source 4: SpineNet detections
# --------------------------------------------------------------------------------------------

def from_spinenet(vert_dicts, scan, where: str = "spinenet") -> LevelSet:
    """Levels from SpineNet's detection output (a list of ``vert_dicts``).

    Each entry: ``predicted_label`` ('L4'...), ``slice_nos`` (sagittal slice indices),
    ``average_polygon`` (4 points (x, y) = (column, row) in pixels).  SpineNet is given the
    scan as ``scan.array.transpose(1, 2, 0)`` (height x width x slices), so its pixel and slice
    indices are this scan's (i, j, k).  The mid slice is the mean of ``slice_nos``; the
    centroid is the polygon's centre on that slice.  Labels outside T12..S1 are ignored
    (SpineNet also reports T11, L6...); duplicated labels are flagged and skipped.
    """
    from .errors import LevelsError

    if isinstance(vert_dicts, dict):
        vert_dicts = vert_dicts.get("vert_dicts", vert_dicts.get("detections"))
    if not isinstance(vert_dicts, list):
        raise LevelsError("expected a list of SpineNet vert_dicts", where)
    seen: dict[str, list] = {}
    issues = []
    for vd in vert_dicts:
        try:
            label = str(vd["predicted_label"]).upper()
            poly = np.asarray(vd["average_polygon"], dtype=np.float64).reshape(4, 2)
            slices = [int(s) for s in vd["slice_nos"]]
        except (KeyError, TypeError, ValueError) as e:
            raise LevelsError(f"malformed vert_dict ({type(e).__name__}: {e})", where) from e
        if not slices:
            raise LevelsError(f"{label}: empty slice_nos", where)
        seen.setdefault(label, []).append((poly, slices, float(vd.get("confidence", 1.0))))
    out = {}
    for name in LEVEL_NAMES:
        if name not in seen:
            issues.append(f"{name}: not detected")
            continue
        if len(seen[name]) > 1:
            issues.append(f"{name}: detected {len(seen[name])} times; skipped")
            continue
        poly, slices, conf = seen[name][0]
        kmid = float(np.mean(slices))
        ijk = np.column_stack([poly[:, 0], poly[:, 1], np.full(4, kmid)])
        corners = order_corners(scan.index_to_lps(ijk))
        centroid = corners.mean(axis=0)
        out[name] = Level(name, centroid, corners, (min(slices), max(slices)), int(np.floor(kmid + 0.5)), conf)
    return LevelSet(out, issues, f"spinenet:{os.path.basename(str(where))}")


def load_spinenet_json(path, scan) -> LevelSet:
    return from_spinenet(_load_json(path), scan, where=os.fspath(path))
