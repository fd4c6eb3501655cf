"""Domain-randomised training scans (SpineSSLLib.detect.randomised) and the held-out evaluation
generator (SpineSSLLib.detect.heldout): determinism, geometry of the truth and the training
targets, the sample pipeline, cohorts the detector can read."""

import json

import numpy as np
import pytest

from SpineSSLLib import LEVEL_NAMES


@pytest.fixture(scope="module")
def case():
    from SpineSSLLib.detect.randomised.cases import build_case

    return build_case(5, 4)  # a small field of view: L1 .. sacrum


def test_same_seed_same_case_and_cache_roundtrip(case, tmp_path):
    from SpineSSLLib.detect.randomised.cases import build_case, load_case, save_case

    again = build_case(5, 4)
    assert np.array_equal(again.tissue, case.tissue) and np.array_equal(again.classes, case.classes)
    other = build_case(6, 4)
    assert other.tissue.shape != case.tissue.shape or not np.array_equal(other.tissue, case.tissue)
    back = load_case(save_case(case, tmp_path))
    assert np.array_equal(back.tissue, case.tissue) and np.allclose(back.affine, case.affine)
    assert back.levels.names == case.levels.names and back.grid.shape == case.grid.shape


def test_truth_and_training_classes_agree(case):
    """Each truth level's centroid lies in its own class region on its mid slice; bodies above
    T12 are 'above', the sacrum below S1 'sacrum'; the centre list holds every body."""
    from SpineSSLLib.detect.targets import FIRST_LEVEL, SACRUM

    assert case.sacrum_in_view and "S1" in case.levels
    for lv in case.levels:
        r, c, k = case.grid.from_lps(lv.centroid)
        k = int(np.clip(round(k), 0, case.classes.shape[0] - 1))
        region = case.classes[k] == FIRST_LEVEL + LEVEL_NAMES.index(lv.name)
        if not region.any():
            continue  # the body does not reach this slice of the stack
        rr, cc = np.nonzero(region)
        assert np.hypot(rr.mean() - r, cc.mean() - c) < 4.0, lv.name  # 2 mm pixels
    assert (case.classes == SACRUM).any()
    rows = case.centres[:, 0]
    assert np.all(np.diff(rows) > 0)  # superior first, one per body
    s1 = case.grid.from_lps(case.levels["S1"].centroid)
    assert np.allclose(case.centres[-1][:2], s1[:2], atol=1e-6)


def test_samples_are_reproducible_and_well_formed(case):
    from SpineSSLLib.detect.model import DetectorConfig
    from SpineSSLLib.detect.randomised.cases import sample
    from SpineSSLLib.detect.targets import BACKGROUND, CENTRE, KNOWN, N_CLASSES, N_TARGETS

    cfg = DetectorConfig()
    k = int(case.spine_slices[len(case.spine_slices) // 2])
    x1, t1 = sample(case, k, 1, cfg, np.random.default_rng(3))
    x2, t2 = sample(case, k, 1, cfg, np.random.default_rng(3))
    x3, _ = sample(case, k, 1, cfg, np.random.default_rng(4))
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2) and not np.array_equal(x1, x3)
    assert x1.shape == (3,) + case.grid.shape and t1.shape == (N_TARGETS,) + case.grid.shape
    assert np.all(np.isfinite(x1)) and x1.max() > 0.5
    assert np.allclose(t1[:N_CLASSES].sum(axis=0), 1.0) and (t1[KNOWN] == 1).all()
    assert t1[CENTRE].max() > 0.3 and (t1[BACKGROUND] < 1).any()
    assert (x1[:, ~case.inside()] == 0).all()  # outside the field of view: 0, as at inference


def test_cohort_scans_read_like_any_image(tmp_path):
    """A written cohort: NIfTI the reader accepts, truth files the evaluation reads, and the
    stored geometry puts each truth centroid inside the image."""
    from SpineSSLLib.detect import cases as C
    from SpineSSLLib.detect.randomised.cohort import write_cohort

    keys = write_cohort(tmp_path / "c", 5, 1, cache=tmp_path / "cache")
    refs = C.discover(tmp_path / "c" / "images", tmp_path / "c" / "truth")
    assert [r.key for r in refs] == keys and refs[0].levels_kind == "levelset"
    case = C.load_case(refs[0])
    assert len(case.levels) >= 5
    K, J, I = case.scan.shape
    for lv in case.levels:
        i, j, k = case.scan.lps_to_index(lv.centroid)
        assert -0.5 <= k <= K - 0.5 and 0 <= j < J and 0 <= i < I
    d = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert d["generator"] == "SpineSSLLib.detect.randomised"


def test_heldout_generator_scan():
    """The held-out evaluation generator: a sagittal stack with truth T12..S1 inside the image,
    S1 on top of the sacral arc, bodies in order from superior to inferior."""
    from SpineSSLLib.detect.heldout import make_scan

    img, A, levels = make_scan(3, 4)
    assert img.ndim == 3 and np.isfinite(img).all() and img.max() > 0
    assert "S1" in levels and "L3" in levels
    inv = np.linalg.inv(A)
    z = [levels[n].centroid[2] for n in LEVEL_NAMES if n in levels]
    assert np.all(np.diff(z) < 0)  # superior first
    for lv in levels:
        i, j, k = inv[:3, :3] @ lv.centroid + inv[:3, 3]
        assert 0 <= i < img.shape[2] and 0 <= j < img.shape[1] and -0.5 <= k <= img.shape[0] - 0.5


def test_training_code_uses_neither_held_out_generator():
    """Both held-out generators stay out of training and calibration: detect/heldout (this
    detector's own) and synth_alt (the evaluation-only cohort generator) are not mentioned by
    the training data, training loop, calibration, detect-train or make_detector.sh."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    lib = repo / "SpineSSLLib"
    files = sorted((lib / "detect" / "randomised").glob("*.py")) + [
        lib / "detect" / n for n in ("training.py", "calibrate.py", "targets.py", "cases.py")] + [
        lib / "commands" / "detect_train.py", repo / "scripts" / "make_detector.sh"]
    offenders = [p.relative_to(repo).as_posix() for p in files
                 if re.search(r"(import|from)\s+\S*heldout\b|detect\.heldout|synth[_-]alt", p.read_text())]
    assert offenders == []
