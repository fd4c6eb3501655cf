"""A held-out synthetic generator for *evaluating* the detector: structurally different from the
training generator (``randomised``) and from SpineSSL's cohort generator (``synth``).  Never
used in training or calibration.

What differs (not the same knobs at other values):

- anatomy: the spine's centre line is a cubic spline through random control points, parametrised
  by arc length (not a chain of per-level tilts); vertebral bodies are elliptic cylinders cut by
  two independently tilted endplate *planes* with a waist, rounded by smoothing the mask (not a
  smooth-min of endplate surfaces); the sacrum is *one* swept solid along a circular arc whose
  cross-section tapers (S1 is its first 22-32 mm, no segments or junction discs), with an optional
  coccygeal tail; the canal, posterior elements and soft tissues are placed by nearest points on
  the spline (a k-d tree), not along a polyline of body centres;
- image formation: a spin-echo signal equation S = PD (1 - exp(-TR/T1)) exp(-TE/T2) from tissue
  relaxation times (marrow as a fat-water mixture per body, optional fat suppression), a Gaussian
  slice profile over five sub-slices, and k-space acquisition: the central 60-90 % of k-space
  (Gibbs ringing), complex Gaussian noise added there, magnitude image (not tissue means with
  image-domain noise and bias);
- field of view: square 260-360 mm centred between L2 and L4 (the coverage follows from it).

``write_cohort`` writes ``OUT/images/<key>.nii.gz``, ``OUT/truth/<key>.json`` like
``randomised.cohort``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

from .. import LEVEL_NAMES, atomic
from ..levels import Level, LevelSet

MOBILE = ("T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")  # top to bottom
# tissue: (T1 ms, T2 ms, PD) at about 1.5 T
RELAX = {"air": (1000, 1, 0.0), "fat": (260, 80, 1.0), "muscle": (870, 47, 0.75), "csf": (4000, 2000, 1.0),
         "cord": (900, 90, 0.75), "nucleus": (1200, 110, 0.9), "annulus": (1000, 45, 0.65), "water_marrow": (800, 50, 0.8),
         "cortex": (1000, 1, 0.05), "ligament": (1000, 8, 0.15), "viscera": (600, 60, 0.8), "fluid": (3000, 1500, 1.0)}
TISSUES = tuple(RELAX) + ("marrow",)
TI = {n: i for i, n in enumerate(TISSUES)}


class _Spine:
    def __init__(self, r: np.random.Generator):
        self.r = r
        z = np.linspace(-40.0, 520.0, 15)
        lord, kyph = r.uniform(10, 45), r.uniform(0, 35)
        zl = r.uniform(170, 230)
        y = np.where(z < zl, -lord * np.sin(np.pi * np.clip(z, 0, zl) / zl),
                     kyph * np.sin(np.pi * np.clip(z - zl, 0, 400) / 400))
        y = y + r.normal(0, 3.0, len(z))
        x = np.cumsum(r.normal(0, 1.5, len(z)))
        x -= x[2]
        fy, fx = CubicSpline(z, y), CubicSpline(z, x)
        zz = np.arange(-40.0, 520.0, 0.25)
        pts = np.column_stack([fx(zz), fy(zz), zz])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        self.s0 = float(np.interp(0.0, zz, s))  # arc length of z = 0 (the S1 top endplate)
        self.s, self.pts = s - self.s0, pts
        self.tree = cKDTree(pts[:, 1:])

    def at(self, s: float):
        """(point, superior unit tangent, posterior unit normal in the sagittal plane)."""
        i = int(np.clip(np.searchsorted(self.s, s), 1, len(self.s) - 1))
        p = self.pts[i - 1] + (self.pts[i] - self.pts[i - 1]) * (s - self.s[i - 1]) / max(self.s[i] - self.s[i - 1], 1e-9)
        t = self.pts[i] - self.pts[i - 1]
        t[0] = 0.0
        t /= np.linalg.norm(t)
        return p, t, np.array([0.0, t[2], -t[1]])


def _body_params(r):
    out, s = {}, 0.0
    hl = r.uniform(0.85, 1.2)
    for name in reversed(MOBILE):  # from L5 up
        lumbar = name.startswith("L")
        disc = r.uniform(5.0, 13.0) if lumbar else r.uniform(3.5, 8.0)
        if r.random() < 0.08:
            disc = r.uniform(1.0, 3.0)
        h = (r.uniform(23, 30) if lumbar else r.uniform(18, 24)) * hl
        s += disc
        out[name] = dict(s=s + h / 2, h=h, a=r.uniform(14, 20) * hl * (1.0 if lumbar else 0.85),
                         b=r.uniform(20, 27) * hl * (1.0 if lumbar else 0.85), wedge=r.normal(0, 4.0),
                         waist=r.uniform(0.0, 0.12), ff=r.uniform(0.25, 0.75), disc=disc)
        s += h
    return out


class Scene:
    def __init__(self, seed: int, index: int):
        r = self.r = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 9311]))
        self.sp = _Spine(r)
        self.bodies = _body_params(r)
        self.sac = dict(tilt=np.deg2rad(r.uniform(25, 55)), R=r.uniform(80, 200), L=r.uniform(85, 125),
                        s1=r.uniform(22, 32), a0=r.uniform(17, 24), b0=r.uniform(30, 50), coccyx=r.random() < 0.5,
                        ff=r.uniform(0.3, 0.8), line=r.random() < 0.5)
        self.canal = (r.uniform(12, 19), r.uniform(9, 12))
        self.rim = r.uniform(0.0, 1.5)  # cortical rim of the bodies (mm)
        self.skin = (r.uniform(45, 90), r.uniform(5, 40), r.uniform(120, 220))
        self.noise_tex = r.integers(0, 2**31 - 1)
        # sacral arc: starts at the S1 top endplate centre, axis tilted anteriorly by ``tilt``
        p0, t0, _ = self.sp.at(0.0)
        th = self.sac["tilt"]
        down = -np.array([0.0, -np.sin(th), np.cos(th)])  # inferior direction along the S1 axis
        post = np.array([0.0, np.cos(th), np.sin(th)])
        self.arc_c = p0 + self.sac["R"] * (-post)  # centre of curvature: anterior (concave front)
        self.arc_p0, self.arc_down, self.arc_post = p0, down, post

    # ----------------------------------------------------------------------------- sacrum
    def arc(self, sig):
        """Point, inferior tangent and posterior normal of the sacral arc at arc length ``sig``."""
        R = self.sac["R"]
        ang = sig / R
        p = self.arc_c + R * (np.cos(ang) * self.arc_post + np.sin(ang) * self.arc_down)
        tan = -np.sin(ang) * self.arc_post + np.cos(ang) * self.arc_down
        return p, tan, np.cos(ang) * self.arc_post + np.sin(ang) * self.arc_down

    def sacrum_mask(self, Y, Z, x):
        """(inside sacrum (bool), inside S1 (bool)) on sagittal points (Y, Z) at lateral x."""
        d = np.stack([Y - self.arc_c[1], Z - self.arc_c[2]], -1)
        post, down = self.arc_post[1:], self.arc_down[1:]
        ang = np.arctan2(d @ down, d @ post)
        rad = np.linalg.norm(d, axis=-1)
        sig = ang * self.sac["R"]
        rho = rad - self.sac["R"]
        L = self.sac["L"] + (25.0 if self.sac["coccyx"] else 0.0)
        frac = np.clip(sig / self.sac["L"], 0, 1.4)
        a = self.sac["a0"] * np.clip(1 - 0.6 * frac, 0.15, 1)
        b = self.sac["b0"] * np.clip(1 - 0.7 * frac, 0.1, 1)
        a = np.where(sig > self.sac["L"], 5.0, a)
        b = np.where(sig > self.sac["L"], 6.0, b)
        inside = (sig >= 0) & (sig <= L) & ((rho / a) ** 2 + (x / b) ** 2 < 1)
        return inside, inside & (sig < self.sac["s1"]), sig

    # ------------------------------------------------------------------------------ truth
    def truth_bodies(self):
        """name -> (centre, superior axis, posterior axis, height, half depth, wedge) body frame."""
        out = {}
        for name, b in self.bodies.items():
            c, t, n = self.sp.at(b["s"])
            out[name] = (c, t, n, b["h"], b["a"], b["wedge"])
        s1 = self.sac["s1"]
        c, tan, post = self.arc(s1 / 2)
        out["S1"] = (c, -tan, post, s1, self.sac["a0"] * (1 - 0.3 * s1 / self.sac["L"]), 0.0)
        return out

    # ----------------------------------------------------------------------------- tissue
    def plane(self, Y: np.ndarray, Z: np.ndarray) -> dict:
        """Spline coordinates of the sagittal points (Y, Z): every slice of a stack whose normal is
        left-right shares them (a k-d tree query once per scan)."""
        J, I = Y.shape
        _, idx = self.sp.tree.query(np.stack([Y, Z], -1).reshape(-1, 2))
        idx = idx.reshape(J, I)
        cpt = self.sp.pts[idx]
        tang = self.sp.pts[np.clip(idx + 1, 0, len(self.sp.pts) - 1)] - self.sp.pts[np.clip(idx - 1, 0, None)]
        tang /= np.maximum(np.linalg.norm(tang, axis=-1, keepdims=True), 1e-9)
        n = (Y - cpt[..., 1]) * tang[..., 2] - (Z - cpt[..., 2]) * tang[..., 1]
        s = self.sp.s[idx]
        names = list(self.bodies)
        ss = np.array([self.bodies[m]["s"] for m in names])
        aa = np.array([self.bodies[m]["a"] for m in names])
        return {"Y": Y, "Z": Z, "s": s, "n": n, "cx": cpt[..., 0], "a_s": np.interp(s, ss[::-1], aa[::-1])}

    def _window(self, g, c, radius, spacing):
        d = (g["Y"] - c[1]) ** 2 + (g["Z"] - c[2]) ** 2
        j, i = np.unravel_index(int(np.argmin(d)), d.shape)
        r = int(radius / spacing) + 2
        return slice(max(0, j - r), j + r + 1), slice(max(0, i - r), i + r + 1)

    def tissues(self, g: dict, x: float, spacing: float):
        """Tissue index, marrow fat fraction and body id (MOBILE index + 1, 11 for S1, 12 for the
        rest of the sacrum) on the plane ``g`` at lateral position ``x`` (body frame mm)."""
        Y, Z, s, n, a_s = g["Y"], g["Z"], g["s"], g["n"], g["a_s"]
        lx = x - g["cx"]
        J, I = Y.shape
        tis = np.full((J, I), TI["air"], dtype=np.uint8)
        ff = np.zeros((J, I), dtype=np.float32)
        bid = np.zeros((J, I), dtype=np.uint8)
        cd, chw = self.canal
        post_skin, fat_t, ant = self.skin
        inbody = (n < a_s + cd + post_skin) & (n > -(a_s + ant)) & (np.abs(lx) < 160)
        tis[inbody] = TI["fat"]
        core = inbody & (n < a_s + cd + post_skin - fat_t) & (n > -(a_s + ant - fat_t))
        tis[core & (n > 0)] = TI["muscle"]
        tis[core & (n <= 0)] = TI["viscera"]
        tis[core & (np.abs(np.abs(lx) - 35) < 14) & (np.abs(n) < a_s) & (s > 30) & (s < 190)] = TI["muscle"]
        canal = (n > a_s + 1) & (n < a_s + 1 + cd) & (np.abs(lx) < chw) & (s > -30)
        tis[canal] = TI["csf"]
        tis[canal & (np.abs(n - a_s - 1 - cd / 2) < 3.5) & (np.abs(lx) < 4) & (s > 120)] = TI["cord"]
        tis[(n > a_s + 1 + cd) & (n < a_s + 3 + cd) & (np.abs(lx) < chw) & (s > -30)] = TI["ligament"]
        for m, b in self.bodies.items():  # a spinous process (ellipse sloping down) and laminae
            c, _, _ = self.sp.at(b["s"])
            wj, wi = self._window(g, c, 80.0, spacing)
            nn, sw, lw = n[wj, wi], s[wj, wi], lx[wj, wi]
            du = nn - (b["a"] + cd + 18.0)
            dv = sw - (b["s"] - 8.0) + 0.35 * du
            bone = (((du / 20.0) ** 2 + (dv / 7.0) ** 2 < 1) & (np.abs(lw) < 4.5)) | (
                ((nn - b["a"] - cd - 3) ** 2 / 16 + (sw - b["s"] + 4) ** 2 / 120 < 1) & (np.abs(lw) < chw + 6))
            t_w, f_w = tis[wj, wi], ff[wj, wi]
            t_w[bone] = TI["cortex"]
            t_w[bone & ((du / 17.0) ** 2 + (dv / 5.0) ** 2 < 1)] = TI["marrow"]
            f_w[bone] = b["ff"]
        bodies = self.truth_bodies()
        for k_, m in enumerate(MOBILE):  # the disc below each body, then the body
            b = self.bodies[m]
            c, t, nn, h, a, wedge = bodies[m]
            lower = MOBILE[k_ + 1] if k_ + 1 < len(MOBILE) else None
            d_top = c - h / 2 * t
            d_bot = (bodies[lower][0] + bodies[lower][3] / 2 * bodies[lower][1]) if lower else self.arc_p0
            wj, wi = self._window(g, c, 45.0, spacing)
            Yw, Zw = Y[wj, wi], Z[wj, wi]
            t_w, f_w, b_w = tis[wj, wi], ff[wj, wi], bid[wj, wi]
            dc, dt = (d_top + d_bot) / 2, d_top - d_bot
            dh = max(np.linalg.norm(dt), 0.8)
            dt = dt / max(np.linalg.norm(dt), 1e-9)
            dv = (Yw - dc[1]) * dt[1] + (Zw - dc[2]) * dt[2]
            du = (Yw - dc[1]) * dt[2] - (Zw - dc[2]) * dt[1]
            xr = x - c[0]
            dm = (np.abs(dv) < dh / 2 + 1.0) & ((du / (a + 1.0)) ** 2 + xr**2 / (b["b"] + 1.0) ** 2 < 1)
            t_w[dm] = TI["annulus"]
            if b["disc"] > 2.5:
                t_w[dm & ((du / (0.55 * a)) ** 2 + (dv / (0.4 * dh)) ** 2 + (xr / (0.55 * b["b"])) ** 2 < 1)] = TI["nucleus"]
            v = (Yw - c[1]) * t[1] + (Zw - c[2]) * t[2]
            u = (Yw - c[1]) * nn[1] + (Zw - c[2]) * nn[2]
            tw = np.tan(np.deg2rad(wedge) / 2)  # endplate planes tilted by +-wedge/2
            rad = 1 - b["waist"] * np.clip(1 - (2 * v / h) ** 2, 0, 1)
            inside = (v - h / 2 + tw * u < 0) & (v + h / 2 - tw * u > 0) & (
                (u / (a * rad)) ** 2 + (xr / (b["b"] * rad)) ** 2 < 1)
            soft = ndimage.gaussian_filter(inside.astype(np.float32), 1.2 / spacing) > 0.5
            t_w[soft] = TI["cortex"]
            core_ = ndimage.binary_erosion(soft, iterations=int(round(self.rim / spacing))) if self.rim > 0.3 else soft
            t_w[core_] = TI["marrow"]
            f_w[soft] = b["ff"]
            b_w[soft] = MOBILE.index(m) + 1
        sac, s1m, sig = self.sacrum_mask(Y, Z, x - self.arc_p0[0])
        tis[sac] = TI["marrow"]
        ff[sac] = self.sac["ff"]
        if self.sac["line"]:
            tis[sac & (np.abs(sig - self.sac["s1"]) < 0.7)] = TI["cortex"]
        bid[sac] = 12
        bid[s1m] = 11
        return tis, ff, bid


def _signal(tr: float, te: float, fatsat: bool) -> np.ndarray:
    sig = []
    for t in TISSUES[:-1]:
        T1, T2, PD = RELAX[t]
        if t == "fat" and fatsat:
            PD *= 0.05
        sig.append(PD * (1 - np.exp(-tr / T1)) * np.exp(-te / T2))
    return np.array(sig + [0.0])


def make_scan(seed: int, index: int):
    """(image (K, J, I) float32, affine voxel -> LPS, truth ``LevelSet``) of held-out case ``index``."""
    sc = Scene(seed, index)
    r = sc.r
    tr, te = (r.uniform(2500, 5000), r.uniform(80, 130)) if r.random() < 0.6 else (r.uniform(400, 800), r.uniform(8, 20))
    fatsat = r.random() < 0.25
    sig = _signal(tr, te, fatsat)
    fat_sig = sig[TI["fat"]]
    wm = sig[TI["water_marrow"]]
    fov = r.uniform(260, 360)
    spacing = r.uniform(0.5, 1.1)
    n = int(round(fov / spacing))
    K = int(r.integers(10, 18))
    thick = r.uniform(3.0, 5.0)
    between = thick * 1.1
    zc = np.interp(r.uniform(0, 1), [0, 1], [sc.bodies["L4"]["s"], sc.bodies["L2"]["s"]])
    centre, t, nrm = sc.sp.at(zc)
    centre = centre + nrm * r.uniform(5, 40)
    ang = np.deg2rad(r.normal(0, 5))
    e_j = -np.array([0.0, -np.sin(ang), np.cos(ang)])  # rows inferior
    e_i = np.array([0.0, np.cos(ang), np.sin(ang)])  # columns posterior
    e_k = np.cross(e_i, e_j)
    x0 = centre[0] + r.uniform(-8, 8)
    origin = np.array([x0, 0, 0]) + (centre[1:] @ e_i[1:]) * e_i + (centre[1:] @ e_j[1:]) * e_j
    origin = origin - (n - 1) / 2 * spacing * (e_i + e_j) - (K - 1) / 2 * between * e_k
    jj, ii = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    P = origin + jj[..., None] * spacing * e_j + ii[..., None] * spacing * e_i  # slice 0, x = origin x
    g = sc.plane(P[..., 1], P[..., 2])
    img = np.zeros((K, n, n), dtype=np.float32)
    bid_mid = np.zeros((K, n, n), dtype=np.uint8)
    offs = np.linspace(-1, 1, 5) * thick / 2
    wts = np.exp(-offs**2 / (2 * (thick / 2.35) ** 2))
    wts /= wts.sum()
    tex = ndimage.gaussian_filter(np.random.default_rng(sc.noise_tex).standard_normal((n, n)), 3.0 / spacing)
    tex = (tex / max(tex.std(), 1e-6)).astype(np.float32)
    for k in range(K):
        acc = np.zeros((n, n), dtype=np.float32)
        for o, w in zip(offs, wts):
            x = float(origin[0] + (k * between + o) * e_k[0])
            tis, ff, bid = sc.tissues(g, x, spacing)
            val = sig[tis].astype(np.float32)
            mar = tis == TI["marrow"]
            val[mar] = (ff[mar] * fat_sig + (1 - ff[mar]) * wm) * (1 + 0.08 * tex[mar])
            vis = tis == TI["viscera"]
            val[vis] *= 1 + 0.3 * tex[vis]
            acc += w * val
            if abs(o) < 1e-9:
                bid_mid[k] = bid
        # k-space: keep the central part (Gibbs), complex noise, magnitude
        F = np.fft.fftshift(np.fft.fft2(acc))
        keep = r.uniform(0.6, 0.9)
        mj = np.abs(np.arange(n) - n / 2) < keep * n / 2
        F = F * mj[:, None] * mj[None, :]
        sd = r.uniform(0.01, 0.05) * np.abs(acc).max() * n
        F = F + (r.standard_normal(F.shape) + 1j * r.standard_normal(F.shape)) * sd / np.sqrt(2)
        img[k] = np.abs(np.fft.ifft2(np.fft.ifftshift(F))).astype(np.float32)
    A = np.eye(4)
    A[:3, 0], A[:3, 1], A[:3, 2], A[:3, 3] = e_i * spacing, e_j * spacing, e_k * between, origin
    A[:3, 3] += np.array([0.0, 30.0, 80.0])
    inv = np.linalg.inv(A)
    levels = {}
    for name, (c, tt, nn, h, a, wedge) in sc.truth_bodies().items():
        if name not in LEVEL_NAMES:
            continue
        bid_v = 11 if name == "S1" else MOBILE.index(name) + 1
        shown = np.nonzero((bid_mid == bid_v).any(axis=(1, 2)))[0]
        if len(shown) == 0:
            continue
        lps = c + np.array([0.0, 30.0, 80.0])
        hw = np.deg2rad(wedge) / 2
        ha, hp = h / 2 + a * np.tan(hw), h / 2 - a * np.tan(hw)
        corners = np.array([c - a * nn + ha * tt, c + a * nn + hp * tt, c + a * nn - hp * tt, c - a * nn - ha * tt])
        kc = float((inv[:3, :3] @ lps + inv[:3, 3])[2])
        levels[name] = Level(name, lps, corners + np.array([0.0, 30.0, 80.0]), (int(shown.min()), int(shown.max())),
                             int(np.clip(round(kc), 0, K - 1)))
    return img, A, LevelSet(levels, [], f"heldout:{seed}-{index}")


def write_cohort(out, seed: int, n: int) -> list[str]:
    from ..progress import track
    from .randomised.cohort import write_image

    out = Path(out)
    keys = []
    for i in track(range(n), desc="held-out scans", unit="scan"):
        img, A, levels = make_scan(seed, i)
        key = f"h{seed}-{i:05d}"
        write_image(out / "images" / f"{key}.nii.gz", img, A)
        d = {"schema": "spinessl.levels/1", "key": key}
        d.update(levels.to_dict())
        atomic.write_json(out / "truth" / f"{key}.json", d)
        keys.append(key)
    atomic.write_json(out / "cohort.json", {"generator": "SpineSSLLib.detect.heldout", "seed": seed, "scans": n})
    return keys
