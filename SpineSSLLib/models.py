"""The VGG-M-derived volume network of the paper (§2.4) and its Siamese wrapper.

One definition serves every size: ``ModelConfig`` holds a width multiplier (conv channels),
the fc6/fc7 widths and an input downscale factor, and the presets ``paper`` (exact sizes) and
``small`` (CPU demo / CI) are just two configs of the same classes.

Layout (input ``(B, 1, 9, H, W)`` = batch, channel, slices, rows, columns)::

    conv1  3D  96w x (3x7x7)  stride (1,2,2), pad (1,0,0)  ReLU  LRN  max-pool 1x2x2
    conv2  3D 256w x (3x5x5)  stride (1,2,2), pad (1,1,1)  ReLU  LRN  max-pool 1x2x2
    conv3  3D 512w x (3x3x3)  pad 1                        ReLU
    conv4  3D 512w x (9x3x3)  pad (0,1,1)  -> depth 1      ReLU   (collapses the 9 slices)
    conv5  2D 512w x (3x3)    pad 1                        ReLU  max-pool 2x2
    fc6 4096  ReLU dropout;  fc7 1024 (the embedding, linear);  dropout;  fc8 num_classes

``fc6`` is sized from ``in_hw`` (224x224 for vertebral bodies, 112x224 for discs), so the
trunk (conv1..pool5) is shared between input sizes and transfers between tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError

DEPTH = 9
"""Slices per volume (fixed by the extraction contract; conv4 collapses exactly this depth)."""

PRESETS = {
    "paper": dict(width=1.0, fc6=4096, fc7=1024, input_scale=1.0),
    "small": dict(width=0.125, fc6=256, fc7=128, input_scale=0.5),
}
"""Network sizes.  The paper's exact network is ``ModelConfig.preset("paper", norm="lrn",
init="fan_out")`` (the ``paper`` training recipe of ``pretrain``/``grade-train`` sets both)."""

NORMS = ("lrn", "batch", "group", "none")
CONV_IMPLS = ("3d", "fold2d")


@dataclass
class ModelConfig:
    """Sizes of the network.  ``width`` multiplies the conv channel counts (96/256/512/512/512);
    ``input_scale`` downsamples the input in-plane (area averaging) before conv1."""

    preset: str = "paper"
    width: float = 1.0
    fc6: int = 4096
    fc7: int = 1024
    input_scale: float = 1.0
    dropout: float = 0.5
    norm: str = "batch"
    """Normalisation in the trunk: ``lrn`` (the paper's VGG-M: local response normalisation after
    conv1 and conv2, conv -> ReLU -> LRN), ``batch`` or ``group`` (after every convolution,
    conv -> norm -> ReLU), or ``none``.  See docs/pretraining.md for why ``batch`` is the default."""
    init: str = "fan_in"
    """He initialisation of the convolutions: ``fan_in`` keeps the forward activation scale through
    the layers (the default; classifier heads then start at std 0.01, so their loss starts at
    ln K); ``fan_out`` is MatConvNet's ``xavierimproved`` (the paper's toolbox), which shrinks
    activations ~10x per 3D layer without normalisation (heads: unit-gain He)."""
    aux_heads: dict = field(default_factory=dict)
    """Optional extra heads on fc7, name -> number of classes (e.g. {"sex": 2}); off by default."""
    conv_impl: str = "3d"
    """How conv1..conv4 are computed (the same function, the same weights; tested to float
    tolerance): ``3d`` = ``conv3d`` on (B, C, D, H, W); ``fold2d`` = activations kept as
    (B*D, C, H, W), each 3D convolution as one ``conv2d`` over its depth window folded into the
    channels (depth-unfold), pooling as ``max_pool2d`` — for GPUs whose 2D kernels are much faster
    than their 3D ones (issue #17; ``benchmarks/gpu_check.sh`` measures both).  On the CPU ``3d``
    is faster."""

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
        return cls(preset=name, **{**PRESETS[name], **overrides})

    def __post_init__(self):
        if not isinstance(self.preset, str):  # the classmethod `preset` shadows the field's default
            self.preset = "paper"
        if not (0 < self.width <= 4):
            raise ConfigError(f"model width multiplier must be in (0, 4], got {self.width}")
        if not (0 < self.input_scale <= 1):
            raise ConfigError(f"model input_scale must be in (0, 1], got {self.input_scale}")
        if self.fc6 < 1 or self.fc7 < 1:
            raise ConfigError("model fc6/fc7 sizes must be positive")
        if not (0 <= self.dropout < 1):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"model norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.init not in ("fan_in", "fan_out"):
            raise ConfigError(f"model init must be fan_in or fan_out, got {self.init!r}")
        if self.conv_impl not in CONV_IMPLS:
            raise ConfigError(f"model conv_impl must be one of {', '.join(CONV_IMPLS)}, got {self.conv_impl!r}")

    def channels(self) -> tuple[int, int, int, int, int]:
        return tuple(max(1, int(round(c * self.width))) for c in (96, 256, 512, 512, 512))

    def net_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """In-plane size the convolutions see for an input of ``in_hw``."""
        return tuple(max(1, int(round(s * self.input_scale))) for s in in_hw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a preset name plus overrides (``{"preset": "small", "width": 0.25}``) or a full
        ``to_dict()``; unknown keys are ``ConfigError``."""
        from .config import from_dict

        d = dict(d)
        name = d.pop("preset", "paper")
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
        return from_dict(cls, {"preset": name, **PRESETS[name], **d}, "model")


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def trunk_out_hw(config: ModelConfig, in_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after pool5 for an input of ``in_hw`` (before the input downscale)."""
    out = []
    for n in config.net_hw(in_hw):
        n = _conv_out(n, 7, 2, 0) // 2
        n = _conv_out(n, 5, 2, 1) // 2
        n = n // 2
        out.append(n)
    if min(out) < 1:
        raise ConfigError(f"input {in_hw[0]}x{in_hw[1]} is too small for this network "
                          f"(input_scale {config.input_scale})")
    return tuple(out)


class LRN(nn.Module):
    """Local response normalisation across channels, ``x / (k + alpha/n * sum of x^2 over n
    neighbouring channels)^beta`` — the same function as ``nn.LocalResponseNorm`` (tested).

    The channel-window sum is one ``(C, C)`` band-matrix product over a ``(N, C, voxels)`` view
    (a 1x1 convolution for non-contiguous inputs), and training uses ``_LRNFunction``: a hand-written
    backward, ``dx = g r - 2 beta x W^T (g r x / d)`` with ``d = k + W x^2`` and ``r = d^-beta``,
    saving ``x, r, d`` instead of autograd's chain of element-wise intermediates.  PyTorch's version
    pads and average-pools a reshaped copy (about 40 % of a paper-size forward on the CPU,
    profiled); the autograd chain of the earlier band version was ~40 % of a `small` LRN training
    step; this one is ~1.7x faster than that (docs/performance.md)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._kernels: dict = {}  # (channels, dtype, device) -> (band, band transposed); not state

    def _kernel(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        key = (c, x.dtype, x.device)
        if key not in self._kernels:
            i = torch.arange(c, device=x.device)
            diff = i[None, :] - i[:, None]  # input channel - output channel
            band = (diff >= -(self.size // 2)) & (diff <= (self.size - 1) // 2)
            w = band.to(x.dtype) * (self.alpha / self.size)
            self._kernels[key] = (w, w.t().contiguous())
        return self._kernels[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, wt = self._kernel(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _LRNFunction.apply(x, w, wt, self.k, self.beta)
        d = _window_sum(x * x, w).add_(self.k)
        return _inv_pow_(d, self.beta).mul_(x)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def _window_sum(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``W @ s`` over the channel axis of ``s`` (N, C, ...): a batched matrix product on the
    contiguous ``(N, C, voxels)`` view (cheaper than oneDNN's 1x1 convolution, which reorders
    small channel counts), else a 1x1 convolution (channels-last inputs keep their layout)."""
    if s.is_contiguous():
        return torch.matmul(w, s.view(s.shape[0], s.shape[1], -1)).view(s.shape)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[s.dim()]
    return conv(s, w.view(*w.shape, *([1] * (s.dim() - 2))))


def _inv_pow_(d: torch.Tensor, beta: float) -> torch.Tensor:
    """``d ** -beta``, in place."""
    return d.pow_(-beta)


class _LRNFunction(torch.autograd.Function):
    """LRN forward + backward with few element-wise passes (see ``LRN``)."""

    @staticmethod
    def forward(ctx, x, w, wt, k, beta):
        d = _window_sum(x * x, w).add_(k)
        r = _inv_pow_(d.clone(), beta)
        ctx.save_for_backward(x, r, d, wt)
        ctx.beta = beta
        return r * x

    @staticmethod
    def backward(ctx, g):
        x, r, d, wt = ctx.saved_tensors
        gr = g * r
        t = (gr * x).div_(d)
        u = _window_sum(t, wt).mul_(x)
        return gr.add_(u, alpha=-2.0 * ctx.beta), None, None, None, None


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(_groups(channels), channels)
    return nn.Identity()


def _groups(channels: int) -> int:
    """Groups for GroupNorm: 32 where the width allows (Wu & He), at least 4 channels a group."""
    g = min(32, max(1, channels // 4))
    while channels % g:
        g -= 1
    return g


class Trunk(nn.Module):
    """conv1 .. conv5 + pool5: ``(B, 1, 9, h, w)`` -> ``(B, C5, h', w')``.

    ``norm="lrn"``: conv -> ReLU -> LRN at conv1/conv2 (VGG-M); ``batch``/``group``: conv -> norm
    -> ReLU at every conv (``norm1..norm5``); ``none``: conv -> ReLU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c1, c2, c3, c4, c5 = config.channels()
        self.kind = config.norm
        self.conv_impl = config.conv_impl
        conv3d = FoldConv3d if self.conv_impl == "fold2d" else nn.Conv3d
        self.conv1 = conv3d(1, c1, (3, 7, 7), stride=(1, 2, 2), padding=(1, 0, 0))
        self.conv2 = conv3d(c1, c2, (3, 5, 5), stride=(1, 2, 2), padding=(1, 1, 1))
        self.conv3 = conv3d(c2, c3, (3, 3, 3), padding=1)
        self.conv4 = conv3d(c3, c4, (DEPTH, 3, 3), padding=(0, 1, 1))
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        if self.kind == "lrn":
            self.norm1, self.norm2 = LRN(5, alpha=5e-4, beta=0.75, k=2.0), LRN(5, alpha=5e-4, beta=0.75, k=2.0)
            self.norm3 = self.norm4 = self.norm5 = None
        else:
            self.norm1, self.norm2 = _norm(self.kind, c1, 3), _norm(self.kind, c2, 3)
            self.norm3, self.norm4, self.norm5 = _norm(self.kind, c3, 3), _norm(self.kind, c4, 3), _norm(self.kind, c5, 2)
        self.out_channels = c5

    def _block(self, conv, norm, x):
        if self.kind == "lrn":
            x = F.relu(conv(x))
            return norm(x) if norm is not None else x
        return F.relu(norm(conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_impl == "fold2d":
            return self._forward_fold2d(x)
        x = F.max_pool3d(self._block(self.conv1, self.norm1, x), (1, 2, 2))
        x = F.max_pool3d(self._block(self.conv2, self.norm2, x), (1, 2, 2))
        x = self._block(self.conv3, self.norm3, x)
        x = self._block(self.conv4, self.norm4, x)          # depth 9 -> 1
        x = x.squeeze(2)
        x = self._block(self.conv5, self.norm5, x)
        return F.max_pool2d(x, 2)

    # ---- conv_impl = "fold2d": the same function with 2D kernels -------------------------------
    # Activations are (B, D, C, H, W) in memory, i.e. (B*D, C, H, W) for the 2D operations.

    def _forward_fold2d(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)                                    # (B, D, 1, H, W): free for C = 1
        h = self._pool2(self._fold_block(self.conv1, self.norm1, h))
        h = self._pool2(self._fold_block(self.conv2, self.norm2, h))
        h = self._fold_block(self.conv3, self.norm3, h)
        h = self._fold_block(self.conv4, self.norm4, h)          # depth 9 -> 1
        x = h.squeeze(1)
        x = self._block(self.conv5, self.norm5, x)
        return F.max_pool2d(x, 2)

    @staticmethod
    def _pool2(h: torch.Tensor) -> torch.Tensor:
        """max-pool 1x2x2 = max_pool2d on the (B*D, C, H, W) view."""
        y = F.max_pool2d(h.reshape(-1, *h.shape[2:]), 2)
        return y.view(*h.shape[:2], *y.shape[1:])

    def _fold_norm(self, norm, h: torch.Tensor) -> torch.Tensor:
        """The 3D path's normalisation on (B, D, C, H, W): LRN and batch norm act per position /
        per channel over (B, D, H, W), so the (B*D, C, H, W) view is the same set; group norm
        groups per sample over depth too, so it runs on the (B, C, D, H, W) transpose."""
        if norm is None or isinstance(norm, nn.Identity):
            return h
        if isinstance(norm, nn.GroupNorm):
            return norm(h.transpose(1, 2)).transpose(1, 2)
        flat = h.reshape(-1, *h.shape[2:])
        if isinstance(norm, nn.BatchNorm3d):
            return _batch_norm_any(norm, flat).view(h.shape)
        return norm(flat).view(h.shape)

    def _fold_block(self, conv, norm, h):
        if self.kind == "lrn":
            return self._fold_norm(norm, F.relu(conv(h)))
        return F.relu(self._fold_norm(norm, conv(h)))


class FoldConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same function) for ``conv_impl="fold2d"``: takes and returns
    the (B, D, C, H, W) layout and computes one ``conv2d`` — zero-pad the depth by ``pd``, stack the
    ``kd`` shifted depth windows along the channels (kd*C, depth-major, matching the weight
    transposed to (C', kd, C, kh, kw)).  A module, so forward hooks (training diagnostics) see it."""

    channels_last_2d = False  # channels-last conv2d inputs (set by to_channels_last)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        kd, pd = self.kernel_size[0], self.padding[0]
        if self.stride[0] != 1 or self.dilation != (1, 1, 1) or self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("fold2d supports depth stride 1, no dilation, no groups, zero padding")
        if pd:
            h = F.pad(h, (0, 0, 0, 0, 0, 0, pd, pd))
        b, do = h.shape[0], h.shape[1] - kd + 1
        cols = torch.cat([h[:, i:i + do] for i in range(kd)], 2) if kd > 1 else h
        cols = cols.reshape(b * do, *cols.shape[2:])
        if self.channels_last_2d:
            cols = cols.contiguous(memory_format=torch.channels_last)
        w = self.weight.transpose(1, 2).reshape(self.out_channels, kd * self.in_channels, *self.kernel_size[1:])
        y = F.conv2d(cols, w, self.bias, self.stride[1:], self.padding[1:])
        return y.view(b, do, *y.shape[1:])


def _batch_norm_any(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn.forward`` (``_BatchNorm.forward``: batch statistics, running averages, momentum) without
    its rank check: BatchNorm3d on the (B*D, C, H, W) view of the fold2d layout (same per-channel set)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if keep else None, bn.running_var if keep else None,
                        bn.weight, bn.bias, use_batch, factor, bn.eps)


class VGGMNet(nn.Module):
    """Volume classifier/embedder.  ``forward(x) -> (embedding fc7, logits fc8)``.

    ``x`` is ``(B, 1, 9, H, W)`` with ``(H, W) == in_hw``; an input already downscaled to
    ``config.net_hw(in_hw)`` is also accepted (the data pipeline may cache it that way).
    """

    def __init__(self, config: ModelConfig, num_classes: int, in_hw: tuple[int, int] = (224, 224)):
        super().__init__()
        if num_classes < 1:
            raise ConfigError("num_classes must be >= 1")
        self.config, self.num_classes, self.in_hw = config, int(num_classes), tuple(in_hw)
        self.net_hw = config.net_hw(self.in_hw)
        self.trunk = Trunk(config)
        oh, ow = trunk_out_hw(config, self.in_hw)
        self.fc6 = nn.Linear(self.trunk.out_channels * oh * ow, config.fc6)
        self.fc7 = nn.Linear(config.fc6, config.fc7)
        self.fc8 = nn.Linear(config.fc7, self.num_classes)
        self.drop = nn.Dropout(config.dropout)
        self.aux = nn.ModuleDict({k: nn.Linear(config.fc7, int(n)) for k, n in config.aux_heads.items()})
        self.trunk_frozen = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (ReLU gain): convolutions by ``config.init`` (fan-in by default, which
        keeps the activation scale through the layers), linear layers fan-in; normalisation layers
        at unit scale, zero shift."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode=self.config.init, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head in [self.fc8, *self.aux.values()]:
            if self.config.init == "fan_in":   # classifier heads start near uniform (loss ln K)
                nn.init.normal_(head.weight, std=0.01)
            else:                              # the earlier scheme: unit gain (no ReLU follows)
                nn.init.kaiming_normal_(head.weight, mode="fan_in", nonlinearity="linear")

    def freeze_trunk(self) -> "VGGMNet":
        """Freeze the convolutional trunk: no gradients, and batch-norm statistics stay as they are
        (the trunk stays in eval mode when the model is put in training mode)."""
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.trunk_frozen = True
        self.trunk.eval()
        return self

    def train(self, mode: bool = True) -> "VGGMNet":
        super().train(mode)
        if self.trunk_frozen:
            self.trunk.eval()
        return self

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != DEPTH:
            raise ValueError(f"expected input (B, 1, {DEPTH}, H, W), got {tuple(x.shape)}")
        hw = tuple(x.shape[-2:])
        if hw == self.net_hw:
            return x
        if hw != self.in_hw:
            raise ValueError(f"expected in-plane size {self.in_hw} or {self.net_hw}, got {hw}")
        return F.adaptive_avg_pool3d(x, (DEPTH, *self.net_hw))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(self.prepare_input(x)).flatten(1)
        return self.fc7(self.drop(F.relu(self.fc6(f))))

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        """fc8 directly on the fc7 embedding (no ReLU in between: the contrastive loss is
        indifferent to the sign of embedding components, and a ReLU here left the level head
        without signal — measured: level loss stuck at ln 7)."""
        return self.fc8(self.drop(emb))

    def aux_logits(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.drop(emb)
        return {k: head(h) for k, head in self.aux.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return emb, self.classify(emb)


class SiameseNet(nn.Module):
    """Two branches, one shared ``VGGMNet``: both inputs go through a single forward call.

    ``forward(a, b) -> (pair_a, pair_b, logits_a, logits_b)``: ``pair_*`` is what the pair loss
    sees — fc7 itself, or with ``projection > 0`` a 2-layer projection head on fc7
    (fc7 -> ReLU -> Linear(fc7) -> BatchNorm -> ReLU -> Linear(projection), SimCLR); the level
    logits always come from fc8 on fc7.  Grading transfers only the trunk."""

    def __init__(self, net: VGGMNet, projection: int = 0):
        super().__init__()
        self.net = net
        self.head = None
        if projection:
            w = net.config.fc7
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(w, w), nn.BatchNorm1d(w), nn.ReLU(),
                                      nn.Linear(w, int(projection)))
            for m in self.head:
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        return emb if self.head is None else self.head(emb)

    def forward(self, a: torch.Tensor, b: torch.Tensor, with_embedding: bool = False):
        """``with_embedding``: also return fc7 of ``cat([a, b])`` (for heads that read fc7)."""
        n = a.shape[0]
        emb, logits = self.net(torch.cat([a, b], 0))
        z = self.project(emb)
        out = (z[:n], z[n:], logits[:n], logits[n:])
        return out + (emb,) if with_embedding else out

    def pair_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pair-space embedding, level logits)`` of single volumes (evaluation)."""
        emb, logits = self.net(x)
        return self.project(emb), logits


def trunk_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The convolutional weights (conv1..conv5) of a VGGMNet / SiameseNet / DDP wrapper, keyed
    relative to the trunk (``conv1.weight`` ...), detached on CPU."""
    trunk = unwrap(model).trunk
    return {k: v.detach().cpu().clone() for k, v in trunk.state_dict().items()}


def load_trunk(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy trunk weights (from ``trunk_state_dict`` or a full checkpoint's ``trunk.*`` /
    ``net.trunk.*`` keys) into ``model``; shapes must match (same preset)."""
    trunk = unwrap(model).trunk
    own = trunk.state_dict()
    picked = {}
    for k, v in state.items():
        for prefix in ("", "trunk.", "net.trunk.", "module.net.trunk.", "module.trunk."):
            if k.startswith(prefix) and k[len(prefix):] in own:
                picked[k[len(prefix):]] = v
                break
    missing = sorted(set(own) - set(picked))
    if missing:
        raise CheckpointError(f"trunk weights missing: {', '.join(missing)}")
    for k, v in picked.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"trunk weight {k} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)} (checkpoint made for another preset?)")
    trunk.load_state_dict(picked)


def unwrap(model: nn.Module) -> VGGMNet:
    """The VGGMNet inside a DDP / SiameseNet / compiled wrapper."""
    while True:
        if isinstance(model, VGGMNet):
            return model
        for attr in ("module", "net", "_orig_mod"):
            if hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
                model = getattr(model, attr)
                break
        else:
            raise TypeError(f"no VGGMNet inside {type(model).__name__}")


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last memory format for every conv weight (3D convs: channels_last_3d); a
    ``fold2d`` trunk also feeds its conv2d channels-last inputs."""
    for m in model.modules():
        if isinstance(m, FoldConv3d):
            m.channels_last_2d = True
        if isinstance(m, nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        elif isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: VGGMNet, in_hw: tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass of one volume (convs + linear layers), measured
    with forward hooks on a meta-device copy (no memory, no compute)."""
    in_hw = tuple(in_hw or model.in_hw)
    with torch.device("meta"):  # the 3D layers' hooks count; fold2d computes the same MACs
        m = VGGMNet(dataclasses.replace(model.config, conv_impl="3d"), model.num_classes, in_hw)
    m.eval()
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
            k = 1
            for s in mod.kernel_size:
                k *= s
            total[0] += out[0].numel() * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features

    hs = [mod.register_forward_hook(hook) for mod in m.modules()
          if isinstance(mod, (nn.Conv2d, nn.Conv3d, nn.Linear)) and not _is_aux(m, mod)]
    m(torch.zeros((1, 1, DEPTH, *in_hw), device="meta"))
    for h in hs:
        h.remove()
    return total[0]


def _is_aux(m: VGGMNet, mod: nn.Module) -> bool:
    return any(mod is h for h in m.aux.values())


def describe(config: ModelConfig, num_classes: int = 7, in_hw=(224, 224)) -> dict:
    """Parameters and FLOPs (2 x MACs) per volume of a config at an input size."""
    with torch.device("meta"):
        m = VGGMNet(config, num_classes, in_hw)
    macs = count_macs(m, in_hw)
    return {"preset": config.preset, "in_hw": list(in_hw), "net_hw": list(m.net_hw),
            "parameters": count_parameters(m), "trunk_parameters": count_parameters(m.trunk),
            "macs_per_volume": macs, "gflops_per_volume": 2 * macs / 1e9}
