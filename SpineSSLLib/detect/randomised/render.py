"""Tissue label volume of a random column in a random slice stack (two sub-slices per slice).

Painting order per sub-slice: surroundings (air, fat, muscle, viscera with fluid / gas / fat
blobs, vessels, canal with CSF, cord or cauda, epidural fat, ligaments) in *column coordinates*
(arc length along the centre line of the bodies, antero-posterior offset from it, left-right
offset), then posterior elements, discs and vertebral bodies in their own local frames inside
pixel windows.  The body instance map (``NAMES`` index + 1, 0 elsewhere) is where a body fills
both sub-slices (most of the slab), as SpineSSL's truth slice ranges are.
"""

from __future__ import annotations

import numpy as np

from .anatomy import I_S1, I_T12, NAMES, Body, Column, Disc
from .stack import Stack

TISSUES = ("air", "fat", "muscle", "viscera", "fluid", "gas", "vessel", "csf", "neural", "epidural_fat",
           "ligament", "posterior_bone", "cortex", "annulus", "nucleus", "marrow", "marrow_alt", "sacral",
           "lesion")
T = {n: i for i, n in enumerate(TISSUES)}
SUB = (-0.25, 0.25)  # sub-slice positions, fractions of the slice thickness


def _smoothmin3(a, b, c, k):
    m = np.minimum(np.minimum(a, b), c)
    return m - k * np.log(np.exp(-(a - m) / k) + np.exp(-(b - m) / k) + np.exp(-(c - m) / k))


class _Plane:
    """Body-frame points of one sub-slice: P(j, i) = p0 + j * dj + i * di (label pixels)."""

    def __init__(self, stack: Stack, k: int, sub: float):
        e_i, e_j, e_k = stack.rotation.T
        self.e_k = e_k
        self.p0 = stack.origin + (k * stack.between + sub * stack.thickness) * e_k
        self.di, self.dj = e_i * stack.label_mm, e_j * stack.label_mm
        self.J, self.I = stack.shape[1:]
        self.mm = stack.label_mm

    def window(self, centre, radius_mm):
        rel = np.asarray(centre) - self.p0
        ci, cj = rel @ self.di / self.mm**2, rel @ self.dj / self.mm**2
        r = radius_mm / self.mm + 1
        i0, i1 = max(0, int(np.floor(ci - r))), min(self.I, int(np.ceil(ci + r)) + 1)
        j0, j1 = max(0, int(np.floor(cj - r))), min(self.J, int(np.ceil(cj + r)) + 1)
        if i0 >= i1 or j0 >= j1:
            return None
        return j0, j1, i0, i1

    def local(self, win, centre, axes):
        """Coordinates along ``axes`` (list of unit vectors) relative to ``centre`` on a window."""
        j0, j1, i0, i1 = win
        jj = np.arange(j0, j1, dtype=np.float32)[:, None]
        ii = np.arange(i0, i1, dtype=np.float32)[None, :]
        base = self.p0 - np.asarray(centre)
        return [np.float32(base @ e) + jj * np.float32(self.dj @ e) + ii * np.float32(self.di @ e) for e in axes]

    def offset(self, centre) -> float:
        return float((np.asarray(centre) - self.p0) @ self.e_k)


# ------------------------------------------------------------------------------ surroundings

def _column_coords(col: Column, plane: _Plane, stride: int = 4):
    """Per pixel: arc length s (mm from the top, along the body centres in the y-z plane), AP
    offset a (posterior +), and the interpolated half depth, half width and x of the column."""
    b = col.bodies
    pts = np.array([x.centre[1:] for x in b])
    top = pts[0] + 120.0 * b[0].e_v[1:]
    bottom = pts[-1] - 80.0 * b[-1].e_v[1:]
    P = np.vstack([top, pts, bottom])
    seg = np.diff(P, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    s_nodes = np.concatenate([[0.0], np.cumsum(seg_len)])
    d2 = np.array([x.depth / 2 for x in b])
    w2 = np.array([x.width / 2 for x in b])
    xs = np.array([x.centre[0] for x in b])
    d2n, w2n, xn = (np.concatenate([[v[0]], v, [v[-1]]]) for v in (d2, w2, xs))
    J, I = plane.J, plane.I
    jc, ic = np.arange(0, J + stride, stride), np.arange(0, I + stride, stride)
    Q = plane.p0[None, None, 1:] + jc[:, None, None] * plane.dj[1:] + ic[None, :, None] * plane.di[1:]
    best = np.full(Q.shape[:2], np.inf)
    s = np.zeros(Q.shape[:2])
    a = np.zeros(Q.shape[:2])
    for n in range(len(seg)):
        v = seg[n] / seg_len[n]
        rel = Q - P[n]
        t = np.clip(rel @ v, 0.0, seg_len[n])
        perp = rel - t[..., None] * v
        dist = np.linalg.norm(perp, axis=-1)
        nrm = np.array([-v[1], v[0]])  # (y, z): posterior normal of a downward segment
        if nrm[0] < 0:
            nrm = -nrm
        upd = dist < best
        best = np.where(upd, dist, best)
        s = np.where(upd, s_nodes[n] + t, s)
        a = np.where(upd, perp @ nrm, a)
    from scipy.ndimage import map_coordinates

    jf = np.arange(J, dtype=np.float32) / stride
    if_ = np.arange(I, dtype=np.float32) / stride
    grid = np.meshgrid(jf, if_, indexing="ij")
    up = lambda m: map_coordinates(m, grid, order=1, mode="nearest").astype(np.float32)
    s, a = up(s), up(a)
    s_body = s_nodes[1:-1]
    return s, a, np.interp(s, s_nodes, d2n), np.interp(s, s_nodes, w2n), np.interp(s, s_nodes, xn), s_body


def _surroundings(col: Column, plane: _Plane, rng_blobs) -> np.ndarray:
    sp = col.soft
    s, a, d2, w2, xc, s_body = _column_coords(col, plane)
    J, I = plane.J, plane.I
    X = (plane.p0[0] + np.arange(J)[:, None] * plane.dj[0] + np.arange(I)[None, :] * plane.di[0]).astype(np.float32)
    l = X - xc
    names = [b.name for b in col.bodies]
    s_of = lambda n: s_body[names.index(n)] if n in names else (s_body[-1] if NAMES.index(n) > I_S1 else s_body[0])
    s_s1, s_t12 = s_of("S1"), s_of("T12")
    lab = np.full((J, I), T["air"], dtype=np.uint8)
    canal0 = d2 + 0.5
    sacral = s > s_s1 + 8.0
    cdepth = np.where(sacral, 0.5 * sp["canal_depth"], sp["canal_depth"]) * np.where(s > s_of("S4"), 0.0, 1.0)
    canal1 = canal0 + cdepth
    skin_post = canal1 + 8.0 + sp["muscle_post"] + sp["fat_post"]
    skin_ant = -(d2 + sp["prevertebral"] + sp["abdomen"] + sp["fat_ant"])
    body = (a < skin_post) & (a > skin_ant) & (np.abs(l) < 170)
    lab[body] = T["fat"]
    lab[body & (a > canal1) & (a < skin_post - sp["fat_post"])] = T["muscle"]
    visc = body & (a < -(d2 + sp["prevertebral"])) & (a > skin_ant + sp["fat_ant"])
    lab[visc] = T["viscera"]
    lab[body & (a >= -(d2 + sp["prevertebral"])) & (a < canal1)] = T["muscle"]  # paravertebral
    lab[body & (a >= -(d2 + sp["prevertebral"])) & (a < -d2 + 0.5) & (np.abs(l) < w2)] = T["fat"]
    psoas = (np.abs(np.abs(l) - sp["psoas_x"]) < sp["psoas_half"] * np.clip((s - s_t12) / 60.0, 0.2, 1.0)) & (
        a > -d2 - 8) & (a < d2 + 5) & (s > s_t12) & (s < s_s1)
    lab[body & psoas] = T["muscle"]
    # blobs in the abdomen / pelvis: fluid, gas, fat, bowel of another look (random sizes)
    for kind, cy, cz, r in rng_blobs:
        m = visc & ((a - cy) ** 2 + (s - cz) ** 2 + (l - 0.3 * cy) ** 2 < r**2)
        lab[m] = kind
    if sp["bladder"] is not None:
        ay, r = sp["bladder"]
        lab[visc & ((a + d2 + ay + r) ** 2 + (s - s_s1 - 70.0) ** 2 + l**2 < r**2)] = T["fluid"]
    # vessels: aorta and IVC in front of the column, iliac vessels diverging below the bifurcation
    s_bif = s_of(NAMES[sp["bifurcation"]])
    ac = -(d2 + sp["aorta_r"] + 1.0)
    lat = np.where(s > s_bif, 0.5 * (s - s_bif), 0.0)
    for x0, r in ((sp["aorta_x"], sp["aorta_r"]), (sp["ivc_x"], sp["ivc_r"])):
        lc = x0 + np.sign(x0) * lat
        lab[body & ((a - ac) ** 2 + (l - lc) ** 2 < r**2) & (s < s_s1 + 40)] = T["vessel"]
    # ligaments along the bodies (ALL, PLL) and the canal
    lg = sp["ligament"]
    lab[body & (a > -d2 - lg) & (a <= -d2 + 0.3) & (np.abs(l) < 0.7 * w2) & (s < s_s1)] = T["ligament"]
    canal = body & (a > canal0) & (a < canal1) & (np.abs(l) < sp["canal_half_width"])
    thecal = canal & (s < s_of("S2"))
    lab[canal] = T["epidural_fat"]
    lab[thecal & (a < canal1 - sp["epidural_fat"])] = T["csf"]
    mid = (canal0 + canal1 - sp["epidural_fat"]) / 2
    s_conus = s_of(NAMES[sp["conus"]])
    cord = thecal & (s < s_conus) & ((a - mid) ** 2 + l**2 < 4.5**2)
    cauda = thecal & (s >= s_conus) & (np.abs(l) < 6.0) & (np.abs(a - mid - 1.5) < 2.5) & (
        np.sin(l * 1.7 + s * 0.05) > 0.2)
    lab[cord | cauda] = T["neural"]
    lab[canal & (a < canal0 + lg) & (s < s_s1)] = T["ligament"]
    lab[canal & (a > canal1 - lg)] = T["ligament"]
    lab[body & (a > canal1) & (a < canal1 + sp["spinous_len"]) & (np.abs(l) < 1.5) & (s < s_s1)] = T["ligament"]
    return lab


def blob_list(col: Column):
    """Random abdominal / pelvic blobs (tissue, AP offset, arc length, radius), per column."""
    r = np.random.default_rng(col.soft["blob_seed"])
    out = []
    for _ in range(col.soft["blobs"]):
        kind = T[str(r.choice(["fluid", "gas", "fat", "muscle", "viscera"]))]
        out.append((kind, -r.uniform(40, 200), r.uniform(0, 450), r.uniform(8, 35)))
    return out


# -------------------------------------------------------------------------- bony structures

def _posterior(col: Column, body: Body, plane: _Plane, lab: np.ndarray) -> None:
    sp = col.soft
    i = body.index
    if i > NAMES.index("S3"):
        return
    d2, h = body.depth / 2, body.height
    sacral = i >= I_S1
    cd = sp["canal_depth"] * (0.5 if i > I_S1 else 1.0)
    u1 = d2 + 0.5 + cd
    chw = sp["canal_half_width"]
    L = sp["spinous_len"] * (0.4 if sacral else 1.0)
    slope = sp["spinous_slope_thor"] if i < I_T12 else (sp["spinous_slope_lumb"] if not sacral else 0.0)
    if abs(plane.offset(body.centre)) > chw + sp["pedicle"] + 8:
        return
    reach = u1 + L + 6
    win = plane.window(body.centre + (reach / 2) * body.e_u - 0.5 * slope * L * body.e_v,
                       np.hypot(reach / 2 + d2, h / 2 + slope * L + 12))
    if win is None:
        return
    u, v, w = plane.local(win, body.centre, [body.e_u, body.e_v, body.e_w])
    aw = np.abs(w)
    ped = (u > d2 - 3) & (u < u1 + 2) & (aw > chw) & (aw < chw + sp["pedicle"]) & (v > -0.1 * h) & (v < 0.42 * h)
    lam = (u > u1) & (u < u1 + sp["lamina"]) & (aw < chw + sp["pedicle"]) & (v > -0.45 * h - 4) & (v < 0.3 * h)
    vc = -0.1 * h - slope * (u - u1)
    frac = np.clip((u - u1) / L, 0, 1)
    spin = (u > u1) & (u < u1 + L) & (aw < 4.0 - 1.5 * frac) & (np.abs(v - vc) < sp["spinous_half"] * (1 - 0.4 * frac))
    facet = (aw > chw - 2) & (aw < chw + sp["pedicle"] + 4) & (u > u1 - 6) & (u < u1 + 6) & (v > -0.5 * h - 6) & (v < 0.5 * h + 4)
    m = ped | lam | spin
    if not sacral:
        m |= facet
    if i < I_S1 and i <= I_T12:  # rib heads
        m |= (u - 0.1 * d2) ** 2 + (aw - body.width / 2 - 6) ** 2 + (v - 0.3 * h) ** 2 < 36
    j0, j1, i0, i1 = win
    sub = lab[j0:j1, i0:i1]
    sub[m] = T["posterior_bone"]


def _disc(col: Column, disc: Disc, plane: _Plane, lab: np.ndarray, sacral_tissue: int) -> None:
    d2, w2 = disc.depth / 2, disc.width / 2
    if abs(plane.offset(disc.centre)) > w2 + 2:
        return
    win = plane.window(disc.centre, np.hypot(d2 + disc.bulge + 3, disc.height / 2 + 6))
    if win is None:
        return
    u, v, w = plane.local(win, disc.centre, [disc.e_u, disc.e_v, np.array([1.0, 0.0, 0.0])])
    dd = np.where(u > 0, d2 + disc.bulge * np.exp(-(w / (0.5 * w2)) ** 2), d2)
    ring = (np.abs(u / dd) ** 2.5 + np.abs(w / w2) ** 2.5) ** 0.4
    m = (ring < 1) & (np.abs(v) < disc.height / 2 + 4.0)
    j0, j1, i0, i1 = win
    sub = lab[j0:j1, i0:i1]
    if disc.kind == "bone":
        sub[m] = sacral_tissue
        return
    sub[m] = T["annulus"]
    if disc.nucleus > 0.08:
        f = disc.nucleus
        nu = np.sqrt(((u - 0.06 * disc.depth) / (0.33 * disc.depth * f)) ** 2 + (w / (0.33 * disc.width * f)) ** 2
                     + (v / max(disc.height / 2 * (0.5 + 0.4 * f), 0.5)) ** 2)
        sub[m & (nu < 1)] = T["nucleus"]


def _body(col: Column, body: Body, plane: _Plane, lab: np.ndarray, inst: np.ndarray, marrow: int) -> None:
    d2, w2, h = body.depth / 2, body.width / 2, body.height
    if abs(plane.offset(body.centre)) > w2 + 1:
        return
    win = plane.window(body.centre, np.hypot(d2 + body.osteophyte + 2, h / 2 + abs(body.wedge) / 2 + 3))
    if win is None:
        return
    u, v, w = plane.local(win, body.centre, [body.e_u, body.e_v, body.e_w])
    wn = np.clip(np.abs(w) / w2, 0, 1)
    rho2 = (u / d2) ** 2 + wn**2
    bowl = np.clip(1 - rho2, 0, None)
    hu = h - body.wedge * u / body.depth
    sup = hu / 2 - body.conc_sup * bowl
    inf = -hu / 2 + body.conc_inf * bowl
    near = np.exp(-(np.minimum(np.abs(v - hu / 2), np.abs(v + hu / 2)) / 2.0) ** 2)
    dant = d2 + body.osteophyte * near
    u_eff = u + body.post_conc * (1 - wn**2)
    un = np.where(u < 0, u / dant, u_eff / d2)
    ring = (np.abs(un) ** body.power + np.abs(w / w2) ** body.power) ** (1 / body.power)
    sd = _smoothmin3(sup - v, v - inf, (1 - ring) * d2, max(body.corner / 3, 0.2))
    inside = sd > 0
    if not inside.any():
        return
    j0, j1, i0, i1 = win
    sub = lab[j0:j1, i0:i1]
    sub[inside] = marrow
    cx = col.soft["cortex"]
    if cx > 0.3:
        sub[inside & (sd < cx)] = T["cortex"]
    for (lu, lv, lw, r) in body.lesions:
        sub[inside & ((u - lu) ** 2 + (v - lv) ** 2 + (w - lw) ** 2 < r**2) & (sd > cx)] = T["lesion"]
    isub = inst[j0:j1, i0:i1]
    isub[inside] = body.index + 1


def render_labels(col: Column, stack: Stack, sacral_as_marrow: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tissue (K, 2, J, I) uint8 for the two sub-slices, body instance (K, J, I) uint8)."""
    K, J, I = stack.shape
    tissue = np.zeros((K, len(SUB), J, I), dtype=np.uint8)
    inst = np.zeros((K, J, I), dtype=np.uint8)
    blobs = blob_list(col)
    sacral = T["marrow"] if sacral_as_marrow else T["sacral"]
    for k in range(K):
        insts = []
        for si, sub in enumerate(SUB):
            plane = _Plane(stack, k, sub)
            lab = _surroundings(col, plane, blobs)
            for b in col.bodies:
                _posterior(col, b, plane, lab)
            for d in col.discs:
                _disc(col, d, plane, lab, sacral)
            ins = np.zeros((J, I), dtype=np.uint8)
            for b in col.bodies:
                m = sacral if b.index >= I_S1 else (T["marrow_alt"] if b.marrow_alt else T["marrow"])
                _body(col, b, plane, lab, ins, m)
            tissue[k, si] = lab
            insts.append(ins)
        inst[k] = np.where(insts[0] == insts[1], insts[0], 0)
    return tissue, inst
