"""Evaluation of detected levels against reference levels (held-out scans): JSON + PNG.

Per scan and level (T12..S1):

- *correctly named*: the prediction with that name exists and its centroid is nearer to the
  reference centroid of that name than to any other reference centroid, and within
  ``max_match_mm`` of it;
- *centroid error*: 3D distance (mm) between the predicted and reference centroid of the same
  name (over correctly named levels);
- *corner error*: mean distance (mm) of the four corners (when both sides have corners);
- a scan is *all correct* when every reference level is correctly named and no level is
  predicted that the reference does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import LEVEL_NAMES
from ..levels import LevelSet


@dataclass
class ScanResult:
    key: str
    per_level: dict[str, dict] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # predicted names absent from the reference
    extra_confidence: list[float] = field(default_factory=list)
    all_correct: bool = False
    flagged: list[str] = field(default_factory=list)


def in_view(ref: LevelSet, scan) -> tuple[LevelSet, list[str]]:
    """Reference levels whose centroid lies inside the scan volume, and the names of the others
    (a reference may list vertebrae outside the field of view)."""
    K, J, I = scan.shape
    keep, outside = {}, []
    for lv in ref:
        ijk = scan.lps_to_index(lv.centroid)
        if np.all(ijk >= -0.5) and np.all(ijk <= np.array([I, J, K]) - 0.5):
            keep[lv.name] = lv
        else:
            outside.append(lv.name)
    return LevelSet(keep, list(ref.issues), ref.source), outside


def compare(key: str, pred: LevelSet, ref: LevelSet, max_match_mm: float = 15.0,
            low_confidence: float = 0.5, ignore: tuple = ()) -> ScanResult:
    """``ignore``: names (e.g. reference levels outside the field of view) whose prediction is
    neither counted right nor wrong."""
    out = ScanResult(key)
    ref_names = [n for n in LEVEL_NAMES if n in ref]
    ref_c = np.array([ref[n].centroid for n in ref_names]) if ref_names else np.zeros((0, 3))
    ok_all = True
    for name in ref_names:
        r = ref[name]
        row = {"present": name in pred, "correct": False, "centroid_mm": None, "corner_mm": None,
               "mid_slice_diff": None, "confidence": None}
        if name in pred:
            p = pred[name]
            d = np.linalg.norm(ref_c - p.centroid, axis=1)
            err = float(np.linalg.norm(p.centroid - r.centroid))
            row["correct"] = bool(ref_names[int(np.argmin(d))] == name and err <= max_match_mm)
            row["centroid_mm"] = err
            row["confidence"] = float(p.confidence)
            if p.corners is not None and r.corners is not None:
                row["corner_mm"] = float(np.linalg.norm(p.corners - r.corners, axis=1).mean())
            if p.mid_slice is not None and r.mid_slice is not None:
                row["mid_slice_diff"] = int(p.mid_slice - r.mid_slice)
            if p.confidence < low_confidence:
                out.flagged.append(name)
        ok_all &= row["correct"]
        out.per_level[name] = row
    out.extra = [n for n in pred.names if n in LEVEL_NAMES and n not in ref and n not in ignore]
    out.extra_confidence = [float(pred[n].confidence) for n in out.extra]
    out.all_correct = bool(ok_all and not out.extra and ref_names)
    return out


def _stats(v: list[float]) -> dict:
    if not v:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    a = np.asarray(v, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def summarise(results: list[ScanResult], targets: dict | None = None) -> dict:
    targets = targets or {"mean_centroid_mm": 2.0, "scans_all_correct": 0.98}
    per_level = {}
    all_err, all_corner = [], []
    n_ref = n_ok = 0
    for name in LEVEL_NAMES:
        rows = [r.per_level[name] for r in results if name in r.per_level]
        ok = [x for x in rows if x["correct"]]
        errs = [x["centroid_mm"] for x in ok]
        corners = [x["corner_mm"] for x in ok if x["corner_mm"] is not None]
        mids = [abs(x["mid_slice_diff"]) for x in ok if x["mid_slice_diff"] is not None]
        per_level[name] = {"n_reference": len(rows), "labelling_accuracy": (len(ok) / len(rows)) if rows else None,
                           "centroid_mm": _stats(errs), "corner_mm": _stats(corners),
                           "mid_slice_exact": (float(np.mean([m == 0 for m in mids])) if mids else None)}
        all_err += errs
        all_corner += corners
        n_ref += len(rows)
        n_ok += len(ok)
    n_scans = len(results)
    frac_all = float(np.mean([r.all_correct for r in results])) if results else None
    conf_ok = [r.per_level[n]["confidence"] for r in results for n in r.per_level
               if r.per_level[n]["correct"] and r.per_level[n]["confidence"] is not None]
    conf_bad = [r.per_level[n]["confidence"] for r in results for n in r.per_level
                if not r.per_level[n]["correct"] and r.per_level[n]["confidence"] is not None]
    conf_bad += [c for r in results for c in r.extra_confidence]  # a level the reference lacks is wrong
    summary = {
        "n_scans": n_scans,
        "n_reference_levels": n_ref,
        "labelling_accuracy": (n_ok / n_ref) if n_ref else None,
        "scans_all_correct": frac_all,
        "centroid_mm": _stats(all_err),
        "corner_mm": _stats(all_corner),
        "extra_levels": int(sum(len(r.extra) for r in results)),
        "flagged_levels": int(sum(len(r.flagged) for r in results)),
        "mean_confidence_correct": float(np.mean(conf_ok)) if conf_ok else None,
        "mean_confidence_wrong": float(np.mean(conf_bad)) if conf_bad else None,
        "per_level": per_level,
        "targets": targets,
    }
    summary["meets_targets"] = bool(
        summary["centroid_mm"]["mean"] is not None and frac_all is not None
        and summary["centroid_mm"]["mean"] <= targets["mean_centroid_mm"]
        and frac_all >= targets["scans_all_correct"])
    summary["scans"] = [{"key": r.key, "all_correct": r.all_correct, "extra": r.extra,
                         "extra_confidence": r.extra_confidence, "flagged": r.flagged, "levels": r.per_level}
                        for r in results]
    from .calibrate import level_outcomes, reliability

    summary["reliability"] = reliability(*level_outcomes(summary))
    summary["ece"] = summary["reliability"]["ece"]
    return summary


def write_report(summary: dict, json_path, png_path=None, example=None) -> None:
    """Write the summary JSON and (optionally) a PNG: per-level centroid error and labelling
    accuracy, plus an example mid-sagittal slice with predicted (x) and reference (o) centroids.
    ``example`` = (image (H, W), [(name, pred_rc or None, ref_rc or None)], title)."""
    from ..atomic import atomic_path, write_json

    write_json(json_path, summary)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3 if example is not None else 2
    fig, ax = plt.subplots(1, ncols, figsize=(5 * ncols, 4.2))
    names = list(LEVEL_NAMES)
    pl = summary["per_level"]
    mean = [pl[n]["centroid_mm"]["mean"] or 0.0 for n in names]
    p95 = [pl[n]["centroid_mm"]["p95"] or 0.0 for n in names]
    x = np.arange(len(names))
    ax[0].bar(x - 0.2, mean, 0.4, label="mean")
    ax[0].bar(x + 0.2, p95, 0.4, label="95th percentile")
    ax[0].axhline(summary["targets"]["mean_centroid_mm"], color="k", ls="--", lw=1, label="target (mean)")
    ax[0].set_xticks(x, names)
    ax[0].set_ylabel("centroid error (mm)")
    ax[0].legend(fontsize=8)
    cm = summary["centroid_mm"]["mean"]
    ax[0].set_title(f"centroid error, mean {cm:.2f} mm" if cm is not None else "centroid error")
    acc = [100 * (pl[n]["labelling_accuracy"] or 0.0) for n in names]
    ax[1].bar(x, acc, color="tab:green")
    ax[1].set_xticks(x, names)
    ax[1].set_ylim(0, 105)
    ax[1].set_ylabel("correctly named (%)")
    fa = summary["scans_all_correct"]
    ax[1].set_title(f"labelling; all levels right in {100 * fa:.1f}% of {summary['n_scans']} scans"
                    if fa is not None else "labelling")
    if example is not None:
        img, marks, title = example
        ax[2].imshow(img, cmap="gray", vmin=0, vmax=1.2)
        for name, prc, rrc in marks:
            if rrc is not None:
                ax[2].plot(rrc[1], rrc[0], "o", mfc="none", mec="lime", ms=8)
            if prc is not None:
                ax[2].plot(prc[1], prc[0], "x", color="red", ms=7)
                ax[2].text(prc[1] + 6, prc[0], name, color="yellow", fontsize=7)
        ax[2].set_title(title, fontsize=9)
        ax[2].axis("off")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    if summary.get("reliability", {}).get("n"):
        from pathlib import Path

        from .calibrate import plot_reliability

        plot_reliability({"this evaluation": summary["reliability"]}, Path(png_path).with_name("reliability.png"))


def evaluate_cases(detector, refs, label_mapping=None, desc: str = "evaluating") -> tuple[dict, list[str]]:
    """Detect every case in ``refs`` (``cases.CaseRef`` with levels) and compare; returns the
    summary (with an ``errors`` list for scans that could not be read) and the error lines.
    The summary's PNG example is kept in ``summary['_example']`` (removed by ``write_report``
    callers before writing)."""
    from ..errors import SpineSSLError
    from ..progress import track
    from .cases import load_case
    from .infer import detect_scan

    results, errors = [], []
    example = None
    for ref in track(refs, desc=desc, unit="scan"):
        try:
            case = load_case(ref, label_mapping)
            if case.levels is None:
                raise SpineSSLError("no reference levels for this scan", ref.where)
            pred = detect_scan(detector, case.scan, ref.where)
        except SpineSSLError as e:
            errors.append(f"{ref.key}: {e.cause}")  # no folder names: they may identify patients
            continue
        truth, outside = in_view(case.levels, case.scan)
        res = compare(ref.key, pred.levels, truth, low_confidence=detector.config.assign.low_confidence,
                      ignore=tuple(outside))
        results.append(res)
        if example is None or (not res.all_correct and example[3]):
            marks = []
            for name in LEVEL_NAMES:
                prc = pred.grid.from_lps(pred.levels[name].centroid)[:2] if name in pred.levels else None
                rrc = pred.grid.from_lps(case.levels[name].centroid)[:2] if name in case.levels else None
                if prc is not None or rrc is not None:
                    marks.append((name, prc, rrc))
            title = f"{'all correct' if res.all_correct else 'NOT all correct'}: red x = detected, green o = reference"
            example = (pred.image[pred.mid_slice], marks, title, res.all_correct)
    summary = summarise(results)
    summary["errors"] = errors
    summary["_example"] = example[:3] if example is not None else None
    return summary, errors


def report_table(named: dict[str, dict]) -> str:
    """A markdown table of evaluation summaries (name -> ``summarise`` output)."""
    def num(v, f="{:.2f}"):
        return "–" if v is None else f.format(v)

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f} %"

    rows = ["| data | scans | mean / median centroid error | levels named right | scans all right | "
            "mean confidence right / wrong | ECE |", "|---|---|---|---|---|---|---|"]
    for name, s in named.items():
        cm = s["centroid_mm"]
        rows.append(f"| {name} | {s['n_scans']} | {num(cm['mean'])} / {num(cm['median'])} mm | "
                    f"{pct(s['labelling_accuracy'])} | {pct(s['scans_all_correct'])} | "
                    f"{num(s.get('mean_confidence_correct'))} / {num(s.get('mean_confidence_wrong'))} | "
                    f"{num(s.get('ece'), '{:.3f}')} |")
    return "\n".join(rows) + "\n"


def write_comparison(named: dict[str, dict], out_dir) -> None:
    """``out_dir/summary.md`` (table) and ``out_dir/reliability.png`` (one curve per summary)."""
    from pathlib import Path

    from ..atomic import write_text
    from .calibrate import level_outcomes, plot_reliability, reliability

    out = Path(out_dir)
    write_text(out / "summary.md", report_table(named))
    curves = {n: s.get("reliability") or reliability(*level_outcomes(s)) for n, s in named.items()}
    plot_reliability({n: c for n, c in curves.items() if c.get("n")}, out / "reliability.png")
