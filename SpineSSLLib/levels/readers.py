"""Level files: synthetic ground-truth / saved level-set JSON, Slicer markups (``.mrk.json``) and
SpineNet detections."""

from __future__ import annotations

import os

import numpy as np

from .. import LEVEL_NAMES
from .core import Level, LevelSet
from .geometry import order_corners

# --------------------------------------------------------------------------------------------
# Source 1: synthetic ground-truth JSON
# --------------------------------------------------------------------------------------------

def _load_json(path) -> dict:
    import json

    from ..errors import LevelsError

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
    from ..errors import LevelsError

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
    from ..errors import LevelsError

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
    from ..errors import LevelsError

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
