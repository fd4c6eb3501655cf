"""Everything around the vertebral column, described in centreline coordinates.

A pixel's body position becomes (s, n, lateral): arc length of the nearest centreline point,
offset along the posterior normal, offset from the (scoliotic) midline.  Tissue then follows
profiles along ``s``: thecal sac with cord, conus and dorsal cauda equina inside a bony canal
with posterior epidural fat; laminae, ligamentum flavum, sloping spinous processes (steep in the
thoracic spine), pedicles, neural foramina with nerve roots, facet joints with joint fluid;
erector spinae and psoas, subcutaneous fat; anterior longitudinal ligament, aorta with its
bifurcation and iliac arteries (flow voids), IVC, retroperitoneal fat, bowel from a smooth random
field (fat, wall, fluid, gas), liver and lung bases, a bladder in the pelvis.
"""

from __future__ import annotations

import numpy as np

from .shapes import Spine
from .subject import Visit


def _sig(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class Body:
    def __init__(self, spine: Spine, va: Visit, S: dict, seed: int):
        from scipy.ndimage import gaussian_filter

        self.sp, self.va, self.S = spine, va, S
        soft, sac = va.subject.soft, va.sacrum
        a, c, b = spine.a, spine.c, spine.b
        s_c, L = spine.s_c, sac["length"]
        D0, W0, M0 = soft["canal_ap"], soft["canal_w"], soft["muscle"]
        sk = [spine.s[0], -L, -0.85 * L, -0.5 * L, 0.0] + list(s_c[::-1]) + [spine.s[-1]]
        asac = sac["a"]
        self.knots = np.array(sk)
        self.a_k = np.array([4.0, 0.45 * asac, 0.5 * asac, 0.72 * asac, asac] + list(a[::-1]) + [a[0]])
        self.c_k = np.array([6.0, 0.35 * sac["c"], 0.4 * sac["c"], 0.67 * sac["c"], sac["c"]] + list(c[::-1]) + [c[0]])
        lum = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9])[::-1]  # L5..T8 (reversed order below)
        self.D_k = np.array([0.0, 0.0, 0.05 * D0, 0.45 * D0, 0.8 * D0] + list(D0 * lum) + [0.9 * D0])
        wl = np.array([1.15, 1.1, 1.0, 0.95, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8])  # L5..T8
        self.W_k = np.array([0.0, 0.0, 0.1 * W0, 0.8 * W0, 1.15 * W0] + list(W0 * wl) + [0.8 * W0])
        ml = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.75, 0.75, 0.75, 0.75])
        self.M_k = np.array([4.0, 6.0, 8.0, 0.3 * M0, 0.65 * M0] + list(M0 * ml) + [0.75 * M0])
        self.s_conus = float(s_c[4] - soft["conus"] * 33.0)
        self.s_liver = float(s_c[5] + 8.0)
        self.s_lung = float(s_c[2])
        self.s_bif = float(s_c[8] + 0.2 * b[8])
        r = np.random.default_rng(seed)
        self.R_ao = float(r.uniform(9, 13))
        self.bladder_R = 15 + 35 * soft["bladder"]
        self.slow_flow = float(r.uniform(0.0, 0.5))  # flow-related signal inside the aorta
        # bowel: smooth 3D random field on a 6 mm grid over the abdomen, in body coordinates
        self.g0 = np.array([-120.0, -320.0, spine.z.min() - 20])
        self.gstep = 6.0
        shape = (41, 62, int((spine.z.max() - spine.z.min() + 60) / self.gstep) + 2)
        f = gaussian_filter(r.normal(size=shape), 1.3)
        self.bowel = (f / f.std()).astype(np.float32)
        self.stri = r.uniform(0, 2 * np.pi, 3)
        self.sp_angle = np.array([55, 52, 48, 40, 30, 22, 18, 15, 12, 12], float) + r.normal(0, 4, 10)
        a_l, _, D_l, _, _ = self.profile(spine.s_c)
        self.n_cp_level = a_l + 1.2 + D_l
        # body outline: offsets of the centreline samples, as functions of height (envelopes)
        a_s, _, D_s, _, M_s = self.profile(spine.s)
        post = a_s + 1.2 + D_s + 8 + M_s
        abd = soft["abdomen"] * np.where(spine.s > spine.s_c[4], 1.1, 1.0)
        self.fat_ant = 0.6 * soft["fat_post"] + 6
        self.env = {"skin_post": self._envelope(post + soft["fat_post"], 1),
                    "fat_post": self._envelope(post, 1),
                    "canal_post": self._envelope(a_s + 1.2 + D_s + 1.0, 1),
                    "wall_ant": self._envelope(-a_s - abd, -1),
                    "skin_ant": self._envelope(-a_s - abd - self.fat_ant, -1)}

    def _envelope(self, off, side):
        """Outermost body y of the offset curve (centreline + off * normal) per height."""
        from scipy.ndimage import gaussian_filter1d

        sp = self.sp
        py = sp.y + off * np.cos(sp.theta)
        pz = sp.z + off * np.sin(sp.theta)
        zg = np.arange(pz.min() - 4, pz.max() + 4, 2.0)
        b = np.clip(((pz - zg[0]) / 2.0).astype(int), 0, len(zg) - 1)
        yg = np.full(len(zg), -np.inf if side > 0 else np.inf)
        (np.maximum if side > 0 else np.minimum).at(yg, b, py)
        ok = np.isfinite(yg)
        yg = np.interp(zg, zg[ok], yg[ok])
        return zg, gaussian_filter1d(yg, 12.0, mode="nearest")

    def outline(self, key, z):
        zg, yg = self.env[key]
        return np.interp(z, zg, yg)

    def profile(self, s):
        k = self.knots
        return (np.interp(s, k, self.a_k), np.interp(s, k, self.c_k), np.interp(s, k, self.D_k),
                np.interp(s, k, self.W_k), np.interp(s, k, self.M_k))

    def render(self, x, y, z):
        """T2 signal of the surroundings at body points (arrays of any shape) and the canal mask."""
        S, sp, va = self.S, self.sp, self.va
        s, n = sp.curve_coords(y, z)
        xr = x - np.interp(s, sp.s, sp.x)
        a, c, D, W, M = self.profile(s)
        axr = np.abs(xr)
        n_ca = a + 1.2
        n_cp = n_ca + D
        inside = (y < self.outline("skin_post", z)) & (y > self.outline("skin_ant", z))
        out = np.full(np.shape(s), S["air"], dtype=np.float32)
        # abdomen / chest / pelvis contents
        f = _trilinear(self.bowel, (x - self.g0[0]) / self.gstep, (y - self.g0[1]) / self.gstep,
                       (z - self.g0[2]) / self.gstep)
        bowel = np.select([f > 1.9, f > 1.0, f > -0.3], [S["air"], S["bowel"], S["bowel_wall"]], S["fat"])
        organ = np.where(s > self.s_lung, 0.02 * S["csf"], np.where(s > self.s_liver, S["liver"], bowel))
        out = np.where(inside, organ, out)
        wall = self.outline("wall_ant", z)
        out = np.where(inside & (y < wall), S["fat"], out)
        out = np.where(inside & (np.abs(y - wall) < 4) & (s > -20), S["muscle"], out)  # abdominal wall
        # bladder in the pelvis
        if self.bladder_R > 16:
            bn = -(0.45 * va.sacrum["a"] + 25 + self.bladder_R)
            bl = ((s + 0.75 * va.sacrum["length"]) / (0.8 * self.bladder_R)) ** 2 + ((n - bn) / self.bladder_R) ** 2 \
                + (xr / (1.2 * self.bladder_R)) ** 2 < 1
            out = np.where(bl & inside, S["urine"], out)
        # retroperitoneal fat (mixed with vessels and muscle), anterior longitudinal ligament
        retro = (n > -a - 14 - 6 * np.sin(s / 11.0 + self.stri[2]) ** 2) & (n < a) & inside
        out = np.where(retro, S["fat"] * (0.75 + 0.2 * np.sin(xr / 4.0 + s / 7.0)) + 0.1 * S["muscle"], out)
        out = np.where((n > -a - 1.4) & (n < -a + 0.6) & (axr < 0.8 * c), S["ligament"], out)
        # great vessels
        R = self.R_ao
        above = s > self.s_bif
        xo = 9.0 + 0.45 * np.clip(self.s_bif - s, 0, None)
        n_ao = -a - 2.5 - R * np.where(above, 1.0, 0.75)
        rr = np.where(above, R, 0.7 * R)
        dn2 = (n - n_ao) ** 2
        ao = np.where(above, (xr - 9.0) ** 2 + dn2 < rr**2, (axr - xo) ** 2 + dn2 < rr**2) & (s > -60)
        ao_sig = S["vessel"] + self.slow_flow * S["slow_vessel"] * np.exp(-((n - n_ao) / (0.4 * R)) ** 2)
        out = np.where(ao, ao_sig, out)
        ivc = ((xr + 14) ** 2 + (n + a + 12) ** 2 < 100) & (s > sp.s_c[9]) & (s < self.s_lung)
        out = np.where(ivc, S["slow_vessel"], out)
        # psoas: lateral to the bodies below T12, growing caudally
        Rp = 24.0 * np.clip((sp.s_c[4] - s) / max(sp.s_c[4], 1.0), 0, 1) ** 0.8 * (s > -40)
        ps = ((n - 0.15 * a) / np.maximum(Rp, 1e-3)) ** 2 + ((axr - c - 0.5 * Rp) / np.maximum(0.8 * Rp, 1e-3)) ** 2 < 1
        out = np.where(ps & (Rp > 2), S["muscle"], out)
        # posterior muscles with striation, subcutaneous fat, skin
        stri = 1 + 0.07 * np.sin(xr / 3.3 + self.stri[0]) * np.sin(s / 8.0 + self.stri[1])
        fatb = self.outline("fat_post", z)
        back = (y > self.outline("canal_post", z)) & (n > n_ca)
        out = np.where(back & (y < fatb) & inside, S["muscle"] * stri, out)
        out = np.where((y >= fatb) & inside, S["fat"], out)
        out = np.where(inside & (y > self.outline("skin_post", z) - 1.2), S["skin"], out)
        # posterior elements and canal, only where they can be
        zone = inside & (n > a - 8) & (n < n_cp + 50) & (axr < W + 26)
        canal = np.zeros(np.shape(s), bool)
        if zone.any():
            sel = np.nonzero(zone)
            sub = [v[sel] for v in (s, n, xr, axr, a, D, W, n_ca, n_cp, out, y, z)]
            vals, can = self._posterior(*sub)
            out[sel] = vals
            canal[sel] = can
        return out.astype(np.float32), canal

    def _posterior(self, s, n, xr, axr, a, D, W, n_ca, n_cp, out, y, z):
        """Posterior elements and the canal on the (1D) subset of pixels near them."""
        S, sp, va = self.S, self.sp, self.va
        soft = va.subject.soft
        ff = float(np.mean(va.vb["ff"]))
        bone = (1 - ff) * S["marrow_water"] + ff * S["fat"]
        b, s_c, s_d = sp.b, sp.s_c, sp.s_d
        npost = n - n_cp
        lam = np.zeros(s.shape, bool)
        spin = np.zeros(s.shape, bool)
        rim = np.zeros(s.shape, bool)
        ped = np.zeros(s.shape, bool)
        dj = np.full(s.shape, 1e3)
        dr = np.full(s.shape, 1e6)
        for i in range(10):
            # spinous process: a plate from the lamina, pointing posteriorly and caudally in the
            # body frame (steep in the thoracic spine), tapering
            beta = np.deg2rad(self.sp_angle[i])
            Lsp = 34.0 if i < 5 else 30.0
            fr = sp.frames[i]
            o = fr.centre + fr.e_v * (-0.25 * b[i]) + fr.e_u * (self.n_cp_level[i] + 1.0)
            dy, dz = y - o[1], z - o[2]
            along = dy * np.cos(beta) - dz * np.sin(beta)
            perp = dy * np.sin(beta) + dz * np.cos(beta)
            hh = 0.5 * b[i] * (1 - 0.45 * np.clip(along / Lsp, 0, 1))
            inside_sp = (along > -3) & (along < Lsp) & (np.abs(perp) < hh) \
                & (axr < (5.0 if i >= 5 else 4.0) - 1.5 * np.clip(along / Lsp, 0, 1))
            spin |= inside_sp
            rim |= inside_sp & ((np.abs(perp) > hh - 1.0) | (along > Lsp - 1.2))
            ds = s - s_c[i]
            lam |= (npost > -1) & (npost < 6) & (np.abs(ds + 0.1 * b[i]) < 0.75 * b[i]) & (axr < W + 8)
            ped |= (((axr - W - 4) / 5.5) ** 2 + ((ds - 0.3 * b[i]) / (0.38 * b[i])) ** 2 < 1) & (n > a - 3) & (n < n_cp + 2)
            dj = np.minimum(dj, np.abs(s - s_d[i] - 0.25 * np.clip(npost, -5, 15) - 4.0))
            dr = np.minimum(dr, (ds + 0.05 * b[i]) ** 2)
        mob = s > 0
        s_s2 = -va.sacrum["len_s1"] - 10.0  # the thecal sac ends at S2; below, the canal holds fat
        flav = (npost > -1) & (npost < 3.5) & (axr < W + 4) & mob & ~lam
        out = np.where(flav, S["ligament"], out)
        inter = (npost > 0) & (npost < 40) & (axr < 2.0) & mob & ~spin
        out = np.where(inter, 0.5 * out + S["ligament"], out)  # interspinous ligament
        # facets: articular pillar lateral to the canal, an oblique joint line at each disc level
        pillar = (axr > W) & (axr < W + 15) & (n > n_cp - 0.35 * D) & (npost < 13) & mob
        out = np.where(pillar, bone, out)
        out = np.where(pillar & (dj < 2.0), S["cortex"] + 0.1 * bone, out)
        out = np.where(pillar & (dj < 1.0), S["joint"], out)
        # foramina between pedicles: fat with a nerve root under each pedicle
        foram = (axr > W - 1) & (axr < W + 9) & (n > a - 1) & (n < n_cp - 2) & mob & ~ped
        out = np.where(foram, S["fat"], out)
        out = np.where(foram & (dr + (n - n_ca - 0.3 * D) ** 2 < 12), S["nerve"], out)
        out = np.where(ped & mob, bone, out)
        out = np.where((lam | spin) & mob, bone, out)
        out = np.where((lam & mob & ((npost < 0.8) | (np.abs(npost - 5.2) < 0.8))) | (rim & mob), S["cortex"], out)
        # sacrum: dorsal plate and median crest
        dors = (~mob) & (npost > 0) & (npost < 7) & (axr < np.interp(s, self.knots, self.c_k) * 0.8)
        out = np.where(dors, bone * 0.9, out)
        out = np.where(dors & ((npost < 0.9) | (npost > 6.1)), S["cortex"], out)
        # canal: bony canal with the thecal sac, cord / conus / cauda, posterior epidural fat
        Wn, Dn = np.maximum(W, 1e-3), np.maximum(D, 1e-3)
        canal = ((axr / Wn) ** 2.5 + (np.abs(n - n_ca - D / 2) / (Dn / 2)) ** 2.5 < 1) & (D > 0.5) & (W > 0.5)
        epi = canal & (n > n_cp - soft["epi_fat"] * np.clip(D / 12, 0, 1)) & (axr < 0.75 * W)
        lat = canal & (axr > 0.82 * W)
        cmid = n_ca + D / 2
        cord = canal & (s > self.s_conus) & (axr < 4.8) & (np.abs(n - cmid) < 3.6)
        tip = canal & (s <= self.s_conus) & (s > self.s_conus - 8) & (np.abs(n - cmid) < 2.5) \
            & (axr < 3.0 * _sig((s - self.s_conus + 8) / 2) + 0.5)
        roots = canal & (s <= self.s_conus) & (n > cmid - 1.0) & (np.sin(xr * 1.5 + 0.05 * s) > 0.72) \
            & (s > -0.5 * va.sacrum["length"])
        sac_sig = np.where(cord | tip, S["cord"], np.where(roots, S["nerve"], S["csf"]))
        sac_sig = np.where(epi | lat | (s < s_s2), S["fat"], sac_sig)
        sac_sig = np.where((s < s_s2) & (np.abs(n - cmid) < 1.5) & (axr < 2.0), S["nerve"], sac_sig)
        out = np.where(canal, sac_sig, out)
        return out, canal


def _trilinear(G: np.ndarray, a, b, c):
    """Trilinear interpolation of grid G at fractional indices (a, b, c), clamped at the edges."""
    out_shape = np.shape(a)
    idx, frac = [], []
    for q, n in zip((a, b, c), G.shape):
        q = np.clip(np.asarray(q, np.float32).ravel(), 0, n - 1.001)
        i0 = q.astype(np.int32)
        idx.append(i0)
        frac.append(q - i0)
    (i, j, k), (fi, fj, fk) = idx, frac
    flat = G.ravel()
    s0, s1 = G.shape[1] * G.shape[2], G.shape[2]
    base = i * s0 + j * s1 + k
    res = np.zeros(base.shape, np.float32)
    for di in (0, 1):
        wi = fi if di else 1 - fi
        for dj in (0, 1):
            wij = wi * (fj if dj else 1 - fj)
            for dk in (0, 1):
                res += wij * (fk if dk else 1 - fk) * flat[base + di * s0 + dj * s1 + dk]
    return res.reshape(out_shape)
