"""Losses of the paper (§2.2, §2.3): contrastive loss on fc7 pairs and the class-balanced level
loss on fc8, combined as ``L = L_C + lambda * L_level`` (+ optional metadata heads); and NT-Xent
(SimCLR-style) with longitudinal positives as a second pair objective.

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


def class_weights(labels, num_classes: int) -> torch.Tensor:
    """Class-balanced weights alpha_c = N / (K n_c) over the K classes present (scikit-learn's
    ``compute_class_weight("balanced")``; a balanced set gets all ones); absent classes get 0.
    Used by the pretraining level loss (the paper's alpha_c) and the grading loss."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels, dtype=np.int64)
    w = np.zeros(num_classes, dtype=np.float64)
    present = np.unique(y)
    if present.size:
        if present.min() < 0 or present.max() >= num_classes:
            raise ValueError(f"class index outside 0..{num_classes - 1}")
        w[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(w, dtype=torch.float32)


def level_loss(logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Class-balanced softmax log loss, the paper's ``-sum_n alpha_c log softmax(z)_c`` divided by
    the batch size (``F.cross_entropy``'s weighted sum; its default "mean" would divide by the sum
    of the weights instead)."""
    w = alpha.to(logits.device) if alpha is not None else None
    return F.cross_entropy(logits.float(), target.long(), weight=w, reduction="sum") / max(1, target.numel())


def ntxent_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, subject_a: torch.Tensor,
                subject_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent over a batch of pairs (SimCLR's loss with longitudinal positives): for each
    positive pair (``y = 1``) the first volume must pick its partner among all second volumes of
    the batch and vice versa (cosine similarity / ``temperature``, softmax cross-entropy).  The
    other subjects' volumes are the negatives — among them the negative pairs' acquisition-matched
    replacements; volumes of the anchor's own subject are masked out.  0 when the batch has no
    positive pair."""
    if temperature <= 0:
        raise ConfigError(f"NT-Xent temperature must be positive, got {temperature}")
    za, zb = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    pos = y > 0.5
    if not bool(pos.any()):
        return (za.sum() + zb.sum()) * 0.0
    sim = za @ zb.t() / temperature                                     # (n, n): a_i vs b_j
    same = subject_a.view(-1, 1) == subject_b.view(1, -1)
    eye = torch.eye(len(y), dtype=torch.bool, device=sim.device)
    masked = sim.masked_fill(same & ~eye, float("-inf"))                 # own subject: not a negative
    idx = torch.arange(len(y), device=sim.device)
    la = F.cross_entropy(masked[pos], idx[pos], reduction="mean")
    lb = F.cross_entropy(masked.t()[pos], idx[pos], reduction="mean")
    return 0.5 * (la + lb)


def aux_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for an optional metadata head; targets < 0 (unknown) are ignored."""
    if (target >= 0).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=-1)


OBJECTIVES = ("contrastive", "ntxent")


@dataclass
class LossConfig:
    objective: str = "contrastive"
    """``contrastive`` (the paper's, Hadsell/Chopra on pair distances) or ``ntxent`` (SimCLR-style
    softmax over the batch, longitudinal positives)."""
    margin: float = 1.0
    """Contrastive margin m (on the L2-normalised embedding when ``normalize``: distances in [0, 2])."""
    temperature: float = 0.1
    """NT-Xent temperature."""
    normalize: bool = True
    """L2-normalise the embedding the pair loss sees (then m is relative to the unit sphere; the
    paper's fc7 is unnormalised, so its scale drifts against a fixed margin)."""
    projection: int = 128
    """Width of a 2-layer projection head between fc7 and the pair loss (SimCLR); 0 = the pair loss
    acts on fc7 itself (the paper).  The level head always reads fc7."""
    level_weight: float = 1.0
    """lambda: weight of the level loss (paper: 1)."""
    pair_weight: float = 1.0
    """weight of the pair (contrastive / NT-Xent) loss"""
    aux_weight: float = 0.1
    """weight of each optional metadata head's loss"""
    class_weights: list = field(default_factory=list)
    """alpha_c; empty = computed from the training set's level frequencies."""

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"loss objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.margin <= 0 or self.temperature <= 0:
            raise ConfigError("margin and temperature must be positive")
        if self.level_weight < 0 or self.aux_weight < 0 or self.pair_weight < 0 or self.projection < 0:
            raise ConfigError("loss weights and the projection width must be non-negative")


def pretrain_loss(emb_a, emb_b, logits_a, logits_b, y, level, cfg: LossConfig, alpha=None,
                  subject_a=None, subject_b=None) -> dict[str, torch.Tensor]:
    """``L = w_pair L_pair + lambda L_level`` for a batch of pairs (both volumes of a pair share
    ``level``); ``emb_*`` are what the pair loss sees (projected, before normalisation).
    Returns the parts: ``loss``, ``contrastive`` or ``ntxent``, ``level``,
    ``level_acc``."""
    if cfg.objective == "ntxent":
        if subject_a is None:
            subject_a, subject_b = torch.arange(len(y)), torch.arange(len(y)) + len(y)
            subject_b = torch.where(y > 0.5, subject_a, subject_b)
        lp = ntxent_loss(emb_a, emb_b, y, subject_a.to(y.device), subject_b.to(y.device), cfg.temperature)
    else:
        if cfg.normalize:
            emb_a, emb_b = F.normalize(emb_a.float(), dim=1), F.normalize(emb_b.float(), dim=1)
        lp = contrastive_loss(emb_a, emb_b, y, cfg.margin)
    logits = torch.cat([logits_a, logits_b], 0)
    lev = torch.cat([level, level], 0)
    ll = level_loss(logits, lev, alpha)
    acc = (logits.argmax(1) == lev).float().mean()
    return {"loss": cfg.pair_weight * lp + cfg.level_weight * ll, cfg.objective: lp,
            "level": ll, "level_acc": acc}
