"""Implicit anatomy of the held-out generator, in the body frame (mm; x left, y posterior,
z superior).

- ``Spine``: the centreline as a function of arc length ``s`` (0 at the S1 endplate centre,
  positive upwards), integrated from a curvature profile (sacral slope, lumbar lordosis,
  lower thoracic kyphosis; the sacrum and coccyx a circular arc), a lateral scoliosis wave,
  and the mobile vertebrae / discs placed along it (frames from the tangent).
- ``vb_field``: a vertebral body as a deformed superellipsoid -> soft inside mask, signed
  distance (radial estimate), normalised coordinates for the marrow field.
- ``disc_field``: the disc as a superelliptic cylinder between two bodies with a nucleus.
- ``sacrum_field``: one curved tapering body (fused segments, remnant discs), coccyx segments.
- ``curve_coords``: (s, n) of arbitrary points (Newton from a z-interpolated start).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .subject import N_RBF, Visit

DS = 0.5  # centreline sampling (mm)
RBF_SIGMA = 0.38


def _sig(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class Frame:
    centre: np.ndarray
    e_u: np.ndarray  # posterior
    e_v: np.ndarray  # superior (tangent)
    e_w: np.ndarray  # left

    def local(self, x, y, z):
        c = self.centre
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        f = lambda e: dx * e[0] + dy * e[1] + dz * e[2]
        return f(self.e_u), f(self.e_v), f(self.e_w)

    def to_body(self, u, v, w):
        return self.centre + u * self.e_u + v * self.e_v + w * self.e_w


class Spine:
    def __init__(self, va: Visit):
        self.va = va
        vb, sp, sac = va.vb, va.spine, va.sacrum
        self.b, self.a, self.c = vb["b"], vb["a"], vb["c"]
        hd = va.disc_height
        # arc positions of the mobile vertebrae (L5 lowest) and of the disc centres
        s_c = np.zeros(10)
        s_d = np.zeros(10)
        top = 0.0
        for i in range(9, -1, -1):  # chain disc i lies below vertebra i
            s_d[i] = top + hd[i] / 2
            s_c[i] = top + hd[i] + self.b[i]
            top = s_c[i] + self.b[i]
        self.s_c, self.s_d, self.s_top = s_c, s_d, top
        self.L_sac = sac["length"]
        n_cocc = int(sac["coccyx"])
        self.L_cocc = 9.0 * n_cocc
        s0, s1 = -(self.L_sac + self.L_cocc + 25.0), top + 40.0
        s = np.arange(s0, s1 + DS, DS)
        # curvature: lordosis over L1-S1 (concentrated low), kyphosis above T12, sacral arc below 0
        s_l1 = s_c[5] + self.b[5]
        wl = np.exp(-(((s / s_l1) - sp["ll_centre"]) / 0.35) ** 2) * (s >= 0) * (s <= s_l1)
        wl /= wl.sum() * DS
        wt = _sig((s - s_c[4]) / 12.0) * (s <= s_c[0])
        wt /= max(wt.sum() * DS, 1e-9)
        kappa = -np.deg2rad(sp["ll"]) * wl + np.deg2rad(sp["tk"]) * wt
        self.kappa_s = sac["kappa"]
        i0 = int(round(-s0 / DS))
        theta = np.empty_like(s)
        theta[i0:] = np.deg2rad(sp["ss"]) + np.concatenate([[0.0], np.cumsum((kappa[i0:-1] + kappa[i0 + 1:]) / 2) * DS])
        theta[:i0] = np.deg2rad(sp["ss"]) + self.kappa_s * s[:i0]
        ty, tz = -np.sin(theta), np.cos(theta)
        y = np.concatenate([[0.0], np.cumsum((ty[:-1] + ty[1:]) / 2) * DS])
        z = np.concatenate([[0.0], np.cumsum((tz[:-1] + tz[1:]) / 2) * DS])
        y, z = y - y[i0], z - z[i0]
        lam = sp["sco_wavelength"]
        x = sp["sco_amp"] * (np.sin(2 * np.pi * np.clip(s, 0, None) / lam + sp["sco_phase"]) - np.sin(sp["sco_phase"]))
        self.s, self.x, self.y, self.z, self.theta = s, x, y, z, theta
        order = np.argsort(z)
        self._z_sorted, self._s_by_z = z[order], s[order]
        self._kappa = np.gradient(theta, DS)
        self.frames = [self.frame(si) for si in s_c]
        self.disc_frames = [self.frame(si) for si in s_d]
        self.s_l1 = s_l1

    def at(self, s):
        s = np.asarray(s, float)
        return (np.interp(s, self.s, self.x), np.interp(s, self.s, self.y), np.interp(s, self.s, self.z),
                np.interp(s, self.s, self.theta))

    def point(self, s: float) -> np.ndarray:
        x, y, z, _ = self.at(s)
        return np.array([float(x), float(y), float(z)])

    def frame(self, s: float) -> Frame:
        x, y, z, th = (float(v) for v in self.at(s))
        dx = (float(np.interp(s + 1, self.s, self.x)) - float(np.interp(s - 1, self.s, self.x))) / 2
        ev = np.array([dx, -np.sin(th), np.cos(th)])
        ev /= np.linalg.norm(ev)
        eu = np.array([0.0, np.cos(th), np.sin(th)])
        eu -= (eu @ ev) * ev
        eu /= np.linalg.norm(eu)
        return Frame(np.array([x, y, z]), eu, ev, np.cross(eu, ev))

    def curve_coords(self, y, z, iters: int = 2):
        """(s, n) of points given by body (y, z): arc length of the nearest centreline point and
        the offset along the posterior normal (lateral x is the caller's business).

        Near the centreline (|n| < 45 mm) Newton steps from a start at the same height give the
        exact nearest point; farther out, where the normals of a curved spine cross, the
        coordinates blend into the height-based start so the mapping stays continuous."""
        s0 = np.interp(z, self._z_sorted, self._s_by_z)
        th0 = np.interp(s0, self.s, self.theta)
        n0 = (y - np.interp(s0, self.s, self.y)) * np.cos(th0)
        s = s0
        for _ in range(iters):
            cy, cz, th = np.interp(s, self.s, self.y), np.interp(s, self.s, self.z), np.interp(s, self.s, self.theta)
            dy, dz = y - cy, z - cz
            n = dy * np.cos(th) + dz * np.sin(th)
            k = np.interp(s, self.s, self._kappa)
            s = np.clip(s + (-dy * np.sin(th) + dz * np.cos(th)) / np.maximum(1 + k * n, 0.3), self.s[0], self.s[-1])
        cy, cz, th = np.interp(s, self.s, self.y), np.interp(s, self.s, self.z), np.interp(s, self.s, self.theta)
        n = (y - cy) * np.cos(th) + (z - cz) * np.sin(th)
        wb = np.clip((np.abs(n0) - 45.0) / 30.0, 0, 1)
        return s + wb * (s0 - s), n + wb * (n0 - n)

    def sacral_coords(self, x, y, z):
        """Exact (s, n, lateral) on the sacral/coccygeal arc (s <= 0)."""
        th0 = np.deg2rad(self.va.spine["ss"])
        k = self.kappa_s
        cy, cz = -np.cos(th0) / k, -np.sin(th0) / k  # centre of curvature (S1 endplate centre at 0)
        dy, dz = y - cy, z - cz
        ang = np.arctan2(dz, dy)
        ang = np.where(ang - th0 > np.pi, ang - 2 * np.pi, ang)
        s = (ang - th0) / k
        n = np.sqrt(dy * dy + dz * dz) - 1 / k
        return s, n, x - float(self.x[np.searchsorted(self.s, 0.0)])


# --------------------------------------------------------------------------------------------
# vertebral body
# --------------------------------------------------------------------------------------------

def vb_params(va: Visit, i: int) -> dict:
    vb = va.vb
    return {k: vb[k][i] for k in ("a", "b", "c", "wedge", "p", "q", "post_conc", "conc_sup", "conc_inf", "bowl_u",
                                   "rbf_c", "rbf_amp", "osteo")}


def vb_field(p: dict, u, v, w):
    """Soft inside mask, signed distance (mm, + inside), and normalised coordinates (3 arrays)
    of a deformed superellipsoid vertebral body in its local frame."""
    a, b, c = float(p["a"]), float(p["b"]), float(p["c"])
    xu, xv, xw = u / a, v / b, w / c
    du = np.zeros_like(u)
    dv = np.zeros_like(u)
    dw = np.zeros_like(u)
    for k in range(N_RBF):
        cc, amp = p["rbf_c"][k], p["rbf_amp"][k]
        g = np.exp(-((xu - cc[0]) ** 2 + (xv - cc[1]) ** 2 + (xw - cc[2]) ** 2) / (2 * RBF_SIGMA**2))
        du += amp[0] * g
        dv += amp[1] * g
        dw += amp[2] * g
    u, v, w = u - du, v - dv, w - dw
    rw = (w / c) ** 2
    u = u + p["post_conc"] * np.clip(1 - rw, 0, None) * _sig(u / 2.0) * _sig((u - 0.3 * a) / 2.0)
    bowl = np.clip(1 - ((u - p["bowl_u"] * a) / a) ** 2 - rw, 0, None)
    v = np.where(v > 0, v + p["conc_sup"] * bowl, v - p["conc_inf"] * bowl)
    bh = np.maximum(b - p["wedge"] / 4 * (u / a), 0.3 * b)
    ae = a + p["osteo"] * np.exp(-(((np.abs(v) - bh) / 2.0) ** 2)) * (u < 0)
    pp, q = float(p["p"]), float(p["q"])
    xs = (np.abs(u / ae) ** pp + np.abs(w / c) ** pp) ** (q / pp)
    F = (xs + np.abs(v / bh) ** q) ** (1 / q)
    r = np.sqrt(u * u + v * v + w * w)
    sd = r * (1 / np.maximum(F, 1e-6) - 1)
    return _sig(sd / 0.3), sd, (u / a, v / bh, w / c)


# --------------------------------------------------------------------------------------------
# disc
# --------------------------------------------------------------------------------------------

def disc_geometry(spine: Spine, j: int) -> dict:
    """Footprint and height of chain disc j (between vertebra j and vertebra j+1 or S1)."""
    va = spine.va
    up = j
    a_up, c_up = spine.a[up], spine.c[up]
    if j < 9:
        a_lo, c_lo = spine.a[j + 1], spine.c[j + 1]
    else:
        a_lo, c_lo = va.sacrum["a"], min(va.sacrum["c"], spine.c[9])
    nu = va.nucleus
    return dict(a=(a_up + a_lo) / 2 + 0.4, c=(c_up + c_lo) / 2 + 0.6, h=float(va.disc_height[j]),
                bulge=float(nu["bulge"][j]), post_conc=float(va.vb["post_conc"][up]), p=float(va.vb["p"][up]))


def disc_field(g: dict, nu: dict, j: int, u, v, w, S: dict, s_nuc: float):
    """Soft mask and T2 signal of chain disc j in its local frame (``S``: tissue signals,
    ``s_nuc``: signal of its nucleus)."""
    a, c, h = g["a"], g["c"], g["h"]
    bul = g["bulge"]
    ae = np.where(u > 0, a + bul, a + 0.3 * bul)
    rw = np.clip(1 - (w / c) ** 2, 0, None)
    uu = u + g["post_conc"] * rw * _sig(u / 2.0) * _sig((u - 0.3 * a) / 2.0) * 0.8
    ring = (np.abs(uu / ae) ** g["p"] + np.abs(w / c) ** g["p"]) ** (1 / g["p"])
    m = _sig((1 - ring) * min(a, c) / 0.5) * _sig((h / 2 + 3.0 - np.abs(v)) / 0.4)
    # nucleus: ellipsoid with a degeneration-dependent boundary, heterogeneity, cleft, vacuum
    sz = float(nu["size"][j])
    ru, rv, rwid = sz * a, h / 2 * 0.8 + 1.5, sz * c * 1.1
    rho = np.sqrt(((u - nu["u"][j] * a) / ru) ** 2 + (v / rv) ** 2 + (w / rwid) ** 2)
    nuc = _sig((1 - rho) * min(ru, rwid) / (nu["blur"][j] * 2.5))
    het = 1 + nu["hetero"][j] * np.sin(u / 2.3 + 1.7 * j) * np.sin(w / 3.1 + 0.9 * j)
    val = S["annulus"] + nuc * (s_nuc * het - S["annulus"])
    if nu["cleft"][j] > 0:
        val = val * (1 - nu["cleft"][j] * np.exp(-(v / 0.8) ** 2) * (np.abs(u) < 0.7 * a))
    if nu["vacuum"][j] > 0:
        val = val * (1 - 0.92 * np.exp(-(v / 1.1) ** 2 - ((u + 0.15 * a) / (0.35 * a)) ** 2 - (w / (0.45 * c)) ** 2))
    if nu["hiz"][j] > 0:
        val = val + 0.6 * S["csf"] * np.exp(-(((u - 0.9 * a - 0.7 * bul) / 1.6) ** 2 + (v / 1.3) ** 2 + ((w - 6) / 3) ** 2))
    return m, val


# --------------------------------------------------------------------------------------------
# sacrum and coccyx
# --------------------------------------------------------------------------------------------

def sacral_segments(va: Visit) -> np.ndarray:
    """Arc positions (negative, mm) of the segment boundaries S1|S2 ... S4|S5."""
    L, l1 = va.sacrum["length"], va.sacrum["len_s1"]
    rest = np.array([0.32, 0.27, 0.23, 0.18]) * (L - l1)
    return -(l1 + np.concatenate([[0.0], np.cumsum(rest[:-1])]))


def sacrum_field(va: Visit, s, n, xr):
    """Soft mask, signed distance and normalised coordinates of the sacrum + coccyx.

    ``s`` negative below the S1 endplate; ``n`` posterior offset; ``xr`` lateral offset."""
    sac = va.sacrum
    L = sac["length"]
    xi = np.clip(-s / L, 0, 1.2)
    a_s = sac["a"] * (1 - 0.55 * xi) + sac["promontory"] * np.exp(-((s + 3) / 5.0) ** 2) * (n < 0)
    c_s = sac["c"] * (1 - 0.65 * xi)
    F = (np.abs(n / a_s) ** 2.2 + np.abs(xr / c_s) ** 2.2) ** (1 / 2.2)
    bowl = np.clip(1 - (n / sac["a"]) ** 2 - (xr / sac["c"]) ** 2, 0, None)
    d_side = (1 - F) * np.minimum(a_s, c_s)
    d_top = -(s + sac["conc"] * bowl)
    d_bot = L + s
    k = 1.2
    mn = np.minimum(np.minimum(d_side, d_top), d_bot)
    sd = mn - k * np.log(np.exp(-(d_side - mn) / k) + np.exp(-(d_top - mn) / k) + np.exp(-(d_bot - mn) / k))
    # coccyx: small segments continuing the arc
    cs = np.full(np.shape(s), -1e3)
    for q in range(int(sac["coccyx"])):
        centre = -(L + 2.0 + 4.5 + q * 9.0)
        half_len, rad = 3.6 - 0.3 * q, 6.0 - 0.9 * q
        e = np.sqrt(((s - centre) / half_len) ** 2 + (n / rad) ** 2 + (xr / (rad * 1.3)) ** 2)
        cs = np.maximum(cs, (1 - e) * min(half_len, rad))
    sd = np.maximum(sd, cs)
    return _sig(sd / 0.3), sd, (n / np.maximum(a_s, 1), np.clip(-s / L, 0, 1) * 2 - 1, xr / np.maximum(c_s, 1))
