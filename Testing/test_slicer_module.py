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
LOGIC = REPO / "SpineSSL" / "SpineSSLModuleLib" / "logic.py"
JOBS = REPO / "SpineSSL" / "SpineSSLModuleLib" / "jobs.py"
DEPENDENCIES = REPO / "SpineSSL" / "SpineSSLModuleLib" / "dependencies.py"
BATCH = REPO / "SpineSSL" / "Scripts" / "SpineSSLBatch.py"
FIGURES = REPO / "SpineSSL" / "Scripts" / "SpineSSLFigures.py"
UI = REPO / "SpineSSL" / "Resources" / "UI" / "SpineSSL.ui"


def _load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """`spine-ssl synth` run as the module runs the CLI: a subprocess with SPINESSL_PROGRESS=lines."""
    import os
    import subprocess

    root = tmp_path_factory.mktemp("batch") / "cohort"
    env = dict(os.environ, SPINESSL_PROGRESS="lines")
    out = subprocess.run([sys.executable, "-m", "SpineSSLLib", "synth", str(root), "--preset", "tiny",
                          "--subjects", "1", "--seed", "5", "--workers", "1"],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return root, out.stdout


@pytest.fixture(scope="module")
def cohort(synth_run):
    return synth_run[0]


def test_batch_core_processes_each_scan_in_a_scene_and_saves_outputs(cohort, tmp_path):
    batch = _load_script(BATCH)
    items = batch.synthetic_items(cohort)
    n = len(items)
    # a broken scan in the middle: the batch reports it and carries on
    broken = tmp_path / "broken_series"
    broken.mkdir()
    (broken / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    items.insert(1, batch.BatchItem(broken, items[0].levels))
    for item in items:
        item.save_volume = True
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
            [f"{row['key']}{s}" for s in (".mrk.json", ".seg.nrrd", ".csv", ".schema.csv", ".nrrd")])
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
    assert cli(["-q", "audit-outputs", str(out), "--source", str(cohort / "dicom")]) == 0  # the project's audit
    # the documentation figure command runs on these outputs
    figures = _load_script(FIGURES)
    assert figures.main([str(out), "--out", str(tmp_path / "img"), "--name", "fig.png"]) == 0
    png = (tmp_path / "img" / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_batch_main_exit_codes(cohort, tmp_path):
    batch = _load_script(BATCH)
    assert batch.main(["--cohort", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    lst = tmp_path / "scans.csv"
    lst.write_text("image,levels\nmissing_folder,missing.mrk.json\n")
    assert batch.main(["--list", str(lst), "--out", str(tmp_path / "o2")]) == 1
    with open(tmp_path / "o2" / "batch.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and "missing_folder" not in row["error"]


# --- static checks of what only real Slicer runs ---------------------------------------------

def _module_tree(path=MODULE):
    return ast.parse(path.read_text(), filename=str(path))


def _ui_widgets():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    params = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                params[prop.find("string").text] = name
    return widgets, params


def test_module_parameter_node_fields_match_the_ui_and_every_ui_reference_exists():
    tree, logic = _module_tree(), _module_tree(LOGIC)
    wrapper = next(n for n in logic.body if isinstance(n, ast.ClassDef) and n.name == "SpineSSLParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in wrapper.decorator_list)
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    widgets, params = _ui_widgets()
    assert set(params) == fields, (set(params) ^ fields)
    referenced = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    missing = sorted(referenced - set(widgets))
    assert not missing, f"SpineSSL.py uses ui widgets that the .ui lacks: {missing}"
    # every parameter the widget and the logic read exists in the parameter node
    used = {n.attr for t in (tree, logic) for n in ast.walk(t) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "p"}
    assert used <= fields | {"GetID"}, used - fields


def test_module_template_shape_sample_data_dependencies_and_subprocess():
    src = MODULE.read_text() + LOGIC.read_text()
    funcs = {n.name for t in (_module_tree(), _module_tree(LOGIC)) for n in ast.walk(t) if isinstance(n, ast.FunctionDef)}
    for name in ("registerSampleData", "ensureDependencies", "startCli", "stopCli", "onCancel", "extract", "grade",
                 "compare", "loadSyntheticSubject", "runTest", "test_sample_extract_and_outputs"):
        assert name in funcs, name
    assert "registerCustomSampleDataSource" in src and "startupCompleted()" in src
    assert "PyTorchUtils" in src and "installTorch" in src and "confirmOkCancelDisplay" in src
    jobs = JOBS.read_text()
    assert "launchConsoleProcess" in src and '"SPINESSL_PROGRESS": "lines"' in jobs and "PythonSlicer" in jobs
    # no heavy import at module import time: torch/SpineSSLLib only inside functions
    for path in (MODULE, LOGIC, JOBS, DEPENDENCIES):
        body = ast.parse(path.read_text()).body
        top = {a.name.split(".")[0] for n in body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names} | {
            n.module.split(".")[0] for n in body if isinstance(n, ast.ImportFrom) and n.module}
        assert not top & {"torch", "SpineSSLLib", "monai", "numpy", "psutil"}, (path.name, top)
    cmake = (REPO / "SpineSSL" / "CMakeLists.txt").read_text()
    helpers = sorted(p.relative_to(MODULE.parent).as_posix() for p in (MODULE.parent / "SpineSSLModuleLib").glob("*.py"))
    for f in [h.replace("SpineSSL", "${MODULE_NAME}", 1) for h in helpers] + [
            "Scripts/${MODULE_NAME}Batch.py", "Resources/SegmentationCategoryTypeModifier-${MODULE_NAME}.term.json"]:
        assert f in cmake, f
    # Slicer loads every .py file directly in a scripted-module folder as a module: helpers go in a package
    assert sorted(p.name for p in MODULE.parent.glob("*.py")) == ["SpineSSL.py"]


def _cmake_glob_recurse_files():
    """The files the top CMakeLists installs as the backend package: its GLOB_RECURSE evaluated by
    cmake itself (script mode) when cmake is installed, else by the same rule in Python (every
    file below the pattern's folder whose name matches the pattern's last part)."""
    import fnmatch
    import re
    import shutil
    import subprocess

    text = (REPO / "CMakeLists.txt").read_text()
    call = re.search(r"file\(GLOB_RECURSE \w+ RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\}([^)]*)\)", text)
    assert call, "the CMakeLists no longer globs the backend files"
    patterns = call.group(1).split()
    if shutil.which("cmake"):
        script = (f'set(CMAKE_CURRENT_SOURCE_DIR "{REPO}")\n'
                  f"file(GLOB_RECURSE F RELATIVE ${{CMAKE_CURRENT_SOURCE_DIR}} {' '.join(patterns)})\n"
                  'foreach(f ${F})\n  message("${f}")\nendforeach()\n')
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "glob.cmake").write_text(script)
            out = subprocess.run(["cmake", "-P", str(Path(d) / "glob.cmake")], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return {line.strip() for line in out.stderr.splitlines() if line.strip()}
    found = set()
    for pattern in patterns:
        folder, name = pattern.rsplit("/", 1)
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and fnmatch.fnmatchcase(path.name, name):
                found.add(path.relative_to(REPO).as_posix())
    return found


def test_cmake_installs_every_backend_file_the_python_package_has():
    """Defect 4: only SpineSSLLib/*.py was installed, so the bundled detector was missing."""
    import fnmatch
    import subprocess
    import tomllib

    installed = _cmake_glob_recurse_files()
    tracked = subprocess.run(["git", "ls-files", "SpineSSLLib"], capture_output=True, text=True, cwd=REPO).stdout.split()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["SpineSSLLib"]
    needed = {f for f in tracked if f.endswith(".py")
              or any(fnmatch.fnmatchcase(f, "SpineSSLLib/" + pattern) for pattern in data)}
    assert any("models_data/detector/model.safetensors" in f for f in needed)
    assert needed <= installed, sorted(needed - installed)


def test_progress_lines_of_a_real_cli_run_drive_the_progress_parser(synth_run):
    parse = _load_script(JOBS).parse_progress  # the module's parseProgressLine
    _, stdout = synth_run
    parsed = [parse(line) for line in stdout.splitlines()]
    progress = [p for p in parsed if p is not None]
    assert progress, stdout[:500]
    done, total, desc = progress[-1]
    assert total > 0 and done == total and desc
    assert parse("synthetic cohort in /x: 1 subjects") is None and parse("PROGRESS x/y") is None


def test_extensions_index_entry_matches_the_cmake_project_and_resources_resolve():
    import re

    entry = json.loads((REPO / "SpineSSL.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0" in entry["$schema"]
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\((\w+)\)", top).group(1) == "SpineSSL" == (REPO / "SpineSSL.json").stem
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    assert entry["build_dependencies"] == ["PyTorch"] and 'EXTENSION_DEPENDS "PyTorch"' in top
    repo_name = entry["scm_url"].rstrip("/").removesuffix(".git").rsplit("/", 1)[1]
    assert repo_name.startswith("Slicer") and not entry["$schema"].startswith("Slicer")
    # icon and screenshot URLs point at files of this repository
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = re.search(rf'set\({key} "([^"]+)"\)', top).group(1).split()
        for url in urls:
            rel = url.split("/main/", 1)[1]
            assert (REPO / rel).is_file(), f"{key}: {rel} does not exist"


def test_batch_grades_with_a_model_checkpoint(cohort, tmp_path):
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.grading import IVD_HW
    from SpineSSLLib.models import ModelConfig, VGGMNet

    torch.manual_seed(1)
    cfg = ModelConfig.preset("small")
    ckpt.save_checkpoint(tmp_path / "grading" / "best", VGGMNet(cfg, 4, IVD_HW), {
        "task": "grade", "model": cfg.to_dict(), "num_classes": 4, "in_hw": list(IVD_HW),
        "class_names": ["1", "2", "3", "4"]})
    batch = _load_script(BATCH)
    truth = sorted((cohort / "truth").glob("*.json"))[0]
    doc = json.loads(truth.read_text())
    lst = tmp_path / "scans.csv"
    lst.write_text(f"image,levels\n{cohort / doc['dicom_dir']},{truth}\n")
    out = tmp_path / "out"
    assert batch.main(["--list", str(lst), "--out", str(out), "--model", str(tmp_path / "grading"),
                       "--device", "cpu", "--save-volume"]) == 0
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    scene = slicer.vtkMRMLScene()
    rows = S.results_from_table(S.load_table(scene, d / f"{d.name}.csv"))
    assert [r.name for r in rows] == list(DISC_NAMES)
    seg = S.load_segmentation(scene, d / f"{d.name}.seg.nrrd")
    tags = {s["name"]: s["tags"][S.GRADE_TAG] for s in S.segment_info(seg)}
    for r in rows:
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-4)
        assert r.grade == int(np.argmax(r.probabilities)) + 1 and tags[r.name] == str(r.grade)
    # the user guide's panel figure: slice, table and plot views from these outputs
    figures = _load_script(FIGURES)
    assert figures.main([str(out), "--out", str(tmp_path / "img"), "--panel"]) == 0
    png = (tmp_path / "img" / "slicer_module_panel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert batch.main(["--list", str(lst), "--out", str(out), "--model", str(tmp_path / "nothing")]) == 2
