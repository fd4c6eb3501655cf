"""SpineSSL: 3D Slicer scripted module.

Thin GUI over ``SpineSSLLib`` (the backend, importable without Slicer).  The classes of Slicer's
scripted-module template: Module, Widget and Test here, the Logic (and the parameter node) in
``SpineSSLModuleLib.logic``.  All MRML work is done by the qt-free ``SpineSSLLib.scene`` (tested
with pytest on slicer-core); the Logic only wires the scene layer and SpineSSLLib together; long
work (cohorts, training) runs as a ``PythonSlicer`` subprocess running the ``spine-ssl`` command
line (``SpineSSLModuleLib.jobs``), so the GUI stays responsive.  Python packages are checked and
installed by ``SpineSSLModuleLib.dependencies``.
"""

import importlib.util
import logging
import os
import queue
import sys
import threading
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def findBackend(moduleDir=None):
    """Make ``import SpineSSLLib`` (and this module's helpers) work.  An installed extension has
    SpineSSLLib beside this file in Slicer's scripted-modules folder (on sys.path); a source
    checkout added as an additional module path (``<repo>/SpineSSL``) has it in the repository
    root, which is put on sys.path here.  Returns the folder added, or None."""
    moduleDir = moduleDir or os.path.dirname(os.path.abspath(__file__))
    if moduleDir not in sys.path:
        sys.path.append(moduleDir)  # SpineSSLModuleLib
    if importlib.util.find_spec("SpineSSLLib") is not None:
        return None
    root = os.path.dirname(moduleDir)
    if os.path.isfile(os.path.join(root, "SpineSSLLib", "__init__.py")):
        sys.path.append(root)
        return root
    return None


findBackend()
from SpineSSLModuleLib import dependencies, jobs  # noqa: E402 - after findBackend
from SpineSSLModuleLib.logic import (  # noqa: E402,F401 - the Logic, its parameter node and choices
    COHORT_TASKS,
    LEVEL_SOURCES,
    SAMPLE_FILES,
    SETTINGS,
    STRUCTURES,
    SpineSSLLogic,
    SpineSSLParameterNode,
    _isSet,
)

SAMPLE_NAME = "SpineSSLSyntheticSubject"
SAMPLE_URI = "spinessl://synthetic-subject/"
TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-SpineSSL.term.json"
parseProgressLine = jobs.parse_progress


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
        self.terminologyName = None
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("startupCompleted()", self.configureTerminology)

    def configureTerminology(self):
        """The vertebra and disc codes of the segments (not in Slicer's DICOM master list)."""
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", TERMINOLOGY_FILE)
        self.terminologyName = slicer.modules.terminologies.logic().LoadTerminologyFromFile(path)
        return self.terminologyName


def registerSampleData():
    """A SampleData entry that generates a small synthetic longitudinal subject (no download).
    The GUI button runs ``loadSyntheticSubjectSample``; ``SampleData.downloadSample`` (which never
    calls custom downloaders) gets the same files through a URL rewrite rule."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SpineSSL",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "SpineSSL.png"),
        uris=[SAMPLE_URI + name for name in SAMPLE_FILES],
        fileNames=[f"{SAMPLE_NAME}-{name}" for name in SAMPLE_FILES],
        nodeNames=list(SAMPLE_FILES.values()),
        customDownloader=loadSyntheticSubjectSample,
    )
    SampleData.SampleDataLogic.registerUrlRewriteRule("SpineSSL", sampleUrlRewriteRule)


def sampleUrlRewriteRule(url):
    """``spinessl://synthetic-subject/<file>`` -> the generated file's ``file://`` URL."""
    if not url.startswith(SAMPLE_URI):
        return url
    return SpineSSLLogic().syntheticSubjectFiles()[url[len(SAMPLE_URI):]].as_uri()


def loadSyntheticSubjectSample(source=None):
    """SampleData's custom downloader: generate and load the synthetic subject."""
    with slicer.util.tryWithErrorDisplay("Could not create the SpineSSL synthetic subject.", waitCursor=True):
        return SpineSSLLogic().loadSyntheticSubject()


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
        self._cancelled = False
        self._lastLines = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineSSL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineSSLLogic()
        self._fillLegend()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.placeLevelsButton.connect("clicked(bool)", self.onPlaceLevels)
        self.ui.trainModelButton.connect("clicked(bool)", self.onTrainModel)
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
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        if getattr(self, "_timer", None) is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.logic.clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                p.inputVolume = first
        self.logic.restoreModelFolders(p)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            if self.getObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterModified)
            self._onParameterModified()

    def _onParameterModified(self, caller=None, event=None):
        self.logic.rememberModelFolders(self._parameterNode)
        self._updateButtons()

    def _updateButtons(self):
        p = self._parameterNode
        busy = self._process is not None
        hasVolume = bool(p and p.inputVolume)
        grading = self.logic.modelStatus(p.gradingModel if p else Path(), "grade")
        self.ui.placeLevelsButton.enabled = hasVolume
        self.ui.extractButton.enabled = hasVolume and not busy
        self.ui.gradeButton.enabled = hasVolume and not busy and grading[0]
        self.ui.gradeButton.toolTip = ("Grade every extracted disc with the grading model" if grading[0]
                                       else "Choose a grading model folder first: " + grading[1])
        self.ui.modelStatusLabel.text = grading[1]
        self.ui.compareButton.enabled = hasVolume and bool(p.compareVolume) and not busy
        self.ui.runCohortButton.enabled = bool(p and _isSet(p.cohortFolder)) and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.levelsMarkupsSelector.enabled = bool(p) and p.levelSource == "Markups"
        self.ui.levelsLabelsSelector.enabled = bool(p) and p.levelSource == "Label map or segmentation"
        self.ui.cohortLevelsLineEdit.enabled = bool(p) and p.cohortTask == "Index and extract"

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

    # --- Python packages ---

    def updateDependencyStatus(self):
        """The panel says what is installed and what would be installed, before anything is."""
        plan = dependencies.plan()
        self.ui.dependenciesLabel.text = plan.summary()
        self.ui.installDependenciesButton.enabled = not plan.ready
        self.ui.dependenciesCollapsibleButton.collapsed = plan.ready
        return plan

    def onInstallDependencies(self):
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=False):
            self.logic.ensureDependencies()
        self.updateDependencyStatus()

    # --- actions on the current volume (in-process, short) ---

    def onPlaceLevels(self):
        p = self._parameterNode
        node = self.logic.startLevelPlacement(p.inputVolume)
        p.levelSource = "Markups"
        p.levelsMarkups = node
        self._log(f"Click T12, L1, ... S1 centres in order on the sagittal view ({node.GetName()}).")

    def onTrainModel(self):
        """The way to a first model: the cohort section, set to train a grading model."""
        p = self._parameterNode
        p.cohortTask = "Train grading"
        self.ui.cohortCollapsibleButton.collapsed = False
        self._log("To train a grading model on your cohort: choose its scan folder (DICOM) and a work folder, "
                  "run 'Index and extract' (levels: a folder of level files or 'detect'), then 'Train grading'; "
                  "the model folder is filled in when training ends.")

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
            self._log("fc7 distances: " + ", ".join(f"{r.name} {r.distance:.3g}" for r in outputs.results
                                                    if r.distance is not None))

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
            self._cancelled = False
            self._startNext()

    def _startNext(self):
        if not self._pending:
            self._process = None
            self._updateButtons()
            return
        args = self._pending.pop(0)
        self._log("$ spine-ssl " + " ".join(args))
        self._currentArgs = args
        self._lastLines = []
        self.ui.progressBar.setValue(0)
        self._process = self.logic.startCli(args)
        self._queue = queue.Queue()
        threading.Thread(target=jobs.read_output, args=(self._process, self._queue), daemon=True).start()
        self._timer.start()
        self._updateButtons()

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
                self._lastLines = (self._lastLines + [line])[-3:]
                self._log(line)
        if finished:
            self._finished(self._process.wait())

    def _finished(self, code):
        self._timer.stop()
        if self._cancelled:
            self._log("cancelled: the job and the processes it started were stopped")
            self._pending = []
        elif code != 0:
            self._pending = []
            message = f"spine-ssl {self._currentArgs[0]} failed (exit code {code})"
            self._log(message)
            slicer.util.errorDisplay(message + (":\n" + "\n".join(self._lastLines) if self._lastLines else "."))
        else:
            self._log(f"spine-ssl {self._currentArgs[0]} finished")
            if self._parameterNode:
                self.logic.useTrainedModel(self._parameterNode, self._currentArgs)
        self._startNext()

    def onCancel(self):
        if self._process is None:
            return
        self._pending = []
        self._cancelled = True
        stopped = self.logic.stopCli(self._process)
        self._log(f"cancelling (stopping {len(stopped)} processes)")


#
# SpineSSLTest
#


class SpineSSLTest(ScriptedLoadableModuleTest):
    """The workflow on the synthetic sample subject, inside Slicer.  It installs nothing: on a
    machine without torch (an extension build machine) the parts that need it are skipped."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_backend_importable()
        self.setUp()
        self.test_parameter_node_and_sample_data()
        self.setUp()
        self.test_sample_extract_and_outputs()

    def test_backend_importable(self):
        self.delayDisplay("Checking the SpineSSLLib backend")
        version = SpineSSLLogic.backendVersion()
        self.assertTrue(version)
        logging.info("SpineSSLLib %s", version)
        self.delayDisplay("Test passed")

    def test_parameter_node_and_sample_data(self):
        import SampleData

        self.delayDisplay("Parameter node and sample data")
        p = SpineSSLLogic().getParameterNode()
        self.assertIsNone(p.levelsLabels)
        registerSampleData()
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertEqual(volume.GetName(), "SpineSSL subject visit 0")
        self.assertEqual(slicer.util.arrayFromVolume(volume).ndim, 3)
        self.delayDisplay("Test passed")

    def test_sample_extract_and_outputs(self):
        import numpy as np

        from SpineSSLLib import DISC_NAMES, scene

        try:
            import torch  # noqa: F401
        except ImportError:
            self.delayDisplay("torch is not installed: extraction test skipped (the module installs nothing in tests)")
            return
        self.delayDisplay("Generating the synthetic subject")
        logic = SpineSSLLogic()
        baseline = logic.loadSyntheticSubject()[0]
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
        seg = scene.load_segmentation(slicer.mrmlScene, files["segmentation"])
        self.assertEqual({s["name"] for s in scene.segment_info(seg)}, names)
        c0 = scene.segment_centroids(outputs.segmentation_node)
        c1 = scene.segment_centroids(seg)
        self.assertTrue(all(np.allclose(c0[k], c1[k], atol=1e-3) for k in c0))
        self.delayDisplay("Test passed")
