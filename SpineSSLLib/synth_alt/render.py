"""Render one visit of the held-out generator: geometry, object, scanner, ground truth.

1. Geometry: the field of view is placed on the anatomy (top edge inside the protocol's top
   vertebra, bottom edge on the sacral / coccygeal arc), with rectangular matrices, a slice stack
   in one of five in-plane orientation conventions, obliquity and patient rotation / shift.
2. Object: on an oversampled "render" grid, per slice, the surroundings (``body``) on every
   second pixel and bilinearly upsampled, then discs, vertebral bodies and the sacrum inside
   their windows at 2-3 positions across the slab (slice profile), times the coil profile.
3. Scanner: 2D FFT, truncation to the acquired matrix (Gibbs ringing, lower phase resolution),
   apodisation, phase ghosts, complex noise, zero-filled reconstruction to the output matrix;
   magnitude (Rician) or clipped real part (Gaussian).
4. Truth: per level the centroid of the implicit body (dense local sampling), the corner points
   of its mid-sagittal outline, the slices its label occupies; levels whose centroid lies outside
   the image are left out of the truth (listed in ``outside``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..synth.labels import CANAL_LABEL, SACRUM_LABEL, disc_label, vertebra_label
from .body import Body, _trilinear
from .protocol import Protocol, image_axes, rot, signal, tissue_signals
from .shapes import (Spine, disc_field, disc_geometry, sacral_segments, sacrum_field, vb_field, vb_params)
from .subject import CHAIN_DISCS, MOBILE, Visit

TABLE = np.array([0.0, 40.0, -40.0])  # LPS of the S1 endplate centre before the patient's shift


@dataclass
class Geometry:
    affine: np.ndarray  # recon voxel (i, j, k, 1) -> LPS, slice index ascending along i x j
    shape: tuple[int, int, int]  # (K, Nj, Ni)
    acq: tuple[int, int]  # acquired (Mj, Mi)
    render: tuple[int, int]  # render grid (Rj, Ri)
    Rb: np.ndarray
    T: np.ndarray

    def to_body(self, p):
        return (np.asarray(p) - self.T) @ self.Rb

    def to_lps(self, p):
        return np.asarray(p) @ self.Rb.T + self.T


@dataclass
class Rendered:
    array: np.ndarray  # (K, Nj, Ni) float32 magnitude (CSF ~ 1 before storage scaling)
    affine: np.ndarray
    labels: np.ndarray  # (K, Nj, Ni) uint16, SPIDER numbering
    levels: dict  # name -> dict(centroid, corners, slice_range, mid_slice)
    discs: dict  # name -> centroid LPS
    outside: list
    visible: list
    info: dict


def _even(x) -> int:
    return int(2 * max(1, round(float(x) / 2)))


def geometry(spine: Spine, p: Protocol, max_matrix: int) -> Geometry:
    Rb, T = rot(p.body_rot), TABLE + p.body_shift
    lps = lambda q: Rb @ np.asarray(q) + T
    e_i, e_j = image_axes(p)
    nrm = np.cross(e_i, e_j)
    si_is_i = abs(e_i[2]) > abs(e_j[2])
    e_si, e_ap = (e_i, e_j) if si_is_i else (e_j, e_i)
    ti = MOBILE.index(p.top_vertebra)
    top_b = spine.frames[ti].to_body(0.0, (p.top_frac - 0.5) * 2 * spine.b[ti], 0.0)
    bot_b = spine.point(-min(p.bottom_s, -spine.s[0] - 5))
    t1, t2 = lps(top_b) @ e_si, lps(bot_b) @ e_si
    lo_si, fov_si = min(t1, t2), abs(t1 - t2)
    n_si = int(np.clip(16 * round(fov_si / p.spacing / 16), 128, max_matrix))
    d = fov_si / n_si
    pts = [lps(spine.frames[i].centre) for i in range(ti, 10)] + [lps(spine.point(-15.0)), lps(bot_b)]
    ap = np.array([q @ e_ap for q in pts])
    need = max(fov_si * p.aspect, ap.max() - ap.min() + 140.0, 150.0)
    n_ap = int(np.clip(16 * np.ceil(need / d / 16), 128, max_matrix))
    fov_ap = n_ap * d
    mid = (ap.max() + ap.min()) / 2
    if e_ap @ np.array([0.0, -1.0, 0.0]) > 0:  # index runs anteriorly: anterior edge at the high end
        lo_ap = mid + p.ap_frac * fov_ap - fov_ap
    else:
        lo_ap = mid - p.ap_frac * fov_ap
    lo_ap = float(np.clip(lo_ap, ap.max() + 50 - fov_ap, ap.min() - 50))  # keep the column inside
    dk = p.thickness * p.gap
    K = int(np.clip(round(p.coverage / dk), 9, 25))
    lat = lps(spine.frames[7].centre + np.array([p.lateral_offset, 0.0, 0.0])) @ nrm
    origin = e_si * lo_si + e_ap * lo_ap + nrm * (lat - (K - 1) / 2 * dk)
    Ni, Nj = (n_si, n_ap) if si_is_i else (n_ap, n_si)
    A = np.eye(4)
    A[:3, 0], A[:3, 1], A[:3, 2], A[:3, 3] = e_i * d, e_j * d, nrm * dk, origin
    N = {"j": Nj, "i": Ni}
    f_ax, p_ax = ("i", "j") if p.phase_axis == 0 else ("j", "i")
    M = {f_ax: min(N[f_ax], max(64, _even(N[f_ax] / p.zero_fill))),
         p_ax: min(N[p_ax], max(64, _even(N[p_ax] / p.zero_fill * p.phase_frac)))}
    R = {ax: max(M[ax], _even(min(1.25 * M[ax], N[ax] * d / 0.6))) for ax in ("i", "j")}
    return Geometry(A, (K, Nj, Ni), (M["j"], M["i"]), (R["j"], R["i"]), Rb, T)


def _lerp_up(c: np.ndarray, Rj: int, Ri: int) -> np.ndarray:
    """Bilinear upsampling of values sampled at every 2nd pixel (last two axes) to (Rj, Ri)."""
    def axis(n_out, n_in):
        x = np.arange(n_out) / 2.0
        i0 = np.clip(np.floor(x).astype(int), 0, n_in - 1)
        i1 = np.clip(i0 + 1, 0, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)
    j0, j1, tj = axis(Rj, c.shape[-2])
    i0, i1, ti = axis(Ri, c.shape[-1])
    r = c[..., j0, :] * (1 - tj[:, None]) + c[..., j1, :] * tj[:, None]
    return (r[..., i0] * (1 - ti) + r[..., i1] * ti).astype(np.float32)


class _Painter:
    """Object rendering on the render grid of one scan."""

    def __init__(self, va: Visit, p: Protocol, spine: Spine, g: Geometry):
        from .subject import rng

        self.va, self.p, self.sp, self.g = va, p, spine, g
        self.S = tissue_signals(p)
        self.body = Body(spine, va, self.S, p.seed)
        nu = va.nucleus
        self.s_nuc = [float(signal(p, nu["pd"][j], 1200.0, nu["t2"][j])) * p.tissue_jitter["disc"] for j in range(10)]
        m = va.tex_mix
        s = va.subject
        self.tex = np.sqrt(1 - m) * s.tex + np.sqrt(m) * s.tex_new
        self.vbp = [vb_params(va, i) for i in range(10)]
        self.dgeo = [disc_geometry(spine, j) for j in range(10)]
        self.rng = rng(p.seed, 1)
        K, _, _ = g.shape
        Rj, Ri = g.render
        A = g.affine
        fov_i = np.linalg.norm(A[:3, 0]) * g.shape[2]
        fov_j = np.linalg.norm(A[:3, 1]) * g.shape[1]
        self.e_i, self.e_j = A[:3, 0] / np.linalg.norm(A[:3, 0]), A[:3, 1] / np.linalg.norm(A[:3, 1])
        self.nrm = A[:3, 2] / np.linalg.norm(A[:3, 2])
        self.dk = np.linalg.norm(A[:3, 2])
        self.bi = g.Rb.T @ self.e_i * (fov_i / Ri)  # body-frame step per render column
        self.bj = g.Rb.T @ self.e_j * (fov_j / Rj)
        self.nb = g.Rb.T @ self.nrm
        self.ri, self.rj = fov_i / Ri, fov_j / Rj
        self.structs = self._structures()

    def _structures(self):
        """(kind, index, frame, cloud of body points bounding it, label) of every structure."""
        out = []
        sp = self.sp
        sgn = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)

        def box(fr, ru, rv, rw):
            return fr.centre + (sgn * [ru, rv, rw]) @ np.stack([fr.e_u, fr.e_v, fr.e_w])

        for j in range(10):
            gg = self.dgeo[j]
            fr = sp.disc_frames[j]
            out.append(("disc", j, fr, box(fr, gg["a"] + gg["bulge"] + 2, gg["h"] / 2 + 4, gg["c"] + 2),
                        disc_label(CHAIN_DISCS[j])))
        for i in range(10):
            q = self.vbp[i]
            fr = sp.frames[i]
            out.append(("vb", i, fr, box(fr, q["a"] + q["osteo"] + 4, q["b"] * 1.25 + 3, q["c"] + 4),
                        vertebra_label(MOBILE[i])))
        sac = self.va.sacrum
        pts = []
        for s_ in np.linspace(6, -(sac["length"] + sp.L_cocc + 4), 14):
            fr = sp.frame(float(s_))
            pts.append(box(fr, sac["a"] + sac["promontory"] + 6, 4.0, sac["c"] + 4))
        out.append(("sacrum", 10, sp.frame(0.0), np.concatenate(pts), SACRUM_LABEL))
        return out

    def paint(self):
        """The object on the render grid, all slices: (volume (K, Rj, Ri), labels, coil profile)."""
        g, p = self.g, self.p
        K = g.shape[0]
        Rj, Ri = g.render
        bases = np.array([g.to_body(g.affine[:3, 3] + self.nrm * self.dk * k) for k in range(K)])
        ic, jc = np.arange(0, Ri, 2, dtype=np.float32), np.arange(0, Rj, 2, dtype=np.float32)
        bg_c = np.empty((K, len(jc), len(ic)), np.float32)
        canal_c = np.empty((K, len(jc), len(ic)), bool)
        coil_c = np.empty((K, len(jc), len(ic)), np.float32)
        step = max(1, int(2e5 // (len(ic) * len(jc))))  # surroundings a few slices at a time (memory)
        for k0 in range(0, K, step):
            X, Y, Z = ((bases[k0:k0 + step, a, None, None] + self.bi[a] * ic[None, None, :]
                        + self.bj[a] * jc[None, :, None]).astype(np.float32) for a in range(3))
            bg_c[k0:k0 + step], canal_c[k0:k0 + step] = self.body.render(X, Y, Z)
            coil_c[k0:k0 + step] = self.coil(X, Y, Z)
        coil = _lerp_up(coil_c, Rj, Ri)
        n_sub = 2 if p.thickness <= 4.0 else 3
        offs = np.linspace(-0.35, 0.35, n_sub) * p.thickness
        wts = (np.array([0.5, 0.5]) if n_sub == 2 else np.array([0.3, 0.4, 0.3])).astype(np.float32)
        imgs = np.repeat(_lerp_up(bg_c, Rj, Ri)[:, None], n_sub, axis=1)
        lab = np.where(canal_c[:, np.arange(Rj) // 2][:, :, np.arange(Ri) // 2], CANAL_LABEL, 0).astype(np.uint16)
        for kind, idx, fr, cloud, label in self.structs:
            rel = cloud[None] - bases[:, None]  # (K, P, 3)
            dist = rel @ self.nb
            ks = np.nonzero((dist.min(1) < p.thickness / 2 + 1) & (dist.max(1) > -p.thickness / 2 - 1))[0]
            if not len(ks):
                continue
            ci, cj = rel[ks] @ self.bi / self.ri**2, rel[ks] @ self.bj / self.rj**2
            i0, i1 = int(max(0, np.floor(ci.min()))), int(min(Ri, np.ceil(ci.max()) + 1))
            j0, j1 = int(max(0, np.floor(cj.min()))), int(min(Rj, np.ceil(cj.max()) + 1))
            if i0 >= i1 or j0 >= j1:
                continue
            iw, jw = np.arange(i0, i1, dtype=np.float32), np.arange(j0, j1, dtype=np.float32)
            chunk = max(1, int(4e5 // (n_sub * len(iw) * len(jw))))
            for c0 in range(0, len(ks), chunk):
                kc = ks[c0:c0 + chunk]
                b0 = bases[kc][:, None, :] + self.nb[None, None, :] * offs[None, :, None]  # (nk, n_sub, 3)
                if kind == "sacrum":
                    x, y, z = ((b0[:, :, a, None, None] + self.bi[a] * iw + self.bj[a] * jw[:, None]).astype(np.float32)
                               for a in range(3))
                    m, val, m_lab = self._sacrum(x, y, z)
                else:
                    d0 = b0 - fr.centre
                    u, v, w = (((d0 @ e)[:, :, None, None] + (self.bi @ e) * iw + (self.bj @ e) * jw[:, None])
                               .astype(np.float32) for e in (fr.e_u, fr.e_v, fr.e_w))
                    if kind == "disc":
                        m, val = disc_field(self.dgeo[idx], self.va.nucleus, idx, u, v, w, self.S, self.s_nuc[idx])
                    else:
                        m, val = self._vb(idx, u, v, w)
                    m_lab = m
                win = imgs[kc, :, j0:j1, i0:i1]
                imgs[kc, :, j0:j1, i0:i1] = m * val + (1 - m) * win
                if label:
                    msum = (m_lab * wts[None, :, None, None]).sum(1)
                    lw = lab[kc, j0:j1, i0:i1]
                    lab[kc, j0:j1, i0:i1] = np.where(msum > 0.5, label, lw)
        vol = np.einsum("ksji,s->kji", imgs, wts) * coil
        return vol.astype(np.float32), lab

    def _marrow(self, tex_i: int, ff0: float, tex_amp: float, xu, xv, xw, islands):
        G = self.tex[tex_i]
        ff = ff0 + tex_amp * _trilinear(G, (xu + 1) / 2 * (G.shape[0] - 1), (xv + 1) / 2 * (G.shape[1] - 1),
                                        (xw + 1) / 2 * (G.shape[2] - 1))
        water = np.zeros_like(ff)
        for v_i, pos, rad, kind in islands:
            if v_i != tex_i:
                continue
            r = rad / 30.0
            gss = np.exp(-((xu - pos[0]) ** 2 + (xv - pos[1]) ** 2 + (xw - pos[2]) ** 2) / (2 * r * r))
            if kind > 0:
                ff = ff + 0.45 * gss
            else:
                ff, water = ff + 0.2 * gss, water + 0.6 * gss
        return ff, water

    def _vb(self, i: int, u, v, w):
        S, va = self.S, self.va
        m, sd, (xu, xv, xw) = vb_field(self.vbp[i], u, v, w)
        ff, water = self._marrow(i, float(va.vb["ff"][i]), float(va.vb["tex_amp"][i]), xu, xv, xw, va.islands)
        nu = va.nucleus
        for j, sign in ((i - 1, 1.0), (i, -1.0)):  # disc above (superior endplate), disc below
            if 0 <= j < 10 and nu["modic"][j] > 0:
                band = np.exp(-np.clip(1 - sign * xv, 0, None) / 0.16) * (np.abs(xu) < 0.8)
                if nu["modic"][j] == 1:
                    water, ff = water + 0.8 * band, ff - 0.2 * band
                else:
                    ff = ff + 0.35 * band
        ff = np.clip(ff, 0.02, 0.97)
        val = (1 - ff) * S["marrow_water"] + ff * S["fat"] + water * S["oedema"]
        val = val + 0.4 * S["fat"] * np.exp(-((xu - 0.82) / 0.1) ** 2 - (xv / 0.09) ** 2 - (xw / 0.12) ** 2)
        val = val * (1 - 0.85 * np.exp(-np.clip(sd, 0, None) / 0.8))
        return m, val

    def _sacrum(self, x, y, z):
        S, va, sp = self.S, self.va, self.sp
        s, n, xr = sp.sacral_coords(x, y, z)
        m, sd, (xn, xs, xw) = sacrum_field(va, s, n, xr)
        ff, water = self._marrow(10, float(va.sacrum["ff"]), float(va.vb["tex_amp"][9]), xn, xs, xw, va.islands)
        ff = np.clip(ff, 0.02, 0.97)
        val = (1 - ff) * S["marrow_water"] + ff * S["fat"] + water * S["oedema"]
        a_s = va.sacrum["a"]
        for q, sb in enumerate(sacral_segments(va)):
            band = np.exp(-((s - sb) / 0.8) ** 2) * (np.abs(n) < 0.6 * a_s) * (np.abs(xr) < 0.5 * va.sacrum["c"])
            if q == 0:
                r = va.sacrum["remnant"]
                val = val * (1 - band) + band * (r * 0.5 * self.s_nuc[9] + (1 - r) * S["cortex"])
            else:
                val = val * (1 - 0.7 * band)
        val = val * (1 - 0.85 * np.exp(-np.clip(sd, 0, None) / 0.8))
        m_lab = m * (s >= -va.sacrum["len_s1"]) * (s < 5)
        return m, val, m_lab

    def coil(self, X, Y, Z):
        """Receive profile of a posterior array of ``coils`` elements along the table (sum of
        squares), relative to its value at the L3 centre, partly flattened by prescan
        normalisation."""
        p, g, sp = self.p, self.g, self.sp
        ref = g.to_lps(sp.frames[7].centre)
        back = g.to_lps(sp.frames[7].centre + np.array([0.0, sp.a[7] + 85.0, 0.0]))
        elems = [np.array([ref[0], back[1], ref[2] + (q - (p.coils - 1) / 2) * p.coil_spacing]) for q in range(p.coils)]

        def sos(pts):
            return np.sqrt(sum(1.0 / (1 + ((pts - e) ** 2).sum(-1) / p.coil_depth**2) ** 3 for e in elems))

        prof = sos(g.to_lps(np.stack([X, Y, Z], -1))) / sos(ref[None])[0]
        return (prof ** (1 - p.prescan_norm)).astype(np.float32)


def _resize(a: np.ndarray, Nj: int, Ni: int) -> np.ndarray:
    """Linear resampling of the last two axes onto (Nj, Ni) samples over the same extent."""
    def axis(n_out, n_in):
        x = np.arange(n_out) * (n_in / n_out)
        i0 = np.clip(np.floor(x).astype(int), 0, n_in - 1)
        return i0, np.clip(i0 + 1, 0, n_in - 1), (x - i0).astype(np.float32)
    j0, j1, tj = axis(Nj, a.shape[-2])
    i0, i1, ti = axis(Ni, a.shape[-1])
    r = a[..., j0, :] * (1 - tj[:, None]) + a[..., j1, :] * tj[:, None]
    return r[..., i0] * (1 - ti) + r[..., i1] * ti


def scanner(vol: np.ndarray, p: Protocol, g: Geometry, r: np.random.Generator, csf: float) -> np.ndarray:
    """k-space truncation to the acquired matrix, apodisation, ghosts, zero-filled
    reconstruction, noise at the acquired resolution, magnitude or clipped real part."""
    from scipy import fft as sfft

    K, Rj, Ri = vol.shape
    Mj, Mi = g.acq
    _, Nj, Ni = g.shape
    kj = np.abs(np.fft.fftfreq(Mj) * 2)
    ki = np.arange(Mi // 2 + 1) / (Mi / 2)
    w = np.ones((Mj, Mi // 2 + 1), np.float32)
    if p.apod == "hamming":
        w = (1 - p.apod_strength * 0.46 * (1 - np.cos(np.pi * kj)))[:, None] * \
            (1 - p.apod_strength * 0.46 * (1 - np.cos(np.pi * ki)))[None, :]
    elif p.apod == "fermi":
        kr = np.sqrt(kj[:, None] ** 2 + ki[None, :] ** 2)
        w = 1 / (1 + np.exp((kr - 0.92) / (0.02 + 0.05 * p.apod_strength)))
    if p.ghost > 0:  # periodic k-line modulation along the phase-encoding axis (breathing ghosts)
        period = r.uniform(3.0, 9.0)
        if p.phase_axis == 0:
            q = np.abs(np.fft.fftfreq(Mj) * Mj)
            w = w * (1 + p.ghost * np.cos(2 * np.pi * q / period))[:, None]
        else:
            w = w * (1 + p.ghost * np.cos(2 * np.pi * np.arange(Mi // 2 + 1) / period))[None, :]
    w = w.astype(np.float32)
    sigma = np.float32(csf / p.snr)
    n_r = r.standard_normal((K, Mj, Mi), dtype=np.float32)
    n_i = r.standard_normal((K, Mj, Mi), dtype=np.float32) if p.noise == "rician" else None
    out = np.empty((K, Nj, Ni), np.float32)
    rows_r, rows_n = np.r_[0:Mj // 2, Rj - Mj // 2:Rj], np.r_[0:Mj // 2, Nj - Mj // 2:Nj]
    for k0 in range(0, K, 4):  # a few slices at a time (memory)
        F = sfft.rfft2(vol[k0:k0 + 4], axes=(1, 2), norm="forward", workers=1)[:, rows_r, :Mi // 2 + 1] * w
        P = np.zeros((len(F), Nj, Ni // 2 + 1), np.complex64)
        P[:, rows_n, :Mi // 2 + 1] = F
        x = sfft.irfft2(P, s=(Nj, Ni), axes=(1, 2), norm="forward", workers=1).astype(np.float32)
        nr = _resize(n_r[k0:k0 + 4], Nj, Ni) * sigma
        if n_i is not None:
            out[k0:k0 + 4] = np.sqrt((x + nr) ** 2 + (_resize(n_i[k0:k0 + 4], Nj, Ni) * sigma) ** 2)
        else:
            out[k0:k0 + 4] = np.clip(x + nr, 0, None)
    return out


def render_visit(va: Visit, p: Protocol, max_matrix: int) -> Rendered:
    from . import truth
    from .subject import rng

    spine = Spine(va)
    g = geometry(spine, p, max_matrix)
    painter = _Painter(va, p, spine, g)
    K, Nj, Ni = g.shape
    Rj, Ri = g.render
    vol, lab = painter.paint()
    arr = scanner(vol, p, g, rng(p.seed, 2), painter.S["csf"])
    del vol
    jj = np.clip(np.round(np.arange(Nj) * Rj / Nj).astype(int), 0, Rj - 1)
    ii = np.clip(np.round(np.arange(Ni) * Ri / Ni).astype(int), 0, Ri - 1)
    labels = lab[:, jj][:, :, ii]
    levels, discs, outside, visible = truth.levels(spine, va, g, labels)
    info = {"matrix": [Nj, Ni], "acquired": list(g.acq), "render": list(g.render),
            "pixel_mm": round(float(np.linalg.norm(g.affine[:3, 0])), 4), "slices": K,
            "slice_spacing_mm": round(float(np.linalg.norm(g.affine[:3, 2])), 3), "csf_signal": painter.S["csf"]}
    return Rendered(arr, g.affine, labels, levels, discs, outside, visible, info)
