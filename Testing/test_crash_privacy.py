"""Crash safety, determinism and whole-pipeline privacy (issue #9).

- A pretraining run killed with SIGKILL in the middle of an epoch resumes (``--resume``) from its
  intact ``last/`` checkpoint and ends bit-identical to an uninterrupted run (CPU, one thread).
- Same seed + same data on CPU -> identical logs, weights and metric reports (pretrain,
  eval-pairs, grade-train).
- The whole pipeline run on a synthetic cohort whose DICOM headers carry every kind of identifier
  writes nothing that ``spine-ssl audit-outputs`` can find; a planted name is found.
"""

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from SpineSSLLib import checkpoint as ckpt
from SpineSSLLib.cli import main

REPO = Path(__file__).resolve().parents[1]
# the small preset shrunk further (as in the other CLI tests); the pipeline's model keeps input_scale
# 0.5 so its trunk can grade IVD volumes (112 x 224)
CRASH_MODEL = {"preset": "small", "width": 0.0625, "fc6": 32, "fc7": 16, "input_scale": 0.25}
TINY_MODEL = dict(CRASH_MODEL, input_scale=0.5)
EPOCHS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(path, drop=("time_s",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _untimed(d):
    """A metrics JSON without its timing fields."""
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if "time" not in k and not k.endswith("_s")}
    if isinstance(d, list):
        return [_untimed(v) for v in d]
    return d


def _same_weights(a, b):
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"weights differ: {diff[:3]}"


# ----------------------------------------------------------------------------- SIGKILL and resume

@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """A tiny cohort in the extraction contract (8 subjects, 6 with a follow-up, 2 levels: 4
    training batches an epoch) and a pretraining config; ``args(out)`` is the pretrain command line."""
    from pretrain_helpers import cohort_rows, write_cohort

    root = tmp_path_factory.mktemp("crash")
    rows = [r for r in cohort_rows(8, frac_long=0.75, three_visit_every=10**9) if r.level in ("L1", "L2")]
    write_cohort(root / "cohort", rows)
    conf = root / "pretrain.json"
    conf.write_text(json.dumps({"model": CRASH_MODEL, "split_fractions": [0.6, 0.2, 0.2]}))

    def args(out):
        return ["pretrain", str(root / "cohort"), "--out", str(out), "--config", str(conf), "--epochs", str(EPOCHS),
                "--batch-size", "4", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--seed", "3"]

    return root, args


def _spawn(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SPINESSL_PROGRESS="lines")
    return subprocess.Popen([sys.executable, "-m", "SpineSSLLib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def uninterrupted(pre):
    """The reference run, in-process (the killed and resumed runs are subprocesses)."""
    root, args = pre
    assert main(["-q", *args(root / "A")]) == 0
    return root / "A"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(pre, uninterrupted):
    root, args = pre
    a, b = uninterrupted, root / "B"
    # kill B as soon as it reports its first batch of epoch 2: epoch 1 is logged and checkpointed
    p = _spawn(args(b))
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("PROGRESS ") and line.rstrip().endswith(f" epoch 2/{EPOCHS}"):
            os.kill(p.pid, signal.SIGKILL)
            break
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(seen[-20:])
    # what the kill left: an intact last/ checkpoint (hash-verified load, optimizer + RNG state),
    # no half-written files, no end-of-run outputs
    meta = ckpt.read_meta(b / "last")
    killed_epoch = meta["epoch"]
    assert killed_epoch in (0, 1)  # 0 unless the machine stalled the reader for a whole epoch
    ckpt.load_weights(b / "last")
    assert "train_state" in ckpt.load_checkpoint(b / "last", None, restore_rng_state=True)
    assert not (b / "fit.json").exists() and not (b / "pretrain_summary.json").exists()
    assert [r["epoch"] for r in _rows(b / "log.csv")][:killed_epoch + 1] == [str(e) for e in range(killed_epoch + 1)]
    for f in b.rglob("*"):  # every file under its final name is complete (temporaries start with ".")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(b).parts):
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".csv":
                _rows(f)
    # resume: loses only the interrupted epoch, ends bit-identical to A (CPU, one thread)
    p = _spawn(args(b) + ["--resume"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert f"resuming at epoch {killed_epoch + 1}" in out
    _same_weights(a / "last", b / "last")
    _same_weights(a / "best", b / "best")
    assert [r["epoch"] for r in _rows(b / "log.csv")] == [str(e) for e in range(EPOCHS)]  # each epoch once
    assert _rows(a / "log.csv") == _rows(b / "log.csv")
    assert json.loads((a / "eval_val" / "report.json").read_text()) == \
        json.loads((b / "eval_val" / "report.json").read_text())


def test_checkpoint_save_interrupted_between_renames_is_recovered(tmp_path, uninterrupted):
    """The on-disk states a kill inside ``save_checkpoint`` can leave (a half-written
    ``.last.partial-*`` folder; the old folder already renamed to ``.last.old``) still load the
    previous checkpoint, and the next save tidies them away."""
    from SpineSSLLib.models import ModelConfig, SiameseNet, VGGMNet

    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(uninterrupted / "last", out / ".last.old")  # killed between the two renames
    partial = out / ".last.partial-x1"
    shutil.copytree(uninterrupted / "last", partial)  # killed while writing the new one
    w = partial / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    last = out / "last"
    assert not last.exists() and ckpt.exists(last)
    from SpineSSLLib.train import TrainConfig, make_optimizer

    conf = ckpt.read_meta(last)["config"]
    model = SiameseNet(VGGMNet(ModelConfig.from_dict(conf["model"]), 7), conf["loss"]["projection"])
    saved = json.loads((uninterrupted / "pretrain_config.json").read_text())["train"]
    opt = make_optimizer(model, TrainConfig.from_dict({**saved, "lr": 1.0}))
    meta = ckpt.load_checkpoint(last, model, opt, restore_rng_state=True)
    assert meta["epoch"] == EPOCHS - 1 and opt.param_groups[0]["lr"] < 0.01   # restored, not the 1.0 set here
    ckpt.save_checkpoint(last, model, conf, epoch=meta["epoch"] + 1, optimizer=opt, rng=True)
    assert sorted(p.name for p in out.iterdir()) == ["last"]
    assert ckpt.read_meta(last)["epoch"] == EPOCHS
    _same_weights(uninterrupted / "last", last)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_data_identical_metrics(pre, uninterrupted, tmp_path, capsys):
    """A second run of the same pretraining, eval-pairs on both, grade-train (small preset) twice:
    identical logs, weights and reports."""
    from grading_helpers import write_contract_cohort

    root, args = pre
    a, a2 = uninterrupted, tmp_path / "A2"
    assert main(["-q", *args(a2)]) == 0
    _same_weights(a / "last", a2 / "last")
    assert _rows(a / "log.csv") == _rows(a2 / "log.csv")
    assert json.loads((a / "eval_val" / "report.json").read_text()) == \
        json.loads((a2 / "eval_val" / "report.json").read_text())
    reports = []
    for i, run in enumerate((a, a2)):
        capsys.readouterr()
        assert main(["-q", "eval-pairs", str(run), str(root / "cohort"), "--out", str(tmp_path / f"e{i}"),
                     "--split", "all", "--device", "cpu", "--batch-size", "8"]) == 0
        assert "privacy: a network that matches vertebrae" in capsys.readouterr().out
        reports.append(json.loads((tmp_path / f"e{i}" / "report.json").read_text()))
    assert reports[0] == reports[1] and reports[0]["n_positive_pairs"] > 0
    assert (tmp_path / "e0" / "pairs.csv").read_bytes() == (tmp_path / "e1" / "pairs.csv").read_bytes()

    cohort = write_contract_cohort(tmp_path / "grading", n_subjects=8, seed=4)
    metrics = []
    for i in range(2):
        g = tmp_path / f"g{i}"
        assert main(["-q", "grade-train", str(cohort), "--out", str(g), "--mode", "scratch", "--preset", "small",
                     "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--seed", "1"]) == 0
        metrics.append(_untimed(json.loads((g / "test_metrics.json").read_text())))
    assert _rows(tmp_path / "g0" / "log.csv") == _rows(tmp_path / "g1" / "log.csv")
    assert metrics[0] == metrics[1] and metrics[0]["epochs"] == 2
    _same_weights(tmp_path / "g0" / "best", tmp_path / "g1" / "best")


# ----------------------------------------------------------------------------- whole-pipeline privacy

IDENTIFYING = {"PatientID", "PatientName", "PatientBirthDate", "StudyDate", "AccessionNumber", "InstitutionName"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """synth -> index -> extract --qc -> pretrain -> eval-pairs -> grade-train -> grade -> detect
    --markups -> the Slicer batch script (slicer-core), every output under one folder."""
    root = tmp_path_factory.mktemp("pipeline")
    syn, out = root / "syn", root / "out"
    C, P = out / "cohort", out / "pretrain"
    assert main(["-q", "synth", str(syn), "--preset", "tiny", "--subjects", "4", "--followup-fraction", "0.5",
                 "--seed", "2", "--workers", "1"]) == 0
    dicom = syn / "dicom"
    assert main(["-q", "index", str(dicom), "--out", str(C)]) == 0
    assert main(["-q", "extract", str(C), "--levels", f"truth:{syn / 'truth'}", "--qc", "--device", "cpu"]) == 0
    conf = root / "pretrain.json"
    conf.write_text(json.dumps({"model": TINY_MODEL, "split_fractions": [0.5, 0.25, 0.25]}))
    assert main(["-q", "pretrain", str(C), "--out", str(P), "--config", str(conf), "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--lr", "0.01"]) == 0
    assert main(["-q", "eval-pairs", str(P), str(C), "--out", str(out / "eval"), "--split", "all",
                 "--device", "cpu"]) == 0
    G = out / "grading"
    assert main(["-q", "grade-train", str(C), "--out", str(G), "--mode", "ssl-frozen", "--pretrained", str(P / "best"),
                 "--pretrain-splits", str(P / "splits.json"), "--epochs", "1", "--batch-size", "16",
                 "--device", "cpu"]) == 0
    series = sorted(p for p in dicom.glob("*/*") if p.is_dir())
    assert main(["-q", "detect", str(series[0].parent), "--out", str(out / "detect"), "--markups",
                 "--device", "cpu"]) == 0
    markups = sorted((out / "detect" / "markups").glob("*.mrk.json"))
    assert markups
    npz = sorted((C / "volumes").glob("*.npz"))[0]
    assert main(["-q", "grade", str(G), "--volumes", str(npz), "--out", str(out / "grades_npz"), "--no-tta",
                 "--device", "cpu"]) == 0
    assert main(["-q", "grade", str(G), str(series[0]), "--levels", str(markups[0]), "--out",
                 str(out / "grades_scan"), "--no-tta", "--device", "cpu"]) == 0
    # the Slicer module's batch script (one scan, with the grading model and the scan saved as NRRD)
    truth = sorted((syn / "truth").glob("*.json"))
    first = next(t for t in truth if not t.name.endswith("_labels.nii.gz")
                 and json.loads(t.read_text())["dicom_dir"] == str(series[0].relative_to(syn)))
    (root / "batch.csv").write_text(f"image,levels\n{series[0].relative_to(root)},{first.relative_to(root)}\n")
    spec = importlib.util.spec_from_file_location("SpineSSLBatch", REPO / "SpineSSL" / "Scripts" / "SpineSSLBatch.py")
    batch = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = batch
    spec.loader.exec_module(batch)
    assert batch.main(["--list", str(root / "batch.csv"), "--out", str(out / "slicer_batch"), "--save-volume",
                       "--model", str(G), "--device", "cpu"]) == 0
    return syn, out


def test_synthetic_headers_carry_identifiers(pipeline):
    """The audit below is only meaningful if the source headers hold every kind of identifier."""
    import pydicom

    from SpineSSLLib.privacy import collect_identifiers

    syn, _ = pipeline
    values, n = collect_identifiers(syn / "dicom")
    assert n == sum(1 for p in (syn / "dicom").rglob("*") if p.is_file())
    for src in (sorted(p for p in (syn / "dicom").rglob("*") if p.is_file())[i] for i in (0, -1)):
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for tag in IDENTIFYING:
            value = str(ds.get(tag, "")).strip()
            assert len(value) >= 4 and value.lower() in values, (src, tag)


def test_whole_pipeline_outputs_hold_no_identifier(pipeline, capsys, tmp_path):
    syn, out = pipeline
    for stage in ("cohort/volumes", "cohort/qc", "cohort/cache", "pretrain/best", "eval",
                  "grading/best", "detect/markups", "grades_npz", "grades_scan", "slicer_batch"):
        assert any((out / stage).rglob("*")), f"{stage} wrote nothing"
    capsys.readouterr()
    rc = main(["audit-outputs", str(out), "--source", str(syn / "dicom"), "--report", str(tmp_path / "audit.json")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rep = json.loads((tmp_path / "audit.json").read_text())
    assert rep["ok"] and rep["hits"] == [] and rep["unreadable"] == []
    assert rep["n_source_files"] == sum(1 for p in (syn / "dicom").rglob("*") if p.is_file())
    assert rep["n_output_files"] == sum(1 for p in out.rglob("*") if p.is_file())
    # the synthetic cohort's own non-DICOM files (truth, summaries) are clean too
    assert main(["-q", "audit-outputs", str(syn), "--source", str(syn / "dicom")]) == 0
    # the re-identification warning travels with the pair evaluation
    note = json.loads((out / "eval" / "report.json").read_text())["reidentification_note"]
    assert "personal data" in note and "same person" in note
    assert "reidentification_note" in (REPO / "docs" / "privacy.md").read_text()


def test_planted_patient_name_is_found(pipeline, tmp_path, capsys):
    """Control: the same audit fails when one output carries a PatientName from the headers."""
    import pydicom

    syn, out = pipeline
    src = next(p for p in sorted((syn / "dicom").rglob("*")) if p.is_file())
    name = str(pydicom.dcmread(src, stop_before_pixels=True).PatientName)
    leaked = tmp_path / "out"
    shutil.copytree(out / "grades_npz", leaked)
    with open(leaked / "grades.csv", "a") as f:
        f.write(f"# reviewed for {name}\n")
    capsys.readouterr()
    assert main(["audit-outputs", str(leaked), "--source", str(syn / "dicom")]) == 1
    printed = capsys.readouterr().out
    assert "1 hit" in printed and "grades.csv: PatientName" in printed
