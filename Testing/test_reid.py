"""Re-identification audit (issue #18): gallery = earliest scans, probes = later scans; the
synthetic cohort's hidden fingerprint makes identification possible by construction, so the
audit must find it, and shuffled identities must score at chance."""

import json

import numpy as np
import pytest

from SpineSSLLib.cli import main
from SpineSSLLib.reid import ReidConfig, Split, chance, identify, run_audit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LEVELS = ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]


def _toy(n_subjects, noise, seed=0):
    """Two scans per subject, 7 levels, features = subject vector + noise."""
    rng = np.random.default_rng(seed)
    ident = rng.normal(size=(n_subjects, len(LEVELS), 8))
    feats, scans, levels = [], [], []
    for s in range(n_subjects):
        for v in range(2):
            for li, lv in enumerate(LEVELS):
                feats.append(ident[s, li] + noise * rng.normal(size=8))
                scans.append(f"s{s}v{v}")
                levels.append(lv)
    subjects = [f"S{s}" for s in range(n_subjects)]
    split = Split(subjects, {f"S{s}": f"s{s}v0" for s in range(n_subjects)},
                  [(f"s{s}v1", f"S{s}") for s in range(n_subjects)])
    return np.array(feats), scans, levels, split


def test_identification_scores_and_shuffled_control():
    X, scans, levels, split = _toy(40, 0.05)
    r = identify(X, scans, levels, split, shuffles=400, seed=1)
    w = r["whole_spine"]
    assert w["top1"] == 1.0 and w["mrr"] == 1.0 and w["cmc"][0] == 1.0 and len(w["cmc"]) == 40
    assert all(r["per_level"][lv]["top1"] > 0.9 for lv in LEVELS)
    assert r["shuffled"]["top1"] == pytest.approx(chance(40)["top1"], abs=0.01)
    assert r["shuffled"]["mrr"] == pytest.approx(chance(40)["mrr"], abs=0.02)
    # features without identity: about chance
    Xr, *_ = _toy(40, 0.0, seed=2)
    rng = np.random.default_rng(3)
    r = identify(rng.permutation(Xr), scans, levels, split, shuffles=0)
    assert r["whole_spine"]["top1"] < 0.15 and r["shuffled"]["top1"] is None
    # a probe level missing from the gallery scan is skipped, not counted as a miss
    keep = [i for i in range(len(X)) if not (scans[i] == "s0v0" and levels[i] == "L3")]
    r = identify(X[keep], [scans[i] for i in keep], [levels[i] for i in keep], split, shuffles=0)
    assert r["per_level"]["L3"]["n_probes"] == 39 and r["whole_spine"]["n_probes"] == 40


def test_audit_finds_the_synthetic_fingerprint(synth_cohort, tmp_path):
    syn, C = synth_cohort
    out = tmp_path / "reid"
    res = run_audit(C, out, config=ReidConfig(shuffles=300), truth_dir=syn / "truth")
    rep = res.report
    m = rep["gallery_size"]
    assert m == 6 and rep["n_probes"] >= 2
    ch = rep["chance"]["top1"]
    fp = rep["methods"]["fingerprint"]["whole_spine"]
    assert fp["top1"] >= 3 * ch and fp["mrr"] > 2 * rep["chance"]["mrr"]
    for name in ("fingerprint", "raw_pixels", "hand_features"):
        sh = rep["methods"][name]["shuffled"]
        assert sh["top1"] == pytest.approx(ch, abs=0.06), name
        assert sh["mrr"] == pytest.approx(rep["chance"]["mrr"], abs=0.06), name
    assert f"among a gallery of {m} people" in rep["risk_statement"]
    md = (out / "reid_report.md").read_text()
    assert f"gallery of **{m} people**" in md and "| chance |" in md
    assert (out / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "reid_report.json").read_text())["schema"] == "spinessl.reid_audit/1"


def test_cli_with_a_checkpoint(synth_cohort, aux_pretrained, tmp_path, capsys):
    syn, C = synth_cohort
    out = tmp_path / "r"
    capsys.readouterr()
    assert main(["reid-audit", str(C), "--out", str(out), "--checkpoint", str(aux_pretrained), "--split", "all",
                 "--device", "cpu", "--shuffles", "50"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained network (embedding)" in printed and "With this model" in printed
    rep = json.loads((out / "reid_report.json").read_text())
    assert set(rep["methods"]) == {"checkpoint", "raw_pixels", "hand_features"}
    assert 0 <= rep["methods"]["checkpoint"]["whole_spine"]["top1"] <= 1
    assert rep["risk_statement_method"] == "checkpoint" and rep["checkpoint"]["epoch"] == 0
    # the default split with a checkpoint is its test split (splits.json beside it); this tiny
    # cohort's test split may be empty or hold no subject with a later scan: a one-line error says so
    rc = main(["-q", "reid-audit", str(C), "--out", str(tmp_path / "t"), "--checkpoint", str(aux_pretrained),
               "--baselines", "none", "--device", "cpu"])
    if rc == 0:
        rep = json.loads((tmp_path / "t" / "reid_report.json").read_text())
        assert rep["split"] == "test" and set(rep["methods"]) == {"checkpoint"}
    else:
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and \
            ("no VB volumes of the cohort are in the test split" in err or "test split has a later scan" in err)
    assert main(["-q", "reid-audit", str(C), "--out", str(tmp_path / "x"), "--baselines", "pixels"]) == 2
