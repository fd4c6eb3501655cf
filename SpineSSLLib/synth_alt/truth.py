"""Ground-truth geometry of a rendered held-out scan.

Per truth level (T12..S1): the centroid of the implicit body (dense sampling of its inside in
local coordinates; the sacral S1 segment in arc coordinates with the arc's area element), the
corner points of the body's mid-sagittal outline (anterior-superior, posterior-superior,
posterior-inferior, anterior-inferior: the wall positions at mid height combined with the
endplate heights next to each wall), the slices its label occupies and the slice of its
centroid.  A level is in the truth when its centroid lies inside the image and its label is in
the label map; the others are listed as outside the field of view.
"""

from __future__ import annotations

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES
from ..synth.labels import vertebra_label
from .shapes import Spine, sacrum_field, vb_field, vb_params
from .subject import GRADED_OFFSET, MOBILE, Visit


def _corners_2d(a_coord, b_coord, inside, depth):
    """Corner points (a, b) of a 2D section: a = AP (posterior +), b = along the spine
    (superior +).  Returns [(a_ant, b_sup_ant), (a_post, b_sup_post), (a_post, b_inf_post),
    (a_ant, b_inf_ant)]."""
    A, B = a_coord[inside], b_coord[inside]
    bmid = 0.5 * (B.max() + B.min())
    half = 0.5 * (B.max() - B.min())
    band = np.abs(B - bmid) < 0.3 * half
    a_ant, a_post = A[band].min(), A[band].max()
    ant = A <= a_ant + 0.15 * depth
    post = A >= a_post - 0.15 * depth
    return [(a_ant, B[ant].max()), (a_post, B[post].max()), (a_post, B[post].min()), (a_ant, B[ant].min())]


def vb_geometry(spine: Spine, va: Visit, i: int):
    """(centroid, 4 corners) of mobile vertebra i in body coordinates."""
    p = vb_params(va, i)
    fr = spine.frames[i]
    a, b, c = p["a"], p["b"], p["c"]
    u = np.arange(-a - p["osteo"] - 4, a + 4, 1.4, dtype=np.float32)
    v = np.arange(-1.5 * b, 1.5 * b, 1.0, dtype=np.float32)
    w = np.arange(-c - 3, c + 3, 1.6, dtype=np.float32)
    U, V, W = np.meshgrid(u, v, w, indexing="ij")
    inside = vb_field(p, U, V, W)[1] > 0
    cen = fr.to_body(float(U[inside].mean()), float(V[inside].mean()), float(W[inside].mean()))
    u2 = np.arange(-a - p["osteo"] - 4, a + 4, 0.35, dtype=np.float32)
    v2 = np.arange(-1.5 * b, 1.5 * b, 0.35, dtype=np.float32)
    U2, V2 = np.meshgrid(u2, v2, indexing="ij")
    W2 = np.full_like(U2, float(W[inside].mean()))
    ins2 = vb_field(p, U2, V2, W2)[1] > 0
    corners = [fr.to_body(cu, cv, float(W2[0, 0])) for cu, cv in _corners_2d(U2, V2, ins2, 2 * a)]
    return cen, np.array(corners)


def s1_geometry(spine: Spine, va: Visit):
    """(centroid, 4 corners) of the S1 segment of the sacrum in body coordinates."""
    sac = va.sacrum
    k, th0 = spine.kappa_s, np.deg2rad(va.spine["ss"])
    x0 = float(spine.x[np.searchsorted(spine.s, 0.0)])
    cy, cz = -np.cos(th0) / k, -np.sin(th0) / k

    def body(s, n, xr):
        ang = th0 + k * s
        rad = 1 / k + n
        return np.stack([x0 + xr, cy + rad * np.cos(ang), cz + rad * np.sin(ang)], -1)

    a = sac["a"] + sac["promontory"] + 4
    s = np.arange(-sac["len_s1"], 3, 0.8, dtype=np.float32)
    n = np.arange(-a, sac["a"] + 3, 0.8, dtype=np.float32)
    xr = np.arange(-sac["c"] - 2, sac["c"] + 2, 2.0, dtype=np.float32)
    Sg, Ng, Xg = np.meshgrid(s, n, xr, indexing="ij")
    inside = sacrum_field(va, Sg, Ng, Xg)[1] > 0
    wgt = (1 + k * Ng[inside])
    pts = body(Sg[inside], Ng[inside], Xg[inside])
    cen = (pts * wgt[:, None]).sum(0) / wgt.sum()
    s2 = np.arange(-sac["len_s1"], 3, 0.35, dtype=np.float32)
    n2 = np.arange(-a, sac["a"] + 3, 0.35, dtype=np.float32)
    S2, N2 = np.meshgrid(s2, n2, indexing="ij")
    ins2 = sacrum_field(va, S2, N2, np.zeros_like(S2))[1] > 0
    corners = [body(cs, cn, 0.0) for cn, cs in _corners_2d(N2, S2, ins2, 2 * sac["a"])]
    return cen, np.array(corners)


def levels(spine: Spine, va: Visit, g, labels: np.ndarray) -> tuple[dict, dict, list, list]:
    """Truth levels (inside the image), disc centroids, levels outside, vertebrae visible."""
    inv = np.linalg.inv(g.affine)
    K, Nj, Ni = labels.shape
    present = set(np.unique(labels).tolist())
    out, outside = {}, []
    for name in LEVEL_NAMES:
        cen_b, cor_b = s1_geometry(spine, va) if name == "S1" else vb_geometry(spine, va, MOBILE.index(name))
        c = g.to_lps(cen_b)
        i, j, k = inv[:3, :3] @ c + inv[:3, 3]
        lab = vertebra_label(name)
        if not (0 <= i <= Ni - 1 and 0 <= j <= Nj - 1 and -0.5 <= k <= K - 0.5 and lab in present):
            outside.append(name)
            continue
        shown = np.nonzero((labels == lab).any(axis=(1, 2)))[0]
        mid = int(np.clip(round(float(k)), 0, K - 1))
        out[name] = dict(centroid=c, corners=np.array([g.to_lps(q) for q in cor_b]),
                         slice_range=(int(shown.min()), int(shown.max())), mid_slice=mid)
    discs = {d: g.to_lps(spine.disc_frames[GRADED_OFFSET + n].centre) for n, d in enumerate(DISC_NAMES)}
    visible = [nm for nm in MOBILE + ("S1",) if vertebra_label(nm) in present]
    return out, discs, outside, visible
