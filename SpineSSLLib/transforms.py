"""Volume augmentation for both training tasks (the paper's §3.2), batched on the training device.

One ``VolumeAugment`` draws, per volume, a rotation (in-plane, +-``rotate_deg``), a translation
(+-``translate_x`` columns, +-``translate_y`` rows, +-``translate_z`` slices, in pixels of the
full-size volume and scaled to the size the batch has), an in-plane scale in ``scale`` and a
multiplicative intensity change (+-``intensity``), applies them as one MONAI ``AffineTransform``
resampling (matrices from MONAI's ``create_rotate/translate/scale``), then the slice-order flip.
Pretraining couples the flip of the two volumes of a pair (``augment_pairs``: the paper's "done on
a per VB pair basis"); grading draws it per disc (``augment_volumes``).  Random numbers come from
torch's global CPU generator, which checkpoints save, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class AugmentConfig:
    """The paper's augmentations; translations in pixels/slices of the full-size volume."""

    rotate_deg: float = 15.0
    translate_x: float = 48.0       # columns (anterior-posterior)
    translate_y: float = 24.0       # rows (superior-inferior)
    translate_z: float = 2.0        # slices
    scale: tuple = (0.9, 1.1)
    intensity: float = 0.2          # multiplicative: v * (1 + U(-0.2, 0.2))
    flip: bool = True               # slice-order reflection
    enabled: bool = True
    # appearance (off in the paper's recipe): contrast curves, coil bias and noise of other scanners
    gamma: float = 0.0              # v ** exp(U(-g, g)) (values stay in [0, 1])
    bias: float = 0.0               # x (1 + b * smooth in-plane field), a random plane + bowl per volume
    noise: float = 0.0              # + N(0, noise) where the volume is not zero padding

    def to_dict(self) -> dict:
        return asdict(self)


class VolumeAugment:
    """Random augmentation of ``(N, 1, S, H, W)`` batches; ``full_hw`` is the in-plane size the
    translations are given in (224x224 for vertebral bodies, 112x224 for discs), ``hw`` the size
    the batches have (the network's working size)."""

    def __init__(self, config: AugmentConfig, hw: tuple[int, int], full_hw: tuple[int, int] = (224, 224)):
        self.config, self.hw = config, tuple(hw)
        self.px = hw[1] / full_hw[1], hw[0] / full_hw[0]   # (columns, rows) scale
        self._tf = None

    def matrices(self, u) -> np.ndarray:
        """(N, 4, 4) voxel-space affines (zero-centred) from uniform numbers ``u`` (N, 5):
        translate @ rotate (in-plane, about the slice axis) @ scale (in-plane) — MONAI's
        ``create_translate(3, t) @ create_rotate(3, (r, 0, 0)) @ create_scale(3, (1, s, s))``, built
        for the whole batch at once (the same numbers: tested)."""
        c = self.config
        p = np.asarray(u, dtype=np.float64).reshape(-1, 5)
        rot = (2 * p[:, 0] - 1) * math.radians(c.rotate_deg)
        sc = c.scale[0] + p[:, 4] * (c.scale[1] - c.scale[0])
        cos, sin = np.cos(rot) * sc, np.sin(rot) * sc
        out = np.zeros((len(p), 4, 4))
        out[:, 0, 0] = out[:, 3, 3] = 1.0
        out[:, 1, 1], out[:, 1, 2], out[:, 2, 1], out[:, 2, 2] = cos, -sin, sin, cos
        out[:, 0, 3] = (2 * p[:, 1] - 1) * c.translate_z
        out[:, 1, 3] = (2 * p[:, 2] - 1) * c.translate_y * self.px[1]
        out[:, 2, 3] = (2 * p[:, 3] - 1) * c.translate_x * self.px[0]
        return out

    def apply(self, x, u, flip):
        """Augment ``x`` (N, 1, S, H, W) with uniform numbers ``u`` (N, 6) and flags ``flip`` (N,)."""
        import torch
        from monai.networks.layers import AffineTransform

        if self._tf is None:
            self._tf = AffineTransform(normalized=False, mode="bilinear", padding_mode="zeros", zero_centered=True)
        xf = x.float().contiguous()
        theta = torch.as_tensor(self.matrices(u[:, :5].numpy()), dtype=torch.float32, device=x.device)
        y = self._tf(xf, theta)
        gain = (1 + (2 * u[:, 5] - 1) * self.config.intensity).to(device=x.device, dtype=torch.float32)
        y = y * gain.view(-1, 1, 1, 1, 1)
        y = torch.where(flip.to(x.device).view(-1, 1, 1, 1, 1), torch.flip(y, dims=(2,)), y)
        y = self._appearance(y)
        return y.to(x.dtype)

    def _appearance(self, y):
        """Gamma, a smooth multiplicative bias field and noise (each only when configured, so the
        random stream of a configuration without them is unchanged)."""
        import torch

        c, n = self.config, y.shape[0]
        if c.gamma:
            g = torch.exp((2 * torch.rand(n, dtype=torch.float64) - 1) * c.gamma).to(y.device, torch.float32)
            y = y.clamp_min(0).pow(g.view(-1, 1, 1, 1, 1))
        if c.bias:
            k = (2 * torch.rand(n, 4, dtype=torch.float64) - 1).to(y.device, torch.float32)
            h, w = y.shape[-2:]
            r = torch.linspace(-1, 1, h, device=y.device).view(1, h, 1)
            q = torch.linspace(-1, 1, w, device=y.device).view(1, 1, w)
            field = k[:, 0, None, None] * r + k[:, 1, None, None] * q + k[:, 2, None, None] * (r * r + q * q - 0.66) \
                + k[:, 3, None, None] * r * q
            y = y * (1 + c.bias * field / 2).clamp_min(0.2).view(n, 1, 1, h, w)
        if c.noise:
            if y.device.type == "cuda":  # drawn on the GPU from a seed taken off the CPU stream: a
                # batch's noise is ~10^7 numbers, more CPU time than the GPU step (issue #17)
                seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
                gen = torch.randn(y.shape, dtype=torch.float32, device=y.device,
                                  generator=torch.Generator(device=y.device).manual_seed(seed))
            else:
                gen = torch.randn(y.shape, dtype=torch.float32)
            y = y + (y != 0) * c.noise * gen
        return y

    def _flips(self, n: int):
        import torch

        return (torch.rand(n) < 0.5) if self.config.flip else torch.zeros(n, dtype=torch.bool)

    def augment_volumes(self, x):
        """Every draw per volume, the flip included."""
        import torch

        if not self.config.enabled:
            return x
        u = torch.rand(x.shape[0], 6, dtype=torch.float64)
        return self.apply(x, u, self._flips(x.shape[0]))

    def augment_pairs(self, a, b):
        """Geometry and intensity per volume; one flip per pair, applied to both volumes."""
        import torch

        if not self.config.enabled:
            return a, b
        n = a.shape[0]
        u = torch.rand(2 * n, 6, dtype=torch.float64)
        flip = self._flips(n)
        y = self.apply(torch.cat([a, b], 0), u, torch.cat([flip, flip]))
        return y[:n].contiguous(memory_format=_fmt(a)), y[n:].contiguous(memory_format=_fmt(b))


def _fmt(t):
    import torch

    return torch.channels_last_3d if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) \
        and not t.is_contiguous() else torch.contiguous_format
