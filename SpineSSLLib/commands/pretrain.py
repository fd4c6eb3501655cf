"""``spine-ssl pretrain``: longitudinal self-supervised pretraining (``SpineSSLLib.pretrain``)."""

from __future__ import annotations

from pathlib import Path

NAME = "pretrain"
HELP = "self-supervised Siamese pretraining on longitudinal VB pairs (pair loss + level loss)"
DESCRIPTION = (HELP + ". Reads COHORT/volumes.csv (spine-ssl extract); writes OUT/splits.json, OUT/log.csv, "
               "OUT/best and OUT/last checkpoints (safetensors + JSON), OUT/eval_val. Recipes: 'default' "
               "(BatchNorm, AdamW + cosine, NT-Xent on a projection head; learns in a CPU budget) and 'paper' "
               "(the paper's literal recipe: LRN, SGD lr 1e-5, contrastive loss, lr /10 on plateau); "
               "docs/pretraining.md. Multi-GPU: torchrun --nproc_per_node N -m SpineSSLLib pretrain ... "
               "Exit codes: 0 done; 2 bad input; 130 interrupted.")

# command-line option -> config key (None-valued options are left out)
OVERRIDES = {"preset": "model.preset", "norm": "model.norm", "epochs": "train.max_epochs", "lr": "train.lr",
             "batch_size": "train.batch_size", "optimizer": "train.optimizer", "schedule": "train.schedule",
             "patience": "train.patience", "max_lr_drops": "train.max_lr_drops", "seed": "train.seed",
             "device": "train.device", "amp": "train.amp", "workers": "train.num_workers",
             "objective": "loss.objective", "margin": "loss.margin", "temperature": "loss.temperature",
             "level_weight": "loss.level_weight", "neg_per_pos": "pairs.neg_per_pos", "split_seed": "split_seed",
             "loader": "loader"}


def add_arguments(p):
    from ..pretrain import RECIPES

    p.add_argument("cohort", help="cohort folder with volumes.csv (spine-ssl extract)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="JSON config file (keys: model, train, loss, pairs, augment, recipe, split_seed, ...)")
    p.add_argument("--recipe", choices=list(RECIPES), help="starting values (default: 'default'; 'paper' = the "
                   "paper's literal recipe)")
    p.add_argument("--preset", choices=["paper", "small"], help="network size (default small)")
    p.add_argument("--norm", choices=["batch", "group", "lrn", "none"], help="trunk normalisation")
    p.add_argument("--splits", help="reuse this splits.json instead of making one")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--lr", type=float, help="(peak) learning rate")
    p.add_argument("--batch-size", type=int, help="pairs per batch")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--schedule", choices=["cosine", "plateau"], help="warm-up + cosine decay, or lr /10 on plateau")
    p.add_argument("--patience", type=int, help="plateau schedule: epochs without validation improvement before lr /10")
    p.add_argument("--max-lr-drops", type=int, help="plateau schedule: lr reductions before the next plateau stops")
    p.add_argument("--objective", choices=["ntxent", "contrastive"], help="pair loss")
    p.add_argument("--margin", type=float, help="contrastive margin m")
    p.add_argument("--temperature", type=float, help="NT-Xent temperature")
    p.add_argument("--level-weight", type=float, help="lambda, weight of the level loss")
    p.add_argument("--neg-per-pos", type=float, help="negative pairs per positive pair")
    p.add_argument("--aux-heads", help="optional metadata heads from volumes.csv columns, e.g. sex:2,age_bin:5")
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--split-seed", type=int, help="subject split seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA (default auto)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default 2)")
    p.add_argument("--loader", choices=["auto", "workers", "device"],
                   help="where training pairs are built: 'device' holds every decoded volume on the GPU (or in "
                        "pinned memory) and gathers batches there; 'workers' uses DataLoader workers; "
                        "'auto' (default): device on CUDA, workers elsewhere")
    p.add_argument("--cache-dir", help="where decoded volumes are cached (default COHORT/cache)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")


def parse_heads(spec: str) -> dict:
    from ..errors import ConfigError

    heads = {}
    for part in spec.split(","):
        try:
            k, n = part.split(":")
            heads[k.strip()] = int(n)
        except ValueError:
            raise ConfigError(f"--aux-heads expects name:classes[,name:classes], got {part!r}") from None
    return heads


def config_from_args(args):
    from ..pretrain import load_config

    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    if args.tensorboard:
        overrides["train.tensorboard"] = True
    if args.no_augment:
        overrides["augment.enabled"] = False
    if args.aux_heads:
        overrides["model.aux_heads"] = parse_heads(args.aux_heads)
    saved = Path(args.out) / "pretrain_config.json"
    file = args.config
    if args.resume and saved.is_file() and not args.config:
        file = saved  # a resumed run continues with the configuration it was started with
    return load_config(file, overrides, args.recipe)


def run(args) -> int:
    from .. import progress
    from ..pretrain import run_pretraining
    from ..train import dist_info

    cfg = config_from_args(args)
    s = run_pretraining(args.cohort, args.out, cfg, splits_path=args.splits, resume=args.resume,
                        cache_dir=args.cache_dir, progress=progress._enabled)
    if dist_info().is_main:
        msg = f"pretrain: {s['epochs']} epoch(s), stopped by {s['stop_reason']}; best epoch {s['best_epoch']}"
        if s.get("val_auc") is not None:
            msg += f"; validation pair AUC {s['val_auc']:.3f}, level accuracy {s['val_level_accuracy']:.3f}"
        print(msg)
        print(f"checkpoints in {Path(args.out) / 'best'} and {Path(args.out) / 'last'}; splits in "
              f"{Path(args.out) / 'splits.json'}")
    return 0
