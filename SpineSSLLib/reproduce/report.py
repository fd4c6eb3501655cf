"""The report: table with 95 % CIs, paired tests across seeds, Fig. 8, baselines, pretraining."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .runner import Reproduction

from ..atomic import write_json, write_text


MODE_LABELS = {"supervised": "supervised transfer", "ssl-frozen": "SSL (frozen)", "ssl-finetune": "SSL (fine-tuned)",
               "scratch": "from scratch", "frozen-random": "frozen random"}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (size, mode): mean ± 95 % CI of the test average class accuracy over seeds."""
    from ..metrics import mean_ci95

    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((int(r["size_subjects"]), r["mode"]), []).append(r)
    out = []
    for (n, mode), rs in sorted(groups.items()):
        m, h = mean_ci95([float(r["average_class_accuracy"]) for r in rs if r["average_class_accuracy"] not in (None, "")])
        k, _ = mean_ci95([float(r["kappa_linear"]) for r in rs if r["kappa_linear"] not in (None, "")])
        out.append({"size_subjects": n, "mode": mode, "seeds": len(rs),
                    "train_scans": int(round(np.mean([float(r["train_scans"]) for r in rs]))),
                    "aca_mean": m, "aca_ci95": h, "kappa_mean": k,
                    "wall_s": float(np.sum([float(r.get("wall_s") or 0) for r in rs]))})
    return out


def ordering_check(summary: list[dict]) -> tuple[bool | None, str]:
    """The paper's ordering at the smallest size: supervised >= SSL > scratch > frozen-random."""
    if not summary:
        return None, "no results yet"
    n0 = min(s["size_subjects"] for s in summary)
    at = {s["mode"]: s["aca_mean"] for s in summary if s["size_subjects"] == n0}
    need = ("supervised", "ssl-frozen", "scratch", "frozen-random")
    if any(m not in at for m in need):
        return None, f"not all of {', '.join(need)} ran at the smallest size ({n0} subjects)"
    ssl = max(at["ssl-frozen"], at.get("ssl-finetune", -1.0))
    holds = at["supervised"] >= ssl > at["scratch"] > at["frozen-random"]
    txt = (f"At the smallest size ({n0} training subjects): supervised {at['supervised']:.3f}, best SSL "
           f"{ssl:.3f}, scratch {at['scratch']:.3f}, frozen random {at['frozen-random']:.3f} — the paper's "
           f"ordering (supervised ≥ SSL > scratch > frozen random) **{'holds' if holds else 'does NOT hold'}** "
           "(comparison of means; see the confidence intervals before reading much into small gaps).")
    return holds, txt


PAIRS = (("ssl-frozen", "frozen-random"), ("ssl-frozen", "scratch"), ("ssl-finetune", "scratch"),
         ("supervised", "scratch"))


def paired_tests(rows: list[dict]) -> list[dict]:
    """Per training-set size and pair of modes (``PAIRS``): the per-seed differences of the test
    average class accuracy (same seed = same fc initialisation and data order), their mean with a
    95 % CI, and the two-sided paired t-test's p-value (scipy)."""
    from scipy.stats import ttest_rel

    from ..metrics import mean_ci95

    acc: dict[tuple[int, str], dict[int, float]] = {}
    for r in rows:
        if r["average_class_accuracy"] in (None, ""):
            continue
        acc.setdefault((int(r["size_subjects"]), r["mode"]), {})[int(r["seed"])] = float(r["average_class_accuracy"])
    out = []
    for n in sorted({k[0] for k in acc}):
        for a, b in PAIRS:
            xa, xb = acc.get((n, a), {}), acc.get((n, b), {})
            seeds = sorted(set(xa) & set(xb))
            if len(seeds) < 2:
                continue
            d = np.array([xa[s] - xb[s] for s in seeds])
            m, h = mean_ci95(d)
            p = float(ttest_rel([xa[s] for s in seeds], [xb[s] for s in seeds]).pvalue) if np.any(d != d[0]) else \
                (0.0 if d[0] != 0 else 1.0)
            out.append({"size_subjects": n, "a": a, "b": b, "seeds": len(seeds), "diff_mean": m, "diff_ci95": h,
                        "p_value": p})
    return out


def plot_fig8(path: Path, summary: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for mode in ("supervised", "ssl-frozen", "ssl-finetune", "scratch", "frozen-random"):
        pts = sorted((s["train_scans"], s["aca_mean"], s["aca_ci95"]) for s in summary if s["mode"] == mode)
        if not pts:
            continue
        x, y, e = zip(*pts)
        e = [0 if not np.isfinite(v) else v for v in e]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=MODE_LABELS.get(mode, mode))
    ax.set_xlabel("training scans")
    ax.set_ylabel("test average class accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def write_report(rep: Reproduction) -> Path:
    from ..metrics import mean_ci95  # noqa: F401  (keeps the import error early if scipy is missing)

    out = rep.out
    rows = []
    if (out / "results.csv").is_file():
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    summary = summarise(rows)
    write_json(out / "summary.json", summary)
    plot_fig8(out / "fig8.png", summary, f"Grading accuracy vs training scans ({rep.cfg.name} preset)")
    base = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").is_file() else {}
    splits = json.loads((out / "grading_splits.json").read_text()) if (out / "grading_splits.json").is_file() else {}
    st = rep.state
    L = [f"# SpineSSL reproduction of the learning-curve experiment ({rep.cfg.name} preset)", ""]
    if st.get("command"):
        L += ["Made by:", "", "```", st["command"], "```", ""]
    total = sum(v["wall_s"] for v in st.get("stages", {}).values()) + sum(s["wall_s"] for s in summary)
    L += [f"Cohort: `{rep.raw_cohort.name}`; grading subjects train / val / test = "
          f"{len(splits.get('train', []))} / {len(splits.get('val', []))} / {len(splits.get('test', []))}; "
          f"modes {', '.join(rep.cfg.modes)}; seeds {', '.join(map(str, rep.cfg.seeds))}.", ""]
    L += [f"Configuration: pretraining `{json.dumps(rep.cfg.pretrain, sort_keys=True)}`; grading "
          f"`{json.dumps(rep.cfg.grade, sort_keys=True)}`; supervised source `{json.dumps(rep.cfg.supervised_grade)}`; "
          f"machine: {_machine()}.", ""]
    for note in splits.get("notes", []):
        L.append(f"- split note: {note}")
    L += ["## Test average class accuracy (mean ± 95 % CI over seeds)", "",
          "| train subjects | train scans | mode | seeds | avg class acc | ± 95 % CI | linear κ |",
          "|---:|---:|---|---:|---:|---:|---:|"]
    for s in summary:
        L.append(f"| {s['size_subjects']} | {s['train_scans']} | {MODE_LABELS.get(s['mode'], s['mode'])} | {s['seeds']} | "
                 f"{_fmt(s['aca_mean'])} | {_fmt(s['aca_ci95'])} | {_fmt(s['kappa_mean'])} |")
    holds, txt = ordering_check(summary)
    L += ["", "![accuracy vs training scans](fig8.png)", "", "## Does the paper's ordering hold?", "", txt, ""]
    tests = paired_tests(rows)
    write_json(out / "paired_tests.json", tests)
    if tests:
        L += ["Paired comparisons across seeds (same seed = same fc initialisation and data order; difference "
              "of test average class accuracy, mean ± 95 % CI, two-sided paired t-test):", "",
              "| train subjects | comparison | seeds | difference | ± 95 % CI | p |", "|---:|---|---:|---:|---:|---:|"]
        for t in tests:
            L.append(f"| {t['size_subjects']} | {MODE_LABELS.get(t['a'], t['a'])} − {MODE_LABELS.get(t['b'], t['b'])} | "
                     f"{t['seeds']} | {_fmt(t['diff_mean'])} | {_fmt(t['diff_ci95'])} | {_fmt(t['p_value'])} |")
        L.append("")
    if base:
        L += ["## Naive baselines (same splits)", "",
              "| train subjects | hand-feature logistic regression: avg class acc | linear κ |", "|---:|---:|---:|"]
        for n, d in base.get("grading_logreg", {}).items():
            L.append(f"| {n} | {_fmt(d['average_class_accuracy'])} | {_fmt(d['kappa_linear'])} |")
        L += ["", f"Majority-class prediction: average class accuracy "
                  f"{_fmt(base.get('majority_class_average_class_accuracy'))} (= 1 / number of classes).", ""]
        ia = base.get("identity_pixel_auc", {})
        L += [f"Identity from raw pixels ({ia.get('split')} split, same level, baseline vs follow-up): "
              f"AUC {_fmt(ia.get('auc'))} ({ia.get('n_pos')} positive / {ia.get('n_neg')} negative VB pairs).", ""]
    L += _pretrain_section(rep)
    L += ["## Time", "", "| stage | wall time (s) |", "|---|---:|"]
    for name, v in st.get("stages", {}).items():
        L.append(f"| {name} | {v['wall_s']} |")
    L.append(f"| grading runs ({len(rows)}) | {round(sum(s['wall_s'] for s in summary), 1)} |")
    L += [f"| **total** | **{round(total, 1)}** |", ""]
    n_planned = len(rep.cfg.modes) * len(rep.cfg.seeds) * len(rep.cfg.paper_sizes)
    if len(rows) < n_planned:
        L += [f"**Incomplete:** {len(rows)} of {n_planned} planned runs have finished; run the same command "
              "again to continue.", ""]
    L += ["Per-run figures: `results.csv`; per-run models, logs and confusion matrices: `runs/<run>/`.", ""]
    write_text(out / "report.md", "\n".join(L))
    return out / "report.md"


def _machine() -> str:
    import platform

    try:
        import torch

        dev = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
            f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    except ImportError:  # pragma: no cover
        dev = "?"
    cpu = platform.processor() or platform.machine()
    try:
        load = ", load average %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{dev}, {cpu}{load}"


def _pretrain_section(rep: Reproduction) -> list[str]:
    """Pretraining figures (same/different AUC beside the raw-pixel AUC on the same pairs, level
    accuracy, training curve summary) and the frozen-trunk probes, for the configured objective
    and, when run, the other one at equal compute."""
    runs = [(rep.pretrain_dir, "configured")] + sorted(
        (d, "comparison") for d in rep.out.glob("pretrain_*") if d.is_dir())
    rows, probes = [], []
    for d, role in runs:
        rp = d / "eval_test" / "report.json"
        if not rp.is_file():
            continue
        ev = json.loads(rp.read_text())
        fit = json.loads((d / "fit.json").read_text()) if (d / "fit.json").is_file() else {}
        conf = json.loads((d / "pretrain_config.json").read_text()) if (d / "pretrain_config.json").is_file() else {}
        obj = (conf.get("loss") or {}).get("objective", "?")
        log = list(csv.DictReader(open(d / "log.csv"))) if (d / "log.csv").is_file() else []
        first = float(log[0]["train_level"]) if log and log[0].get("train_level") else None
        last = float(log[-1]["train_level"]) if log and log[-1].get("train_level") else None
        wall = sum(float(r.get("time_s") or 0) for r in log)
        rows.append(f"| {obj} ({role}) | {_fmt(ev.get('auc'))} | {_fmt((ev.get('baselines') or {}).get('raw_pixel_auc'))} | "
                    f"{_fmt(ev.get('level_accuracy'))} | {_fmt(first)} → {_fmt(last)} | {fit.get('last_epoch', -1) + 1} | "
                    f"{round(wall)} | {ev.get('n_positive_pairs')} / {ev.get('n_negative_pairs')} |")
        for w in fit.get("warnings") or []:
            rows.append(f"| ⚠ {obj}: {w} | | | | | | | |")
        pj = d / "probe" / "probe.json"
        if pj.is_file():
            for r in json.loads(pj.read_text())["rows"]:
                probes.append(f"| {obj} | {r['task']} | {r['features']} | {_fmt(r['knn'])} | {_fmt(r['linear'])} |")
    if not rows:
        return []
    L = ["## Pretraining (longitudinal SSL)", "",
         "Pretraining test split: same/different-subject ROC AUC of the embedding distance beside the raw-pixel "
         "distance on the same pairs (paper 0.946), VB level accuracy (paper 0.978), training level loss first → "
         "last epoch (chance ln 7 = 1.946).", "",
         "| objective | pair AUC | raw-pixel AUC | level accuracy | train level loss | epochs | train s | pos / neg pairs |",
         "|---|---:|---:|---:|---|---:|---:|---|", *rows, ""]
    if probes:
        L += ["Frozen-trunk probes (`spine-ssl probe`; balanced accuracy on held-out subjects; chance: level "
              f"{1 / 7:.3f}, grade 1 / number of grades):", "",
              "| objective | task | features | k-NN | linear |", "|---|---|---|---:|---:|", *probes, ""]
    return L
