"""`spine-ssl grade` on a real synthetic DICOM scan: output schema, geometry, TTA, ONNX."""

import csv
import json

import numpy as np
import pytest

from SpineSSLLib import DISC_NAMES, checkpoint as ckpt, grading
from SpineSSLLib.cli import main
from SpineSSLLib.models import ModelConfig

TINY = dict(width=0.0625, fc6=32, fc7=16, input_scale=0.5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["1", "2", "3", "4"]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    assert main(["-q", "synth", str(root), "--preset", "tiny", "--subjects", "1", "--seed", "3"]) == 0
    truth = sorted((root / "truth").glob("*.json"))[0]
    doc = json.loads(truth.read_text())
    series = [p for p in (root / "dicom").rglob("*") if p.is_dir() and any(f.is_file() for f in p.iterdir())][0]
    return series, truth, doc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "best"
    cfg = ModelConfig.preset("small", **TINY)
    net = grading.build_grading_model(cfg, len(CLASSES), "scratch", seed=1)
    ckpt.save_checkpoint(d, net, {"task": "grade", "model": cfg.to_dict(), "num_classes": len(CLASSES),
                                  "in_hw": list(grading.IVD_HW), "class_names": CLASSES, "mode": "scratch"})
    return d


def test_grade_scan_outputs(tmp_path, scan, model_dir):
    series, truth, doc = scan
    out = tmp_path / "out"
    assert main(["-q", "grade", str(model_dir.parent), str(series), "--levels", str(truth), "--out", str(out),
                 "--device", "cpu", "--onnx"]) == 0
    g = json.loads((out / "grades.json").read_text())
    assert g["schema"] == grading.GRADES_SCHEMA
    assert g["model"]["class_names"] == CLASSES and g["model"]["mode"] == "scratch"
    assert g["tta"]["n_views"] == grading.TTAConfig().n_views == 30
    assert [d["level"] for d in g["discs"]] == list(DISC_NAMES)
    truth_centres = {d["name"]: np.array(d["centroid_lps"]) for d in doc["discs"]}
    for d in g["discs"]:
        assert d["present"]
        p = d["probabilities"]
        assert list(p) == CLASSES and sum(p.values()) == pytest.approx(1.0, abs=1e-4)
        assert d["grade"] == max(p, key=p.get)
        # the graded volume sits on the true disc (extraction geometry carried into the output)
        assert np.linalg.norm(np.array(d["centre_lps"]) - truth_centres[d["level"]]) < 3.0
    rows = list(csv.DictReader(open(out / "grades.csv")))
    assert [r["level"] for r in rows] == list(DISC_NAMES)
    assert set(rows[0]) >= {"level", "present", "grade", "p_1", "p_4", "centre_l_mm"}
    assert float(rows[2]["p_3"]) == pytest.approx(g["discs"][2]["probabilities"]["3"], abs=1e-6)
    # ONNX export agrees with torch
    assert (out / "model.onnx").is_file()
    assert g["onnx"]["max_abs_prob_diff"] < 1e-4
    # privacy: nothing identifying in the outputs
    text = (out / "grades.json").read_text() + (out / "grades.csv").read_text()
    import pydicom

    ds = pydicom.dcmread(next(p for p in series.iterdir() if p.is_file()), stop_before_pixels=True)
    assert str(ds.PatientID) not in text and str(ds.StudyDate) not in text


def test_grade_without_tta_and_from_volume_file(tmp_path, scan, model_dir):
    from SpineSSLLib.extract import extract_scan, save_volumes
    from SpineSSLLib.io import read_scan
    from SpineSSLLib.levels import from_truth_json

    series, truth, _ = scan
    sv = extract_scan(read_scan(str(series)), from_truth_json(truth))
    npz = tmp_path / "v.npz"
    save_volumes(npz, sv)
    out = tmp_path / "o"
    assert main(["-q", "grade", str(model_dir), "--volumes", str(npz), "--out", str(out), "--no-tta",
                 "--device", "cpu"]) == 0
    g = json.loads((out / "grades.json").read_text())
    assert g["tta"]["n_views"] == 1
    gm = grading.load_grading_model(model_dir, "cpu")
    p = grading.predict_proba(gm.model, sv.ivd.astype(np.float16).astype(np.float32), grading.TTAConfig.none())
    got = np.array([[d["probabilities"][c] for c in CLASSES] for d in g["discs"]])
    np.testing.assert_allclose(got, p, atol=1e-5)


def test_grade_bad_input(tmp_path, scan, model_dir, capsys):
    series, truth, _ = scan
    assert main(["grade", str(model_dir), str(series), "--out", str(tmp_path)]) == 2  # no levels
    assert main(["grade", str(tmp_path), "--volumes", "x.npz", "--out", str(tmp_path)]) == 2  # no model
    err = capsys.readouterr().err
    assert "checkpoint" in err and len(err.strip().splitlines()) == 2
    # a pretraining checkpoint is not a grading model
    pre = tmp_path / "pre"
    net = grading.build_grading_model(ModelConfig.preset("small", **TINY), 7, "scratch")
    ckpt.save_checkpoint(pre, net, {"task": "pretrain", "model": net.config.to_dict()})
    assert main(["grade", str(pre), "--volumes", "x.npz", "--out", str(tmp_path)]) == 2
    assert "not a grading model" in capsys.readouterr().err
