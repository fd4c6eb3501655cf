"""Training diagnostics: per weight layer, the activation standard deviation and the gradient
norm on one batch (``log.csv`` columns ``train_act_<layer>``, ``train_grad_<layer>``)."""

from __future__ import annotations

import torch
from torch import nn


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight layers (convolutions, linear) worth watching, by short name."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            short = name.replace("module.", "").replace("net.", "").replace("trunk.", "").replace(".", "_")
            out.append((short, m))
    return out[:16]


class ActivationProbe:
    """Forward hooks recording each weight layer's output standard deviation on one batch."""

    def __init__(self, model: nn.Module):
        self.values: dict[str, float] = {}
        self.handles = []
        for name, m in _layers(model):
            self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(mod, inp, out):
            if torch.is_tensor(out) and out.numel() > 1:
                self.values[f"act_{name}"] = float(out.detach().float().std())
        return hook

    def close(self) -> dict[str, float]:
        for h in self.handles:
            h.remove()
        return self.values


def grad_norms(model: nn.Module) -> dict[str, float]:
    out = {}
    for name, m in _layers(model):
        g = [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
        if g:
            out[f"grad_{name}"] = float(torch.sqrt(sum((x.detach().float() ** 2).sum() for x in g)))
    return out
