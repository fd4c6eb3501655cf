"""SpineSSL: 3D Slicer scripted module.

Thin GUI over ``SpineSSLLib`` (the backend, importable without Slicer).  Four classes as in
Slicer's scripted-module template: Module, Widget, Logic, Test.  All MRML work is done by the
qt-free ``SpineSSLLib.scene`` (tested with pytest on slicer-core); the Logic only wires the scene
layer and SpineSSLLib together; long work (cohorts, training) runs as a ``PythonSlicer``
subprocess running the ``spine-ssl`` command line, so the GUI stays responsive.
"""

import logging
import os
import queue
import shutil
import sys
import threading
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

LEVEL_SOURCES = ["Markups", "Label map or segmentation", "Detect"]
COHORT_TASKS = ["Index and extract", "Pretrain (self-supervised)", "Train grading"]
STRUCTURES = ["T12", "L1", "L2", "L3", "L4", "L5", "S1", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
REQUIREMENTS = {"monai": "monai>=1.3", "safetensors": "safetensors>=0.4", "tqdm": "tqdm>=4.60"}
SAMPLE_NAME = "SpineSSLSyntheticSubject"


def parseProgressLine(line):
    """``"PROGRESS 3/10 extract"`` -> ``(3, 10, "extract")``; any other line -> ``None``."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != "PROGRESS" or "/" not in parts[1]:
        return None
    done, _, total = parts[1].partition("/")
    if not (done.isdigit() and total.isdigit()):
        return None
    return int(done), int(total), parts[2] if len(parts) > 2 else ""


#
# SpineSSL
#


class SpineSSL(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SpineSSL"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["SpineSSL contributors"]
        self.parent.helpText = (
            "Vertebra levels, vertebral-body / disc volume extraction, longitudinal comparison and "
            "disc-degeneration grading for sagittal T2 lumbar MRI. "
            "See the <a href='https://github.com/spinessl/SlicerSpineSSL/blob/main/docs/slicer-module.md'>"
            "user guide</a>."
        )
        self.parent.acknowledgementText = (
            "Method: A. Jamaludin, T. Kadir, A. Zisserman, 'Self-supervised learning for spinal MRIs', "
            "MICCAI DLMIA 2017. Acquisition parameters and grade frequencies of the synthetic cohort "
            "come from the SPIDER dataset (van der Graaf et al., Sci Data 2024, CC-BY 4.0)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A SampleData entry that generates a small synthetic longitudinal subject (no download)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SpineSSL",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "SpineSSL.png"),
        uris=["spinessl://synthetic-subject"],
        fileNames=[SAMPLE_NAME],
        nodeNames=["SpineSSL subject visit 0"],
        customDownloader=loadSyntheticSubjectSample,
    )


def loadSyntheticSubjectSample(source=None):
    """SampleData's custom downloader: generate and load the synthetic subject."""
    with slicer.util.tryWithErrorDisplay("Could not create the SpineSSL synthetic subject.", waitCursor=True):
        return SpineSSLLogic().loadSyntheticSubject()


#
# Parameter node
#


@parameterNodeWrapper
class SpineSSLParameterNode:
    """Module state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    levelSource: Annotated[str, Choice(LEVEL_SOURCES)] = "Markups"
    levelsMarkups: vtkMRMLMarkupsFiducialNode
    levelsLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    labelMapping: Annotated[str, Choice(["spider", "synthetic", "totalseg_mr", "totalspineseg"])] = "spider"
    gradingModel: Path
    useTTA: bool = True
    compareVolume: vtkMRMLScalarVolumeNode
    compareMarkups: vtkMRMLMarkupsFiducialNode
    pretrainedModel: Path
    sameThreshold: Annotated[float, WithinRange(0.0, 1000.0)] = 1.0
    structure: Annotated[str, Choice(STRUCTURES)] = "L4-L5"
    cohortTask: Annotated[str, Choice(COHORT_TASKS)] = "Index and extract"
    cohortFolder: Path
    workFolder: Path
    cohortArguments: str = "--levels truth:TRUTH_FOLDER"


#
# SpineSSLWidget
#


class SpineSSLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None
        self._pending = []
        self._queue = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineSSL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineSSLLogic()

        # choices before connectGui (the parameter node then selects the saved one)
        for combo, items in ((self.ui.levelSourceComboBox, LEVEL_SOURCES),
                             (self.ui.labelMappingComboBox, ["spider", "synthetic", "totalseg_mr", "totalspineseg"]),
                             (self.ui.structureComboBox, STRUCTURES), (self.ui.cohortTaskComboBox, COHORT_TASKS)):
            combo.clear()
            combo.addItems(items)
        self._fillLegend()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.placeLevelsButton.connect("clicked(bool)", self.onPlaceLevels)
        self.ui.extractButton.connect("clicked(bool)", self.onExtract)
        self.ui.gradeButton.connect("clicked(bool)", self.onGrade)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.showStructureButton.connect("clicked(bool)", self.onShowStructure)
        self.ui.runCohortButton.connect("clicked(bool)", self.onRunCohort)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.saveOutputsButton.connect("clicked(bool)", self.onSaveOutputs)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._pollProcess)
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.logic.clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        busy = self._process is not None
        hasVolume = bool(p and p.inputVolume)
        self.ui.placeLevelsButton.enabled = hasVolume
        self.ui.extractButton.enabled = hasVolume and not busy
        self.ui.gradeButton.enabled = hasVolume and not busy
        self.ui.compareButton.enabled = hasVolume and bool(p.compareVolume) and not busy
        self.ui.runCohortButton.enabled = bool(p and str(p.cohortFolder) not in ("", ".")) and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.levelsMarkupsSelector.enabled = bool(p) and p.levelSource == "Markups"
        self.ui.levelsLabelsSelector.enabled = bool(p) and p.levelSource == "Label map or segmentation"

    def _fillLegend(self):
        from SpineSSLLib import scene

        lines = []
        for key in (1, 2, 3, 4, None):
            r, g, b = (int(255 * c) for c in scene.GRADE_COLORS[key])
            lines.append(f"<span style='color:#{r:02x}{g:02x}{b:02x}'>&#9632;</span> {scene.GRADE_LABELS[key]}")
        self.ui.legendLabel.text = "&nbsp;&nbsp;".join(lines)

    def _log(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    # --- actions on the current volume (in-process, short) ---

    def onPlaceLevels(self):
        p = self._parameterNode
        node = self.logic.startLevelPlacement(p.inputVolume)
        p.levelSource = "Markups"
        p.levelsMarkups = node
        self._log(f"Click T12, L1, ... S1 centres in order on the sagittal view ({node.GetName()}).")

    def onExtract(self):
        with slicer.util.tryWithErrorDisplay("Extraction failed.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            outputs = self.logic.extract(self._parameterNode)
            self._log(f"Extracted {int(outputs.volumes.vb_present.sum())} vertebral bodies and "
                      f"{int(outputs.volumes.ivd_present.sum())} discs."
                      + ("" if not outputs.volumes.issues else " Notes: " + "; ".join(outputs.volumes.issues)))
            self.onShowStructure()

    def onGrade(self):
        with slicer.util.tryWithErrorDisplay("Grading failed.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            outputs = self.logic.grade(self._parameterNode)
            self.logic.showTableAndPlot(outputs)
            self._log("Grades: " + ", ".join(f"{r.name} {r.grade}" for r in outputs.results))

    def onCompare(self):
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            outputs = self.logic.compare(self._parameterNode)
            self.logic.showTableAndPlot(outputs)
            self._log("fc7 distances: " + ", ".join(f"{r.name} {r.distance:.3g}" for r in outputs.results))

    def onShowStructure(self):
        with slicer.util.tryWithErrorDisplay("Cannot show the extracted volume.", waitCursor=True):
            node = self.logic.showExtractedVolume(self._parameterNode.inputVolume, self._parameterNode.structure)
            if node is not None:
                slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, foreground=node,
                                                 foregroundOpacity=0.5)

    def onSaveOutputs(self):
        folder = qt.QFileDialog.getExistingDirectory(self.parent, "Save SpineSSL outputs to")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Saving failed.", waitCursor=True):
            files = self.logic.saveOutputs(self._parameterNode.inputVolume, folder)
            self._log("Saved " + ", ".join(str(f) for f in files.values()))

    # --- long work: the spine-ssl command line in a PythonSlicer subprocess ---

    def onRunCohort(self):
        if not self.logic.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Cannot start the cohort task.", waitCursor=False):
            commands = self.logic.cohortCommands(self._parameterNode)
            self._pending = list(commands)
            self._startNext()

    def _startNext(self):
        if not self._pending:
            self._process = None
            self._updateButtons()
            return
        args = self._pending.pop(0)
        self._log("$ spine-ssl " + " ".join(args))
        self.ui.progressBar.setValue(0)
        self._process = self.logic.startCli(args)
        self._queue = queue.Queue()
        threading.Thread(target=self._readOutput, args=(self._process, self._queue), daemon=True).start()
        self._timer.start()
        self._updateButtons()

    @staticmethod
    def _readOutput(process, q):
        for line in iter(process.stdout.readline, ""):
            q.put(line.rstrip("\n"))
        process.stdout.close()
        q.put(None)  # end of output

    def _pollProcess(self):
        finished = False
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                finished = True
                break
            progress = parseProgressLine(line)
            if progress:
                done, total, desc = progress
                self.ui.progressBar.setMaximum(max(total, 1))
                self.ui.progressBar.setValue(min(done, max(total, 1)))
                self.ui.progressBar.setFormat(f"{desc} %v/%m")
            elif line:
                self._log(line)
        if finished:
            code = self._process.wait()
            self._timer.stop()
            self._log(f"finished with exit code {code}")
            if code != 0:
                self._pending = []
            self._startNext()

    def onCancel(self):
        if self._process is None:
            return
        self._pending = []
        self.logic.stopCli(self._process)
        self._log("cancelled")


#
# SpineSSLLogic
#


class SpineSSLLogic(ScriptedLoadableModuleLogic):
    """Wires the MRML scene to SpineSSLLib; usable without the widget (batch mode, tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._extracted = {}  # volume node ID -> SpineSSLLib.scene.SceneOutputs

    def getParameterNode(self):
        return SpineSSLParameterNode(super().getParameterNode())

    def clearResults(self):
        """Forget extractions (node IDs are reused after the scene is closed)."""
        self._extracted.clear()

    @staticmethod
    def backendVersion():
        import SpineSSLLib

        return SpineSSLLib.__version__

    # dependencies

    def ensureDependencies(self, askConfirmation=True):
        """torch through the PyTorch extension, the rest with pip after a confirmation.  Returns
        False (and installs nothing) when the user declines."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("SpineSSL needs the PyTorch extension: install it with the Extensions Manager "
                                         "and restart Slicer.")
                return False
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                                  torchVersionRequirement=">=2.1")
            if torch is None:
                slicer.util.infoDisplay("PyTorch was not installed; SpineSSL cannot run its models without it.")
                return False
        missing = [spec for module, spec in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    "SpineSSL needs these Python packages, which will be downloaded and installed now:\n"
                    + "\n".join(missing)):
                slicer.util.infoDisplay("Nothing was installed. SpineSSL needs these packages to run.")
                return False
            with slicer.util.WaitCursor():
                slicer.util.pip_install(" ".join(missing))
        return True

    # levels and extraction

    def startLevelPlacement(self, volumeNode):
        from SpineSSLLib import scene

        node = scene.level_placement_markups(slicer.mrmlScene, volumeNode.GetName() + " placed levels")
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(True)
        return node

    def levels(self, p, volumeNode=None, markupsNode=None):
        """The LevelSet (LPS) from the chosen source."""
        from SpineSSLLib import scene

        volumeNode = volumeNode or p.inputVolume
        if markupsNode is not None or p.levelSource == "Markups":
            return scene.levels_from_markups(markupsNode or p.levelsMarkups)
        if p.levelSource == "Label map or segmentation":
            return scene.levels_from_label_node(p.levelsLabels, volumeNode, p.labelMapping)
        return self.detectLevels(volumeNode)

    def detectLevels(self, volumeNode):
        """Automatic level detection with SpineSSLLib's bundled detector.  Levels detected with
        confidence < 0.5 are not used (as `spine-ssl extract --levels detect`); they are named in
        the levels' issues, which the panel's status line shows."""
        from SpineSSLLib import scene
        from SpineSSLLib.detect.infer import detect_levels

        return detect_levels(scene.scan_from_volume_node(volumeNode), where=volumeNode.GetName(),
                             min_confidence=0.5)

    def extract(self, p, volumeNode=None, markupsNode=None, results=()):
        from SpineSSLLib import scene

        volumeNode = volumeNode or p.inputVolume
        levels = self.levels(p, volumeNode, markupsNode)
        scan, used, volumes = scene.extract_in_scene(volumeNode, levels)
        outputs = scene.show_results(slicer.mrmlScene, volumeNode, scan, used, volumes, results)
        self._extracted[volumeNode.GetID()] = outputs
        return outputs

    def _outputs(self, p, volumeNode=None, markupsNode=None):
        volumeNode = volumeNode or p.inputVolume
        return self._extracted.get(volumeNode.GetID()) or self.extract(p, volumeNode, markupsNode)

    def showExtractedVolume(self, volumeNode, structure):
        """One extracted VB/IVD volume as a volume node placed by its own affine (it overlays the scan)."""
        from SpineSSLLib import DISC_NAMES, LEVEL_NAMES, scene
        from SpineSSLLib.io import Scan

        outputs = self._extracted.get(volumeNode.GetID()) if volumeNode else None
        if outputs is None:
            return None
        v = outputs.volumes
        if structure in LEVEL_NAMES:
            i = LEVEL_NAMES.index(structure)
            present, array, affine = v.vb_present[i], v.vb[i], v.vb_affine[i]
        else:
            i = DISC_NAMES.index(structure)
            present, array, affine = v.ivd_present[i], v.ivd[i], v.ivd_affine[i]
        if not present:
            logging.warning("%s was not extracted (%s)", structure, "; ".join(v.issues) or "no levels")
            return None
        name = f"{volumeNode.GetName()} extracted"
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        return scene.volume_node_from_scan(slicer.mrmlScene, Scan(array, affine), name, node=node)

    # models

    def grade(self, p, volumeNode=None):
        from SpineSSLLib import scene

        if str(p.gradingModel) in ("", "."):
            raise ValueError("Choose a grading model folder (made by `spine-ssl grade-train`).")
        volumeNode = volumeNode or p.inputVolume
        outputs = self._outputs(p, volumeNode)
        results = scene.grade_volumes(outputs.volumes, p.gradingModel, tta=p.useTTA)
        return self._show(volumeNode, outputs, results)

    def _show(self, volumeNode, outputs, results):
        from SpineSSLLib import scene

        shown = scene.show_results(slicer.mrmlScene, volumeNode, outputs.scan, outputs.levels, outputs.volumes,
                                   results)
        self._extracted[volumeNode.GetID()] = shown
        return shown

    def compare(self, p):
        from SpineSSLLib import scene

        if str(p.pretrainedModel) in ("", "."):
            raise ValueError("Choose a pretrained model folder (made by `spine-ssl pretrain`).")
        if p.levelSource != "Detect" and not p.compareMarkups:
            raise ValueError("Choose the level points (markups) of the second time point.")
        a = self._outputs(p)
        b = self._outputs(p, p.compareVolume, p.compareMarkups)
        results = scene.compare_volumes(a.volumes, b.volumes, p.pretrainedModel, threshold=p.sameThreshold)
        grades = [r for r in a.results if r.kind == "IVD"]
        return self._show(p.inputVolume, a, grades + results)

    def showTableAndPlot(self, outputs):
        if outputs.table_node is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(outputs.table_node.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        if outputs.plot_node is not None:
            slicer.modules.plots.logic().ShowChartInLayout(outputs.plot_node)

    def saveOutputs(self, volumeNode, folder):
        from SpineSSLLib import scene

        outputs = self._extracted.get(volumeNode.GetID())
        if outputs is None:
            raise ValueError("Nothing to save yet: run Extract or Grade first.")
        return scene.save_outputs(outputs, folder, scene.file_stem(volumeNode.GetName()))

    # sample data

    def loadSyntheticSubject(self, seed=1):
        """Generate (once) a one-subject synthetic cohort with two visits and load both visits with
        their ground-truth levels.  Returns the volume nodes, baseline first."""
        import json

        from SpineSSLLib import io, scene
        from SpineSSLLib.levels import from_truth_json
        from SpineSSLLib.synth import generate_cohort
        from SpineSSLLib.synth.config import preset

        root = Path(slicer.app.temporaryPath) / "SpineSSL" / f"synthetic-subject-{seed}"
        if not (root / "cohort.json").is_file():
            generate_cohort(root, preset("tiny", subjects=1, followup_fraction=1.0, seed=seed), overwrite=True)
        truths = sorted((json.loads(t.read_text()), t) for t in (root / "truth").glob("*.json"))
        volumes = []
        for doc, truth in sorted(truths, key=lambda x: x[0]["visit"]):
            name = f"SpineSSL subject visit {doc['visit']}"
            volume = scene.volume_node_from_scan(slicer.mrmlScene, io.read_scan(root / doc["dicom_dir"]), name)
            levels = scene.markups_from_levels(slicer.mrmlScene, from_truth_json(truth), name + " truth levels",
                                               locked=False)
            volume.SetAttribute("SpineSSL.TruthLevels", levels.GetID())
            volumes.append(volume)
        return volumes

    # cohort work in a subprocess

    def cohortCommands(self, p):
        """The ``spine-ssl`` invocations for the chosen cohort task."""
        import shlex

        root, work = str(p.cohortFolder), str(p.workFolder)
        if work in ("", "."):
            raise ValueError("Choose a work folder for the cohort outputs.")
        extra = shlex.split(p.cohortArguments.replace("TRUTH_FOLDER", os.path.join(root, "truth")))
        if p.cohortTask == "Index and extract":
            return [["index", root, "--out", work], ["extract", work, *extra]]
        if p.cohortTask == "Pretrain (self-supervised)":
            return [["pretrain", work, "--out", os.path.join(work, "pretrain"), *extra]]
        return [["grade-train", work, "--out", os.path.join(work, "grading"), *extra]]

    @staticmethod
    def startCli(args):
        """Start ``spine-ssl ARGS`` in Slicer's Python (PythonSlicer) with progress lines on stdout."""
        import SpineSSLLib

        python = shutil.which("PythonSlicer") or sys.executable
        libDir = str(Path(SpineSSLLib.__file__).resolve().parent.parent)
        env = {"SPINESSL_PROGRESS": "lines", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (libDir, os.environ.get("PYTHONPATH", "")) if p)}
        return slicer.util.launchConsoleProcess([python, "-m", "SpineSSLLib", *args], updateEnvironment=env)

    @staticmethod
    def stopCli(process, timeout=5.0):
        import subprocess

        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()


#
# SpineSSLTest
#


class SpineSSLTest(ScriptedLoadableModuleTest):
    """The whole workflow on the synthetic sample subject, inside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_backend_importable()
        self.setUp()
        self.test_sample_extract_and_outputs()

    def test_backend_importable(self):
        self.delayDisplay("Checking the SpineSSLLib backend")
        version = SpineSSLLogic.backendVersion()
        self.assertTrue(version)
        logging.info("SpineSSLLib %s", version)
        self.delayDisplay("Test passed")

    def test_sample_extract_and_outputs(self):
        import numpy as np

        from SpineSSLLib import DISC_NAMES, scene

        self.delayDisplay("Generating the synthetic subject")
        logic = SpineSSLLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        baseline, followup = logic.loadSyntheticSubject()[:2]
        truthLevels = slicer.mrmlScene.GetNodeByID(baseline.GetAttribute("SpineSSL.TruthLevels"))
        p = logic.getParameterNode()
        p.inputVolume = baseline
        p.levelSource = "Markups"
        p.levelsMarkups = truthLevels

        self.delayDisplay("Extracting")
        outputs = logic.extract(p)
        self.assertEqual(int(outputs.volumes.ivd_present.sum()), 6)
        self.assertEqual(outputs.segmentation_node.GetName(), "SpineSSL subject visit 0 structures")
        self.assertTrue(outputs.levels_node.GetLocked())
        names = {s["name"] for s in scene.segment_info(outputs.segmentation_node)}
        self.assertTrue(set(DISC_NAMES) <= names)
        extracted = logic.showExtractedVolume(baseline, "L4-L5")
        self.assertEqual(slicer.util.arrayFromVolume(extracted).shape, (9, 112, 224))

        self.delayDisplay("Saving and reloading")
        folder = Path(slicer.app.temporaryPath) / "SpineSSLTest"
        files = logic.saveOutputs(baseline, folder)
        seg = slicer.util.loadSegmentation(str(files["segmentation"]))
        self.assertEqual({s["name"] for s in scene.segment_info(seg)}, names)
        c0 = scene.segment_centroids(outputs.segmentation_node)
        c1 = scene.segment_centroids(seg)
        self.assertTrue(all(np.allclose(c0[k], c1[k], atol=1e-3) for k in c0))
        self.delayDisplay("Test passed")
