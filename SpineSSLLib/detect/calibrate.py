"""Calibrated confidence of detected levels: a logistic regression from the assignment's
features to the probability that a level's label is right, fitted on randomised scans that the
network was not trained on; reliability diagrams and expected calibration error (ECE).

Features of a labelled level (``assign.AssignedLevel.features``): ``chain`` (certainty of its
label given the whole chain), ``detection`` (strength of the body), ``agreement`` (its local
level evidence relative to the best level of its kind: ties), ``anchor`` (S1 evidence of the
scan's S1: is the count anchored), ``sacrum`` (how much sacrum the scan shows), ``steps`` (how
many levels it lies above S1, / 6).  Probability-like features enter as logits.

``calibration.json`` in a model folder (``spinessl.detector-calibration/1``) holds the fitted
coefficients; ``model.load_detector`` reads it and the level confidences are then this model's
output (still capped when the scan has no anchor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

FEATURES = ("chain", "detection", "agreement", "anchor", "sacrum", "steps")
_LOGIT = {"chain", "detection", "agreement", "anchor"}
CALIBRATION_FILE = "calibration.json"
SCHEMA = "spinessl.detector-calibration/1"


def _row(features: dict) -> np.ndarray:
    out = []
    for f in FEATURES:
        v = float(features[f])
        if f in _LOGIT:
            v = float(np.clip(v, 0.01, 0.99))
            v = np.log(v / (1 - v))
        out.append(v)
    return np.array(out)


@dataclass
class Calibration:
    coef: list[float]
    intercept: float
    info: dict = field(default_factory=dict)

    def predict(self, features: dict) -> float:
        z = float(_row(features) @ np.asarray(self.coef) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "features": list(FEATURES), "coef": [float(c) for c in self.coef],
                "intercept": float(self.intercept), **self.info}


def load_calibration(path) -> Calibration:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("schema") != SCHEMA or list(d.get("features", [])) != list(FEATURES):
            raise ValueError("schema or features differ")
        coef = [float(c) for c in d["coef"]]
        if len(coef) != len(FEATURES):
            raise ValueError("wrong number of coefficients")
        info = {k: v for k, v in d.items() if k not in ("schema", "features", "coef", "intercept")}
        return Calibration(coef, float(d["intercept"]), info)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"not a detector calibration file ({type(e).__name__}: {e})", path) from e


def fit_calibration(rows: list[tuple[dict, bool]], C: float = 1.0) -> Calibration:
    """Logistic regression (L2, ``C``) of correct ~ features over labelled levels."""
    from sklearn.linear_model import LogisticRegression

    X = np.array([_row(f) for f, _ in rows])
    y = np.array([bool(c) for _, c in rows], dtype=int)
    if len(set(y)) < 2:  # all right (or all wrong): a constant, as certain as the data allow
        p = (y.sum() + 0.5) / (len(y) + 1.0)
        return Calibration([0.0] * len(FEATURES), float(np.log(p / (1 - p))), {"n_levels": int(len(y)),
                                                                               "n_wrong": int(len(y) - y.sum())})
    lr = LogisticRegression(C=C, max_iter=1000).fit(X, y)
    return Calibration([float(c) for c in lr.coef_[0]], float(lr.intercept_[0]),
                       {"n_levels": int(len(y)), "n_wrong": int(len(y) - y.sum())})


# --------------------------------------------------------------------------- reliability

def reliability(conf, correct, bins: int = 10) -> dict:
    """Reliability of confidences: per equal-width bin its count, mean confidence and accuracy;
    ECE = sum over bins of (count / n) x |accuracy - mean confidence|."""
    conf = np.asarray(conf, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
                     "confidence": float(conf[m].mean()) if n else None,
                     "accuracy": float(ok[m].mean()) if n else None})
        if n:
            ece += n / len(conf) * abs(float(ok[m].mean()) - float(conf[m].mean()))
    return {"bins": rows, "ece": float(ece) if len(conf) else None, "n": int(len(conf)),
            "mean_confidence_right": float(conf[ok > 0].mean()) if (ok > 0).any() else None,
            "mean_confidence_wrong": float(conf[ok == 0].mean()) if (ok == 0).any() else None}


def level_outcomes(summary: dict) -> tuple[list[float], list[bool]]:
    """(confidence, right) of every predicted level of an evaluation summary (``evaluate``):
    levels named where the reference has them (right or wrong) and extra levels (wrong)."""
    conf, ok = [], []
    for s in summary.get("scans", []):
        for row in s["levels"].values():
            if row.get("confidence") is not None:
                conf.append(row["confidence"])
                ok.append(bool(row["correct"]))
        for c in s.get("extra_confidence", []):
            conf.append(c)
            ok.append(False)
    return conf, ok


def plot_reliability(curves: dict[str, dict], png, title: str = "reliability of level confidence") -> None:
    """Reliability diagram(s): per curve (name -> ``reliability`` dict) the accuracy of each
    confidence bin against its mean confidence (marker area ~ count), the diagonal, and the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(10.5, 4.4))
    ax[0].plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, r in curves.items():
        pts = [(b["confidence"], b["accuracy"], b["n"]) for b in r["bins"] if b["n"]]
        if not pts:
            continue
        c, a, n = map(np.array, zip(*pts))
        ax[0].plot(c, a, "-o", ms=4, label=f"{name} (ECE {r['ece']:.3f}, {r['n']} levels)")
        ax[1].bar(np.arange(len(r["bins"])) / len(r["bins"]) + 0.5 / len(r["bins"]),
                  [b["n"] for b in r["bins"]], width=1.0 / len(r["bins"]), alpha=0.45, label=name)
    ax[0].set_xlabel("confidence (bin mean)")
    ax[0].set_ylabel("share of labels right")
    ax[0].set_xlim(0, 1)
    ax[0].set_ylim(0, 1.02)
    ax[0].legend(fontsize=7, loc="lower right")
    ax[0].set_title(title, fontsize=10)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("confidence")
    ax[1].set_ylabel("levels per bin")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ fitting run

def calibrate_model(model_dir, cache_dir, seed: int, n: int, workers: int = 1, report=None,
                    appearance_seed: int = 0) -> Calibration:
    """Fit the calibration of the model in ``model_dir`` on ``n`` randomised scans of ``seed``
    (cached in ``cache_dir``) and write ``model_dir/calibration.json``; ``report``: a folder for
    the reliability diagram and figures before / after (``reliability.png``, ``calibration.json``)."""
    from ..atomic import write_json
    from ..progress import track
    from .evaluate import compare, in_view
    from .infer import detect_scan
    from .model import load_detector, resolve_model_path
    from .randomised.cases import build_cases, scan

    model_dir = resolve_model_path(model_dir)
    det = load_detector(model_dir)
    det.calibration = None  # fit on the uncalibrated features
    cases = build_cases(cache_dir, seed, n, det.config.spacing_mm, det.config.multiple, workers=workers,
                        desc="calibration scans")
    rows, raw = [], []
    for i, case in enumerate(track(cases, desc="calibration: detecting", unit="scan")):
        sc, _ = scan(case, np.random.default_rng([appearance_seed, seed, i]))
        pred = detect_scan(det, sc, case.key)
        truth, outside = in_view(case.levels, sc)
        res = compare(case.key, pred.levels, truth, ignore=tuple(outside))
        for name, a in pred.assignment.levels.items():
            ok = bool(res.per_level[name]["correct"]) if name in res.per_level else False
            if name not in res.per_level and name in outside:
                continue  # a level outside the image: neither right nor wrong
            rows.append((a.features(), ok))
            raw.append(pred.levels[name].confidence)
    if not rows:
        from ..errors import SpineSSLError

        raise SpineSSLError(f"no level was detected on the {n} calibration scans: nothing to calibrate "
                            "(is the model trained?)", model_dir)
    cal = fit_calibration(rows)
    ok = [c for _, c in rows]
    after = [cal.predict(f) for f, _ in rows]
    cal.info.update({"fitted_on": f"{n} randomised scans, seed {seed}", "ece_uncalibrated": reliability(raw, ok)["ece"],
                     "ece_fitted": reliability(after, ok)["ece"]})
    write_json(Path(model_dir) / CALIBRATION_FILE, cal.to_dict())
    if report is not None:
        report = Path(report)
        write_json(report / CALIBRATION_FILE, cal.to_dict())
        plot_reliability({"uncalibrated": reliability(raw, ok), "calibrated": reliability(after, ok)},
                         report / "reliability.png", "calibration scans (randomised, not trained on)")
    return cal
