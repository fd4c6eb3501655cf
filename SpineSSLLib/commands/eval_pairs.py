"""``spine-ssl eval-pairs``: same/different-subject ROC AUC and VB-level accuracy of a pretrained
Siamese network on a split (paper §4.1, Fig. 6)."""

from __future__ import annotations

from pathlib import Path

NAME = "eval-pairs"
HELP = "evaluate a pretrained network on VB pairs: distance ROC AUC, level accuracy, Fig.-6 PNGs"
DESCRIPTION = (HELP + ". Embeds every VB volume of the split (default: test), scores all positive pairs and "
               "acquisition-matched negatives by embedding distance, beside the raw-pixel distance on the same pairs. Writes OUT/report.json, OUT/pairs.csv, "
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


def run(args) -> int:
    from .. import progress
    from ..pretrain import evaluate_checkpoint

    ev = evaluate_checkpoint(args.checkpoint, args.cohort, args.out, split=args.split, splits_path=args.splits,
                             neg_per_pos=args.neg_per_pos, seed=args.seed, batch_size=args.batch_size,
                             device=args.device, cache_dir=args.cache_dir, progress=progress._enabled)
    raw = (ev.report.get("baselines") or {}).get("raw_pixel_auc")
    auc = "n/a (no positive or no negative pairs)" if ev.report["auc"] is None else f"{ev.auc:.3f}"
    raw_s = "n/a" if raw is None else f"{raw:.3f}"
    print(f"eval-pairs ({args.split}): {ev.n_pos} positive / {ev.n_neg} negative pairs; AUC {auc} "
          f"(raw pixels on the same pairs {raw_s}; paper 0.946); level accuracy {ev.level_accuracy:.3f} "
          "(paper 0.978)")
    print(f"report: {Path(args.out) / 'report.json'}")
    print("privacy: a network that matches vertebrae across years re-identifies people; treat its weights "
          "and any stored embeddings as personal data (docs/privacy.md)")
    return 0
