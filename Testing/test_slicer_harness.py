"""The SpineSSL module (SpineSSL/SpineSSL.py) run against Slicer 5.10's and 5.12's own Python layer
(``../shared/slicer-python``: parameterNodeWrapper, ScriptedLoadableModule, util, SampleData) on
slicer-core's MRML scene, with minimal qt/ctk/slicer.app stand-ins (``slicer_harness``).

Every test runs once per Slicer version.  Jobs run as real subprocesses through a ``PythonSlicer``
launcher that, like Slicer's, runs the interpreter as its child.

Line coverage of the module:  make coverage-slicer  (see docs/slicer-module.md).
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_harness as H  # noqa: E402

pytestmark = pytest.mark.skipif(not H.available(), reason="../shared/slicer-python (Slicer's Python layer) is absent")


@pytest.fixture(scope="session")
def sample_temp(tmp_path_factory):
    """slicer.app.temporaryPath shared by both versions (the synthetic sample is generated once)."""
    return tmp_path_factory.mktemp("slicer-temp")


@pytest.fixture(scope="module", params=H.VERSIONS)
def h(request, tmp_path_factory, sample_temp):
    harness = H.Harness(request.param, tmp_path_factory.mktemp(f"slicer-{request.param}"), sample_temp)
    harness.install()
    harness.load_module()
    yield harness
    harness.uninstall()


@pytest.fixture
def scene(h):
    """A clean scene for each test (as after File > Close scene)."""
    import slicer

    slicer.mrmlScene.Clear(0)
    return slicer.mrmlScene


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A grading checkpoint and a pretraining checkpoint saved as `spine-ssl grade-train` /
    `pretrain` save them (random weights: the wiring is tested, not the accuracy)."""
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.grading import IVD_HW
    from SpineSSLLib.models import ModelConfig, SiameseNet, VGGMNet

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    ckpt.save_checkpoint(root / "grading" / "best", VGGMNet(cfg, 4, IVD_HW), {
        "task": "grade", "model": cfg.to_dict(), "num_classes": 4, "in_hw": list(IVD_HW),
        "class_names": ["1", "2", "3", "4"]})
    ckpt.save_checkpoint(root / "pretrain" / "best", SiameseNet(VGGMNet(cfg, 7, (224, 224)), 0), {  # as pretrain saves it
        "task": "pretrain", "model": cfg.to_dict(), "num_classes": 7, "in_hw": [224, 224]})
    return root


def _subject(h):
    """The synthetic sample subject: both visits loaded, truth levels linked."""
    import slicer

    logic = h.module.SpineSSLLogic()
    baseline, followup = logic.loadSyntheticSubject()
    levels = [slicer.mrmlScene.GetNodeByID(v.GetAttribute("SpineSSL.TruthLevels")) for v in (baseline, followup)]
    return logic, baseline, followup, levels


# --------------------------------------------------------------------------------------------
# module, parameter node, terminology, sample data


def test_module_registers_self_test_sample_data_and_terminology(h):
    import SampleData
    import slicer

    from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
    from SpineSSLLib import scene as S

    assert "SpineSSL" in slicer.selfTests
    sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory("SpineSSL")
    assert [s.sampleName for s in sources] == [h.module.SAMPLE_NAME]
    # every segment's terminology tag names a context, category and type that the module's
    # .term.json really holds, as loaded by Slicer's terminology logic
    logic = slicer.modules.terminologies.logic()
    assert h.module_object.terminologyName == S.TERMINOLOGY_CONTEXT
    for name in LEVEL_NAMES + DISC_NAMES:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(S.terminology_entry(name), entry)
        assert entry.GetTerminologyContextName() == S.TERMINOLOGY_CONTEXT
        category = entry.GetCategoryObject()
        codes = set()
        for i in range(logic.GetNumberOfTypesInTerminologyCategory(entry.GetTerminologyContextName(), category)):
            t = slicer.vtkSlicerTerminologyType()
            assert logic.GetNthTypeInTerminologyCategory(entry.GetTerminologyContextName(), category, i, t)
            codes.add((t.GetCodingSchemeDesignator(), t.GetCodeValue()))
        want = (entry.GetTypeObject().GetCodingSchemeDesignator(), entry.GetTypeObject().GetCodeValue())
        assert want in codes, (name, want, codes)


def test_parameter_node_is_created_and_every_parameter_set_and_cleared(h, scene):
    import slicer

    logic = h.module.SpineSSLLogic()
    p = logic.getParameterNode()  # Slicer writes every default, None for node selectors
    assert p.levelsLabels is None and p.inputVolume is None
    assert p.cohortLevels == "truth:TRUTH_FOLDER" and p.cohortArguments == ""
    nodes = {
        "inputVolume": scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v"),
        "levelsMarkups": scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "m"),
        "compareVolume": scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v2"),
        "compareMarkups": scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "m2"),
    }
    values = {"levelSource": "Detect", "labelMapping": "synthetic", "gradingModel": Path("/models/g"),
              "useTTA": False, "pretrainedModel": Path("/models/p"), "sameThreshold": 2.5, "structure": "L1",
              "cohortTask": "Train grading", "cohortFolder": Path("/data/scans"), "workFolder": Path("/data/work"),
              "cohortLevels": "detect", "cohortArguments": "--epochs 3"}
    assert set(nodes) | set(values) | {"levelsLabels"} == set(p.allParameters)
    for name, value in {**nodes, **values}.items():
        setattr(p, name, value)
        assert getattr(p, name) == value, name
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
    for value in (label, seg, None, label):
        p.levelsLabels = value
        assert p.levelsLabels is value
    # the values live in the scene's parameter node: a new wrapper reads them back
    again = h.module.SpineSSLLogic().getParameterNode()
    assert again.levelsLabels is label and again.cohortArguments == "--epochs 3"
    # clear every parameter
    for name in list(nodes) + ["levelsLabels"]:
        setattr(p, name, None)
        assert getattr(p, name) is None
    for name in ("gradingModel", "pretrainedModel", "cohortFolder", "workFolder"):
        setattr(p, name, Path())
        assert str(getattr(p, name)) == "."
    for name in ("cohortLevels", "cohortArguments"):
        setattr(p, name, "")
    # invalid values are refused by Slicer's validators
    with pytest.raises(ValueError):
        p.levelSource = "Guess"
    with pytest.raises(ValueError):
        p.sameThreshold = -1.0
    with pytest.raises(TypeError):
        p.levelsLabels = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not a label map")
    assert slicer.mrmlScene.GetSingletonNode("SpineSSL", "vtkMRMLScriptedModuleNode") is p.parameterNode


def test_sample_data_download_sample_and_custom_downloader(h, scene):
    import SampleData

    volume = SampleData.downloadSample(h.module.SAMPLE_NAME)  # what scripts and self-tests call
    assert volume.GetName() == "SpineSSL subject visit 0" and volume.IsA("vtkMRMLScalarVolumeNode")
    import slicer

    array = slicer.util.arrayFromVolume(volume)
    assert array.ndim == 3 and float(array.std()) > 0
    levels = scene.GetFirstNodeByName("SpineSSL subject visit 0 truth levels")
    assert levels is not None and levels.GetNumberOfControlPoints() >= 7
    # the SampleData button's downloader: both visits with their levels linked
    nodes = h.module.loadSyntheticSubjectSample()
    assert [n.GetName() for n in nodes] == ["SpineSSL subject visit 0", "SpineSSL subject visit 1"]
    assert all(scene.GetNodeByID(n.GetAttribute("SpineSSL.TruthLevels")) is not None for n in nodes)
    # the same voxels either way
    assert np.array_equal(slicer.util.arrayFromVolume(nodes[0]), array)


# --------------------------------------------------------------------------------------------
# the widget


def test_widget_setup_binds_every_parameter_to_its_widget_and_back(h, scene):
    w = h.widget()
    p = w._parameterNode
    ui = w.ui
    assert [ui.levelSourceComboBox.itemText(i) for i in range(ui.levelSourceComboBox.count())] == h.module.LEVEL_SOURCES
    # GUI -> parameter node
    ui.levelSourceComboBox.currentIndex = 1
    assert p.levelSource == "Label map or segmentation"
    assert ui.levelsLabelsSelector.enabled and not ui.levelsMarkupsSelector.enabled
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    ui.levelsLabelsSelector.setCurrentNode(label)
    assert p.levelsLabels is label
    ui.levelsLabelsSelector.setCurrentNode(None)  # clearing the combo box
    assert p.levelsLabels is None
    ui.sameThresholdSpinBox.value = 3.25
    ui.useTTACheckBox.checked = False
    ui.gradingModelPathLineEdit.currentPath = "/somewhere/model"
    ui.cohortArgumentsLineEdit.text = "--epochs 2"
    assert (p.sameThreshold, p.useTTA, p.gradingModel, p.cohortArguments) == (
        3.25, False, Path("/somewhere/model"), "--epochs 2")
    # parameter node -> GUI
    p.structure = "L1"
    assert ui.structureComboBox.currentText == "L1"
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "vol")
    p.inputVolume = volume
    assert ui.inputVolumeSelector.currentNode() is volume
    assert ui.extractButton.enabled and not ui.compareButton.enabled and not ui.cancelButton.enabled
    # leaving and entering the module, then File > Close scene: a fresh parameter node, connected
    w.exit()
    w.enter()
    assert w._parameterNode.inputVolume is volume
    scene.Clear(0)
    assert w._parameterNode is not p and w._parameterNode.inputVolume is None
    ui.levelSourceComboBox.currentIndex = 2
    assert w._parameterNode.levelSource == "Detect"
    w.cleanup()


def test_empty_state_train_route_and_model_folders_remembered(h, scene, models):
    import qt

    w = h.widget()
    p, ui = w._parameterNode, w.ui
    p.inputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "vol")
    assert "No grading model yet" in ui.modelStatusLabel.text and not ui.gradeButton.enabled
    ui.cohortCollapsibleButton.collapsed = True
    ui.trainModelButton.click()
    assert p.cohortTask == "Train grading" and not ui.cohortCollapsibleButton.collapsed
    assert "train a grading model on your cohort" in ui.logTextEdit.toPlainText()
    p.gradingModel = models / "pretrain"  # a pretraining output is not a grading model
    assert not ui.gradeButton.enabled and "not a grading model" in ui.modelStatusLabel.text
    p.gradingModel = models / "missing"
    assert "not a model folder" in ui.modelStatusLabel.text
    p.gradingModel = models / "grading"
    assert ui.gradeButton.enabled and ui.modelStatusLabel.text.endswith(str(models / "grading" / "best"))
    p.pretrainedModel = models / "pretrain"
    w.cleanup()
    # a new scene (or a new session: same settings) starts with the folders last used
    scene.Clear(0)
    assert qt.QSettings().value("SpineSSL/GradingModel") == str(models / "grading")
    w2 = h.widget()
    assert w2._parameterNode.gradingModel == models / "grading"
    assert w2._parameterNode.pretrainedModel == models / "pretrain"
    # a finished grade-train run fills in its output
    h.module.SpineSSLLogic.useTrainedModel(w2._parameterNode, ["grade-train", "W", "--out", "W/grading"])
    assert w2._parameterNode.gradingModel == Path("W/grading")
    w2.cleanup()


def test_buttons_run_the_workflow_on_the_sample_subject(h, scene, models, tmp_path):
    import qt
    import slicer

    _, baseline, followup, levels = _subject(h)
    w = h.widget()
    p, ui = w._parameterNode, w.ui
    ui.inputVolumeSelector.setCurrentNode(baseline)
    ui.levelsMarkupsSelector.setCurrentNode(levels[0])
    ui.extractButton.click()
    assert "Extracted 7 vertebral bodies and 6 discs." in ui.logTextEdit.toPlainText()
    extracted = scene.GetFirstNodeByName("SpineSSL subject visit 0 extracted")
    assert slicer.util.arrayFromVolume(extracted).shape == (9, 112, 224)  # L4-L5, the default structure
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite is None or composite.GetForegroundVolumeID() == extracted.GetID()
    p.structure = "L3"
    ui.showStructureButton.click()
    assert slicer.util.arrayFromVolume(extracted).shape == (9, 224, 224)
    p.gradingModel = models / "grading"
    p.useTTA = False
    ui.gradeButton.click()
    grades = scene.GetFirstNodeByName("SpineSSL subject visit 0 grades")
    assert grades is not None and grades.GetNumberOfRows() == 6
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView
    assert h.app_logic.GetSelectionNode().GetActiveTableID() == grades.GetID()
    assert "Grades: T12-L1 " in ui.logTextEdit.toPlainText()
    p.compareVolume, p.compareMarkups, p.pretrainedModel = followup, levels[1], models / "pretrain"
    assert ui.compareButton.enabled
    ui.compareButton.click()
    assert "fc7 distances: T12 " in ui.logTextEdit.toPlainText()
    qt.QFileDialog.nextDirectory = str(tmp_path / "saved")
    ui.saveOutputsButton.click()
    assert sorted(f.name for f in (tmp_path / "saved").iterdir()) == sorted(
        f"SpineSSL_subject_visit_0{s}" for s in (".csv", ".schema.csv", ".mrk.json", ".seg.nrrd"))
    qt.QFileDialog.nextDirectory = ""  # the user cancels the dialog: nothing happens
    ui.saveOutputsButton.click()
    ui.placeLevelsButton.click()
    placed = p.levelsMarkups
    assert placed.GetName() == "SpineSSL subject visit 0 placed levels" and p.levelSource == "Markups"
    interaction = h.app_logic.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    # a failing action shows its error and leaves the panel usable
    p.levelsMarkups = placed  # no point placed yet
    with pytest.raises(Exception, match="no placed points"):
        ui.extractButton.click()
    w.cleanup()


def test_every_logic_method_on_the_sample_subject(h, scene, models, tmp_path):
    import slicer

    from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
    from SpineSSLLib import scene as S

    logic, baseline, followup, levels = _subject(h)
    assert logic.backendVersion()
    assert logic.ensureDependencies(askConfirmation=False)  # everything installed here: nothing asked
    p = logic.getParameterNode()
    p.inputVolume, p.levelsMarkups = baseline, levels[0]
    out = logic.extract(p)
    assert int(out.volumes.ivd_present.sum()) == 6 and out.levels_node.GetLocked()
    assert {s["name"] for s in S.segment_info(out.segmentation_node)} == set(LEVEL_NAMES) | set(DISC_NAMES)
    assert logic.showExtractedVolume(baseline, "S1") is not None
    assert logic.showExtractedVolume(followup, "L4") is None  # not extracted yet
    with pytest.raises(ValueError, match="grading model"):
        logic.grade(p)
    p.gradingModel, p.useTTA = models / "grading", False
    graded = logic.grade(p)
    assert [r.name for r in graded.results] == list(DISC_NAMES)
    assert all(abs(sum(r.probabilities) - 1) < 1e-4 for r in graded.results)
    logic.showTableAndPlot(graded)
    chart = scene.GetFirstNodeByName("SpineSSL subject visit 0 probabilities")
    assert chart is not None and chart.GetNumberOfPlotSeriesNodes() == 4
    with pytest.raises(ValueError, match="pretrained"):
        logic.compare(p)
    p.pretrainedModel = models / "pretrain"
    with pytest.raises(ValueError, match="second time point"):
        logic.compare(p)
    p.compareVolume, p.compareMarkups = followup, levels[1]
    compared = logic.compare(p)
    assert [r.name for r in compared.results if r.kind == "VB"] == list(LEVEL_NAMES)
    assert all(r.distance > 0 for r in compared.results if r.kind == "VB")
    files = logic.saveOutputs(baseline, tmp_path)
    assert set(files) == {"levels", "segmentation", "table"}
    with pytest.raises(ValueError, match="Nothing to save"):
        logic.saveOutputs(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"), tmp_path)
    # levels from a label map (the synthetic truth label map) and from the bundled detector
    truth = json.loads(min((Path(slicer.app.temporaryPath) / "SpineSSL" / "synthetic-subject-1" / "truth")
                           .glob("*.json")).read_text())
    root = Path(slicer.app.temporaryPath) / "SpineSSL" / "synthetic-subject-1"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(root / "truth" / truth["labelmap"]))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "truth labels")
    assert storage.ReadData(labelmap)
    p.levelSource, p.labelMapping, p.levelsLabels = "Label map or segmentation", "synthetic", labelmap
    from_labels = logic.levels(p)
    assert from_labels.names == list(LEVEL_NAMES)
    p.levelSource = "Detect"
    detected = logic.levels(p)
    assert len(detected) >= 6
    assert logic.detectLevels(baseline) is detected  # once per volume content
    logic.clearResults()
    assert logic.showExtractedVolume(baseline, "L4") is None


def test_grading_after_moving_a_level_point_uses_fresh_volumes(h, scene, models):
    """Defect 7: cached volumes were reused after the levels changed."""
    logic, baseline, _, levels = _subject(h)
    p = logic.getParameterNode()
    p.inputVolume, p.levelsMarkups, p.gradingModel, p.useTTA = baseline, levels[0], models / "grading", False
    first = logic.grade(p)
    markups = levels[0]
    i = next(n for n in range(markups.GetNumberOfControlPoints()) if markups.GetNthControlPointLabel(n) == "L4")
    pos = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPosition(i, pos)
    markups.SetNthControlPointPosition(i, pos[0], pos[1], pos[2] + 4.0)  # 4 mm superior
    second = logic.grade(p)
    li = list(first.volumes.levels).index("L4")
    assert not np.allclose(first.volumes.vb_affine[li], second.volumes.vb_affine[li])
    assert second.levels["L4"].centroid[2] == pytest.approx(first.levels["L4"].centroid[2] + 4.0, abs=1e-3)
    # unchanged levels: the extraction is reused
    third = logic.grade(p)
    assert third.volumes is second.volumes
    # another level source: extracted again
    p.levelSource = "Detect"
    fourth = logic.grade(p)
    assert fourth.volumes is not third.volumes


# --------------------------------------------------------------------------------------------
# background jobs: real subprocesses through the PythonSlicer launcher


def _run_until_idle(h, w, timeout=240):
    h.run_events(lambda: w._process is None, timeout=timeout)


def test_cohort_commands_pass_levels_to_extract_only_and_parse(h, scene):
    from SpineSSLLib.cli import build_parser

    logic = h.module.SpineSSLLogic()
    p = logic.getParameterNode()
    p.cohortFolder, p.workFolder = Path("/data/scans"), Path("/data/work")
    for task in h.module.COHORT_TASKS:
        p.cohortTask = task
        commands = logic.cohortCommands(p)
        for args in commands:
            build_parser().parse_args(args)  # argparse exits (SystemExit 2) on an option it does not take
        assert [c for c in commands if "--levels" in c] == [c for c in commands if c[0] == "extract"]
    p.cohortTask = "Index and extract"
    assert logic.cohortCommands(p)[1][:4] == ["extract", "/data/work", "--levels", "truth:/data/scans/truth"]
    p.cohortLevels = ""
    with pytest.raises(ValueError, match="levels"):
        logic.cohortCommands(p)
    p.workFolder = Path()
    with pytest.raises(ValueError, match="work folder"):
        logic.cohortCommands(p)


def test_job_runner_index_and_extract_with_progress(h, scene, tmp_path):
    import slicer

    logic = h.module.SpineSSLLogic()
    root = logic.syntheticSubjectFiles()["visit0.nrrd"].parents[1]
    w = h.widget()
    p, ui = w._parameterNode, w.ui
    p.cohortFolder, p.workFolder = root, tmp_path / "work"
    p.cohortTask = "Index and extract"
    assert ui.runCohortButton.enabled
    ui.runCohortButton.click()
    assert w._process is not None and ui.cancelButton.enabled and not ui.runCohortButton.enabled
    _run_until_idle(h, w)
    log = ui.logTextEdit.toPlainText()
    assert "$ spine-ssl index" in log and "$ spine-ssl extract" in log, log
    assert "spine-ssl extract finished" in log, log
    assert ui.progressBar.value == ui.progressBar.maximum == 2 and ui.progressBar.format.startswith("extract")
    assert len(list((tmp_path / "work" / "volumes").glob("*.npz"))) == 2
    assert ui.runCohortButton.enabled and not ui.cancelButton.enabled
    w.cleanup()
    assert slicer.app.testingEnabled()


def test_job_runner_failing_job_stops_the_chain_and_reports(h, scene, tmp_path):
    w = h.widget()
    p, ui = w._parameterNode, w.ui
    p.cohortFolder, p.workFolder = tmp_path / "no such folder", tmp_path / "work"
    ui.runCohortButton.click()
    _run_until_idle(h, w)
    log = ui.logTextEdit.toPlainText()
    assert "spine-ssl index failed (exit code 2)" in log, log
    assert "$ spine-ssl extract" not in log
    assert ui.runCohortButton.enabled and w._process is None
    w.cleanup()


def test_cancel_ends_the_whole_process_tree(h, scene, tmp_path):
    """Defect 6: stopping the PythonSlicer launcher alone left python-real (and its workers)
    running and writing."""
    import psutil

    w = h.widget()
    ui = w.ui
    out = tmp_path / "synth"
    w._pending = [["synth", str(out), "--preset", "tiny", "--subjects", "400", "--workers", "2", "--seed", "9"]]
    w._cancelled = False
    w._startNext()
    h.run_events(lambda: ui.progressBar.value >= 1, timeout=120)  # progress arrived from the job
    launcher = psutil.Process(w._process.pid)
    tree = [launcher] + launcher.children(recursive=True)
    assert len(tree) >= 3, tree  # launcher -> python -> worker processes
    ui.cancelButton.click()
    _run_until_idle(h, w, timeout=60)

    def gone(proc):
        try:
            return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert all(gone(proc) for proc in tree), [(q.pid, q.status()) for q in tree if not gone(q)]
    written = sorted(out.rglob("*"))
    time.sleep(1.0)
    assert sorted(out.rglob("*")) == written  # nothing is writing any more
    assert "cancelled" in ui.logTextEdit.toPlainText() and ui.runCohortButton.enabled is not None
    assert not ui.cancelButton.enabled
    w.cleanup()


def test_output_reader_survives_undecodable_bytes_and_read_errors(h):
    """Defect 8: the reader thread died on a decode error and the panel waited forever."""
    import slicer
    from SpineSSLModuleLib import jobs

    proc = slicer.util.launchConsoleProcess(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok\\n\\xff\\xfe bad\\nPROGRESS 1/1 x\\n')"])
    q = queue.Queue()
    threading.Thread(target=jobs.read_output, args=(proc, q), daemon=True).start()
    lines = []
    while True:
        line = q.get(timeout=30)  # queue.Empty here = the end marker never came
        if line is None:
            break
        lines.append(line)
    assert lines == ["ok", "\ufffd\ufffd bad", "PROGRESS 1/1 x"]
    proc.wait()
    # a stream that fails while reading: its error is reported, then the end marker
    proc = slicer.util.launchConsoleProcess([sys.executable, "-c", "print('x')"])
    proc.wait()
    proc.stdout.close()
    q = queue.Queue()
    jobs.read_output(proc, q)
    first = q.get_nowait()
    assert first.startswith("(output of the job could not be read: ValueError") and q.get_nowait() is None


# --------------------------------------------------------------------------------------------
# Python packages


def test_dependency_plan_is_shown_and_confirmed_before_anything_is_installed(h, scene, monkeypatch, tmp_path,
                                                                            caplog):
    import logging

    import ctk
    import qt
    import slicer
    from SpineSSLModuleLib import dependencies as D

    plan = D.plan()
    assert plan.ready, plan.summary()  # the test environment has everything
    pins = plan.pinned()
    import torch

    assert pins["torch"] == torch.__version__ and "numpy" in pins and "pydicom" in pins
    # a requirement that is not met: the panel lists it, with how it would be installed
    reqs = tuple(r if r.dist != "tqdm" else D.Requirement("tqdm", "tqdm", "99", "progress reports")
                 for r in D.REQUIREMENTS)
    monkeypatch.setattr(D, "REQUIREMENTS", reqs)
    w = h.widget()
    label = w.ui.dependenciesLabel.text
    assert "tqdm>=99: installed " in label and "With pip" in label and f"torch=={torch.__version__}" in label
    assert w.ui.installDependenciesButton.enabled and not w.ui.dependenciesCollapsibleButton.collapsed
    # the user declines: nothing is installed, the module says so
    slicer.app.testing = False
    try:
        ctk.ctkMessageBox.answers = [qt.QMessageBox.Cancel]
        caplog.set_level(logging.INFO)
        assert not w.logic.ensureDependencies()
        assert "tqdm>=99" in ctk.ctkMessageBox.shown[-1] and "Nothing was installed" in caplog.text
        # the user agrees: pip runs (offline here) against the constraints, fails, and says why
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
        ctk.ctkMessageBox.answers = [qt.QMessageBox.Ok]
        with pytest.raises(D.DependencyError, match="tqdm>=99"):
            w.logic.ensureDependencies()
        ctk.ctkMessageBox.answers = [qt.QMessageBox.Ok]
        with pytest.raises(D.DependencyError):
            w.ui.installDependenciesButton.click()  # shown to the user (and re-raised, as Slicer does)
        assert "Installing the Python packages failed" in caplog.text
    finally:
        slicer.app.testing = True
    assert torch.__version__ == D.torch_identity()[0]
    w.cleanup()


def test_pip_install_runs_against_constraints_that_keep_torch_and_slicers_packages(h, monkeypatch, tmp_path):

    from SpineSSLModuleLib import dependencies as D

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    ready = D.plan()
    psutil_req = next(s.req for s in ready.statuses if s.req.dist == "psutil")
    monai_req = next(s.req for s in ready.statuses if s.req.dist == "monai")
    # a plan made before psutil and monai were there: pip (a real run through PythonSlicer)
    # finds them satisfied within the constraints, torch is untouched, the check passes
    plan = D.Plan([*(s for s in ready.statuses if s.req.source != "pip"), D.Status(psutil_req, None),
                   D.Status(monai_req, None)])
    assert "monai>=1.3: not installed (network building blocks; pip, --no-deps)" in plan.summary()
    commands = D.install_with_pip(plan, h.module.SpineSSLLogic.pipInstall)
    assert commands[0][:2] == ["--no-deps", "monai>=1.3"] and commands[1][0] == "psutil>=5.9"
    assert all(c[-2] == "-c" for c in commands)
    # a version no index offers: the failing pip run is reported as such
    with pytest.raises(D.DependencyError, match="failed"):
        D.install_with_pip(D.Plan([D.Status(D.Requirement("psutil", "psutil", "999", "x"), "5.0")]),
                           h.module.SpineSSLLogic.pipInstall)


# --------------------------------------------------------------------------------------------
# from source, self-test


def test_from_source_the_module_finds_spinessllib_in_the_repository(h, tmp_path):
    """Defect 9: with only <repo>/SpineSSL as a module path, `import SpineSSLLib` failed."""
    code = f"""
import importlib.util, os, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "SpineSSLLib"))]
assert importlib.util.find_spec("SpineSSLLib") is None
sys.path.insert(0, {str(H.REPO / 'Testing')!r})
import slicer_harness as H
h = H.Harness("{h.version}", {str(tmp_path)!r}).install()
sys.path.remove({str(H.REPO / 'Testing')!r})
mod = h.load_module()
import SpineSSLLib
assert os.path.dirname(os.path.dirname(SpineSSLLib.__file__)) == {str(H.REPO)!r}, SpineSSLLib.__file__
print("ok", mod.SpineSSLLogic.backendVersion())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok "), out.stderr[-2000:]


def test_self_test_runs_and_installs_nothing(h, scene):
    import slicer
    from SpineSSLModuleLib import dependencies as D

    calls = []
    logic = h.module.SpineSSLLogic
    real = logic.pipInstall
    logic.pipInstall = staticmethod(lambda args: calls.append(args) or real(args))
    try:
        slicer.selfTests["SpineSSL"](msec=0)
    finally:
        logic.pipInstall = staticmethod(real)
    assert calls == [] and D.plan().ready


def test_self_test_on_a_build_machine_without_torch_installs_nothing(h, tmp_path):
    """Defect 11: the self-test asked for torch (PyTorch extension, pip) on extension build machines."""
    code = f"""
import logging, sys
logging.basicConfig(level=logging.INFO)
class NoTorch:  # this machine has no torch
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, {str(H.REPO / 'Testing')!r})
import slicer_harness as H
h = H.Harness("{h.version}", {str(tmp_path)!r}).install()
mod = h.load_module()
calls = []
mod.SpineSSLLogic.pipInstall = staticmethod(lambda args: calls.append(args))
import slicer
slicer.selfTests["SpineSSL"](msec=0)
assert calls == [] and "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    assert "extraction test skipped" in out.stderr
