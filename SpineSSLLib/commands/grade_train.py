"""``spine-ssl grade-train``: train a disc-degeneration grading model on a cohort's graded discs."""

NAME = "grade-train"
HELP = "train a disc-degeneration grading model (transfer modes: scratch, frozen-random, ssl-frozen, ssl-finetune, supervised)"
DESCRIPTION = (
    "Train the grading CNN (the pretraining trunk on 112x224x9 disc volumes, new fully-connected "
    "layers) on the graded discs of an extracted cohort (volumes.csv). Subjects are split "
    "670/50/200 (scaled): test subjects have one scan and are outside the pretraining train/val "
    "split. Writes the model (best/), log.csv, test_metrics.json, test_predictions.csv and "
    "confusion.png to --out. Recipes: 'default' (AdamW + cosine) and 'paper' (SGD, lr /10 on plateau).")

OVERRIDES = {"mode": "transfer.mode", "pretrained": "transfer.pretrained", "fc_init": "transfer.fc_init",
             "preset": "model.preset", "seed": "train.seed", "epochs": "train.max_epochs",
             "batch_size": "train.batch_size", "lr": "train.lr", "optimizer": "train.optimizer",
             "schedule": "train.schedule", "patience": "train.patience", "device": "train.device",
             "amp": "train.amp", "workers": "train.num_workers"}


def add_arguments(parser):
    from ..grading import MODES
    from ..grading.train import RECIPES

    parser.add_argument("cohort", help="cohort folder with volumes.csv (from `spine-ssl extract`)")
    parser.add_argument("--out", required=True, help="output folder for the grading model and reports")
    parser.add_argument("--config", help="JSON config file (keys: model, train, augment, transfer, recipe)")
    parser.add_argument("--recipe", choices=list(RECIPES), help="starting values (default: 'default')")
    parser.add_argument("--mode", choices=MODES,
                        help="initialisation of the conv layers (default ssl-frozen, the paper's main mode)")
    parser.add_argument("--pretrained", help="checkpoint folder with the conv weights (ssl-* and supervised modes)")
    parser.add_argument("--pretrain-splits", help="the pretraining splits file (keeps test subjects out of "
                        "pretraining); default: splits.json beside the pretrained checkpoint, if any")
    parser.add_argument("--preset", choices=("paper", "small"),
                        help="network size for scratch / frozen-random (pretrained modes use the checkpoint's)")
    parser.add_argument("--seed", type=int, help="seed of the fc initialisation and data order (default 0)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the subject split")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"))
    parser.add_argument("--schedule", choices=("cosine", "plateau"))
    parser.add_argument("--patience", type=int, help="plateau schedule: epochs without validation progress before lr/10")
    parser.add_argument("--fc-init", choices=("data", "he"),
                        help="data: rescale the new fc layers to unit pre-activation spread on training discs "
                        "(frozen modes; default); he: the network's own initialisation")
    parser.add_argument("--no-augment", action="store_true", help="switch the training augmentations off")
    parser.add_argument("--device", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--workers", type=int, help="data-loader worker processes")
    parser.add_argument("--tta", action="store_true", help="also report test metrics with test-time augmentation")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")


def _default_pretrain_splits(pretrained):
    from pathlib import Path

    if not pretrained:
        return None
    p = Path(pretrained)
    try:  # pretraining checkpoints record where their splits file is
        from .. import checkpoint as ckpt

        rec = (ckpt.read_meta(ckpt.resolve(p)).get("config") or {}).get("splits")
        if rec and Path(rec).is_file():
            return Path(rec)
    except Exception:  # noqa: BLE001 - a missing/odd record falls back to looking beside it
        pass
    for cand in (p / "splits.json", p.parent / "splits.json", p.parent.parent / "splits.json"):
        if cand.is_file():
            return cand
    return None


def run(args) -> int:
    import json
    from pathlib import Path

    from .. import grading
    from ..grading.train import load_config

    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    if args.no_augment:
        overrides["augment.enabled"] = False
    cfg = load_config(args.config, overrides, args.recipe)
    if args.resume:  # a run made with other sizes is refused before anything is read or written
        from .. import checkpoint as ckpt

        ckpt.check_model_config(Path(args.out) / "last", cfg.resolved_model().to_dict())
    splits_file = args.pretrain_splits or _default_pretrain_splits(cfg.transfer.pretrained)
    records = grading.read_ivd_table(args.cohort)
    pre = grading.read_pretrain_splits(splits_file) if splits_file else {}
    splits = grading.make_grading_splits(records, pre, seed=args.split_seed)
    for note in splits.notes:
        print(f"note: {note}")
    res = grading.train_grading(args.cohort, args.out, cfg, splits=splits, resume=args.resume,
                                eval_tta=grading.TTAConfig() if args.tta else None)
    t = res.get("test")
    summary = {"mode": res["mode"], "train_subjects": res["n_train_subjects"], "train_scans": res["n_train_scans"],
               "epochs": res["epochs"], "stop": res["stop_reason"]}
    if t:
        summary.update(test_discs=t["n"], average_class_accuracy=round(t["average_class_accuracy"], 4),
                       kappa_linear=None if t["kappa_linear"] is None else round(t["kappa_linear"], 4))
    if "test_tta" in res:
        summary["average_class_accuracy_tta"] = round(res["test_tta"]["average_class_accuracy"], 4)
    print(json.dumps(summary))
    print(f"grading model: {args.out}/best")
    return 0
