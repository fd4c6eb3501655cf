"""SpineSSL: 3D Slicer scripted module.

Thin GUI over ``SpineSSLLib`` (the backend, importable without Slicer).  Four classes as in
Slicer's scripted-module template: Module, Widget, Logic, Test.  All MRML work is done by the
qt-free ``SpineSSLLib.scene`` (tested with pytest on slicer-core); the Logic only wires the scene
layer and SpineSSLLib together; long work (cohorts, training) runs as a ``PythonSlicer``
subprocess running the ``spine-ssl`` command line (``SpineSSLJobs``), so the GUI stays
responsive.  Python packages are checked and installed by ``SpineSSLDependencies``.
"""

import importlib.util
import logging
import os
import queue
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


def findBackend(moduleDir=None):
    """Make ``import SpineSSLLib`` (and this module's helpers) work.  An installed extension has
    SpineSSLLib beside this file in Slicer's scripted-modules folder (on sys.path); a source
    checkout added as an additional module path (``<repo>/SpineSSL``) has it in the repository
    root, which is put on sys.path here.  Returns the folder added, or None."""
    moduleDir = moduleDir or os.path.dirname(os.path.abspath(__file__))
    if moduleDir not in sys.path:
        sys.path.append(moduleDir)  # SpineSSLJobs, SpineSSLDependencies
    if importlib.util.find_spec("SpineSSLLib") is not None:
        return None
    root = os.path.dirname(moduleDir)
    if os.path.isfile(os.path.join(root, "SpineSSLLib", "__init__.py")):
        sys.path.append(root)
        return root
    return None


findBackend()
import SpineSSLDependencies  # noqa: E402 - after findBackend
import SpineSSLJobs  # noqa: E402

LEVEL_SOURCES = ["Markups", "Label map or segmentation", "Detect"]
COHORT_TASKS = ["Index and extract", "Pretrain (self-supervised)", "Train grading"]
STRUCTURES = ["T12", "L1", "L2", "L3", "L4", "L5", "S1", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
SAMPLE_NAME = "SpineSSLSyntheticSubject"
SAMPLE_URI = "spinessl://synthetic-subject/"
SAMPLE_FILES = {  # file in the generated sample -> node name
    "visit0.nrrd": "SpineSSL subject visit 0", "visit0-levels.mrk.json": "SpineSSL subject visit 0 truth levels",
    "visit1.nrrd": "SpineSSL subject visit 1", "visit1-levels.mrk.json": "SpineSSL subject visit 1 truth levels"}
TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-SpineSSL.term.json"
SETTINGS = {"gradingModel": "SpineSSL/GradingModel", "pretrainedModel": "SpineSSL/PretrainedModel"}
parseProgressLine = SpineSSLJobs.parse_progress


def _isSet(path):
    return str(path) not in ("", ".")


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
# Parameter node
#


@parameterNodeWrapper
class SpineSSLParameterNode:
    """Module state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    levelSource: Annotated[str, Choice(LEVEL_SOURCES)] = "Markups"
    levelsMarkups: vtkMRMLMarkupsFiducialNode
    # a node selector that may be empty: Slicer's wrapper writes None when the node is created
    levelsLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
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
    cohortLevels: str = "truth:TRUTH_FOLDER"
    cohortArguments: str = ""


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
        plan = SpineSSLDependencies.plan()
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
        threading.Thread(target=SpineSSLJobs.read_output, args=(self._process, self._queue), daemon=True).start()
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
# SpineSSLLogic
#


class SpineSSLLogic(ScriptedLoadableModuleLogic):
    """Wires the MRML scene to SpineSSLLib; usable without the widget (batch mode, tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._extracted = {}  # volume node ID -> SpineSSLLib.scene.SceneOutputs
        self._inputs = {}  # volume node ID -> what the extraction was computed from
        self._detected = {}  # volume node ID -> (volume state, detected levels)

    def getParameterNode(self):
        return SpineSSLParameterNode(super().getParameterNode())

    def clearResults(self):
        """Forget extractions (node IDs are reused after the scene is closed)."""
        self._extracted.clear()
        self._inputs.clear()
        self._detected.clear()

    @staticmethod
    def backendVersion():
        import SpineSSLLib

        return SpineSSLLib.__version__

    # dependencies

    def ensureDependencies(self, askConfirmation=True):
        """Check the Python packages; when some are missing, say which and how they would be
        installed, and install them only after the user agreed (torch through the PyTorch
        extension, the rest with pip against constraints that keep torch and Slicer's packages).
        Returns True when everything is there."""
        plan = SpineSSLDependencies.plan()
        if plan.ready:
            return True
        if plan.blockers:
            slicer.util.errorDisplay("SpineSSL cannot run in this Slicer:\n" + plan.summary())
            return False
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "SpineSSL needs these Python packages, which will be downloaded and installed now:\n\n"
                + plan.summary(), windowTitle="SpineSSL: install Python packages"):
            slicer.util.infoDisplay("Nothing was installed. SpineSSL needs these packages to run:\n" + plan.summary())
            return False
        if plan.torch:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("SpineSSL needs the PyTorch extension: install it with the Extensions "
                                         "Manager and restart Slicer.")
                return False
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=f">={plan.torch.req.minimum}")
            if torch is None:
                slicer.util.infoDisplay("PyTorch was not installed; SpineSSL cannot run its models without it.")
                return False
            plan = SpineSSLDependencies.plan()
        if plan.pip:
            with slicer.util.WaitCursor():
                commands = SpineSSLDependencies.install_with_pip(plan, self.pipInstall)
            logging.info("SpineSSL installed: %s", "; ".join("pip install " + " ".join(c) for c in commands))
        return SpineSSLDependencies.plan().ready

    @staticmethod
    def pipInstall(args):
        """``PythonSlicer -m pip install ARGS``, its output in the log; raises CalledProcessError
        when pip fails.  (What ``slicer.util.pip_install`` runs in Slicer 5.10; 5.12 routes that
        function through ``slicer.packaging``, so the module starts pip itself in both.)"""
        proc = slicer.util.launchConsoleProcess([*SpineSSLJobs.python_command(), "-m", "pip", "install", *args],
                                                useStartupEnvironment=False)
        slicer.util.logProcessOutput(proc)

    # model folders: remembered across sessions, checked, filled in after training

    @staticmethod
    def modelStatus(folder, task="grade"):
        """(usable, text for the panel) for a model folder: a checkpoint folder or a training
        output holding best/ or last/ (``spine-ssl grade-train`` for task "grade", ``spine-ssl
        pretrain`` otherwise).  Reads only checkpoint.json (no torch needed)."""
        import json

        if not _isSet(folder):
            return False, ("No grading model yet: choose a folder made by <code>spine-ssl grade-train</code>, or "
                           "press <b>Train a grading model on my cohort</b>.")
        for d in (Path(folder), Path(folder) / "best", Path(folder) / "last"):
            meta = d / "checkpoint.json"
            if meta.is_file():
                try:
                    kind = (json.loads(meta.read_text()).get("config") or {}).get("task")
                except (OSError, ValueError):
                    return False, f"{meta} cannot be read"
                if task == "grade" and kind not in (None, "grade"):
                    return False, f"{d} is not a grading model (task {kind})"
                return True, f"Model: {d}"
        return False, f"{folder} is not a model folder (no checkpoint.json in it or in best/, last/)"

    @staticmethod
    def rememberModelFolders(p):
        if p is None:
            return
        settings = qt.QSettings()
        for name, key in SETTINGS.items():
            value = getattr(p, name)
            if _isSet(value) and settings.value(key) != str(value):
                settings.setValue(key, str(value))

    @staticmethod
    def restoreModelFolders(p):
        """Empty model folders get the last ones used (when they still exist)."""
        settings = qt.QSettings()
        for name, key in SETTINGS.items():
            saved = settings.value(key)
            if not _isSet(getattr(p, name)) and saved and os.path.isdir(saved):
                setattr(p, name, Path(saved))

    @staticmethod
    def useTrainedModel(p, args):
        """After ``grade-train``/``pretrain`` finished: its output becomes the panel's model."""
        if args[0] in ("grade-train", "pretrain") and "--out" in args:
            setattr(p, "gradingModel" if args[0] == "grade-train" else "pretrainedModel",
                    Path(args[args.index("--out") + 1]))

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
        """Automatic level detection with SpineSSLLib's bundled detector (once per volume
        content).  Levels detected with confidence < 0.5 are not used (as `spine-ssl extract
        --levels detect`); they are named in the levels' issues."""
        from SpineSSLLib import scene
        from SpineSSLLib.detect.infer import detect_levels

        state = self._volumeState(volumeNode)
        cached = self._detected.get(volumeNode.GetID())
        if cached is None or cached[0] != state:
            levels = detect_levels(scene.scan_from_volume_node(volumeNode), where=volumeNode.GetName(),
                                   min_confidence=0.5)
            self._detected[volumeNode.GetID()] = cached = (state, levels)
        return cached[1]

    @staticmethod
    def _volumeState(volumeNode):
        """Changes when the voxels or the geometry of the volume change."""
        from SpineSSLLib import scene

        image = volumeNode.GetImageData()
        return (image.GetMTime() if image is not None else 0,
                tuple(round(float(v), 6) for v in scene.volume_to_world_ras(volumeNode).ravel()))

    def extract(self, p, volumeNode=None, markupsNode=None, results=()):
        import json

        from SpineSSLLib import scene

        volumeNode = volumeNode or p.inputVolume
        levels = self.levels(p, volumeNode, markupsNode)
        scan, used, volumes = scene.extract_in_scene(volumeNode, levels)
        outputs = scene.show_results(slicer.mrmlScene, volumeNode, scan, used, volumes, results)
        self._extracted[volumeNode.GetID()] = outputs
        self._inputs[volumeNode.GetID()] = (self._volumeState(volumeNode), json.dumps(levels.to_dict(), sort_keys=True))
        return outputs

    def _outputs(self, p, volumeNode=None, markupsNode=None):
        """The volume's extraction, computed again when the volume or its levels (points moved,
        another level source or label map) changed since."""
        import json

        volumeNode = volumeNode or p.inputVolume
        cached = self._extracted.get(volumeNode.GetID())
        if cached is not None:
            levels = self.levels(p, volumeNode, markupsNode)
            key = (self._volumeState(volumeNode), json.dumps(levels.to_dict(), sort_keys=True))
            if key == self._inputs.get(volumeNode.GetID()):
                return cached
            logging.info("SpineSSL: levels or volume of %s changed since the extraction; extracting again",
                         volumeNode.GetName())
        return self.extract(p, volumeNode, markupsNode)

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

        if not _isSet(p.gradingModel):
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

        if not _isSet(p.pretrainedModel):
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

    def syntheticSubjectFiles(self, seed=1):
        """Generate (once) a one-subject synthetic cohort with two visits, as real DICOM, and
        write each visit as ``visitN.nrrd`` with its ground-truth levels ``visitN-levels.mrk.json``
        (read back through Slicer's own readers).  Returns {file name: path}."""
        import json

        from SpineSSLLib import io, scene
        from SpineSSLLib.levels import from_truth_json
        from SpineSSLLib.synth import generate_cohort
        from SpineSSLLib.synth.config import preset

        root = Path(slicer.app.temporaryPath) / "SpineSSL" / f"synthetic-subject-{seed}"
        files = {name: root / "sample" / name for name in SAMPLE_FILES}
        if all(f.is_file() for f in files.values()):
            return files
        if not (root / "cohort.json").is_file():
            generate_cohort(root, preset("tiny", subjects=1, followup_fraction=1.0, seed=seed), overwrite=True)
        docs = sorted(((json.loads(t.read_text()), t) for t in (root / "truth").glob("*.json")),
                      key=lambda x: x[0]["visit"])
        work = slicer.vtkMRMLScene()
        for doc, truth in docs[:2]:
            v = f"visit{doc['visit']}"
            volume = scene.volume_node_from_scan(work, io.read_scan(root / doc["dicom_dir"]), v)
            scene.save_volume(volume, files[f"{v}.nrrd"])
            scene.save_markups(scene.markups_from_levels(work, from_truth_json(truth), v, locked=False),
                               files[f"{v}-levels.mrk.json"])
        work.Clear(1)
        return files

    def loadSyntheticSubject(self, seed=1):
        """Load both visits of the synthetic subject with their ground-truth levels (each volume's
        ``SpineSSL.TruthLevels`` attribute names its levels node).  Returns the volume nodes,
        baseline first."""
        from SpineSSLLib import scene

        files = self.syntheticSubjectFiles(seed)
        volumes = []
        for visit in (0, 1):
            name = SAMPLE_FILES[f"visit{visit}.nrrd"]
            volume = scene.load_volume(slicer.mrmlScene, files[f"visit{visit}.nrrd"], name)
            levels = scene.load_markups(slicer.mrmlScene, files[f"visit{visit}-levels.mrk.json"],
                                        SAMPLE_FILES[f"visit{visit}-levels.mrk.json"])
            volume.SetAttribute("SpineSSL.TruthLevels", levels.GetID())
            volumes.append(volume)
        return volumes

    # cohort work in a subprocess

    def cohortCommands(self, p):
        """The ``spine-ssl`` invocations for the chosen cohort task.  The levels option belongs to
        ``extract`` only; the extra arguments go to every command."""
        import shlex

        root, work = str(p.cohortFolder), str(p.workFolder)
        if not _isSet(work):
            raise ValueError("Choose a work folder for the cohort outputs.")
        extra = shlex.split(p.cohortArguments)
        if p.cohortTask == "Index and extract":
            levels = p.cohortLevels.strip().replace("TRUTH_FOLDER", os.path.join(root, "truth"))
            if not levels:
                raise ValueError("Say where the levels come from: a folder of level files, 'truth:FOLDER' or 'detect'.")
            return [["index", root, "--out", work], ["extract", work, "--levels", levels, *extra]]
        if p.cohortTask == "Pretrain (self-supervised)":
            return [["pretrain", work, "--out", os.path.join(work, "pretrain"), *extra]]
        return [["grade-train", work, "--out", os.path.join(work, "grading"), *extra]]

    @staticmethod
    def startCli(args):
        """Start ``spine-ssl ARGS`` in Slicer's Python (PythonSlicer) with progress lines on stdout."""
        return SpineSSLJobs.start(args, slicer.util.launchConsoleProcess)

    @staticmethod
    def stopCli(process, timeout=5.0):
        """Stop a job started by ``startCli``, with every process it started."""
        return SpineSSLJobs.stop(process, timeout)


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
