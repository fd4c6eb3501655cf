"""Training curves of the pretraining recipes on one cohort: the default recipe against the paper's
literal one (at the `small` network size, so both cost about the same per pair), then the held-out
test split's pair AUC (beside raw pixels) and level accuracy of each.

    .venv/bin/python benchmarks/recipe_curves.py C --out OUT --epochs 30 [--alt ALT_C]

C: an extracted cohort (volumes.csv). ``--alt``: a second extracted cohort from a generator the
networks never saw (``spine-ssl synth-alt``), evaluated whole. Writes OUT/<recipe>/ (the runs),
OUT/curves.json and OUT/pretraining_curves.png (level loss / accuracy per epoch, with ln 7).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cohort")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alt", help="extracted cohort of a held-out generator")
    ap.add_argument("--recipes", default="default,paper")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import machine
    from SpineSSLLib import pretrain as P
    from SpineSSLLib import progress

    progress.set_enabled(False)
    out = Path(args.out)
    res = {"machine": machine.describe(), "cohort": str(args.cohort), "epochs": args.epochs, "runs": {}}
    for recipe in args.recipes.split(","):
        cfg = P.load_config(overrides={"model.preset": "small", "train.max_epochs": args.epochs,
                                       "train.num_workers": 0}, recipe=recipe)
        d = out / recipe
        t0 = time.perf_counter()
        if (d / "fit.json").is_file():  # a finished run of this recipe (e.g. from an earlier call) is reused
            wall = sum(float(r["time_s"]) for r in csv.DictReader(open(d / "log.csv")))
        else:
            P.run_pretraining(args.cohort, d, cfg, progress=False, evaluate_val=False)
            wall = time.perf_counter() - t0
        with open(d / "log.csv", newline="") as f:
            log = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        ev = P.evaluate_checkpoint(d, args.cohort, d / "eval_test", split="test", progress=False)
        row = {"wall_s": round(wall, 1), "log": log, "test_auc": ev.report["auc"],
               "test_raw_pixel_auc": ev.report["baselines"]["raw_pixel_auc"],
               "test_level_accuracy": ev.report["level_accuracy"],
               "warnings": json.loads((d / "fit.json").read_text()).get("warnings", [])}
        if args.alt:
            ea = P.evaluate_checkpoint(d, args.alt, d / "eval_alt", split="all", progress=False)
            row.update(alt_auc=ea.report["auc"], alt_raw_pixel_auc=ea.report["baselines"]["raw_pixel_auc"],
                       alt_level_accuracy=ea.report["level_accuracy"])
        res["runs"][recipe] = row
        print(json.dumps({k: v for k, v in row.items() if k != "log"}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "pretraining_curves.png")
    return 0


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for recipe, r in res["runs"].items():
        ep = [x["epoch"] + 1 for x in r["log"]]
        axes[0].plot(ep, [x.get("train_level") for x in r["log"]], label=f"{recipe} (train)")
        if "val_level" in r["log"][0]:
            axes[0].plot(ep, [x.get("val_level") for x in r["log"]], ls="--", label=f"{recipe} (validation)")
        axes[1].plot(ep, [x.get("train_level_acc") for x in r["log"]], label=f"{recipe} (train)")
        if "val_level_acc" in r["log"][0]:
            axes[1].plot(ep, [x.get("val_level_acc") for x in r["log"]], ls="--", label=f"{recipe} (validation)")
    axes[0].axhline(math.log(7), color="0.5", lw=0.8, ls=":", label="ln 7 (chance)")
    axes[1].axhline(1 / 7, color="0.5", lw=0.8, ls=":", label="1/7 (chance)")
    axes[0].set(xlabel="epoch", ylabel="VB level loss", title="level loss")
    axes[1].set(xlabel="epoch", ylabel="VB level accuracy", title="level accuracy", ylim=(0, 1))
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
