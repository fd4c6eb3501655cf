"""Vertebra detector: canonical grid, targets, model files, a tiny training run, the
`detect` / `detect-train` commands and the evaluation metrics, on a real synthetic cohort
(DICOM written by `SpineSSLLib.synth`)."""

import json
import re

import numpy as np
import pytest

from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib.cli import main
from SpineSSLLib.detect.model import BUNDLED
from SpineSSLLib.errors import CheckpointError, GeometryError
from SpineSSLLib.io import Scan
from SpineSSLLib.levels import Level, LevelSet


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, preset("tiny", subjects=2, followup_fraction=0.0, twin_fraction=0.0,
                                matrix=(224, 224), slices=(11, 11), seed=3))
    return out


@pytest.fixture(scope="module")
def cases(cohort):
    from SpineSSLLib.detect import cases as C

    refs = C.discover(cohort, cohort / "truth")
    assert len(refs) == 2 and all(r.levels_kind == "truth" for r in refs)
    return [C.load_case(r) for r in refs]


# ------------------------------------------------------------------------------------- grid

def _reoriented(scan: Scan) -> Scan:
    """The same image stored differently: rows and columns swapped, columns reversed."""
    arr = np.ascontiguousarray(scan.array.transpose(0, 2, 1)[:, :, ::-1])  # new (j', i') = (i, J-1-j)
    K, J, I = scan.shape
    A = scan.affine
    B = np.eye(4)
    # new voxel (i', j', k) -> old (i = j', j = J-1-i', k)
    B[:3, 0] = -A[:3, 1]
    B[:3, 1] = A[:3, 0]
    B[:3, 2] = A[:3, 2]
    B[:3, 3] = A[:3, 3] + (J - 1) * A[:3, 1]
    return Scan(arr, B)


def test_grid_orientation_roundtrip_and_invariance(cases):
    from SpineSSLLib.detect.grid import make_grid, resample

    for case in cases:
        g = make_grid(case.scan, 2.0, 16)
        assert g.shape[0] % 16 == 0 and g.shape[1] % 16 == 0
        lv = case.levels
        pts = np.array([l.centroid for l in lv])
        assert np.allclose(g.to_lps(g.from_lps(pts)), pts, atol=1e-6)
        rc = g.from_lps(pts)
        assert np.all(np.diff(rc[:, 0]) > 0), "rows must run superior -> inferior"
        c = g.from_lps(lv["L3"].corners)
        assert c[0, 1] < c[1, 1] and c[3, 1] < c[2, 1], "columns must run anterior -> posterior"
        assert c[0, 0] < c[3, 0], "anterior-superior above anterior-inferior"
        img = resample(case.scan, g)
        assert img.shape == (case.scan.shape[0],) + g.shape and 0 <= img.min() and img.max() <= 1.5
        # the same anatomy stored with swapped / flipped axes lands on the same canonical grid
        other = _reoriented(case.scan)
        g2 = make_grid(other, 2.0, 16)
        assert g2.shape == g.shape
        assert np.allclose(g2.from_lps(pts), rc, atol=1e-6)
        img2 = resample(other, g2)
        assert np.abs(img2 - img).mean() < 1e-3


def test_grid_rejects_axial_stack(cases):
    from SpineSSLLib.detect.grid import make_grid

    s = cases[0].scan
    A = np.eye(4)
    A[:3, :3] = np.diag([1.0, 1.0, 4.0])  # axial slices
    with pytest.raises(GeometryError, match="not a sagittal"):
        make_grid(Scan(s.array, A), 2.0, path="x")


# ---------------------------------------------------------------------------------- targets

def test_targets_regions_and_centre(cases):
    from SpineSSLLib.detect.grid import make_grid
    from SpineSSLLib.detect.targets import (ABOVE, BACKGROUND, CENTRE, FIRST_LEVEL, KNOWN, N_CLASSES, N_TARGETS,
                                            SACRUM, level_geometry, slice_targets)

    case = cases[0]
    g = make_grid(case.scan, 2.0, 16)
    geom = level_geometry(case.levels, g)
    assert len(geom) == 7
    for lg in geom:
        t = slice_targets(geom, lg.mid_slice, g.shape, 2.0, 5.0, slice_mm=g.slice_mm)
        assert t.shape == (N_TARGETS,) + g.shape
        n = t[:N_CLASSES].sum(axis=0)
        known = t[KNOWN] > 0
        assert np.allclose(n[known], 1.0) and (n[~known] >= 2).all()  # one class, or an allowed set
        r, c = int(round(lg.row)), int(round(lg.col))
        assert t[FIRST_LEVEL + lg.index, r, c] == 1.0
        region = t[FIRST_LEVEL + lg.index] > 0
        # the region is the corner quadrilateral: its area matches the polygon's (shoelace)
        x, y = lg.corners[:, 0], lg.corners[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        assert region.sum() == pytest.approx(area, rel=0.15)
        assert t[BACKGROUND, 0, 0] == 1.0
        assert t[CENTRE, r, c] > 0.8  # the centre map peaks at the centroid on the mid slice
        assert t[KNOWN, r, c] == 1.0 and t[KNOWN].mean() < 1.0  # above T12 / below S1: a set
        s1 = geom[-1]
        below = (slice(int(s1.corners[:, 0].max()) + 4, None), int(round(s1.col)))  # under S1: the sacrum
        assert (t[BACKGROUND][below] == 1).all() and (t[SACRUM][below] == 1).all()
        assert (t[FIRST_LEVEL + 6][below] == 0).all() and (t[ABOVE][below] == 0).all()
        # the centre map falls off away from the body's mid-sagittal plane; the region stays
        far = lg.mid_slice + 3 if lg.mid_slice + 3 < g.n_slices else lg.mid_slice - 3
        t2 = slice_targets(geom, far, g.shape, 2.0, 5.0, slice_mm=g.slice_mm)
        assert t2[CENTRE, r, c] < 0.6 * t[CENTRE, r, c]
        if lg.slice_range[0] <= far <= lg.slice_range[1]:
            assert t2[FIRST_LEVEL + lg.index, r, c] == 1.0


# ------------------------------------------------------------------------------ model files

def test_model_files_roundtrip_and_refusals(tmp_path):
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.detect.model import PRESETS, DetectorConfig, build_network, checkpoint_config, load_detector

    cfg = DetectorConfig(**PRESETS["tiny"])
    net = build_network(cfg)
    ckpt.save_checkpoint(tmp_path / "m", net, checkpoint_config(cfg, {"name": "t"}))
    det = load_detector(tmp_path / "m")
    assert det.config == cfg
    x = torch.rand(2, cfg.in_channels, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), det.network(x))
    # a model made for another task is refused
    ckpt.save_checkpoint(tmp_path / "other", net, {"task": "pretrain"})
    with pytest.raises(CheckpointError, match="not detection"):
        load_detector(tmp_path / "other")
    # truncated weights are refused
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "m")
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "nothing-here")


# ------------------------------------------------------------------------ training + commands

def test_tiny_training_run_then_detect_and_evaluate(cohort, tmp_path, capsys):
    import csv

    from SpineSSLLib.detect.model import load_detector

    model = tmp_path / "model"
    rc = main(["-q", "detect-train", str(cohort), "--out", str(model), "--preset", "tiny", "--epochs", "4",
               "--samples-per-epoch", "24", "--batch-size", "8", "--val-fraction", "0", "--test-fraction", "0",
               "--threads", "1"])
    assert rc == 0
    with open(model / "log.csv") as f:
        log = list(csv.DictReader(f))
    assert len(log) == 4
    assert float(log[-1]["train_loss"]) < 0.7 * float(log[0]["train_loss"])
    det = load_detector(model)  # best/ of a detect-train output
    assert det.config.channels == (4, 8, 16, 32)
    # resume continues from last/
    rc = main(["-q", "detect-train", str(cohort), "--out", str(model), "--preset", "tiny", "--epochs", "5",
               "--samples-per-epoch", "24", "--val-fraction", "0", "--test-fraction", "0", "--threads", "1",
               "--resume"])
    assert rc == 0
    with open(model / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 5

    out = tmp_path / "detected"
    capsys.readouterr()
    rc = main(["-q", "detect", str(cohort / "dicom"), "--out", str(out), "--model", str(model),
               "--reference", str(cohort / "truth"), "--markups", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out  # every printed figure is formatted (no 0.9847619047619047)
    assert re.search(r"labelling accuracy (\d+\.\d %|n/a), all levels right in (\d+\.\d %|n/a) of", printed), printed
    assert not re.search(r"\d\.\d{5,}", printed), printed
    files = sorted(p for p in out.glob("*.json") if p.name != "evaluation.json")
    assert len(files) == 2
    for p in files:
        d = json.loads(p.read_text())
        assert d["schema"] == "spinessl.levels/1" and d["source"].startswith("detect:")
        ls = LevelSet.from_dict(d)
        for lv in ls:  # whatever an under-trained model finds has the full level structure
            assert lv.name in LEVEL_NAMES and lv.corners.shape == (4, 3) and 0 <= lv.confidence <= 1
            assert lv.slice_range[0] <= lv.mid_slice <= lv.slice_range[1]
        assert (out / "markups" / f"{p.stem}.mrk.json").is_file()
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["n_scans"] == 2 and ev["n_reference_levels"] == 14
    assert (out / "evaluation.png").stat().st_size > 1000
    with open(out / "detect.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_detect_errors_are_one_line(cohort, tmp_path, capsys, monkeypatch):
    rc = main(["detect", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "folder not found" in err and len(err.strip().splitlines()) == 1
    from SpineSSLLib.detect import spinenet

    (tmp_path / "empty").mkdir()
    rc = main(["detect", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no DICOM series or images found" in capsys.readouterr().err
    # SpineNet is optional: without it, a clear message on how to get it
    monkeypatch.setattr(spinenet, "available", lambda: False)
    rc = main(["detect", str(cohort / "dicom"), "--out", str(tmp_path / "o"), "--detector", "spinenet"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install spinenet" in err and len(err.strip().splitlines()) == 1


def test_detect_train_needs_levels(cohort, tmp_path, capsys):
    rc = main(["detect-train", str(cohort / "dicom"), "--out", str(tmp_path / "m")])
    assert rc == 2 and "DATA/truth does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------- evaluation

def _levels(shift_names=False, drop=(), extra_noise=0.0):
    out = {}
    for v, name in enumerate(LEVEL_NAMES):
        c = np.array([0.0, 30.0, 150.0 - 30.0 * v])
        out[name] = Level(name, c + extra_noise, np.tile(c, (4, 1)), (2, 8), 5, 0.9)
    if shift_names:  # every label one level too high
        out = {LEVEL_NAMES[LEVEL_NAMES.index(n) - 1]: Level(LEVEL_NAMES[LEVEL_NAMES.index(n) - 1], l.centroid,
                                                            l.corners, l.slice_range, l.mid_slice, l.confidence)
               for n, l in out.items() if n != "T12"}
    for d in drop:
        out.pop(d, None)
    return LevelSet(out)


def test_compare_and_summarise():
    from SpineSSLLib.detect.evaluate import compare, summarise

    ref = _levels()
    good = compare("a", _levels(extra_noise=1.0), ref)
    assert good.all_correct and all(r["correct"] for r in good.per_level.values())
    assert good.per_level["L3"]["centroid_mm"] == pytest.approx(np.sqrt(3.0))
    shifted = compare("b", _levels(shift_names=True), ref)
    assert not shifted.all_correct
    assert sum(r["correct"] for r in shifted.per_level.values()) == 0
    missing = compare("c", _levels(drop=("S1",)), ref)
    assert not missing.all_correct and missing.per_level["S1"]["present"] is False
    extra = compare("d", _levels(), _levels(drop=("T12",)))
    assert extra.extra == ["T12"] and not extra.all_correct
    # a reference level outside the field of view: detecting it is neither right nor wrong
    assert compare("e", _levels(), _levels(drop=("T12",)), ignore=("T12",)).all_correct
    s = summarise([good, shifted, missing, extra])
    assert s["n_scans"] == 4 and s["scans_all_correct"] == 0.25
    assert s["n_reference_levels"] == 27
    assert s["labelling_accuracy"] == pytest.approx((7 + 0 + 6 + 6) / 27)
    assert s["per_level"]["S1"]["labelling_accuracy"] == pytest.approx(2 / 4)
    assert s["centroid_mm"]["n"] == 19 and not s["meets_targets"]


def test_subject_split_keeps_subjects_together():
    from SpineSSLLib.detect.cases import CaseRef, split_groups

    refs = [CaseRef(f"s{i}v{v}", "x", f"subj{i}") for i in range(20) for v in range(2)]
    a = split_groups(refs, 0.15, 0.2, seed=1)
    b = split_groups(list(reversed(refs)), 0.15, 0.2, seed=1)
    assert {k: sorted(r.key for r in v) for k, v in a.items()} == {k: sorted(r.key for r in v) for k, v in b.items()}
    groups = {k: {r.group for r in v} for k, v in a.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert len(groups["test"]) == 4 and len(groups["val"]) == 3


# ------------------------------------------------------------------------------ bundled model

def test_bundled_model_finds_and_names_every_level(cases):
    """The shipped model (trained on other synthetic subjects) on two unseen synthetic scans."""
    from SpineSSLLib.detect.evaluate import compare, in_view
    from SpineSSLLib.detect.infer import detect_levels
    from SpineSSLLib.detect.model import BUNDLED, load_detector

    det = load_detector()  # the default = the bundled model
    assert det.path == BUNDLED and det.meta["config"]["task"] == "detect"
    assert (BUNDLED / "model.safetensors").stat().st_size < 10 * 2**20
    for case in cases:
        levels = detect_levels(case.scan, device="cpu")
        truth, outside = in_view(case.levels, case.scan)
        res = compare(case.ref.key, levels, truth, ignore=tuple(outside))
        assert res.all_correct, (res.per_level, levels.issues)
        errs = [r["centroid_mm"] for r in res.per_level.values()]
        assert np.mean(errs) < 3.0, errs


def test_extract_with_detected_levels(cohort, tmp_path):
    """`spine-ssl extract --levels detect` cuts the volumes from automatically found levels."""
    import csv

    c = tmp_path / "C"
    assert main(["-q", "index", str(cohort / "dicom"), "--out", str(c)]) == 0
    assert main(["-q", "extract", str(c), "--levels", "detect", "--device", "cpu"]) == 0
    with open(c / "volumes.csv") as f:
        rows = list(csv.DictReader(f))
    vb = [r for r in rows if r["kind"] == "VB"]
    assert len({r["scan_key"] for r in vb}) == 2
    assert len(vb) >= 12 and {r["level"] for r in vb} == set(LEVEL_NAMES)


def test_slicer_automatic_levels_through_the_scene(cases):
    """The Slicer module's automatic option: volume node -> Scan -> detect_levels -> markups
    (MRML via slicer-core; the same calls as SpineSSLLogic.detectLevels)."""
    import slicer  # slicer-core (test dependency)
    from SpineSSLLib import scene
    from SpineSSLLib.detect.evaluate import compare, in_view
    from SpineSSLLib.detect.infer import detect_levels

    mrml = slicer.vtkMRMLScene()
    case = cases[0]
    node = scene.volume_node_from_scan(mrml, case.scan, "T2 sagittal")
    levels = detect_levels(scene.scan_from_volume_node(node), device="cpu", where=node.GetName())
    truth, outside = in_view(case.levels, case.scan)
    assert compare("slicer", levels, truth, ignore=tuple(outside)).all_correct
    markups = scene.markups_from_levels(mrml, levels, "levels")
    back = scene.levels_from_markups(markups)
    assert back.names == levels.names
    assert np.allclose(back["L3"].centroid, levels["L3"].centroid, atol=1e-3)


def test_detect_train_evaluate_only_scores_the_bundled_model_on_held_out_subjects(cohort, tmp_path):
    """--evaluate-only: no training; the bundled model on the test subjects of the split."""
    out = tmp_path / "ev"
    rc = main(["-q", "detect-train", str(cohort), "--out", str(out), "--evaluate-only", "--val-fraction", "0",
               "--test-fraction", "0.5", "--threads", "1"])
    assert rc == 0
    ev = json.loads((out / "evaluation.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert ev["split"] == {"train": 1, "val": 0, "test": 1} and len(split["test"]) == 1
    bundled = json.loads((BUNDLED / "checkpoint.json").read_text())["config"]["name"]
    assert ev["n_scans"] == 1 and ev["model"] == bundled
    assert ev["labelling_accuracy"] == 1.0 and ev["centroid_mm"]["mean"] < 3.0
    assert not (out / "best").exists() and not (out / "log.csv").exists()
    rc = main(["-q", "detect-train", str(cohort), "--out", str(tmp_path / "x"), "--model", str(tmp_path)])
    assert rc == 2  # --model without --evaluate-only is refused


def test_model_without_above_and_sacrum_classes_loads_as_the_current_channels(tmp_path):
    """A model file made before the ``above`` / ``sacrum`` classes (outputs background, T12..S1,
    centre; e.g. spinessl-detector-synthetic-v1) is read with its outputs at their current
    channel positions and probability 0 for the classes it lacks; unknown channels are refused."""
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.detect.infer import predict_maps
    from SpineSSLLib.detect.model import PRESETS, TASK, DetectorConfig, build_network, load_detector
    from SpineSSLLib.detect.targets import ABOVE, CENTRE, CHANNELS, FIRST_LEVEL, N_CLASSES, SACRUM

    cfg = DetectorConfig(**PRESETS["tiny"])
    old = ["background"] + list(LEVEL_NAMES) + ["centre"]
    torch.manual_seed(0)
    net = build_network(cfg, len(old))
    ckpt.save_checkpoint(tmp_path / "old", net, {"task": TASK, "detector": cfg.to_dict(), "outputs": old})
    det = load_detector(tmp_path / "old")
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    maps = predict_maps(det, image)
    assert maps.shape == (3, len(CHANNELS), 32, 32)
    assert np.allclose(maps[:, [ABOVE, SACRUM]], 0.0) and np.allclose(maps[:, :N_CLASSES].sum(axis=1), 1.0)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([image[[0, 0, 1]]]))
        y = net.eval()(x)
    ref = torch.softmax(y[:, :len(old) - 1], dim=1).numpy()[0]
    assert np.allclose(maps[0, [0] + list(range(FIRST_LEVEL, FIRST_LEVEL + len(LEVEL_NAMES)))], ref, atol=1e-5)
    assert np.allclose(maps[0, CENTRE], torch.sigmoid(y[0, -1]).numpy(), atol=1e-5)
    ckpt.save_checkpoint(tmp_path / "odd", net, {"task": TASK, "detector": cfg.to_dict(),
                                                 "outputs": old[:-1] + ["corner"]})
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "odd")


def test_init_from_an_older_model_keeps_its_outputs_and_fine_tunes(cohort, tmp_path):
    """``--init``: a network of the current outputs started from a model made before the
    ``above`` / ``sacrum`` classes gives that model's logits for every class it had; a new class
    starts as its anatomical neighbour's (T12 / S1) lowered by 2 and feeds nothing downstream.
    ``detect-train --init`` takes the model's architecture (not --preset), fine-tunes and records
    where it started; a model of another architecture is refused in one line."""
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.detect.model import (PRESETS, TASK, DetectorConfig, architecture_of, build_network,
                                          init_from_model)
    from SpineSSLLib.detect.targets import CHANNELS

    cfg = DetectorConfig(**{**PRESETS["tiny"], "num_res_units": 1})  # a last layer that reads the classes
    old = ["background"] + list(LEVEL_NAMES) + ["centre"]
    torch.manual_seed(1)
    src = build_network(cfg, len(old))
    ckpt.save_checkpoint(tmp_path / "old", src, {"task": TASK, "detector": cfg.to_dict(), "outputs": old,
                                                 "name": "old-model"})
    arch = architecture_of(tmp_path / "old")
    assert tuple(arch["channels"]) == tuple(cfg.channels) and arch["num_res_units"] == 1
    torch.manual_seed(2)
    net = build_network(DetectorConfig(**arch))
    assert init_from_model(net, tmp_path / "old")["config"]["name"] == "old-model"
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        a, b = src.eval()(x), net.eval()(x)
    idx = [CHANNELS.index(n) for n in old]
    assert torch.allclose(b[:, idx], a, atol=1e-5)
    assert torch.allclose(b[:, CHANNELS.index("above")], a[:, old.index("T12")] - 2, atol=1e-5)
    assert torch.allclose(b[:, CHANNELS.index("sacrum")], a[:, old.index("S1")] - 2, atol=1e-5)

    other = build_network(DetectorConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=0))
    with pytest.raises(CheckpointError, match="another architecture"):
        init_from_model(other, tmp_path / "old")

    out = tmp_path / "ft"
    rc = main(["-q", "detect-train", str(cohort), "--out", str(out), "--init", str(tmp_path / "old"),
               "--preset", "default", "--epochs", "1", "--samples-per-epoch", "8", "--batch-size", "4",
               "--val-fraction", "0.5", "--test-fraction", "0", "--workers", "0", "--lr", "0.01"])
    assert rc == 0
    conf = json.loads((out / "best" / "checkpoint.json").read_text())["config"]
    assert conf["initialised_from"] == "old-model" and tuple(conf["detector"]["channels"]) == tuple(cfg.channels)
    assert conf["outputs"] == list(CHANNELS)
