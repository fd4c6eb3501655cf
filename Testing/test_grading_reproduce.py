"""The learning-curve runner: plan, resumability, results table, report and Fig. 8."""

import csv
import json

import numpy as np
import pytest

from SpineSSLLib import reproduce
from SpineSSLLib.errors import ConfigError

from grading_helpers import write_contract_cohort

TINY = dict(width=0.0625, fc6=32, fc7=16, input_scale=0.5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_plan_covers_every_combination_smallest_first():
    p = reproduce.plan([30, 10, 20], ["scratch", "ssl-frozen"], [0, 1, 2])
    assert len(p) == 18 and len({s.key for s in p}) == 18
    assert [s.size for s in p] == sorted(s.size for s in p)


def test_summary_and_ordering_check():
    rows = []
    accs = {"supervised": 0.8, "ssl-frozen": 0.7, "scratch": 0.6, "frozen-random": 0.4}
    for mode, a in accs.items():
        for seed, d in enumerate((-0.01, 0.0, 0.01)):
            rows.append({"size_subjects": 10, "mode": mode, "seed": seed, "train_scans": 14,
                         "average_class_accuracy": a + d, "kappa_linear": 0.5, "wall_s": 1.0})
    s = reproduce.summarise(rows)
    by = {r["mode"]: r for r in s}
    assert by["scratch"]["aca_mean"] == pytest.approx(0.6)
    assert by["scratch"]["aca_ci95"] == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-4)
    holds, txt = reproduce.ordering_check(s)
    assert holds and "holds" in txt
    for r in rows:
        if r["mode"] == "scratch":
            r["average_class_accuracy"] = 0.75
    holds, txt = reproduce.ordering_check(reproduce.summarise(rows))
    assert holds is False and "does NOT hold" in txt


def test_runner_resumes_and_reports(tmp_path):
    out = tmp_path / "exp"
    write_contract_cohort(out / "work", n_subjects=16)  # an extracted cohort: index/extract are skipped
    raw = tmp_path / "raw"
    raw.mkdir()
    cfg = reproduce.preset("small", modes=("frozen-random", "scratch"), seeds=(0,),
                           grade={"model": {"preset": "small", **TINY}, "augment": {"enabled": False},
                                  "train": {"max_epochs": 1, "batch_size": 16, "device": "cpu"}})
    rep = reproduce.Reproduction(out, cfg, cohort=raw, log=lambda *a: None)
    rep.run(command="spine-ssl reproduce --test", max_new_runs=2)  # "interrupted" after 2 runs
    with open(out / "results.csv") as f:
        first = list(csv.DictReader(f))
    assert len(first) == 2
    report = (out / "report.md").read_text()
    assert "Incomplete" in report and "2 of 6" in report
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/test_metrics.json")}

    # continue with the same command: finished runs are not redone
    rep2 = reproduce.Reproduction(out, cfg, cohort=raw, log=lambda *a: None)
    rep2.run()
    for p, t in stamp.items():
        assert p.stat().st_mtime_ns == t
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    splits = json.loads((out / "grading_splits.json").read_text())
    sizes = sorted({int(r["size_subjects"]) for r in rows})
    assert sizes[-1] == len(splits["train"]) and len(sizes) == 3
    for r in rows:
        assert 0.0 <= float(r["average_class_accuracy"]) <= 1.0
    report = (out / "report.md").read_text()
    assert "Incomplete" not in report and "spine-ssl reproduce --test" in report
    assert "hand-feature logistic regression" in report and "Majority-class" in report
    assert (out / "fig8.png").read_bytes()[:4] == b"\x89PNG"
    base = json.loads((out / "baselines.json").read_text())
    assert set(base["grading_logreg"]) == {str(n) for n in sizes}
    # the hand features see the grade-dependent nucleus brightness of this data: well above chance
    assert base["grading_logreg"][str(sizes[-1])]["average_class_accuracy"] > 0.5

    # another configuration in the same folder is refused
    with pytest.raises(ConfigError):
        reproduce.Reproduction(out, reproduce.preset("small"), cohort=raw)


def test_hand_features_track_nucleus_and_height(tmp_path):
    from SpineSSLLib import grading

    write_contract_cohort(tmp_path / "c", n_subjects=4)
    recs = [r for r in grading.read_ivd_table(tmp_path / "c") if r.grade]
    f = reproduce.disc_hand_features(grading.load_ivd_arrays(tmp_path / "c", recs))
    g = np.array([int(r.grade) for r in recs])
    assert np.corrcoef(f[:, 0], g)[0, 1] < -0.9  # nucleus darkens with grade
    assert np.corrcoef(f[:, 1], g)[0, 1] < -0.8  # disc thins with grade


def test_run_claims(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    r = tmp_path / "runs" / "n0001-scratch-s0"
    assert reproduce._claim(r)
    assert not reproduce._claim(r)  # held (by this live process)
    reproduce._release(r)
    # a claim left by a process that has exited is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (r / ".claim").write_text(f"{socket.gethostname()} {int(dead.stdout)}")
    assert reproduce._claim(r)
    assert (r / ".claim").read_text() == f"{socket.gethostname()} {os.getpid()}"
    reproduce._release(r)
    # a claim from another machine sharing the folder is respected
    (r / ".claim").write_text("some-other-host 1")
    assert not reproduce._claim(r)


def test_pretraining_split_keeps_grading_test_out(tmp_path):
    """The pretraining split made by the runner leaves every grading test subject out of the
    pretraining train/val, and the grading split then picks a full test set."""
    import csv as _csv

    from SpineSSLLib import grading
    from SpineSSLLib.data import read_splits

    out = tmp_path / "exp"
    work = write_contract_cohort(out / "work", n_subjects=30)
    # add VB rows (the pretraining table) for every scan
    with open(work / "volumes.csv") as f:
        rows = list(_csv.DictReader(f))
    vb = []
    for r in rows:
        if r["index"] == "0":
            for lvl in ("T12", "L1"):
                vb.append({**r, "volume_id": r["scan_key"] + lvl, "kind": "VB", "level": lvl, "grade": ""})
    with open(work / "volumes.csv", "w", newline="") as f:
        w = _csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + vb)
    raw = tmp_path / "raw"
    raw.mkdir()
    rep = reproduce.Reproduction(out, reproduce.preset("small"), cohort=raw, log=lambda *a: None)
    pre = read_splits(rep.pretrain_splits_for_grading()).split_of()
    sp = grading.make_grading_splits(grading.read_ivd_table(work), pre, seed=0)
    _, _, n_test = grading.scaled_counts(len(sp.train) + len(sp.val) + len(sp.test))
    assert len(sp.test) == n_test and not sp.notes
    assert all(pre[s] == "test" for s in sp.test)
    assert sp.test == grading.make_grading_splits(grading.read_ivd_table(work), {}, seed=0).test


def _foreign_cohort(tmp_path):
    """A synthetic cohort passed as if it were foreign: DICOM only, levels as Slicer markups
    files, gradings as a CSV in `extract --grades` format; returns (dicom folder, markups folder,
    grades CSV, number of gradings)."""
    import shutil

    from SpineSSLLib import levels as L
    from SpineSSLLib.atomic import write_csv, write_json
    from SpineSSLLib.synth.cohort import generate_cohort
    from SpineSSLLib.synth.config import preset as synth_preset

    syn = tmp_path / "syn"
    generate_cohort(syn, synth_preset("tiny", subjects=8, followup_fraction=1.0, graded_fraction=1.0, seed=5),
                    workers=1)
    foreign = tmp_path / "archive"
    shutil.copytree(syn / "dicom", foreign)
    marks, grades = tmp_path / "markups", []
    marks.mkdir()
    for t in sorted((syn / "truth").glob("*.json")):
        doc = json.loads(t.read_text())
        uid = doc["series_instance_uid"]
        write_json(marks / f"{uid}.mrk.json", L.to_markups_dict(L.from_truth_json(t)))
        grades += [{"series_uid": uid, "disc": d["name"], "grade": d["grade"]} for d in doc["discs"]
                   if d.get("grade") is not None]
    write_csv(tmp_path / "grades.csv", grades, ["series_uid", "disc", "grade"])
    return foreign, marks, tmp_path / "grades.csv", len(grades)


def test_reproduce_on_a_foreign_cohort_with_markups_and_a_grades_csv(tmp_path):
    """The experiment on a user's own archive: a synthetic cohort passed as if it were foreign —
    DICOM only, levels as Slicer markups files, gradings as a CSV in `extract --grades` format, no
    truth files.  Index, extract (grades from the CSV), pretraining, eval-pairs, probes and the
    grading runs all go through, and the report is written."""
    foreign, marks, grades_csv, n_grades = _foreign_cohort(tmp_path)
    grades = range(n_grades)

    cfg = reproduce.preset("small", modes=("frozen-random", "ssl-frozen"), seeds=(0,), compare_objective=False,
                           pretrain={"model": {"preset": "small", **TINY}, "train": {"max_epochs": 1, "num_workers": 0,
                                                                                     "batch_size": 16, "device": "cpu"}},
                           grade={"model": {"preset": "small", **TINY},
                                  "train": {"max_epochs": 1, "batch_size": 16, "device": "cpu", "num_workers": 0}})
    rep = reproduce.Reproduction(tmp_path / "exp", cfg, cohort=foreign, levels=f"markups:{marks}",
                                 grades=str(grades_csv), log=lambda *a: None)
    rep.run(command="spine-ssl reproduce --cohort archive --levels markups:M --grades grades.csv")
    with open(tmp_path / "exp" / "work" / "volumes.csv") as f:
        vols = list(csv.DictReader(f))
    graded = [r for r in vols if r["kind"] == "IVD" and r["grade"]]
    assert len(graded) >= len(grades) - 6 and {r["levels_source"] for r in vols} == {"markups"}
    assert (tmp_path / "exp" / "pretrain" / "eval_test" / "report.json").is_file()
    assert (tmp_path / "exp" / "pretrain" / "probe" / "probe.json").is_file()
    with open(tmp_path / "exp" / "results.csv") as f:
        assert {r["mode"] for r in csv.DictReader(f)} == {"frozen-random", "ssl-frozen"}
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "raw-pixel AUC" in report and "Frozen-trunk probes" in report

    # a foreign cohort without gradings is refused with a one-line reason
    with pytest.raises(ConfigError, match="--grades"):
        reproduce.Reproduction(tmp_path / "exp2", cfg, cohort=foreign, levels=f"markups:{marks}",
                               log=lambda *a: None).run()


def test_aux_heads_row_pretrains_with_sex_and_age_heads_and_grades_its_frozen_trunk(tmp_path):
    """Issue #18: `reproduce --aux-heads sex:2,age_bin:5` pretrains a third network with the
    metadata heads (labels derived by `index` from the DICOM headers) and adds the learning-curve
    row ssl-aux-frozen, graded on that network's frozen trunk, with a paired test against SSL frozen."""
    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.cli import main as cli

    foreign, marks, grades_csv, _ = _foreign_cohort(tmp_path)
    small = {"model": {"preset": "small", **TINY}, "train": {"max_epochs": 1, "num_workers": 0, "batch_size": 16,
                                                             "device": "cpu"}}
    cfg = reproduce.preset("small", modes=("ssl-frozen",), seeds=(0, 1), compare_objective=False,
                           aux_heads={"sex": 2, "age_bin": 5}, pretrain=small,
                           grade={"model": {"preset": "small", **TINY},
                                  "train": {"max_epochs": 1, "batch_size": 16, "device": "cpu", "num_workers": 0}})
    assert reproduce.modes_for(cfg) == ("ssl-frozen", "ssl-aux-frozen")
    out = tmp_path / "exp"
    rep = reproduce.Reproduction(out, cfg, cohort=foreign, levels=f"markups:{marks}", grades=str(grades_csv),
                                 log=lambda *a: None)
    rep.run()
    assert "aux_heads" not in cfg.pretrain["model"] and "aux_heads" not in reproduce.PRESETS["small"].pretrain["model"]
    assert '"aux_heads"' not in (out / "report.md").read_text().split("## ")[0]  # the configured recipe line
    with open(out / "work" / "volumes.csv") as f:
        vb = [r for r in csv.DictReader(f) if r["kind"] == "VB"]
    assert {r["sex"] for r in vb} <= {"0", "1"} and all(r["age_bin"] != "" for r in vb)
    aux_conf = json.loads((out / "pretrain_aux" / "pretrain_config.json").read_text())
    assert aux_conf["model"]["aux_heads"] == {"sex": 2, "age_bin": 5}
    assert not json.loads((out / "pretrain" / "pretrain_config.json").read_text())["model"]["aux_heads"]
    with open(out / "pretrain_aux" / "log.csv") as f:
        cols = next(csv.reader(f))
    assert "train_aux_sex" in cols and "train_aux_age_bin" in cols
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["mode"], r["seed"]) for r in rows if r["size_subjects"] == rows[0]["size_subjects"]) == [
        ("ssl-aux-frozen", "0"), ("ssl-aux-frozen", "1"), ("ssl-frozen", "0"), ("ssl-frozen", "1")]
    # the aux row's frozen trunk is the aux network's: same conv weights as pretrain_aux/best
    import torch

    run = next(out.glob("runs/*-ssl-aux-frozen-s0"))
    w_run = ckpt.load_weights(run / "best")[0]
    w_aux = ckpt.load_weights(out / "pretrain_aux" / "best")[0]
    w_plain = ckpt.load_weights(out / "pretrain" / "best")[0]
    conv = next(k for k in w_run if k.endswith("weight") and w_run[k].ndim == 5)
    key = next(k for k in w_aux if k.endswith(conv.split(".", 1)[-1]) and w_aux[k].shape == w_run[conv].shape)
    assert torch.equal(w_run[conv], w_aux[key]) and not torch.equal(w_run[conv], w_plain[key])
    # (this 8-subject cohort leaves no grading test discs; the paired test itself on made-up figures)
    made_up = [{"size_subjects": 3, "mode": m, "seed": s, "average_class_accuracy": a + 0.01 * s}
               for s in range(3) for m, a in (("ssl-frozen", 0.5), ("ssl-aux-frozen", 0.55))]
    t = [t for t in reproduce.paired_tests(made_up) if (t["a"], t["b"]) == ("ssl-aux-frozen", "ssl-frozen")]
    assert len(t) == 1 and t[0]["diff_mean"] == pytest.approx(0.05) and t[0]["seeds"] == 3
    report = (out / "report.md").read_text()
    assert "SSL + sex/age heads (frozen)" in report and "sex head" in report
    # --modes ssl-aux-frozen without --aux-heads is refused with one line
    assert cli(["reproduce", "--out", str(tmp_path / "x"), "--modes", "ssl-aux-frozen"]) == 2
