"""Tissue labels -> an MR-like image, drawn anew for every training sample.

1. tissue intensities: a T2- (40 %), T1- (17 %) or fat-suppressed-T2-like (18 %) table jittered
   per tissue, or (25 %) every tissue uniform in [0, 1] (SynthSeg-style); marrow and discs vary
   per body through the alternative-marrow and nucleus tissues of ``render``;
2. partial volume: the mean of the two sub-slices of each slice;
3. texture: two smooth random fields (fine and coarse) modulate each tissue by its own amount;
   in half the samples the soft tissue is also broken into random patches of random intensity
   (``_clutter``);
4. native pixels: every label pixel repeated factor x factor times, then a point-spread blur or
   an unsharp-mask sharpening, a smooth multiplicative bias field (and sometimes a posterior
   surface-coil fall-off), inversion (8 %), Rician noise;
5. after resampling onto the detector grid (``cases``): a random intensity curve - a gamma, or
   (12 %) a random non-monotone piecewise-linear curve.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .render import TISSUES

_T2 = dict(air=0.0, fat=0.85, muscle=0.22, viscera=0.45, fluid=1.0, gas=0.02, vessel=0.05, csf=1.0, neural=0.35,
           epidural_fat=0.8, ligament=0.06, posterior_bone=0.45, cortex=0.08, annulus=0.22, nucleus=0.9, marrow=0.5,
           marrow_alt=0.7, sacral=0.5, lesion=0.95)
_T1 = dict(air=0.0, fat=0.95, muscle=0.3, viscera=0.4, fluid=0.1, gas=0.02, vessel=0.1, csf=0.12, neural=0.35,
           epidural_fat=0.9, ligament=0.06, posterior_bone=0.7, cortex=0.06, annulus=0.3, nucleus=0.38, marrow=0.7,
           marrow_alt=0.85, sacral=0.75, lesion=0.85)
_STIR = dict(air=0.0, fat=0.08, muscle=0.2, viscera=0.4, fluid=1.0, gas=0.02, vessel=0.05, csf=1.0, neural=0.35,
             epidural_fat=0.1, ligament=0.05, posterior_bone=0.15, cortex=0.05, annulus=0.2, nucleus=0.85, marrow=0.18,
             marrow_alt=0.32, sacral=0.18, lesion=0.9)
CONTRASTS = {"t2": _T2, "t1": _T1, "stir": _STIR}


def tissue_means(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(intensity per tissue, contrast name)."""
    p = rng.random()
    if p < 0.25:
        mu = rng.uniform(0.0, 1.0, len(TISSUES))
        mu[0] = rng.uniform(0.0, 0.25) if rng.random() < 0.8 else rng.uniform(0.0, 1.0)
        return mu, "random"
    name = "t2" if p < 0.65 else ("t1" if p < 0.82 else "stir")
    base = np.array([CONTRASTS[name][t] for t in TISSUES])
    mu = np.clip(base * rng.uniform(0.7, 1.35, len(TISSUES)) + rng.normal(0, 0.05, len(TISSUES)), 0.0, 1.5)
    return mu, name


def _lin(n: int, m: int, step: int) -> np.ndarray:
    """(n, m) linear-interpolation weights from m coarse samples (spacing ``step``) to n pixels."""
    x = np.arange(n, dtype=np.float32) / step
    i0 = np.minimum(x.astype(int), m - 2)
    f = x - i0
    W = np.zeros((n, m), dtype=np.float32)
    W[np.arange(n), i0] = 1 - f
    W[np.arange(n), i0 + 1] = f
    return W


def _field(rng, shape, sigma_px):
    """A smooth random field (S, J, I) of unit standard deviation and correlation length
    ``sigma_px``: white noise on a grid ``step`` times coarser, smoothed, bilinearly upsampled."""
    S, J, I = shape
    step = max(1, int(sigma_px / 2))
    small = rng.standard_normal((S, J // step + 2, I // step + 2)).astype(np.float32)
    small = ndimage.gaussian_filter(small, (0.0, sigma_px / step, sigma_px / step))
    if step > 1:
        small = np.einsum("ja,sab,ib->sji", _lin(J, small.shape[1], step), small, _lin(I, small.shape[2], step),
                          optimize=True)
    else:
        small = small[:, :J, :I]
    return small / max(float(small.std()), 1e-6)


def intensities(tissue: np.ndarray, mu: np.ndarray, rng: np.random.Generator, label_mm: float) -> np.ndarray:
    """(S, 2, J, I) tissue labels -> (S, J, I) float32 at label resolution (partial volume,
    texture)."""
    S, _, J, I = tissue.shape
    fine = _field(rng, (S, J, I), rng.uniform(0.5, 2.0) / label_mm)
    coarse = _field(rng, (S, J, I), rng.uniform(3.0, 12.0) / label_mm)
    a_fine = rng.uniform(0.0, 0.2, len(TISSUES)) * (rng.random(len(TISSUES)) < 0.7)
    a_coarse = rng.uniform(0.0, 0.25, len(TISSUES)) * (rng.random(len(TISSUES)) < 0.6)
    out = np.zeros((S, J, I), dtype=np.float32)
    clutter = _clutter(rng, (S, J, I), label_mm) if rng.random() < CLUTTER_P else None
    for s in range(2):
        lab = tissue[:, s]
        v = mu[lab] * (1.0 + a_fine[lab] * fine + a_coarse[lab] * coarse)
        if clutter is not None:
            patch, level = clutter
            soft = np.isin(lab, _SOFT)
            v = np.where(soft & patch, level[lab], v)
        out += v
    return np.clip(out / 2, 0.0, None)


CLUTTER_P = 0.5
"""Share of samples whose soft tissue (fat, muscle, viscera) is broken into random patches."""
_SOFT = np.array([TISSUES.index(t) for t in ("fat", "muscle", "viscera")])


def _clutter(rng, shape, label_mm):
    """Random patches over the soft tissue (bowel, fat lobules, muscle bellies of other scans; the
    spine's surroundings are rarely the uniform tissue of a label model): a smooth random field at
    a 4-15 mm correlation length thresholded at a random quantile, the patches given one random
    intensity per tissue (SynthSeg-style).  Returns (patch mask (S, J, I), intensity per tissue)."""
    f = _field(rng, shape, rng.uniform(4.0, 15.0) / label_mm)
    patch = f > np.quantile(f[:, ::4, ::4], rng.uniform(0.3, 0.8))
    return patch, rng.uniform(0.0, 1.0, len(TISSUES)).astype(np.float32)


def acquire(img: np.ndarray, factor: int, rng: np.random.Generator, upsample: bool = True) -> np.ndarray:
    """Label-resolution image (S, J, I) -> native image (S, J*f, I*f): PSF / sharpening, bias
    field, inversion, Rician noise.  Intensity scale arbitrary (as scanners).  ``upsample=False``
    (training samples, 4x cheaper when f = 2) keeps the label pixels and gives the noise the
    standard deviation that averaging f x f native pixels would leave."""
    noise_scale = 1.0
    if factor > 1 and upsample:
        img = np.repeat(np.repeat(img, factor, axis=1), factor, axis=2)
    elif factor > 1:
        noise_scale, factor = 1.0 / factor, 1
    S, J, I = img.shape
    r = rng.random()
    if r < 0.6:
        img = ndimage.gaussian_filter(img, (0.0, *(rng.uniform(0.3, 1.2) * factor,) * 2))
    elif r < 0.8:
        blur = ndimage.gaussian_filter(img, (0.0, *(rng.uniform(0.8, 2.0) * factor,) * 2))
        img = np.clip(img + rng.uniform(0.3, 1.2) * (img - blur), 0.0, None)
    # bias: a smooth log-field from a coarse random grid, and sometimes a posterior coil fall-off
    C = rng.normal(0.0, rng.uniform(0.0, 0.3), (4, 4)) / (1.0 + np.add.outer(np.arange(4), np.arange(4)))
    yj, xi = np.linspace(-1, 1, J), np.linspace(-1, 1, I)
    log_b = np.vander(yj, 4, increasing=True) @ C @ np.vander(xi, 4, increasing=True).T  # cubic polynomial
    img = img * np.exp(log_b).astype(np.float32)[None]
    if rng.random() < 0.4:
        depth = np.arange(I, dtype=np.float32)[None, None, :] / I  # columns run anterior -> posterior
        img = img * np.exp(-rng.uniform(0.5, 2.5) * (1.0 - depth)).astype(np.float32)
    if rng.random() < 0.08:
        img = float(np.percentile(img, 99.5)) - img
        img = np.clip(img, 0.0, None)
    ref = float(np.percentile(img, 99)) or 1.0
    sd = rng.uniform(0.005, 0.08) * ref * noise_scale
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sd)
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sd)
    img = np.sqrt((img + n1) ** 2 + n2**2)
    return (img * rng.uniform(100.0, 3000.0)).astype(np.float32)


def remap(x: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random intensity curve on a normalised grid image (values ~[0, 1.5]); pixels outside the
    field of view (``inside`` False) stay 0 as at inference."""
    r = rng.random()
    if r < 0.12:  # non-monotone: piecewise linear through random knots
        knots = np.linspace(0.0, 1.5, 6)
        vals = rng.uniform(0.0, 1.2, 6)
        y = np.interp(x, knots, vals)
    elif r < 0.6:
        y = np.power(np.clip(x, 0.0, None), rng.uniform(0.5, 2.0))
    else:
        y = x
    return np.where(inside, y, 0.0).astype(np.float32)
