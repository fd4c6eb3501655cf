"""``spine-ssl eval-pairs``: same/different-subject ROC AUC and VB-level accuracy of a pretrained
Siamese network on a split (paper §4.1, Fig. 6)."""

from __future__ import annotations

from pathlib import Path

NAME = "eval-pairs"
HELP = "evaluate a pretrained network on VB pairs: distance ROC AUC, level accuracy, Fig.-6 PNGs"
DESCRIPTION = (HELP + ". Embeds every VB volume of the split (default: test), scores all positive pairs and "
               "acquisition-matched negatives by fc7 distance. Writes OUT/report.json, OUT/pairs.csv, "
               "OUT/distance_histogram.png, OUT/roc.png, OUT/level_confusion.png. "
               "Exit codes: 0 done; 2 bad input.")


def add_arguments(p):
    p.add_argument("checkpoint", help="pretraining output folder (uses best/) or a checkpoint folder")
    p.add_argument("cohort", help="cohort folder with volumes.csv")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="default test")
    p.add_argument("--splits", help="splits.json (default: the one beside the checkpoint)")
    p.add_argument("--neg-per-pos", type=float, default=1.0, help="negatives per positive (default 1)")
    p.add_argument("--seed", type=int, default=0, help="negative sampling seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="decoded-volume cache (default COHORT/cache)")


def _resolve(path: Path) -> Path:
    from .. import checkpoint as ckpt
    from ..errors import CheckpointError

    if ckpt.exists(path):
        return path
    for sub in ("best", "last"):
        if ckpt.exists(path / sub):
            return path / sub
    raise CheckpointError("not a SpineSSL checkpoint (no checkpoint.json here or in best/, last/)", path)


def run(args) -> int:

    from .. import checkpoint as ckpt
    from .. import data as D
    from .. import progress
    from ..errors import CheckpointError, ConfigError, ManifestError
    from ..evaluate import evaluate_pairs
    from ..models import ModelConfig, SiameseNet, VGGMNet
    from ..train import select_device

    cdir = _resolve(Path(args.checkpoint))
    meta = ckpt.read_meta(cdir)
    conf = meta.get("config") or {}
    if conf.get("task") != "pretrain" or not isinstance(conf.get("model"), dict):
        raise CheckpointError(f"not a pretraining checkpoint (task {conf.get('task')!r})", cdir)
    model_cfg = ModelConfig.from_dict(conf["model"])
    in_hw = tuple(conf.get("in_hw", (224, 224)))
    model = SiameseNet(VGGMNet(model_cfg, int(conf.get("num_classes", 7)), in_hw))
    ckpt.load_checkpoint(cdir, model)

    rows = D.read_vb_table(args.cohort)
    if args.split == "all":
        part = rows
    else:
        sp = Path(args.splits) if args.splits else cdir.parent / conf.get("splits", "splits.json")
        if not sp.is_file():
            raise ManifestError("splits file not found (pass --splits)", sp)
        splits = D.read_splits(sp)
        part = D.rows_in(rows, splits.subjects[args.split])
    if not part:
        raise ConfigError(f"no VB volumes of the cohort are in the {args.split} split")
    if args.neg_per_pos < 0:
        raise ConfigError("--neg-per-pos must be >= 0")
    pair_cfg = D.PairConfig(neg_per_pos=args.neg_per_pos, balance_levels=False,
                            interval_bin_days=float((conf.get("pairs") or {}).get("interval_bin_days", 365.25)))
    sampler = D.PairSampler(part, pair_cfg, seed=args.seed, shuffle=False)
    pairs = sampler.epoch_pairs(0)
    device = select_device(args.device)
    cache = D.VolumeCache(args.cohort, part, model_cfg.net_hw(in_hw), cache_dir=args.cache_dir,
                          progress=progress._enabled)
    ev = evaluate_pairs(model, part, cache, pairs, device, args.out, batch_size=args.batch_size,
                        extra={"split": args.split, "checkpoint_epoch": meta.get("epoch")},
                        progress=progress._enabled)
    auc = "n/a (no positive or no negative pairs)" if ev.report["auc"] is None else f"{ev.auc:.3f}"
    print(f"eval-pairs ({args.split}): {ev.n_pos} positive / {ev.n_neg} negative pairs; AUC {auc} "
          f"(paper 0.946); level accuracy {ev.level_accuracy:.3f} (paper 0.978)")
    print(f"report: {Path(args.out) / 'report.json'}")
    print("privacy: a network that matches vertebrae across years re-identifies people; treat its weights "
          "and any stored embeddings as personal data (docs/privacy.md)")
    return 0
