"""Shared pytest fixtures."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread per test process while a module runs (the suite runs one xdist worker per
    core); modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory):
    """A tiny synthetic cohort (6 subjects, 3 with a follow-up; headers with PatientSex, PatientAge,
    birth date) indexed and extracted once per test process: ``(synth folder, cohort C)``.  Tests
    that change C work on a copy."""
    from SpineSSLLib.cli import main

    root = tmp_path_factory.mktemp("synth_cohort")
    syn, C = root / "syn", root / "C"
    assert main(["-q", "synth", str(syn), "--preset", "tiny", "--subjects", "6", "--followup-fraction", "0.6",
                 "--seed", "3", "--workers", "1"]) == 0
    assert main(["-q", "index", str(syn / "dicom"), "--out", str(C)]) == 0
    assert main(["-q", "extract", str(C), "--levels", f"truth:{syn / 'truth'}", "--device", "cpu"]) == 0
    return syn, C


@pytest.fixture(scope="session")
def aux_pretrained(synth_cohort, tmp_path_factory):
    """One epoch of a very small network pretrained on ``synth_cohort`` with the metadata heads
    ``--aux-heads sex:2,age_bin:5`` (labels written by index/extract): the output folder P."""
    import json

    from SpineSSLLib.cli import main

    _, C = synth_cohort
    root = tmp_path_factory.mktemp("aux_pretrained")
    conf = root / "pretrain.json"
    conf.write_text(json.dumps({"model": {"preset": "small", "width": 0.0625, "fc6": 32, "fc7": 16, "input_scale": 0.25},
                                "split_fractions": [0.6, 0.2, 0.2]}))
    P = root / "P"
    assert main(["-q", "pretrain", str(C), "--out", str(P), "--config", str(conf), "--epochs", "1", "--batch-size", "8",
                 "--workers", "0", "--device", "cpu", "--aux-heads", "sex:2,age_bin:5"]) == 0
    return P
