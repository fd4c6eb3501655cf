"""Label maps labelled the way TotalSegmentator / TotalSpineSeg label bones, for the phantom of
``extract_phantom`` (whose vertebral bodies are the ground truth), and relabelling of the
synthetic cohort's SPIDER-numbered label maps into those tools' numberings.

``whole_bone_labels`` paints, in LPS space on any grid: every vertebra as body + pedicles +
posterior arch (laminae and spinous process behind a 14 mm spinal canal) + transverse
processes, T11 above T12, the sacrum as one label (the truth S1 body, S2 and S3 fused below it
with increasing tilt, alae beyond the body's sides, a median crest behind the sacral canal),
optionally discs and the spinal canal.  Values come from ``values`` (structure -> label value);
structures without a value are not painted."""

from __future__ import annotations

import numpy as np
from extract_phantom import DISC_HEIGHT, VB_HEIGHT, VB_WIDTH

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES

# numbering of the two tools (facts from their class maps; see SpineSSLLib/labelmaps.py)
TOTALSEG_MR = {"sacrum": 1, "L5": 2, "L4": 3, "L3": 4, "L2": 5, "L1": 6, "T12": 7, "T11": 8, "T10": 9}
TOTALSPINESEG = {"canal": 2, "T10": 30, "T11": 31, "T12": 32, "L1": 41, "L2": 42, "L3": 43, "L4": 44, "L5": 45,
                 "sacrum": 50, "T10-T11": 81, "T11-T12": 82, "T12-L1": 91, "L1-L2": 92, "L2-L3": 93, "L3-L4": 94,
                 "L4-L5": 95, "L5-S1": 100}
# the synthetic cohort's SPIDER numbering (SpineSSLLib/synth/labels.py): L5 = 1 ... T10 = 8,
# S1 segment = 26, discs L5-S1 = 201 ... T10-T11 = 208, canal = 100
SYNTH_SPIDER = {"L5": 1, "L4": 2, "L3": 3, "L2": 4, "L1": 5, "T12": 6, "T11": 7, "T10": 8, "S1": 26,
                "L5-S1": 201, "L4-L5": 202, "L3-L4": 203, "L2-L3": 204, "L1-L2": 205, "T12-L1": 206,
                "T11-T12": 207, "T10-T11": 208, "canal": 100}


def relabel_synthetic(lab: np.ndarray, tool: dict) -> np.ndarray:
    """A synthetic (SPIDER-numbered) label map in a tool's numbering: the S1 segment becomes the
    tool's sacrum, structures the tool does not label become 0."""
    lut = np.zeros(int(lab.max()) + 1, dtype=np.int32)
    for name, v in SYNTH_SPIDER.items():
        key = "sacrum" if name == "S1" else name
        if v < len(lut):
            lut[v] = tool.get(key, 0)
    return lut[lab.astype(np.int64)]


def _points(affine, shape) -> np.ndarray:
    K, J, I = shape
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _axes(tilt_deg: float):
    t = np.radians(tilt_deg)
    return np.array([0.0, np.sin(t), -np.cos(t)]), np.array([0.0, np.cos(t), np.sin(t)])  # down, post


def whole_bone_labels(affine, shape, levels, values: dict, tilt_deg: float = 8.0, posterior: bool = True,
                      sacrum_below: bool = True) -> np.ndarray:
    """Label map (K, J, I) of the phantom's bones as real tools label them (see module doc)."""
    p = _points(affine, shape)
    lab = np.zeros(len(p), np.int32)
    down, post = _axes(tilt_deg)
    x = p[:, 0]

    cache: dict = {}

    def box(centre, a0, a1, b0, b1, x0, x1, value, dn=down, ps=post, absx=False):
        key = (tuple(centre), tuple(dn))
        if key not in cache:  # coordinates in the structure's frame, shared by its boxes
            d = p - centre
            cache.clear()
            cache[key] = (d @ ps, d @ dn, x - centre[0])
        a, b, xx = cache[key]
        xx = np.abs(xx) if absx else xx
        m = (a >= a0) & (a <= a1) & (b >= b0) & (b <= b1) & (xx >= x0) & (xx <= x1)
        lab[m] = value

    w, h, dd = VB_WIDTH / 2, VB_HEIGHT / 2, 20.0  # body half-sizes: AP, SI, LR
    step = VB_HEIGHT + DISC_HEIGHT
    centres = {n: levels[n].centroid for n in levels.names}
    centres["T11"] = centres["T12"] - step * down
    for name in ("T11",) + LEVEL_NAMES[:-1]:
        v = values.get(name)
        if not v or name not in centres:
            continue
        c = centres[name]
        box(c, -w, w, -h, h, -dd, dd, v)
        if posterior:
            box(c, w + 0.5, w + 8, -h + 3, h - 9, 10, 17, v, absx=True)  # pedicles
            box(c, w + 8, w + 18, -h + 2, h - 6, 10, 17, v, absx=True)  # laminae beside the canal
            box(c, w + 14, w + 18, -h + 2, h - 6, 0, 17, v, absx=True)  # laminae behind the canal
            box(c, w + 18, w + 40, -8, 6, 0, 3, v, absx=True)  # spinous process
            box(c, w + 2, w + 8, -4, 4, 17, 35, v, absx=True)  # transverse processes
    sac = values.get("sacrum")
    if sac and "S1" in centres:
        c1 = centres["S1"]
        box(c1, -w, w, -h, h, -dd, dd, sac)  # the S1 body (the truth level)
        if posterior:
            box(c1, -4, w + 6, -h, 3, 20, 50, sac, absx=True)  # alae
            box(c1, w + 14, w + 22, -h + 2, h, 0, 12, sac, absx=True)  # crest behind the sacral canal
        if sacrum_below:
            bottom = c1 + h * down
            for k, (scale, tilt) in enumerate(((0.85, 28.0), (0.65, 48.0))):
                dn2, ps2 = _axes(tilt)
                hh = VB_HEIGHT * scale / 2
                c = bottom + (hh - 1.0) * dn2  # fused: overlaps the segment above by 1 mm
                box(c, -w * scale, w * scale, -hh, hh, -dd * scale, dd * scale, sac, dn=dn2, ps=ps2)
                if posterior:
                    box(c, w * scale + 12, w * scale + 18, -hh, hh, 0, 8, sac, dn=dn2, ps=ps2, absx=True)
                bottom = c + hh * dn2
    for disc in ("T11-T12",) + DISC_NAMES:
        v = values.get(disc)
        up, lo = disc.split("-")
        if not v or up not in centres or lo not in centres:
            continue
        mid = 0.5 * (centres[up] + centres[lo])
        box(mid, -w + 1, w - 1, -DISC_HEIGHT / 2 + 0.5, DISC_HEIGHT / 2 - 0.5, -dd, dd, v)
    if values.get("canal"):
        top = centres["T11"] - h * down
        length = float((centres["S1"] - top) @ down) + h
        d = p - top
        a, b = d @ post, d @ down
        m = (a > w + 0.5) & (a < w + 14) & (np.abs(x) < 10) & (b >= 0) & (b <= length)
        lab[m & (lab == 0)] = values["canal"]
    return lab.reshape(shape).astype(np.int32)
