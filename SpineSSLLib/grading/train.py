"""Training a grading model on a cohort's graded discs and evaluating it on the test split.

``GradeTrainConfig(model, train, augment, transfer)`` holds everything besides the data;
``RECIPES`` are its starting points (``default``: the recipe that learns in a CPU budget, also for
trainable trunks; ``paper``: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch 128, lr /10 on
plateau).  The pretrained modes take the network's sizes from their checkpoint (resolved once).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ManifestError
from ..models import ModelConfig
from ..train import TrainConfig
from ..transforms import AugmentConfig
from .data import (IVD_SHAPE, GradingSplits, IVDDataset, _subset, class_names_from, downscale, load_ivd_arrays,
                   make_grading_splits, read_ivd_table, read_pretrain_splits)
from .infer import TTAConfig, predict_proba
from .model import FROZEN_MODES, IVD_HW, MODES, PRETRAINED_MODES, build_grading_model, data_dependent_fc_init

RECIPES: dict[str, dict] = {
    "default": {
        "model": {"preset": "small", "norm": "batch", "init": "fan_in"},
        "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine",
                  "warmup_epochs": 1.0, "grad_clip": 5.0, "batch_size": 32, "max_epochs": 30, "num_workers": 0},
    },
    "paper": {
        "model": {"preset": "paper", "norm": "lrn", "init": "fan_out"},
        "train": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "plateau",
                  "warmup_epochs": 0.0, "grad_clip": 0.0, "batch_size": 128, "max_epochs": 2000,
                  "patience": 10, "max_lr_drops": 2, "num_workers": 0},
    },
}


@dataclass
class TransferConfig:
    """How the conv trunk starts (see ``grading`` for the modes) and the grading loss."""

    mode: str = "ssl-frozen"
    pretrained: str | None = None
    """Checkpoint folder with the conv weights (pretrained modes)."""
    fc_init: str = "data"
    """"data": for the frozen-trunk modes, set the new fc6/fc7/fc8 weights and biases so each unit's
    pre-activation has mean 0 and s.d. 1 on a batch of training discs (data-dependent init of the
    new layers only; the trunk is untouched); trainable-trunk modes keep the model's He init; "he":
    the model's own initialisation always."""
    class_balanced: bool = True

    def __post_init__(self):
        if self.fc_init not in ("data", "he"):
            raise ConfigError(f"fc_init must be 'data' or 'he', got {self.fc_init!r}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown grading mode {self.mode!r} (choose from {', '.join(MODES)})")
        if self.mode in PRETRAINED_MODES and not self.pretrained:
            raise ConfigError(f"mode {self.mode} needs a pretrained checkpoint (--pretrained)")
        if self.mode not in PRETRAINED_MODES and self.pretrained:
            raise ConfigError(f"mode {self.mode} starts from random weights; do not pass --pretrained")


@dataclass
class GradeTrainConfig:
    """Everything ``train_grading`` needs besides the data (a JSON file holds the same keys).
    ``model`` is used by scratch / frozen-random; the pretrained modes take the checkpoint's."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("small"))
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    recipe: str = "default"

    @property
    def mode(self) -> str:
        return self.transfer.mode

    @property
    def seed(self) -> int:
        return self.train.seed

    def resolved_model(self) -> ModelConfig:
        """The network's configuration: the pretrained checkpoint's for the pretrained modes
        (with this config's dropout), else ``model``."""
        from .. import checkpoint as ckpt

        if self.transfer.pretrained:
            d = dict(ckpt.model_config(self.transfer.pretrained), dropout=self.model.dropout, aux_heads={})
            return ModelConfig.from_dict(d)
        return self.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GradeTrainConfig":
        from ..config import from_dict

        return from_dict(cls, d, "grading")


def load_config(file=None, overrides: dict | None = None, recipe: str | None = None) -> GradeTrainConfig:
    """``RECIPES[recipe]`` <- JSON ``file`` <- ``overrides`` (dotted keys, e.g. ``"transfer.mode"``).
    The pretrained checkpoint's path is resolved (``checkpoint.resolve``) once, here."""
    from .. import checkpoint as ckpt
    from ..config import load_recipe

    cfg = load_recipe(GradeTrainConfig, RECIPES, file, overrides, recipe, "grading")
    if cfg.transfer.pretrained:
        cfg.transfer.pretrained = str(ckpt.resolve(cfg.transfer.pretrained))
    return cfg


def _loss_fn(weights):
    import torch.nn.functional as F

    def loss_fn(model, batch, train):
        x, y = batch
        _, logits = model(x)
        w = weights.to(logits.device) if weights is not None else None
        loss = F.cross_entropy(logits.float(), y, weight=w)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"acc": acc}

    loss_fn.class_weights = weights  # what the loss weighs by (recorded in the checkpoints)
    return loss_fn


def _augmenter(config: AugmentConfig, net_hw: tuple[int, int]):
    """The classification augmentation (``transforms.VolumeAugment`` with every draw per disc);
    translations are given in 112x224 disc pixels."""
    if not config.enabled:
        return None
    from ..transforms import VolumeAugment

    aug = VolumeAugment(config, net_hw, IVD_HW)

    def augment(batch):
        x, y = batch
        return aug.augment_volumes(x), y

    return augment


def train_grading(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: GradeTrainConfig, *,
                  splits: GradingSplits | None = None, train_subjects: Sequence[str] | None = None,
                  pretrain_splits: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                  resume: bool = False, eval_tta: TTAConfig | None = None, data_cache: dict | None = None) -> dict:
    """Train a grading model on a cohort's graded IVD volumes and evaluate it on the test split.

    Writes to ``out_dir``: ``splits.json``, the training loop's ``log.csv`` / ``last/`` /
    ``best/`` (the grading model), ``test_metrics.json``, ``test_predictions.csv`` and
    ``confusion.png``.  Returns the test metrics dict.  ``train_subjects`` restricts training to
    a subset of ``splits.train`` (the learning-curve experiment); ``data_cache`` (a dict the
    caller keeps) lets repeated runs on one cohort share the loaded volumes.
    """
    from .. import checkpoint as ckpt
    from ..atomic import write_csv, write_json
    from ..device import select_device
    from ..losses import class_weights
    from ..metrics import classification_report, save_confusion_png
    from ..train import dist_info, fit, make_loader

    out = Path(out_dir)
    records = read_ivd_table(cohort_dir)
    class_names = list(class_names) if class_names else class_names_from(records)
    cls_index = {c: i for i, c in enumerate(class_names)}
    if splits is None:
        pre = read_pretrain_splits(pretrain_splits) if pretrain_splits else {}
        splits = make_grading_splits(records, pre, seed=0)
    is_main = dist_info().is_main  # under torchrun only rank 0 writes
    if is_main:
        write_json(out / "splits.json", splits.to_dict())
    if train_subjects is None:
        train_subjects = splits.train
    elif not set(train_subjects) <= set(splits.train):
        raise ConfigError("training subjects must come from the training split")
    parts = {"train": _subset(records, train_subjects), "val": _subset(records, splits.val),
             "test": _subset(records, splits.test)}
    for name in ("train", "val"):
        if not parts[name]:
            raise ManifestError(f"no graded discs in the {name} split", Path(cohort_dir) / "volumes.csv")
    unknown = {r.grade for p in parts.values() for r in p} - set(cls_index)
    if unknown:
        raise ManifestError(f"grades {sorted(unknown)} not among the model's classes {class_names}")

    pretrained = Path(cfg.transfer.pretrained) if cfg.transfer.pretrained else None
    mcfg = cfg.resolved_model()
    model = build_grading_model(mcfg, len(class_names), cfg.mode, pretrained, seed=cfg.seed)
    net_hw = tuple(model.net_hw)

    cache = data_cache if data_cache is not None else {}

    def arrays(recs):
        key = (str(Path(cohort_dir).resolve()), net_hw)
        store = cache.setdefault(key, {})
        missing = [r for r in recs if r.volume_id not in store]
        if missing:
            vols = downscale(load_ivd_arrays(cohort_dir, missing), net_hw)
            for r, v in zip(missing, vols):
                store[r.volume_id] = v
        if not recs:
            return np.zeros((0, IVD_SHAPE[0], *net_hw), np.float16)
        return np.stack([store[r.volume_id] for r in recs])

    labels = {k: np.array([cls_index[r.grade] for r in v], dtype=np.int64) for k, v in parts.items()}
    tcfg = cfg.train
    device = select_device(tcfg.device)
    x_train = arrays(parts["train"])
    fc_scales = {}
    if cfg.transfer.fc_init == "data" and cfg.mode in FROZEN_MODES and not (resume and ckpt.exists(out / "last")):
        fc_scales = data_dependent_fc_init(model, x_train, seed=cfg.seed)
    ds_train = IVDDataset(x_train, labels["train"])
    ds_val = IVDDataset(arrays(parts["val"]), labels["val"])
    train_loader = make_loader(ds_train, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers,
                               seed=cfg.seed, device=device)
    val_loader = make_loader(ds_val, tcfg.batch_size, shuffle=False, num_workers=tcfg.num_workers, device=device)
    w = class_weights(labels["train"], len(class_names)) if cfg.transfer.class_balanced else None
    ck_config = {"task": "grade", "model": mcfg.to_dict(), "num_classes": len(class_names), "in_hw": list(IVD_HW),
                 "class_names": class_names, "mode": cfg.mode, "grade_config": cfg.to_dict(),
                 "class_weights": None,
                 "pretrained": None if pretrained is None else _checkpoint_fingerprint(pretrained)}
    resume = resume and ckpt.exists(out / "last")
    loss_fn = _loss_fn(w)
    if loss_fn.class_weights is not None:
        ck_config["class_weights"] = [round(float(v), 6) for v in loss_fn.class_weights]
    res = fit(model, loss_fn, train_loader, val_loader, tcfg, out, checkpoint_config=ck_config,
              resume=resume, augment=_augmenter(cfg.augment, net_hw), device=device,
              chance={"loss": math.log(len(class_names))} if cfg.mode not in FROZEN_MODES else None)
    if not is_main:  # rank 0 evaluates and writes; other ranks are done
        return {"mode": cfg.mode, "seed": cfg.seed, "rank": dist_info().rank}
    ckpt.load_checkpoint(ckpt.resolve(out), model)
    model.to(device)

    result = {"mode": cfg.mode, "seed": cfg.seed, "class_names": class_names,
              "n_train_subjects": len(set(train_subjects)),
              "n_train_scans": len({r.scan_key for r in parts["train"]}),
              "n_train_discs": len(parts["train"]), "n_val_discs": len(parts["val"]),
              "n_test_subjects": len(splits.test), "n_test_discs": len(parts["test"]),
              "epochs": res.last_epoch + 1, "best_epoch": res.best_epoch, "stop_reason": res.stop_reason,
              "device": str(device), "fc_init_scales": fc_scales}
    if parts["test"]:
        x_test = arrays(parts["test"])
        prob = predict_proba(model, x_test, TTAConfig.none(), device=device)
        rep = classification_report(labels["test"], prob.argmax(1), class_names=class_names)
        result["test"] = rep.to_dict()
        if eval_tta is not None and eval_tta.n_views > 1:
            prob_tta = predict_proba(model, x_test, eval_tta, device=device)
            result["test_tta"] = classification_report(labels["test"], prob_tta.argmax(1),
                                                       class_names=class_names).to_dict()
        rows = [{"volume_id": r.volume_id, "scan_key": r.scan_key, "level": r.level, "grade": r.grade,
                 "predicted": class_names[int(k)], **{f"p_{c}": round(float(p[i]), 5) for i, c in enumerate(class_names)}}
                for r, k, p in zip(parts["test"], prob.argmax(1), prob)]
        write_csv(out / "test_predictions.csv", rows)
        save_confusion_png(out / "confusion.png", rep.confusion, class_names,
                           title=f"{cfg.mode}: average class accuracy {rep.average_class_accuracy:.3f} "
                                 f"(n={rep.n} discs)")
    write_json(out / "test_metrics.json", result)
    return result


def _checkpoint_fingerprint(d: Path) -> dict:
    """What a grading checkpoint records about its pretrained source (no absolute paths)."""
    from .. import checkpoint as ckpt

    meta = ckpt.read_meta(d)
    return {"task": (meta.get("config") or {}).get("task"), "epoch": meta.get("epoch"),
            "weights_sha256": meta.get("files", {}).get("model.safetensors")}
