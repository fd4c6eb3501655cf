"""The SpineSSL module's Logic: wires the MRML scene to SpineSSLLib, usable without the widget
(batch mode, tests, the self-test), and the parameter node it works on (the module's state,
saved with the scene).  All MRML work is done by the Qt-free ``SpineSSLLib.scene``; long work runs
as a ``spine-ssl`` subprocess (``jobs``); Python packages are checked and installed by
``dependencies``.
"""

import logging
import os
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies, jobs

LEVEL_SOURCES = ["Markups", "Label map or segmentation", "Detect"]
COHORT_TASKS = ["Index and extract", "Pretrain (self-supervised)", "Train grading"]
STRUCTURES = ["T12", "L1", "L2", "L3", "L4", "L5", "S1", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
SAMPLE_FILES = {  # file in the generated sample -> node name
    "visit0.nrrd": "SpineSSL subject visit 0", "visit0-levels.mrk.json": "SpineSSL subject visit 0 truth levels",
    "visit1.nrrd": "SpineSSL subject visit 1", "visit1-levels.mrk.json": "SpineSSL subject visit 1 truth levels"}
SETTINGS = {"gradingModel": "SpineSSL/GradingModel", "pretrainedModel": "SpineSSL/PretrainedModel"}


def _isSet(path):
    return str(path) not in ("", ".")


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
        plan = dependencies.plan()
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
            plan = dependencies.plan()
        if plan.pip:
            with slicer.util.WaitCursor():
                commands = dependencies.install_with_pip(plan, self.pipInstall)
            logging.info("SpineSSL installed: %s", "; ".join("pip install " + " ".join(c) for c in commands))
        return dependencies.plan().ready

    @staticmethod
    def pipInstall(args):
        """``PythonSlicer -m pip install ARGS``, its output in the log; raises CalledProcessError
        when pip fails.  (What ``slicer.util.pip_install`` runs in Slicer 5.10; 5.12 routes that
        function through ``slicer.packaging``, so the module starts pip itself in both.)"""
        proc = slicer.util.launchConsoleProcess([*jobs.python_command(), "-m", "pip", "install", *args],
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
        return jobs.start(args, slicer.util.launchConsoleProcess)

    @staticmethod
    def stopCli(process, timeout=5.0):
        """Stop a job started by ``startCli``, with every process it started."""
        return jobs.stop(process, timeout)
