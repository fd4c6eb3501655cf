"""Behaviour pins (issue #16): a short pretraining + grade-train run gives the metrics recorded
before the library was restructured, and the trunk computes known values.

The recorded figures (Testing/data/pinned_metrics.json) came from main at 9519541 with the
configuration written out below in full, so later changes of *defaults* do not move them; only a
change of what the same configuration computes does.  Tolerance: relative 2e-3 (one CPU thread;
oneDNN kernels differ slightly between CPU generations).
"""

import csv
import json
import math
from pathlib import Path

import pytest

from SpineSSLLib.cli import main

DATA = Path(__file__).parent / "data" / "pinned_metrics.json"
MODEL = {"preset": "small", "width": 0.0625, "fc6": 32, "fc7": 16, "input_scale": 0.5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if k not in ("time_s",)} for r in csv.DictReader(f)]


def run_pinned(tmp):
    """The pinned runs; returns {name: metrics}."""
    from grading_helpers import write_contract_cohort
    from pretrain_helpers import cohort_rows, write_cohort

    rows = [r for r in cohort_rows(8, frac_long=0.75, three_visit_every=10**9) if r.level in ("L1", "L2")]
    write_cohort(tmp / "cohort", rows)
    conf = tmp / "pretrain.json"
    conf.write_text(json.dumps({"model": {**MODEL, "init": "fan_out", "norm": "lrn", "dropout": 0.5},
                                "pairs": {"self_pairs": 0.0},
                                "augment": {"rotate_deg": 15.0, "translate_x": 48.0, "translate_y": 24.0,
                                            "translate_z": 2.0, "scale": [0.9, 1.1], "intensity": 0.2,
                                            "gamma": 0.0, "bias": 0.0, "noise": 0.0},
                                "train": {"optimizer": "sgd", "schedule": "plateau", "lr": 0.01, "momentum": 0.9,
                                          "weight_decay": 5e-4, "grad_clip": 0.0, "warmup_epochs": 0},
                                "loss": {"objective": "contrastive", "margin": 1.0, "level_weight": 1.0,
                                         "normalize": False, "projection": 0},
                                "split_fractions": [0.6, 0.2, 0.2]}))
    assert main(["-q", "pretrain", str(tmp / "cohort"), "--out", str(tmp / "P"), "--config", str(conf),
                 "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--seed", "3"]) == 0
    out = {"pretrain_log": _log(tmp / "P" / "log.csv")}
    cohort = write_contract_cohort(tmp / "grading", n_subjects=8, seed=4)
    gconf = tmp / "grade.json"
    gconf.write_text(json.dumps({"model": {"preset": "small", "init": "fan_out", "norm": "lrn"},
                                 "train": {"optimizer": "sgd", "schedule": "plateau", "momentum": 0.9,
                                           "weight_decay": 5e-4, "grad_clip": 0.0, "warmup_epochs": 0,
                                           "patience": 10, "max_lr_drops": 2},
                                 "transfer": {"fc_init": "data"}}))
    for mode in ("scratch", "ssl-frozen"):
        extra = ["--pretrained", str(tmp / "P" / "best")] if mode == "ssl-frozen" else ["--preset", "small"]
        extra += ["--config", str(gconf)]
        g = tmp / f"G-{mode}"
        assert main(["-q", "grade-train", str(cohort), "--out", str(g), "--mode", mode, *extra,
                     "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--seed", "1", "--lr", "0.001"]) == 0
        m = json.loads((g / "test_metrics.json").read_text())
        out[f"grade_{mode}"] = {"log": _log(g / "log.csv"), "test_aca": m["test"]["average_class_accuracy"]}
    return out


def _close(a, b, path=""):
    """``a`` (this run) holds at least ``b``'s (the pinned) keys with the same values; newer
    diagnostics columns of the log (``act_*``, ``grad_*``) are extra."""
    if isinstance(a, dict):
        assert set(b) <= set(a), f"{path}: missing keys {sorted(set(b) - set(a))}"
        for k in b:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert math.isclose(a, b, rel_tol=2e-3, abs_tol=1e-6), f"{path}: {a} != pinned {b}"


def test_short_runs_match_the_recorded_metrics(tmp_path):
    pinned = json.loads(DATA.read_text())
    _close(run_pinned(tmp_path), pinned)


if __name__ == "__main__":  # record: python Testing/test_behaviour_pin.py (from the repo root)
    import sys
    import tempfile

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        DATA.write_text(json.dumps(run_pinned(Path(d)), indent=1) + "\n")
    print("recorded", DATA)
