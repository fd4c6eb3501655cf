"""``spine-ssl pretrain``: longitudinal self-supervised pretraining of the Siamese VGG-M network
(contrastive loss on fc7 + class-balanced VB-level loss on fc8) on an extracted cohort.

Writes ``OUT/splits.json`` (subject splits, reused by grading), ``OUT/pretrain_config.json``,
``OUT/log.csv``, ``OUT/best/`` and ``OUT/last/`` (safetensors checkpoints), ``OUT/fit.json`` and
the validation pair evaluation ``OUT/eval_val/``.  Multi-GPU: ``torchrun --nproc_per_node N -m
SpineSSLLib pretrain ...`` (same arguments).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

NAME = "pretrain"
HELP = "self-supervised Siamese pretraining on longitudinal VB pairs (contrastive + level loss)"
DESCRIPTION = (HELP + ". Reads COHORT/volumes.csv (spine-ssl extract); writes OUT/splits.json, OUT/log.csv, "
               "OUT/best and OUT/last checkpoints (safetensors + JSON), OUT/eval_val. Paper defaults: "
               "SGD momentum 0.9, weight decay 5e-4, lr 1e-5, batch 32 pairs, lr /10 on plateau. "
               "Multi-GPU: torchrun --nproc_per_node N -m SpineSSLLib pretrain ... "
               "Exit codes: 0 done; 2 bad input; 130 interrupted.")


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the data (JSON file: the same keys)."""

    model: dict = field(default_factory=lambda: {"preset": "paper"})
    train: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    split_seed: int = 0
    split_fractions: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    eval_neg_per_pos: float = 1.0

    def build(self):
        """Typed configs: (ModelConfig, TrainConfig, LossConfig, PairConfig, AugmentConfig)."""
        from ..data import AugmentConfig, PairConfig
        from ..errors import ConfigError
        from ..losses import LossConfig
        from ..models import ModelConfig
        from ..train import TrainConfig

        m = dict(self.model)
        preset = m.pop("preset", "paper")
        try:
            model = ModelConfig.preset(preset, **m)
            aug = dict(self.augment)
            if "scale" in aug:
                aug["scale"] = tuple(aug["scale"])
            return (model, TrainConfig.from_dict(self.train), LossConfig(**self.loss), PairConfig(**self.pairs),
                    AugmentConfig(**aug))
        except TypeError as e:
            raise ConfigError(f"bad configuration key ({e})") from None

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        from ..config import from_dict

        return from_dict(cls, d, "pretraining")


def add_arguments(p):
    p.add_argument("cohort", help="cohort folder with volumes.csv (spine-ssl extract)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="JSON config file (keys: model, train, loss, pairs, augment, split_seed, ...)")
    p.add_argument("--preset", choices=["paper", "small"], help="network size (default paper)")
    p.add_argument("--splits", help="reuse this splits.json instead of making one")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 500)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-5)")
    p.add_argument("--batch-size", type=int, help="pairs per batch (default 32)")
    p.add_argument("--patience", type=int, help="epochs without validation improvement before lr /10 (default 10)")
    p.add_argument("--max-lr-drops", type=int, help="lr reductions before the next plateau stops (default 2)")
    p.add_argument("--margin", type=float, help="contrastive margin m (default 1.0)")
    p.add_argument("--level-weight", type=float, help="lambda, weight of the level loss (default 1)")
    p.add_argument("--neg-per-pos", type=float, help="negative pairs per positive pair (default 1)")
    p.add_argument("--aux-heads", help="optional metadata heads from volumes.csv columns, e.g. sex:2,age_bin:5")
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--split-seed", type=int, help="subject split seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA (default auto)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default 2)")
    p.add_argument("--cache-dir", help="where decoded volumes are cached (default COHORT/cache)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")


def config_from_args(args) -> PretrainConfig:
    from ..errors import ConfigError
    from ..train import load_config_file

    cfg = PretrainConfig()
    if args.config:
        try:  # a typo in the file: the message names the file
            cfg = PretrainConfig.from_dict(load_config_file(args.config))
            cfg.build()
        except ConfigError as e:
            raise ConfigError(e.cause, e.path or args.config) from None
    if args.resume and (Path(args.out) / "pretrain_config.json").is_file() and not args.config:
        cfg = PretrainConfig.from_dict(json.loads((Path(args.out) / "pretrain_config.json").read_text()))
    if args.preset:
        cfg.model = {**{k: v for k, v in cfg.model.items() if k == "aux_heads"}, "preset": args.preset}
    for flag, key in (("epochs", "max_epochs"), ("lr", "lr"), ("batch_size", "batch_size"), ("patience", "patience"),
                      ("max_lr_drops", "max_lr_drops"), ("seed", "seed"), ("device", "device"), ("amp", "amp"),
                      ("workers", "num_workers")):
        v = getattr(args, flag)
        if v is not None:
            cfg.train[key] = v
    if args.tensorboard:
        cfg.train["tensorboard"] = True
    if args.margin is not None:
        cfg.loss["margin"] = args.margin
    if args.level_weight is not None:
        cfg.loss["level_weight"] = args.level_weight
    if args.neg_per_pos is not None:
        cfg.pairs["neg_per_pos"] = args.neg_per_pos
    if args.no_augment:
        cfg.augment["enabled"] = False
    if args.split_seed is not None:
        cfg.split_seed = args.split_seed
    if args.aux_heads:
        heads = {}
        for part in args.aux_heads.split(","):
            try:
                k, n = part.split(":")
                heads[k.strip()] = int(n)
            except ValueError:
                raise ConfigError(f"--aux-heads expects name:classes[,name:classes], got {part!r}") from None
        cfg.model["aux_heads"] = heads
    cfg.build()  # validate now: errors before any work
    return cfg


def make_loss_fn(loss_cfg, alpha, aux_heads: dict):
    """``loss_fn(model, batch, train)`` for ``train.fit``: Siamese forward + L_C + lambda L_level
    (+ aux heads)."""
    from ..losses import aux_loss, pretrain_loss
    from ..models import unwrap

    def loss_fn(model, batch, train):
        import torch

        ea, eb, la, lb = model(batch["a"], batch["b"])
        parts = pretrain_loss(ea, eb, la, lb, batch["y"], batch["level"], loss_cfg, alpha)
        loss = parts.pop("loss")
        if aux_heads:
            net = unwrap(model)
            za, zb = net.aux_logits(ea), net.aux_logits(eb)
            for name in aux_heads:
                la_ = aux_loss(torch.cat([za[name], zb[name]]), torch.cat([batch[f"aux_{name}_a"], batch[f"aux_{name}_b"]]))
                parts[f"aux_{name}"] = la_
                loss = loss + loss_cfg.aux_weight * la_
        return loss, parts

    return loss_fn


def run_pretraining(cohort, out, cfg: PretrainConfig, *, splits_path=None, resume=False, cache_dir=None,
                    evaluate_val: bool = True, progress: bool = True) -> dict:
    """Train; returns a summary dict (also written to OUT/pretrain_summary.json on rank 0)."""
    import torch

    from .. import data as D
    from .. import evaluate as E
    from ..atomic import write_json
    from ..errors import ConfigError, ManifestError
    from ..losses import class_balanced_weights
    from ..models import SiameseNet, VGGMNet
    from ..train import amp_dtype, fit, select_device, setup_distributed

    model_cfg, train_cfg, loss_cfg, pair_cfg, aug_cfg = cfg.build()
    out = Path(out)
    if resume:
        from .. import checkpoint as ckpt

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
        write_json(out / "pretrain_config.json", dataclasses.asdict(cfg))
    part = {k: D.rows_in(rows, v) for k, v in splits.subjects.items()}
    device = select_device(train_cfg.device)
    in_hw = (224, 224)
    net_hw = model_cfg.net_hw(in_hw)
    cache = D.VolumeCache(cohort, rows, net_hw, cache_dir=cache_dir, progress=progress and info.is_main)

    train_sampler = D.PairSampler(part["train"], pair_cfg, seed=train_cfg.seed, rank=info.rank, world=info.world)
    if not train_sampler.positives:
        raise ConfigError("no positive pairs in the training split: pretraining needs subjects with "
                          "at least two time points", Path(cohort) / "volumes.csv")
    val_sampler = D.PairSampler(part["val"], pair_cfg, seed=10_000 + train_cfg.seed, rank=info.rank,
                                world=info.world, shuffle=False)
    from torch.utils.data import DataLoader

    pin = device.type == "cuda"
    nw = train_cfg.num_workers
    train_loader = DataLoader(D.PairDataset(part["train"], cache), sampler=train_sampler,
                              batch_size=train_cfg.batch_size, num_workers=nw, pin_memory=pin,
                              persistent_workers=nw > 0)
    val_loader = None
    if val_sampler.positives:
        val_loader = DataLoader(D.PairDataset(part["val"], cache), sampler=val_sampler,
                                batch_size=train_cfg.batch_size, num_workers=0, pin_memory=pin)
    alpha = class_balanced_weights(D.level_counts(part["train"])) if not loss_cfg.class_weights else \
        torch.tensor(loss_cfg.class_weights, dtype=torch.float32)
    torch.manual_seed(train_cfg.seed)
    net = VGGMNet(model_cfg, len(D.LEVEL_NAMES), in_hw)
    model = SiameseNet(net)
    augment = D.PairAugment(aug_cfg, net_hw) if aug_cfg.enabled else None
    ck_cfg = {"task": "pretrain", "model": model_cfg.to_dict(), "num_classes": len(D.LEVEL_NAMES),
              "class_names": list(D.LEVEL_NAMES), "in_hw": list(in_hw), "splits": "splits.json",
              "loss": dataclasses.asdict(loss_cfg), "pairs": dataclasses.asdict(pair_cfg)}
    res = fit(model, make_loss_fn(loss_cfg, alpha, model_cfg.aux_heads), train_loader, val_loader, train_cfg, out,
              checkpoint_config=ck_cfg, resume=resume, augment=augment, device=device)
    summary = {"stop_reason": res.stop_reason, "epochs": res.last_epoch + 1, "best_epoch": res.best_epoch,
               "best_val_loss": res.best_val_loss,
               "subjects": {k: len(v) for k, v in splits.subjects.items()},
               "positive_pairs": {"train": len(train_sampler.positives), "val": len(val_sampler.positives)}}
    if evaluate_val and info.is_main and val_sampler.positives:
        from .. import checkpoint as ckpt

        best = out / "best" if ckpt.exists(out / "best") else out / "last"
        ckpt.load_checkpoint(best, model)
        ev_sampler = D.PairSampler(part["val"], D.PairConfig(neg_per_pos=cfg.eval_neg_per_pos,
                                                             interval_bin_days=pair_cfg.interval_bin_days,
                                                             balance_levels=False), seed=20_000, shuffle=False)
        ev = E.evaluate_pairs(model, part["val"], cache, ev_sampler.epoch_pairs(0), device, out / "eval_val",
                              batch_size=train_cfg.batch_size, dtype=amp_dtype(train_cfg, device),
                              extra={"split": "val", "checkpoint": best.name}, progress=progress)
        summary.update({"val_auc": ev.report["auc"], "val_level_accuracy": ev.report["level_accuracy"]})
    if info.is_main:
        write_json(out / "pretrain_summary.json", summary)
    return summary


def run(args) -> int:
    from .. import progress

    cfg = config_from_args(args)
    s = run_pretraining(args.cohort, args.out, cfg, splits_path=args.splits, resume=args.resume,
                        cache_dir=args.cache_dir, progress=progress._enabled)
    from ..train import dist_info

    if dist_info().is_main:
        msg = f"pretrain: {s['epochs']} epoch(s), stopped by {s['stop_reason']}; best epoch {s['best_epoch']}"
        if s.get("val_auc") is not None:
            msg += f"; validation pair AUC {s['val_auc']:.3f}, level accuracy {s['val_level_accuracy']:.3f}"
        print(msg)
        print(f"checkpoints in {Path(args.out) / 'best'} and {Path(args.out) / 'last'}; splits in "
              f"{Path(args.out) / 'splits.json'}")
    return 0
