"""The classification CNN of the paper's Fig. 7 and its transfer modes."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError

MODES = ("scratch", "frozen-random", "ssl-frozen", "ssl-finetune", "supervised")
FROZEN_MODES = ("frozen-random", "ssl-frozen", "supervised")
PRETRAINED_MODES = ("ssl-frozen", "ssl-finetune", "supervised")

IVD_HW = (112, 224)


def build_grading_model(model_config, num_classes: int, mode: str, pretrained: str | os.PathLike | None = None,
                        seed: int = 0):
    """The classification CNN of the paper's Fig. 7 for ``mode`` (see the module docstring).

    ``model_config`` is the network's configuration — for the pretrained modes the checkpoint's
    (``GradeTrainConfig.resolved_model``); ``pretrained`` a resolved checkpoint folder.  The
    fully-connected layers (fc6..fc8) are always new and random (seeded by ``seed``); for the
    pretrained modes the conv trunk is copied from ``pretrained``; for the frozen modes the trunk is
    frozen (``VGGMNet.freeze_trunk``: no gradients, batch-norm statistics kept).
    """
    import torch

    from .. import checkpoint as ckpt
    from ..models import VGGMNet, load_trunk

    if mode not in MODES:
        raise ConfigError(f"unknown grading mode {mode!r} (choose from {', '.join(MODES)})")
    if mode in PRETRAINED_MODES and pretrained is None:
        raise ConfigError(f"mode {mode} needs a pretrained checkpoint (--pretrained)")
    if mode not in PRETRAINED_MODES and pretrained is not None:
        raise ConfigError(f"mode {mode} starts from random weights; do not pass --pretrained")
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        model = VGGMNet(model_config, num_classes, IVD_HW)
    if pretrained is not None:
        state, _ = ckpt.load_weights(pretrained)
        load_trunk(model, state)
    if mode in FROZEN_MODES:
        model.freeze_trunk()
    return model


def data_dependent_fc_init(model, volumes: np.ndarray, n: int = 64, seed: int = 0) -> dict:
    """Data-dependent initialisation of the new fully-connected layers fc6, fc7 and fc8
    (Krähenbühl et al. 2016): on up to ``n`` training volumes, each unit's weights and bias are set
    so its pre-activation has mean 0 and standard deviation 1.  Only those layers change; conv
    weights (transferred or frozen) are untouched.  Returns the median scale factor per layer.

    Centring matters as much as scaling: a pretrained trunk's pool5 features can share a large
    common offset with a small spread across discs (measured: spread 1e-3 of the offset); scaling
    the spread to 1 without removing the offset made the logits ~1e3 and the loss explode.

    Why: the random-init trunk's pool5 activations are ~1e-2 in size, so with the usual fc init
    the logits start ~1e-4 apart and SGD needs thousands of steps before the fc layers move —
    frozen-trunk modes then sit at chance in any short schedule although a linear probe on the
    same features is far above it."""
    import torch

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(volumes), size=min(n, len(volumes)), replace=False)
    x = torch.as_tensor(np.asarray(volumes[np.sort(idx)], dtype=np.float32)).unsqueeze(1)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scales = {}
    with torch.no_grad():
        h = model.trunk(model.prepare_input(x.to(dev))).flatten(1)
        for name in ("fc6", "fc7", "fc8"):
            layer = getattr(model, name)
            pre = layer(h)
            mu, sd = pre.mean(0), pre.std(0)
            ok = torch.isfinite(sd) & (sd > 1e-12)
            sd = torch.where(ok, sd, torch.ones_like(sd))
            mu = torch.where(ok, mu, torch.zeros_like(mu))
            layer.weight.div_(sd[:, None])
            layer.bias.sub_(mu).div_(sd)
            scales[name] = float((1.0 / sd).median())
            h = layer(h)
            if name == "fc6":  # fc7 (the embedding) is linear and fc8 reads it directly
                h = torch.relu(h)
    model.train(was_training)
    return scales
