"""Longitudinal self-supervised pretraining (paper §2.2–2.4, §3.2): the Siamese VGG-M network on
same-level VB pairs of the same subject years apart (positives) or of two subjects
(acquisition-matched negatives), with a pair loss (contrastive or NT-Xent) and the class-balanced
VB-level loss; the conv trunk then transfers to grading.

``PretrainConfig(model, train, loss, pairs, augment)`` holds everything besides the data;
``RECIPES`` are starting points (``default``: the recipe that learns in a CPU budget;
``paper``: the paper's literal one — see docs/pretraining.md for the measured curves of both).
``run_pretraining(cohort, out, cfg)`` writes ``OUT/splits.json``, ``OUT/pretrain_config.json``,
``OUT/log.csv``, ``OUT/best/`` and ``OUT/last/`` (safetensors checkpoints), ``OUT/fit.json``,
``OUT/pretrain_summary.json`` and the validation pair evaluation ``OUT/eval_val/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import LEVEL_NAMES
from .data import PairConfig
from .errors import ConfigError, ManifestError
from .losses import LossConfig
from .models import ModelConfig
from .train import TrainConfig
from .transforms import AugmentConfig

RECIPES: dict[str, dict] = {
    # The default (docs/pretraining.md, "Recipes"): BatchNorm trunk with fan-in He init, light
    # dropout, AdamW with warm-up + cosine decay and gradient clipping, NT-Xent on an L2-normalised
    # projection head with longitudinal positives plus SimCLR self-pairs from every scan, the level
    # loss weighted 2, geometric augmentation at the scale of extraction jitter (the paper's +-48 px /
    # +-15 deg destroy the alignment that extraction provides and that identity cues live in) and
    # appearance augmentation (gamma, coil bias, noise) for scanners that look different.
    "default": {
        "model": {"preset": "small", "norm": "batch", "init": "fan_in", "dropout": 0.1},
        "train": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine",
                  "warmup_epochs": 1.0, "grad_clip": 5.0, "batch_size": 32, "max_epochs": 30},
        "loss": {"objective": "ntxent", "temperature": 0.1, "normalize": True, "projection": 128,
                 "level_weight": 2.0},
        "pairs": {"self_pairs": 1.0},
        "augment": {"rotate_deg": 5.0, "translate_x": 8.0, "translate_y": 8.0, "translate_z": 1.0,
                    "scale": [0.95, 1.05], "intensity": 0.2, "gamma": 0.4, "bias": 0.4, "noise": 0.03},
    },
    # The paper's literal recipe (§2.2–2.4, §3.2): VGG-M with LRN, MatConvNet's fan-out init, SGD
    # momentum 0.9, weight decay 5e-4, lr 1e-5, batch 32, lr /10 on plateau, contrastive loss on
    # the unnormalised fc7 (margin 1), up to 500 epochs.
    "paper": {
        "model": {"preset": "paper", "norm": "lrn", "init": "fan_out"},
        "train": {"optimizer": "sgd", "lr": 1e-5, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "plateau",
                  "warmup_epochs": 0.0, "grad_clip": 0.0, "batch_size": 32, "max_epochs": 500,
                  "patience": 10, "max_lr_drops": 2},
        "loss": {"objective": "contrastive", "margin": 1.0, "normalize": False, "projection": 0,
                 "level_weight": 1.0},
        "pairs": {"self_pairs": 0.0},
        "augment": {"rotate_deg": 15.0, "translate_x": 48.0, "translate_y": 24.0, "translate_z": 2.0,
                    "scale": [0.9, 1.1], "intensity": 0.2},
    },
}


LOADERS = ("auto", "workers", "device")


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the data (a JSON file holds the same keys)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("small"))
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    recipe: str = "default"
    """The recipe these values started from (a record; ``load_config`` applies it)."""
    split_seed: int = 0
    split_fractions: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    eval_neg_per_pos: float = 1.0
    loader: str = "auto"
    """Where training pairs are built: ``workers`` (a DataLoader with ``train.num_workers``
    processes reading the volume cache), ``device`` (``device_cache.DevicePairLoader``: every
    decoded float16 volume held on the training device, or in pinned memory when it does not fit,
    batches gathered there — no workers, no per-batch host-to-device copy), or ``auto``
    (``device`` on CUDA, ``workers`` elsewhere).  Both give the same batches (tested)."""

    def __post_init__(self):
        if self.loader not in LOADERS:
            raise ConfigError(f"pretraining loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        from .config import from_dict

        return from_dict(cls, d, "pretraining")


def load_config(file=None, overrides: dict | None = None, recipe: str | None = None) -> PretrainConfig:
    """``RECIPES[recipe]`` <- JSON ``file`` <- ``overrides`` (dotted keys, e.g. ``"train.lr"``).
    The recipe is ``recipe``, else the file's ``"recipe"`` key, else ``default``.  A
    ``"model.preset"`` override replaces the network sizes the file gives (a preset is a size)."""
    from .config import load_recipe

    return load_recipe(PretrainConfig, RECIPES, file, overrides, recipe, "pretraining")


def make_loss_fn(loss_cfg: LossConfig, alpha, aux_heads: dict):
    """``loss_fn(model, batch, train)`` for ``train.fit``: Siamese forward + pair loss + lambda
    L_level (+ aux heads on fc7)."""
    from .losses import aux_loss, pretrain_loss
    from .models import unwrap

    def loss_fn(model, batch, train):
        import torch

        pa, pb, la, lb, emb = model(batch["a"], batch["b"], with_embedding=True)
        parts = pretrain_loss(pa, pb, la, lb, batch["y"], batch["level"], loss_cfg, alpha,
                              batch.get("subject_a"), batch.get("subject_b"))
        loss = parts.pop("loss")
        if aux_heads:
            z = unwrap(model).aux_logits(emb)
            for name in aux_heads:
                la_ = aux_loss(z[name], torch.cat([batch[f"aux_{name}_a"], batch[f"aux_{name}_b"]]))
                parts[f"aux_{name}"] = la_
                loss = loss + loss_cfg.aux_weight * la_
        return loss, parts

    loss_fn.class_weights = alpha  # what the level loss weighs by (recorded in the checkpoints)
    return loss_fn


def run_pretraining(cohort, out, cfg: PretrainConfig, *, splits_path=None, resume=False, cache_dir=None,
                    evaluate_val: bool = True, progress: bool = True) -> dict:
    """Train; returns a summary dict (also written to OUT/pretrain_summary.json on rank 0)."""
    import torch
    from torch.utils.data import DataLoader

    from . import checkpoint as ckpt
    from . import data as D
    from .atomic import write_json
    from .device import select_device
    from .losses import class_weights
    from .models import SiameseNet, VGGMNet
    from .train import fit, setup_distributed

    model_cfg, train_cfg, loss_cfg = cfg.model, cfg.train, cfg.loss
    out = Path(out)
    if resume:
        ckpt.check_model_config(out / "last", model_cfg.to_dict())  # before anything in OUT is rewritten
    info = setup_distributed()
    rows = D.read_vb_table(cohort, model_cfg.aux_heads)
    if splits_path:
        splits = D.read_splits(splits_path)
        missing = {r.subject_key for r in rows} - set(splits.split_of())
        if missing:
            raise ManifestError(f"{len(missing)} subject(s) of the cohort are not in the splits file", splits_path)
    elif resume and (out / "splits.json").is_file():
        splits = D.read_splits(out / "splits.json")
    else:
        splits = D.make_splits(rows, cfg.split_seed, tuple(cfg.split_fractions))
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        D.write_splits(out / "splits.json", splits)
        write_json(out / "pretrain_config.json", cfg.to_dict())
    part = {k: D.rows_in(rows, v) for k, v in splits.subjects.items()}
    device = select_device(train_cfg.device)
    in_hw = (224, 224)
    net_hw = model_cfg.net_hw(in_hw)
    cache = D.VolumeCache(cohort, rows, net_hw, cache_dir=cache_dir, progress=progress and info.is_main)

    train_sampler = D.PairSampler(part["train"], cfg.pairs, seed=train_cfg.seed, rank=info.rank, world=info.world)
    if not train_sampler.positives:
        raise ConfigError("no positive pairs in the training split: pretraining needs subjects with "
                          "at least two time points", Path(cohort) / "volumes.csv")
    val_sampler = D.PairSampler(part["val"], dataclasses.replace(cfg.pairs, self_pairs=0.0),  # real pairs only
                                seed=10_000 + train_cfg.seed, rank=info.rank,
                                world=info.world, shuffle=False)
    pin = device.type == "cuda"
    train_loader = make_train_loader(cfg, part["train"], cache, train_sampler, device)
    val_loader = None
    if val_sampler.positives:
        val_loader = DataLoader(D.PairDataset(part["val"], cache), sampler=val_sampler,
                                batch_size=train_cfg.batch_size, num_workers=0, pin_memory=pin)
    alpha = (torch.tensor(loss_cfg.class_weights, dtype=torch.float32) if loss_cfg.class_weights else
             class_weights([r.level_index for r in part["train"]], len(LEVEL_NAMES)))
    torch.manual_seed(train_cfg.seed)
    net = VGGMNet(model_cfg, len(LEVEL_NAMES), in_hw)
    model = SiameseNet(net, loss_cfg.projection)
    augment = D.PairAugment(cfg.augment, net_hw) if cfg.augment.enabled else None
    ck_cfg = {"task": "pretrain", "model": model_cfg.to_dict(), "num_classes": len(LEVEL_NAMES),
              "class_names": list(LEVEL_NAMES), "in_hw": list(in_hw), "splits": "splits.json",
              "loss": dataclasses.asdict(loss_cfg), "pairs": dataclasses.asdict(cfg.pairs),
              }
    loss_fn = make_loss_fn(loss_cfg, alpha, model_cfg.aux_heads)
    ck_cfg["level_class_weights"] = [round(float(w), 6) for w in loss_fn.class_weights]
    res = fit(model, loss_fn, train_loader, val_loader, train_cfg, out,
              checkpoint_config=ck_cfg, resume=resume, augment=augment, device=device,
              chance={"level": math.log(len(LEVEL_NAMES))})
    summary = {"stop_reason": res.stop_reason, "epochs": res.last_epoch + 1, "best_epoch": res.best_epoch,
               "best_val_loss": res.best_val_loss,
               "subjects": {k: len(v) for k, v in splits.subjects.items()},
               "positive_pairs": {"train": len(train_sampler.positives), "val": len(val_sampler.positives)},
               "warnings": json.loads((out / "fit.json").read_text()).get("warnings", []) if info.is_main else []}
    if evaluate_val and info.is_main and val_sampler.positives:
        best = ckpt.resolve(out)
        ckpt.load_checkpoint(best, model)
        ev = evaluate_split(model, part["val"], cache, cfg, device, out / "eval_val", seed=20_000,
                            extra={"split": "val", "checkpoint": best.name}, progress=progress)
        summary.update({"val_auc": ev.report["auc"], "val_level_accuracy": ev.report["level_accuracy"]})
    if info.is_main:
        write_json(out / "pretrain_summary.json", summary)
    return summary


def make_train_loader(cfg: PretrainConfig, rows, cache, sampler, device):
    """The training pair loader ``cfg.loader`` asks for (``auto``: on the device when training on CUDA)."""
    from torch.utils.data import DataLoader

    from . import data as D

    if cfg.loader == "device" or (cfg.loader == "auto" and device.type == "cuda"):
        from .device_cache import DevicePairLoader, DeviceVolumes

        return DevicePairLoader(rows, DeviceVolumes(cache, rows, device), sampler, cfg.train.batch_size)
    nw = cfg.train.num_workers
    return DataLoader(D.PairDataset(rows, cache), sampler=sampler, batch_size=cfg.train.batch_size,
                      num_workers=nw, pin_memory=device.type == "cuda", persistent_workers=nw > 0)


def evaluate_split(model, rows, cache, cfg: PretrainConfig, device, out_dir, *, seed: int = 20_000,
                   extra: dict | None = None, progress: bool = True, batch_size: int | None = None):
    """Pair evaluation of one split (all positives, ``eval_neg_per_pos`` acquisition-matched
    negatives per positive), with the raw-pixel AUC on the same pairs beside the network's."""
    from . import data as D
    from . import evaluate as E
    from .train import amp_dtype

    sampler = D.PairSampler(rows, D.PairConfig(neg_per_pos=cfg.eval_neg_per_pos,
                                               interval_bin_days=cfg.pairs.interval_bin_days,
                                               balance_levels=False), seed=seed, shuffle=False)
    pairs = sampler.epoch_pairs(0)
    baselines = {"raw_pixel_auc": E.raw_pixel_auc(rows, cache, pairs)}
    return E.evaluate_pairs(model, rows, cache, pairs, device, out_dir,
                            batch_size=batch_size or cfg.train.batch_size, dtype=amp_dtype(cfg.train, device),
                            extra=extra, progress=progress,
                            normalize=cfg.loss.normalize or cfg.loss.objective == "ntxent", baselines=baselines)


@dataclass
class PretrainedModel:
    """A loaded pretraining checkpoint: the Siamese network (projection head included), whether
    its pair space is L2-normalised, and the checkpoint's record."""

    model: object
    normalize: bool
    meta: dict
    path: Path

    @property
    def config(self) -> dict:
        return self.meta.get("config") or {}

    @property
    def in_hw(self) -> tuple[int, int]:
        return tuple(self.config.get("in_hw", (224, 224)))


def load_pretrained(path, device: str = "cpu") -> PretrainedModel:
    """Load a pretraining checkpoint (a folder, or a ``pretrain`` output folder holding ``best/``)."""
    from . import checkpoint as ckpt
    from .device import select_device
    from .errors import CheckpointError
    from .models import SiameseNet, VGGMNet

    d = ckpt.resolve(path, "pretraining")
    meta = ckpt.read_meta(d)
    conf = meta.get("config") or {}
    if conf.get("task") != "pretrain" or not isinstance(conf.get("model"), dict):
        raise CheckpointError(f"not a pretraining checkpoint (task {conf.get('task')!r})", d)
    # a checkpoint without a loss record predates projection heads: the pair space is fc7 itself
    recorded = conf.get("loss") or {"objective": "contrastive", "normalize": False, "projection": 0}
    loss = LossConfig(**{k: v for k, v in recorded.items() if k in {f.name for f in dataclasses.fields(LossConfig)}})
    net = VGGMNet(ModelConfig.from_dict(conf["model"]), int(conf.get("num_classes", len(LEVEL_NAMES))),
                  tuple(conf.get("in_hw", (224, 224))))
    model = SiameseNet(net, loss.projection)
    ckpt.load_checkpoint(d, model)
    model.to(select_device(device)).eval()
    return PretrainedModel(model, loss.normalize or loss.objective == "ntxent", meta, d)


def evaluate_checkpoint(checkpoint, cohort, out, *, split: str = "test", splits_path=None, neg_per_pos: float = 1.0,
                        seed: int = 0, batch_size: int = 32, device: str = "auto", cache_dir=None,
                        progress: bool = True):
    """``spine-ssl eval-pairs``: embed every VB of a split (default: the checkpoint's test split),
    score all positive pairs and ``neg_per_pos`` acquisition-matched negatives by embedding
    distance, beside the raw-pixel distance on the same pairs; writes the report to ``out``."""
    from . import data as D
    from .device import select_device
    from .evaluate import evaluate_pairs, raw_pixel_auc
    from .models import unwrap

    dev = select_device(device)
    pm = load_pretrained(checkpoint, str(dev))
    rows = D.read_vb_table(cohort)
    if split == "all":
        part = rows
    else:
        sp = Path(splits_path) if splits_path else pm.path.parent / pm.config.get("splits", "splits.json")
        if not sp.is_file():
            raise ManifestError("splits file not found (pass --splits)", sp)
        part = D.rows_in(rows, D.read_splits(sp).subjects[split])
    if not part:
        raise ConfigError(f"no VB volumes of the cohort are in the {split} split")
    if neg_per_pos < 0:
        raise ConfigError("--neg-per-pos must be >= 0")
    pair_cfg = D.PairConfig(neg_per_pos=neg_per_pos, balance_levels=False,
                            interval_bin_days=float((pm.config.get("pairs") or {}).get("interval_bin_days", 365.25)))
    pairs = D.PairSampler(part, pair_cfg, seed=seed, shuffle=False).epoch_pairs(0)
    cache = D.VolumeCache(cohort, part, unwrap(pm.model).net_hw, cache_dir=cache_dir, progress=progress)
    raw = raw_pixel_auc(part, cache, pairs)
    return evaluate_pairs(pm.model, part, cache, pairs, dev, out, batch_size=batch_size,
                          extra={"split": split, "checkpoint_epoch": pm.meta.get("epoch")}, progress=progress,
                          normalize=pm.normalize, baselines={"raw_pixel_auc": raw})
