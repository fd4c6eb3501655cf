"""Losses of the paper (§2.2, §2.3): contrastive loss on fc7 pairs and the class-balanced level
loss on fc8, combined as ``L = L_C + lambda * L_level`` (+ optional metadata heads).

The paper writes both losses as sums over the batch; here they are batch means (the same
minimiser, and learning rates that do not depend on the batch size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError


def pair_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance between rows; the ``eps`` keeps the gradient finite at d = 0."""
    return torch.sqrt(((a.float() - b.float()) ** 2).sum(1) + eps)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hadsell/Chopra: mean over pairs of ``y d^2 + (1 - y) max(0, m - d)^2``; ``y = 1`` for a
    positive (same subject) pair, ``d = ||a - b||_2``."""
    if margin <= 0:
        raise ConfigError(f"contrastive margin must be positive, got {margin}")
    y = y.float()
    d2 = ((a.float() - b.float()) ** 2).sum(1)
    d = torch.sqrt(d2 + 1e-12)
    return (y * d2 + (1 - y) * F.relu(margin - d) ** 2).mean()


def class_balanced_weights(counts, num_classes: int | None = None) -> torch.Tensor:
    """alpha_c proportional to 1 / frequency, normalised so that the frequency-weighted mean is 1
    (a balanced data set gets all-ones).  Classes never seen get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if num_classes is not None and len(counts) != num_classes:
        raise ValueError(f"{len(counts)} counts for {num_classes} classes")
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = 1.0 / counts[present]
    freq = counts / counts.sum()
    w = w / (freq * w).sum()
    return torch.tensor(w, dtype=torch.float32)


def level_loss(logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Class-balanced softmax log loss: mean over samples of ``-alpha_c log softmax(z)_c``."""
    logp = F.log_softmax(logits.float(), 1)
    nll = -logp.gather(1, target.long().view(-1, 1)).squeeze(1)
    if alpha is not None:
        nll = nll * alpha.to(nll.device)[target.long()]
    return nll.mean()


def aux_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for an optional metadata head; targets < 0 (unknown) are ignored."""
    if (target >= 0).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=-1)


@dataclass
class LossConfig:
    margin: float = 1.0
    level_weight: float = 1.0
    """lambda: weight of the level loss (paper: 1)."""
    aux_weight: float = 0.1
    """weight of each optional metadata head's loss"""
    class_weights: list = field(default_factory=list)
    """alpha_c; empty = computed from the training set's level frequencies."""

    def __post_init__(self):
        if self.margin <= 0 or self.level_weight < 0 or self.aux_weight < 0:
            raise ConfigError("margin must be positive and loss weights non-negative")


def pretrain_loss(emb_a, emb_b, logits_a, logits_b, y, level, cfg: LossConfig, alpha=None) -> dict[str, torch.Tensor]:
    """``L = L_C + lambda L_level`` for a batch of pairs (both volumes of a pair share ``level``).
    Returns the parts: ``loss``, ``contrastive``, ``level``, ``level_acc``."""
    lc = contrastive_loss(emb_a, emb_b, y, cfg.margin)
    logits = torch.cat([logits_a, logits_b], 0)
    lev = torch.cat([level, level], 0)
    ll = level_loss(logits, lev, alpha)
    acc = (logits.argmax(1) == lev).float().mean()
    return {"loss": lc + cfg.level_weight * ll, "contrastive": lc, "level": ll, "level_acc": acc}
