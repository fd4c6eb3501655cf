"""Render one visit of one subject into a sagittal T2-weighted volume (vectorised numpy).

Pipeline per scan: build the spine chain (T10 ... S3, lordosis + posture, scoliosis) in the body
frame; place the slice stack (FOV, obliquity, slice order) and the patient (rotation, shift) in
LPS; for every slice and three sub-slice positions across the slab (partial volume) compute the
body-frame coordinates of the pixels, paint the surroundings (fat, muscle, canal/CSF, cauda,
posterior elements, vessels, bowel), then the discs and the vertebral bodies inside their
bounding windows only; average the sub-slices, apply the scanner's in-plane blur, coil bias,
Rician noise and intensity scale.  The label map comes from the central sub-slice.

Returns a ``Rendered`` with the (K, J, I) uint16 volume, the voxel->LPS affine, the label map
(SPIDER numbering, see ``labels``) and the ground-truth geometry of the 7 levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Acquisition, VisitAnatomy, _rng
from .labels import CANAL_LABEL, disc_label, vertebra_label

# Render chain: two thoracic levels above T12 and two sacral segments below S1 so that the FOV
# is filled with anatomy; only T12..S1 (indices 2..8) are ground-truth levels.
CHAIN = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1", "S2", "S3")
TRUTH_OFFSET = 2
TABLE = np.array([0.0, 30.0, 80.0])  # LPS position of the body-frame origin (L3 centre) before shifts

BASE = {"air": 0.0, "fat": 0.85, "muscle": 0.22, "csf": 1.0, "cauda": 0.38, "marrow": 0.5,
        "annulus": 0.2, "bowel": 0.35, "vessel": 0.05, "ivc": 0.3, "ligament": 0.08}


@dataclass
class Structure:
    name: str
    kind: str  # "VB" or "IVD"
    centre: np.ndarray  # body frame
    e_u: np.ndarray  # AP (posterior +)
    e_v: np.ndarray  # SI (superior +)
    e_w: np.ndarray  # LR
    depth: float
    height: float
    width: float
    params: dict

    def __post_init__(self):
        self.depth, self.height, self.width = float(self.depth), float(self.height), float(self.width)


@dataclass
class Rendered:
    array: np.ndarray  # (K, J, I) uint16
    affine: np.ndarray  # 4x4 voxel -> LPS
    labels: np.ndarray  # (K, J, I) uint16 label map
    levels: dict  # name -> dict(centroid, corners, slice_range, mid_slice)
    discs: dict  # name -> centroid LPS


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def build_chain(va: VisitAnatomy, lordosis_delta: float) -> list[Structure]:
    s = va.subject
    vb = va.vb

    def lv(key, i):  # chain index -> truth index parameter (extra levels borrow T12 / S1)
        j = min(max(i - TRUTH_OFFSET, 0), 6)
        return float(vb[key][j])

    size_extra = {0: 0.93, 1: 0.965, 9: 0.78, 10: 0.6}
    tilt_truth = np.array([-9.0, -6.0, -2.0, 3.0, 9.0, 17.0, 32.0]) * s.lordosis_scale
    delta_w = np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.15, 0.15])
    tilt_truth = tilt_truth + lordosis_delta * delta_w / delta_w.sum() * 7 * 0.5
    tilts = np.concatenate([[tilt_truth[0] - 6, tilt_truth[0] - 3], tilt_truth, [tilt_truth[-1] + 8, tilt_truth[-1] + 14]])
    n = len(CHAIN)
    h = np.array([lv("height", i) * size_extra.get(i, 1.0) for i in range(n)])
    d = np.array([lv("depth", i) * size_extra.get(i, 1.0) for i in range(n)])
    w = np.array([lv("width", i) * size_extra.get(i, 1.0) for i in range(n)])
    gaps = np.zeros(n - 1)  # gap below chain index i
    for i in range(n - 1):
        if i < TRUTH_OFFSET:
            gaps[i] = float(va.disc_height[0]) * 0.8
        elif i < TRUTH_OFFSET + 6:
            gaps[i] = float(va.disc_height[i - TRUTH_OFFSET])
        else:
            gaps[i] = 1.2  # fused sacral segments
    xs = s.scoliosis_amp * np.sin(s.scoliosis_phase + 0.55 * np.arange(n))
    # build upwards from S3
    ev = np.stack([np.zeros(n), -np.sin(np.deg2rad(tilts)), np.cos(np.deg2rad(tilts))], 1)
    eu = np.stack([np.zeros(n), np.cos(np.deg2rad(tilts)), np.sin(np.deg2rad(tilts))], 1)
    centres = np.zeros((n, 3))
    for i in range(n - 2, -1, -1):
        top = centres[i + 1] + h[i + 1] / 2 * ev[i + 1]
        ed = ev[i] + ev[i + 1]
        ed /= np.linalg.norm(ed)
        centres[i] = top + gaps[i] * ed + h[i] / 2 * ev[i]
    centres[:, 0] = xs
    centres -= centres[TRUTH_OFFSET + 3] * np.array([0, 1, 1])  # L3 centre at y = z = 0
    out = []
    ex = np.array([1.0, 0.0, 0.0])
    for i, name in enumerate(CHAIN):
        j = min(max(i - TRUTH_OFFSET, 0), 6)
        p = {k: float(v[j]) for k, v in vb.items()}
        p["osteophyte"] = float(va.osteophyte[j])
        p["truth_index"] = i - TRUTH_OFFSET if 0 <= i - TRUTH_OFFSET < 7 else None
        out.append(Structure(name, "VB", centres[i], eu[i], ev[i], ex, d[i], h[i], w[i], p))
    for i in range(n - 1):
        if i >= TRUTH_OFFSET + 6:
            continue
        a, b = out[i], out[i + 1]
        ed = a.e_v + b.e_v
        ed /= np.linalg.norm(ed)
        eu_d = np.array([0.0, ed[2], -ed[1]])
        bottom_a = a.centre - a.height / 2 * a.e_v
        top_b = b.centre + b.height / 2 * b.e_v
        di = i - TRUTH_OFFSET
        if di >= 0:
            p = dict(nucleus=float(va.nucleus_signal[di]), blur=float(va.blur[di]), a=float(va.appearance[di]),
                     cleft=float(va.subject.cleft[di]), fissure=float(va.subject.fissure[di]), disc_index=di)
        else:
            p = dict(nucleus=1.6, blur=0.7, a=0.5, cleft=0.3, fissure=0.0, disc_index=None)
        out.append(Structure(f"{a.name}-{b.name}", "IVD", (bottom_a + top_b) / 2, eu_d, ed, ex,
                             (a.depth + b.depth) / 2, float(np.linalg.norm(top_b - bottom_a)),
                             (a.width + b.width) / 2, p))
    return out


def _vb_signed(st: Structure, u, v, w, va: VisitAnatomy, side_nodes):
    """Signed inside-distance (mm, positive inside) of a vertebral body in local coordinates."""
    p = st.params
    d2, w2, h = st.depth / 2, st.width / 2, st.height
    rho2 = ((u - p["conc_centre"] * d2) / d2) ** 2 + (w / w2) ** 2
    bowl = np.clip(1 - rho2, 0, None)
    hu = h + p["wedge"] * (-u / (2 * d2))  # wedge: anterior taller when > 0
    wave = p["wave_amp"] * np.sin(2 * np.pi * u / (1.4 * d2) + p["wave_phase"])
    sup = hu / 2 - p["conc_sup"] * bowl + 0.5 * wave
    inf = -hu / 2 + p["conc_inf"] * bowl + 0.5 * np.sin(2 * np.pi * u / (1.1 * d2) + p["wave_phase"] + 1.3) * p["wave_amp"]
    for side, uf, wf, rad, dep in side_nodes:
        bump = dep * np.exp(-(((u - uf * d2) ** 2 + (w - wf * w2) ** 2) / rad**2))
        if side == 0:
            sup = sup - bump
        else:
            inf = inf + bump
    # osteophytes: anterior lips near the endplates
    near_ep = np.exp(-(np.minimum(np.abs(v - hu / 2), np.abs(v + hu / 2)) / 2.0) ** 2)
    dant = d2 + p["osteophyte"] * near_ep
    un = np.where(u < 0, u / dant, u / d2)
    ring = (np.abs(un) ** 2.5 + np.abs(w / w2) ** 2.5) ** (1 / 2.5)
    a, b, c = sup - v, v - inf, (1 - ring) * d2
    k = max(p["corner"] / 3, 0.3)
    m = np.minimum(np.minimum(a, b), c)
    return m - k * np.log(np.exp(-(a - m) / k) + np.exp(-(b - m) / k) + np.exp(-(c - m) / k)), sup, inf


def _texture(va: VisitAnatomy, ti: int, loc0, dloc_i, dloc_j, iw, jw) -> np.ndarray:
    """Marrow texture on a pixel window: a sum of plane waves in VB-local coordinates.

    The local coordinates are linear in the pixel indices (``loc0 + i * dloc_i + j * dloc_j``),
    so every wave factorises into a column term and a row term and the whole sum is one
    complex matrix product (rows x components) @ (components x columns).
    """
    s = va.subject
    m = va.texture_mix
    k = np.concatenate([s.texture_k[ti], s.renew_k[ti]])
    amp = np.concatenate([s.texture_amp[ti] * np.sqrt(1 - m), s.renew_amp[ti] * np.sqrt(m)])
    ph = np.concatenate([s.texture_phase[ti], s.renew_phase[ti]])
    coef = amp * np.exp(1j * (k @ loc0 + ph))
    EI = np.exp(1j * np.outer(k @ dloc_i, iw))  # (n, I)
    EJ = np.exp(1j * np.outer(jw, k @ dloc_j))  # (J, n)
    return np.einsum("jn,ni->ji", EJ, coef[:, None] * EI, optimize=False).real.astype(np.float32)


def _waves(k: np.ndarray, ph: np.ndarray, lin) -> np.ndarray:
    """Sum of cos(k . p + ph) over a pixel window whose points are p0 + i * ci + j * cj."""
    p0, ci, cj, iw, jw = lin
    coef = np.exp(1j * (k @ p0 + ph))
    EI = np.exp(1j * np.outer(k @ ci, iw))
    EJ = np.exp(1j * np.outer(jw, k @ cj))
    return np.einsum("jn,ni->ji", EJ, coef[:, None] * EI, optimize=False).real.astype(np.float32)


class _Scene:
    def __init__(self, va: VisitAnatomy, acq: Acquisition, seed: int):
        self.va, self.acq = va, acq
        self.structs = build_chain(va, va.lordosis_deg_delta)
        vbs = [s for s in self.structs if s.kind == "VB"]
        order = np.argsort([s.centre[2] for s in vbs])
        self.z_nodes = np.array([vbs[i].centre[2] for i in order])
        self.y_nodes = np.array([vbs[i].centre[1] for i in order])
        self.x_nodes = np.array([vbs[i].centre[0] for i in order])
        self.d_nodes = np.array([vbs[i].depth for i in order])
        self.vb_sorted = [vbs[i] for i in order]
        r = _rng(seed, 30_000_000 + va.subject.index, va.visit)
        self.bowel_k = r.normal(size=(16, 3)) * (2 * np.pi / r.uniform(6, 40, (16, 1)))
        self.bowel_ph = r.uniform(0, 2 * np.pi, 16)
        self.muscle_ph = r.uniform(0, 2 * np.pi, 3)
        g = acq.tissue_gain
        self.I = dict(BASE)
        self.I["fat"] *= g["fat"]
        self.I["csf"] *= g["csf"]
        self.I["muscle"] *= g["muscle"]
        self.I["annulus"] *= g["disc"]
        self.I["marrow"] *= g["marrow"]
        self.disc_gain = g["disc"]
        s = va.subject
        self.abd_depth = 95 + 1.3 * (va.weight - 68)
        self.fat_post = s.fat_thickness * (va.weight / s.weight)

    def background(self, x, y, z, lin):
        I = self.I
        yc = np.interp(z, self.z_nodes, self.y_nodes)
        xc = np.interp(z, self.z_nodes, self.x_nodes)
        d2 = np.interp(z, self.z_nodes, self.d_nodes) / 2
        yr, xr = y - yc, x - xc
        canal_a = d2 + 1.5
        canal_p = canal_a + self.va.subject.canal_width
        skin_post = canal_p + 55 + self.fat_post
        skin_ant = -d2 - 25 - self.abd_depth
        out = np.full(x.shape, I["air"], dtype=np.float32)
        body = (yr < skin_post) & (yr > skin_ant - 15) & (np.abs(xr) < 160)
        # abdomen: bowel texture with fat
        tex = _waves(self.bowel_k[:8], self.bowel_ph[:8], lin) / 8
        tex2 = _waves(self.bowel_k[8:] * 1.7, self.bowel_ph[8:], lin) / 8
        bowel = I["bowel"] + 0.1 + 0.35 * np.tanh(3 * tex * tex2)
        out = np.where(body, bowel, out)
        fat_ant = (yr < skin_ant + 0) & body
        out = np.where(fat_ant, I["fat"], out)
        # muscles posterior (with striations) and psoas laterally
        mus = I["muscle"] * (1 + 0.12 * np.sin(xr / 3.0 + self.muscle_ph[0]) * np.sin(z / 9.0 + self.muscle_ph[1]))
        post = (yr > canal_p) & (yr < skin_post - self.fat_post)
        out = np.where(post, mus, out)
        psoas = (yr > -d2 - 10) & (yr < d2) & (np.abs(xr) > 18) & (z < self.z_nodes[-3])
        out = np.where(psoas, mus, out)
        out = np.where((yr >= skin_post - self.fat_post) & (yr < skin_post), I["fat"], out)
        # prevertebral: aorta (left, flow void) and IVC (right)
        ao = ((xr - 14) ** 2 + (yr + d2 + 14) ** 2) < 11**2
        ivc = ((xr + 16) ** 2 + (yr + d2 + 12) ** 2) < 10**2
        out = np.where(ao & (z > self.z_nodes[3]), I["vessel"], out)
        out = np.where(ivc & (z > self.z_nodes[3]), I["ivc"], out)
        # paravertebral soft tissue right around the VB level
        soft = (yr > -d2 - 4) & (yr < canal_a) & (np.abs(xr) < 30)
        out = np.where(soft, I["muscle"] * 1.3, out)
        # posterior elements: spinous processes and laminae behind the canal, one per vertebra
        zi = np.clip(np.searchsorted(self.z_nodes, z), 1, len(self.z_nodes) - 1)
        zlo, zhi = self.z_nodes[zi - 1], self.z_nodes[zi]
        dz = np.minimum(np.abs(z - (zlo - 4)), np.abs(z - (zhi - 4)))
        # spinous processes slope downwards and taper posteriorly; dark cortex, marrow inside,
        # dark interspinous ligaments between them
        behind = yr - canal_p
        zs = z + 0.45 * np.clip(behind, 0, None)
        dzs = np.minimum(np.abs(zs - (zlo - 4)), np.abs(zs - (zhi - 4)))
        half = 8.5 - 0.08 * np.clip(behind, 0, None)
        post_el = (behind > 0) & (behind < 44) & (np.abs(xr) < 5 + 11 * (behind < 8))
        proc = post_el & (dzs < half)
        cortex = np.clip((half - dzs) / 1.2, 0, 1)
        out = np.where(post_el & ~proc & (np.abs(xr) < 4), I["ligament"] * 1.8, out)
        out = np.where(proc, I["marrow"] * 0.8 * (0.15 + 0.85 * cortex), out)
        # pedicles connect VB and posterior elements laterally
        ped = (yr > canal_a - 2) & (yr < canal_p + 2) & (np.abs(xr) > 9) & (np.abs(xr) < 20) & (dz < 7)
        out = np.where(ped, I["marrow"] * 0.9, out)
        # canal: CSF, cauda equina strands / conus, posterior ligament
        canal = (yr > canal_a) & (yr < canal_p) & (np.abs(xr) < 11)
        out = np.where(canal, I["csf"], out)
        conus = self.z_nodes[-4] + 5  # around L1 (third from the top of the chain: T10,T11,T12,...)
        cord_r = np.where(z > conus, 4.5, 1.5 + 1.0 * np.abs(np.sin(xr * 1.3 + z * 0.02)))
        cord = canal & (np.abs(xr) < cord_r) & (np.abs(yr - (canal_a + canal_p) / 2) < np.where(z > conus, 4.0, 2.5))
        out = np.where(cord, I["cauda"], out)
        lig = (yr > canal_p - 1.2) & (yr < canal_p + 0.8) & (np.abs(xr) < 11)
        out = np.where(lig, I["ligament"], out)
        lig_a = (yr > canal_a - 1.0) & (yr < canal_a) & (np.abs(xr) < 11)
        out = np.where(lig_a, I["ligament"], out)
        return out.astype(np.float32), canal

    def structure_local(self, st: Structure, x, y, z):
        c, eu, ev, ew = (list(map(float, a)) for a in (st.centre, st.e_u, st.e_v, st.e_w))
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        u = dx * eu[0] + dy * eu[1] + dz * eu[2]
        v = dx * ev[0] + dy * ev[1] + dz * ev[2]
        w = dx * ew[0] + dy * ew[1] + dz * ew[2]
        return u, v, w

    def disc(self, st: Structure, x, y, z):
        u, v, w = self.structure_local(st, x, y, z)
        p = st.params
        a = p["a"]
        bulge = 1 + 0.05 * np.clip(a - 1.5, 0, 3) * (u > 0)
        d2, w2 = st.depth / 2 * bulge, st.width / 2
        ring = (np.abs(u / d2) ** 2.5 + np.abs(w / w2) ** 2.5) ** (1 / 2.5)
        inside_r = _sigmoid((1 - ring) * st.depth / 2 / 0.5)
        slab = np.abs(v) < st.height / 2 + 4.5
        m = inside_r * slab
        nu, nv, nw = 0.3 * st.depth, max(st.height / 2 + 1.5, 1.0), 0.3 * st.width
        re = np.sqrt(((u - 0.06 * st.depth) / nu) ** 2 + (v / nv) ** 2 + (w / nw) ** 2)
        nuc = _sigmoid((1 - re) * nu / p["blur"])
        ann = self.I["annulus"]
        nucleus_I = p["nucleus"] * self.I["marrow"] * self.disc_gain
        val = ann + nuc * (nucleus_I - ann)
        cleft = 0.45 * p["cleft"] * np.clip(a - 0.3, 0, 1.2)
        val = val * (1 - cleft * np.exp(-(v / 0.7) ** 2))
        if p["fissure"] > 0.65 and a > 1.4:
            val = val + 0.9 * np.exp(-(((u - 0.43 * st.depth) ** 2 + v**2 + (w - 3) ** 2) / 2.0**2))
        if a > 3.4:
            val = val * (1 - 0.7 * np.exp(-((v / 0.8) ** 2 + ((u + 0.1 * st.depth) / (0.25 * st.depth)) ** 2)))
        return val.astype(np.float32), m.astype(np.float32)

    def vb_texture(self, st: Structure, lin) -> np.ndarray:
        p0, ci, cj, iw, jw = lin
        ti = st.params["truth_index"]
        idx = ti if ti is not None else (0 if st.name in ("T10", "T11") else 6)
        E = np.stack([st.e_u, st.e_v, st.e_w])
        return _texture(self.va, idx, E @ (p0 - st.centre), E @ ci, E @ cj, iw, jw)

    def vb(self, st: Structure, x, y, z, tex_window):
        va = self.va
        u, v, w = self.structure_local(st, x, y, z)
        ti = st.params["truth_index"]
        idx = ti if ti is not None else (0 if st.name in ("T10", "T11") else 6)
        nodes = [(side, uf, wf, rad, dep) for lvl, side, uf, wf, rad, dep in va.schmorl if lvl == idx and ti is not None]
        sd, sup, inf = _vb_signed(st, u, v, w, va, nodes)
        m = _sigmoid(sd / 0.35)
        inside = m > 0.01
        val = np.zeros(u.shape, dtype=np.float32)
        if not inside.any():
            return val, m.astype(np.float32)
        tex = tex_window[inside]
        u, v, w, sd, sup, inf = u[inside], v[inside], w[inside], sd[inside], sup[inside], inf[inside]
        marrow = self.I["marrow"] * st.params["marrow"]
        vi = marrow * (1 + 0.17 * tex)
        d2, h2, w2 = st.depth / 2, st.height / 2, st.width / 2
        if ti is not None:
            for lvl, pos, rad, amp in va.fat:
                if lvl == ti:
                    r2 = (u - pos[0] * d2) ** 2 + (v - pos[1] * h2) ** 2 + (w - pos[2] * w2) ** 2
                    vi = vi + marrow * amp * np.exp(-r2 / (2 * rad**2))
            for lvl, pos, rad, con in va.lesions:
                if lvl == ti:
                    r = np.sqrt((u - pos[0] * d2) ** 2 + (v - pos[1] * h2) ** 2 + (w - pos[2] * w2) ** 2)
                    vi = vi + marrow * con * _sigmoid((rad - r) / 0.5)
            # endplate signal change next to degenerated discs (Modic-like)
            for di, sign in ((ti - 1, 1), (ti, -1)):
                if 0 <= di < 6 and va.endplate_change[di] > 0:
                    ep = sup if sign > 0 else inf
                    dist = np.abs(ep - v)
                    vi = vi + marrow * va.endplate_change[di] * np.exp(-dist / 3.5) * (np.abs(u) < d2 * 0.8)
        rim = np.exp(-np.clip(sd, 0, None) / 0.9)
        val[inside] = vi * (1 - 0.8 * rim)
        return val.astype(np.float32), m.astype(np.float32)


def _up2(c: np.ndarray, n: int) -> np.ndarray:
    """Bilinear upsampling of values on every 2nd pixel to the full (n, n) grid."""
    m = c.shape[0]
    f = np.empty((2 * m - 1, 2 * m - 1), dtype=np.float32)
    f[::2, ::2] = c
    f[1::2, ::2] = (c[:-1] + c[1:]) / 2
    f[:, 1::2] = (f[:, :-2:2] + f[:, 2::2]) / 2
    return f[:n, :n]


def _stack_geometry(acq: Acquisition):
    """Affine of the slice stack and the LPS position of its centre."""
    R = acq.stack_rotation
    col = R @ np.array([0.0, 1.0, 0.0])  # column index runs anterior -> posterior
    row = R @ np.array([0.0, 0.0, -1.0])  # row index runs superior -> inferior
    slc = np.cross(col, row)  # canonical (Scan) order: slice index ascends along the normal;
    # series "stored flipped" are reversed only when written to DICOM (cohort._write_family)
    centre = TABLE + np.array([0.0, 12.0, 8.0])
    n, K = acq.matrix, acq.n_slices
    A = np.eye(4)
    A[:3, 0], A[:3, 1], A[:3, 2] = col * acq.spacing, row * acq.spacing, slc * acq.between
    A[:3, 3] = centre - A[:3, 0] * (n - 1) / 2 - A[:3, 1] * (n - 1) / 2 - A[:3, 2] * (K - 1) / 2
    return A


def render(va: VisitAnatomy, acq: Acquisition, seed: int) -> Rendered:
    from scipy.ndimage import gaussian_filter

    sc = _Scene(va, acq, seed)
    A = _stack_geometry(acq)
    K, n = acq.n_slices, acq.matrix
    Rb = acq.rotation
    shift = TABLE + acq.body_shift
    to_lps = lambda p: np.asarray(p) @ Rb.T + shift
    Ab = A.copy()
    Ab[:3, :3] = Rb.T @ A[:3, :3]
    Ab[:3, 3] = Rb.T @ (A[:3, 3] - shift)
    ii = np.arange(n, dtype=np.float32)
    vol = np.zeros((K, n, n), dtype=np.float32)
    lab = np.zeros((K, n, n), dtype=np.uint16)
    sub = (-0.25, 0.25)  # sub-slice positions (fractions of the slice thickness): 2-point slab average
    structs = sc.structs
    discs = [s for s in structs if s.kind == "IVD"]
    vbs = [s for s in structs if s.kind == "VB"]
    m_c = (n + 1) // 2 + 1  # coarse grid (every 2nd pixel) for the slowly varying surroundings
    ic = np.arange(m_c, dtype=np.float32) * 2
    for k in range(K):
        # surroundings: once per slice at the slice centre, on the coarse grid, upsampled
        p0 = Ab[:3, 3] + Ab[:3, 2] * k
        ci, cj = Ab[:3, 0], Ab[:3, 1]
        Xc, Yc, Zc = (p0[a] + cj[a] * ic[:, None] + ci[a] * ic[None, :] for a in range(3))
        bg_c, canal_c = sc.background(Xc.astype(np.float32), Yc.astype(np.float32), Zc.astype(np.float32),
                                       (p0, 2 * ci, 2 * cj, np.arange(m_c), np.arange(m_c)))
        bg = _up2(bg_c, n)
        lk = np.where(_up2(canal_c.astype(np.float32), n) > 0.5, CANAL_LABEL, 0).astype(np.uint16)
        normal = np.cross(ci, cj)
        normal /= np.linalg.norm(normal)
        pc = p0
        subs = [Ab[:3, 3] + Ab[:3, 2] * (k + o * acq.thickness / acq.between) for o in sub]
        imgs = [bg.copy() for _ in sub]
        for st in discs + vbs:
            rel = st.centre - pc
            if abs(float(rel @ normal)) > st.width / 2 + 3 + acq.thickness / 2:
                continue
            # pixel window around the projected centre (structure extent in-plane), shared by the
            # sub-slices (their in-plane offset is a fraction of a pixel)
            ci_f = float(rel @ ci) / float(ci @ ci)
            cj_f = float(rel @ cj) / float(cj @ cj)
            ext = np.abs(st.e_u) * (st.depth / 2 + 7) + np.abs(st.e_v) * (st.height / 2 + 5)
            r_i = float(ext @ np.abs(ci / np.linalg.norm(ci))) / acq.spacing + 2
            r_j = float(ext @ np.abs(cj / np.linalg.norm(cj))) / acq.spacing + 2
            i0, i1 = int(max(0, np.floor(ci_f - r_i))), int(min(n, np.ceil(ci_f + r_i) + 1))
            j0, j1 = int(max(0, np.floor(cj_f - r_j))), int(min(n, np.ceil(cj_f + r_j) + 1))
            if i0 >= i1 or j0 >= j1:
                continue
            iw = np.arange(i0, i1, dtype=np.float32)
            jw = np.arange(j0, j1, dtype=np.float32)
            tex, msum = None, None
            if st.kind == "VB":  # marrow texture once per slice (it varies slowly across the slab)
                tex = sc.vb_texture(st, (pc, ci, cj, iw, jw))
            for si, (o, ps) in enumerate(zip(sub, subs)):
                if abs(float((st.centre - ps) @ normal)) > st.width / 2 + 3:
                    continue
                x, y, z = (np.float32(ps[a]) + np.float32(cj[a]) * jw[:, None] + np.float32(ci[a]) * iw[None, :]
                           for a in range(3))
                if st.kind == "IVD":
                    val, m = sc.disc(st, x, y, z)
                    label = disc_label(st.name)
                else:
                    val, m = sc.vb(st, x, y, z, tex)
                    label = vertebra_label(st.name)
                img = imgs[si]
                win = img[j0:j1, i0:i1]
                img[j0:j1, i0:i1] = m * val + (1 - m) * win
                msum = m if msum is None else msum + m
            if msum is not None and label:  # label: the structure fills most of the slab
                lw = lk[j0:j1, i0:i1]
                lk[j0:j1, i0:i1] = np.where(msum > 0.5 * len(sub), label, lw)
        vol[k] = sum(imgs) / len(sub)
        lab[k] = lk
    # scanner: in-plane PSF, coil bias, Rician noise, scale
    vol = gaussian_filter(vol, sigma=(0, 0.6, 0.6))
    jj, ii2 = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    b = acq.bias
    bias = 1 + 0.08 * (b[0] * ii2 + b[1] * jj + 0.5 * b[2] * ii2 * jj) + 0.18 * ii2  # posterior coil
    vol = vol * bias[None].astype(np.float32)
    r = _rng(seed, 40_000_000 + va.subject.index, va.visit)
    sd = acq.noise_sd * BASE["marrow"]
    n1 = r.standard_normal(vol.shape, dtype=np.float32) * np.float32(sd)
    n2 = r.standard_normal(vol.shape, dtype=np.float32) * np.float32(sd)
    vol = np.sqrt((vol + n1) ** 2 + n2**2)
    arr = np.clip(np.round(vol * acq.intensity_scale), 0, 65535).astype(np.uint16)
    # ground truth geometry in LPS
    inv = np.linalg.inv(A)
    levels = {}
    for st in vbs:
        ti = st.params["truth_index"]
        if ti is None:
            continue
        p = st.params
        hu_a = st.height + p["wedge"] / 2
        hu_p = st.height - p["wedge"] / 2
        d2 = st.depth / 2
        corners_b = [st.centre - d2 * st.e_u + hu_a / 2 * st.e_v, st.centre + d2 * st.e_u + hu_p / 2 * st.e_v,
                     st.centre + d2 * st.e_u - hu_p / 2 * st.e_v, st.centre - d2 * st.e_u - hu_a / 2 * st.e_v]
        c = to_lps(st.centre)
        kc = float((inv[:3, :3] @ c + inv[:3, 3])[2])
        # slice range: the slices whose label map shows this body (it fills most of the slab)
        shown = np.nonzero((lab == vertebra_label(st.name)).any(axis=(1, 2)))[0]
        mid = int(np.clip(round(kc), 0, K - 1))
        k0, k1 = (int(shown.min()), int(shown.max())) if len(shown) else (mid, mid)
        levels[st.name] = dict(centroid=c, corners=np.array([to_lps(q) for q in corners_b]),
                               slice_range=(k0, k1), mid_slice=int(np.clip(round(kc), 0, K - 1)), k_exact=kc)
    disc_c = {st.name: to_lps(st.centre) for st in discs if st.params.get("disc_index") is not None}
    return Rendered(arr, A, lab, levels, disc_c)
