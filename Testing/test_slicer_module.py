"""The Slicer module's batch core on slicer-core, and static checks of the module files that
only real Slicer can run (SpineSSL.py widget/logic, .ui, ExtensionsIndex JSON)."""

import ast
import csv
import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
from SpineSSLLib import scene as S
from SpineSSLLib.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SpineSSL" / "SpineSSL.py"
BATCH = REPO / "SpineSSL" / "Scripts" / "SpineSSLBatch.py"
UI = REPO / "SpineSSL" / "Resources" / "UI" / "SpineSSL.ui"


def _load_batch():
    spec = importlib.util.spec_from_file_location("SpineSSLBatch", BATCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch") / "cohort"
    assert cli(["-q", "synth", str(root), "--preset", "tiny", "--subjects", "1", "--seed", "5"]) == 0
    return root


def test_batch_core_processes_each_scan_in_a_scene_and_saves_outputs(cohort, tmp_path):
    batch = _load_batch()
    items = batch.synthetic_items(cohort)
    n = len(items)
    # a broken scan in the middle: the batch reports it and carries on
    broken = tmp_path / "broken_series"
    broken.mkdir()
    (broken / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    items.insert(1, batch.BatchItem(broken, items[0].levels))
    out = tmp_path / "out"
    rows = batch.process_batch(items, out, root=cohort)
    assert [r["status"] for r in rows].count("ok") == n and rows[1]["status"] == "failed"
    assert "broken_series" not in rows[1]["error"] and rows[1]["error"].startswith(("DicomError", "InputError"))
    with open(out / "batch.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    for item, row in zip(items, rows):
        if row["status"] != "ok":
            continue
        assert row["key"].startswith("scan_") and row["discs"] == 6
        d = out / row["key"]
        assert sorted(p.name for p in d.iterdir()) == sorted(
            [f"{row['key']}{s}" for s in (".mrk.json", ".seg.nrrd", ".csv", ".schema.csv")])
        truth = json.loads(Path(item.levels).read_text())
        # the saved outputs load back into a fresh scene with the truth's levels and grades
        scene = slicer.vtkMRMLScene()
        levels = S.levels_from_markups(S.load_markups(scene, d / f"{row['key']}.mrk.json"))
        assert levels.names == list(LEVEL_NAMES)
        for lv in truth["levels"]["levels"]:
            assert np.allclose(levels[lv["name"]].centroid, lv["centroid_lps"], atol=1e-3)
        seg = S.load_segmentation(scene, d / f"{row['key']}.seg.nrrd")
        info = {s["name"]: s for s in S.segment_info(seg)}
        assert set(info) == set(LEVEL_NAMES) | set(DISC_NAMES)
        results = {r.name: r.grade for r in S.results_from_table(S.load_table(scene, d / f"{row['key']}.csv"))}
        for disc in truth["discs"]:
            assert results[disc["name"]] == disc["grade"]
            assert info[disc["name"]]["tags"][S.GRADE_TAG] == ("" if disc["grade"] is None else str(disc["grade"]))
        centroids = S.segment_centroids(seg)
        for disc in truth["discs"]:
            assert np.linalg.norm(centroids[disc["name"]] - S.ras_from_lps(disc["centroid_lps"])) < 2.0
    # pseudonymous outputs: neither the subject id nor folder names appear anywhere
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "batch_salt.txt")
    assert b"S00001" not in written and b"dicom/" not in written


def test_batch_main_exit_codes(cohort, tmp_path):
    batch = _load_batch()
    assert batch.main(["--cohort", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    lst = tmp_path / "scans.csv"
    lst.write_text("image,levels\nmissing_folder,missing.mrk.json\n")
    assert batch.main(["--list", str(lst), "--out", str(tmp_path / "o2")]) == 1
    with open(tmp_path / "o2" / "batch.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and "missing_folder" not in row["error"]
