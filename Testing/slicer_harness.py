"""Run the SpineSSL Slicer module against Slicer's own Python layer, without a Slicer binary.

``install(version, tmp)`` builds, inside this Python process, what a Slicer 5.10 / 5.12 session
gives a scripted module:

- ``slicer``: slicer-core's real MRML/logic classes, with ``../shared/slicer-python/<version>/slicer``
  first on ``slicer.__path__`` so that ``slicer.util``, ``slicer.parameterNodeWrapper`` and
  ``slicer.ScriptedLoadableModule`` are Slicer's unmodified code; ``SampleData`` likewise;
- ``slicer.mrmlScene``: a real scene with what the application puts in it at start-up
  (selection, interaction and layout singletons from a real ``vtkSlicerApplicationLogic``,
  default colour tables from ``vtkSlicerColorLogic``);
- ``slicer.modules.markups/plots/terminologies``: the real module logics;
- ``qt``, ``ctk``, ``slicer.app`` and the MRML widgets: the minimal stand-ins of
  ``slicer_standins``;
- ``PythonSlicer`` on PATH: a launcher that runs this Python as a *child* process, as Slicer's
  launcher runs ``python-real`` (so cancelling a job must end the whole process tree).

``uninstall()`` restores everything, so the rest of the test session sees plain slicer-core.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "slicer-python"
MODULE_DIR = REPO / "SpineSSL"
VERSIONS = ("5.10", "5.12")

# names the harness adds to sys.modules (restored/removed on uninstall)
_MODULE_NAMES = ("qt", "ctk", "SampleData", "SpineSSL", "slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule")
# packages the harness imports afresh for each Slicer version (with their submodules): the module's
# helpers (SpineSSLModuleLib.logic builds its parameter node with that version's wrapper)
_PACKAGES = ("slicer.parameterNodeWrapper", "SpineSSLModuleLib")


def _ours(name: str) -> bool:
    return name in _MODULE_NAMES or any(name == p or name.startswith(p + ".") for p in _PACKAGES)


# slicer.* widget classes the GUI connectors name; without a stand-in they are placeholders
_SLICER_PLACEHOLDERS = ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLScreenShotDialog",
                        "qMRMLUtils", "qSlicerWidget")


def available() -> bool:
    return all((SHARED / v / "slicer" / "util.py").is_file() for v in VERSIONS)


class Harness:
    def __init__(self, version: str, tmp: Path, temporary: Path | None = None):
        self.version = version
        self.tmp = Path(tmp)
        self.temporary = Path(temporary) if temporary else self.tmp / "temp"  # slicer.app.temporaryPath
        self._saved_modules: dict = {}
        self._saved_attrs: dict = {}
        self._saved_env: dict = {}
        self.module = None

    # ----------------------------------------------------------------------------------------
    def install(self):
        import slicer  # slicer-core
        import slicer_standins as S

        root = SHARED / self.version
        for name in list(sys.modules):
            if _ours(name):
                self._saved_modules[name] = sys.modules.pop(name)
        self._saved_path = list(slicer.__path__)
        slicer.__path__.insert(0, str(root / "slicer"))
        self._saved_sys_path = list(sys.path)
        sys.path.insert(0, str(root))  # SampleData.py
        sys.path.insert(0, str(MODULE_DIR))  # Slicer puts each scripted module's folder on sys.path
        sys.modules["qt"] = S.make_qt()
        sys.modules["ctk"] = S.make_ctk()
        i18n = S.make_i18n()
        sys.modules["slicer.i18n"] = i18n

        def setattr_saved(name, value):
            if name not in self._saved_attrs:
                self._saved_attrs[name] = getattr(slicer, name, _MISSING)
            setattr(slicer, name, value)

        setattr_saved("i18n", i18n)
        setattr_saved("qMRMLWidget", S.qMRMLWidget)
        setattr_saved("qMRMLNodeComboBox", S.qMRMLNodeComboBox)
        for name in _SLICER_PLACEHOLDERS:
            setattr_saved(name, type(name, (S._Placeholder,), {"__module__": "slicer"}))

        # Slicer's own util.py (slicer-core ships a copy; the real one is what modules get)
        self._saved_attrs.setdefault("util", getattr(slicer, "util", _MISSING))
        util = importlib.import_module("slicer.util")
        assert Path(util.__file__).resolve().is_relative_to(root.resolve()), util.__file__
        setattr_saved("util", util)

        # the application: scene with start-up singletons, logics, stand-in app
        scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        (self.tmp / "home" / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)  # no colour files
        app_logic.SetHomeDirectory(str(self.tmp / "home"))
        app_logic.SetShareDirectory("share")
        app_logic.SetMRMLScene(scene)
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(self.tmp / "cache"))
        scene.SetCacheManager(cache)
        layout = slicer.vtkMRMLLayoutNode()
        layout.SetSingletonTag("vtkMRMLLayoutNode")
        scene.AddNode(layout)
        color_logic = slicer.vtkSlicerColorLogic()
        color_logic.SetMRMLApplicationLogic(app_logic)
        color_logic.SetMRMLScene(scene)
        markups = slicer.vtkSlicerMarkupsLogic()
        markups.SetMRMLApplicationLogic(app_logic)
        markups.SetMRMLScene(scene)
        plots = slicer.vtkSlicerPlotsLogic()
        plots.SetMRMLApplicationLogic(app_logic)
        plots.SetMRMLScene(scene)
        terminologies = slicer.vtkSlicerTerminologiesModuleLogic()  # no built-in lists (no Slicer share folder)
        self.scene, self.app_logic = scene, app_logic
        self._keep = [color_logic, markups, plots, terminologies, cache]
        self.temporary.mkdir(parents=True, exist_ok=True)
        app = S.Application(scene, self.temporary, app_logic)
        self.app = app
        modules = types.SimpleNamespace(
            markups=S.ModuleEntry(logic=markups), plots=S.ModuleEntry(logic=plots),
            terminologies=S.ModuleEntry(logic=terminologies),
            spinessl=S.ModuleEntry(path=MODULE_DIR / "SpineSSL.py"))
        setattr_saved("app", app)
        setattr_saved("mrmlScene", scene)
        setattr_saved("modules", modules)
        S.QSettings.store = {}
        S.QTimer.active = []
        S.ctkMessageBox.answers, S.ctkMessageBox.shown = [], []

        # PythonSlicer: a launcher that runs the real interpreter as its child (like Slicer's)
        bin_dir = self.tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        launcher = bin_dir / "PythonSlicer"
        launcher.write_text(f'#!/bin/sh\n# stand-in for Slicer\'s launcher: python-real runs as a child\n'
                            f'"{sys.executable}" "$@"\nexit $?\n')
        launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        for key in ("PATH", "PYTHONPATH"):
            self._saved_env[key] = os.environ.get(key)
        os.environ["PATH"] = str(bin_dir) + os.pathsep + os.environ.get("PATH", "")
        return self

    def load_module(self):
        """Import SpineSSL/SpineSSL.py as Slicer does (module name ``SpineSSL``), create the
        module object and emit ``startupCompleted``."""
        spec = importlib.util.spec_from_file_location("SpineSSL", MODULE_DIR / "SpineSSL.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["SpineSSL"] = mod
        spec.loader.exec_module(mod)
        import slicer

        self.module = mod
        self.module_object = mod.SpineSSL(slicer.modules.spinessl)
        slicer.app.startupCompleted.emit()
        return mod

    def widget(self):
        """A module widget as Slicer creates it: a parent widget with a layout, then setup()."""
        import qt
        import slicer

        parent = slicer.qMRMLWidget()
        parent.setLayout(qt.QVBoxLayout())
        parent.setMRMLScene(slicer.mrmlScene)
        parent.isEntered = True
        w = self.module.SpineSSLWidget(parent)
        w.setup()
        return w

    def run_events(self, until, timeout=60.0, step=0.02):
        """The event loop: fire due timers until ``until()`` is true (or time out)."""
        import time

        import slicer

        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError("event loop: condition not reached")
            slicer.app.processEvents()
            time.sleep(step)

    # ----------------------------------------------------------------------------------------
    def uninstall(self):
        import slicer
        import slicer_standins as S

        for t in list(S.QTimer.active):
            t.stop()
        for name in list(sys.modules):
            if _ours(name):
                del sys.modules[name]
        sys.modules.update(self._saved_modules)
        slicer.__path__[:] = self._saved_path
        sys.path[:] = self._saved_sys_path
        for name, value in self._saved_attrs.items():
            if value is _MISSING:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        if hasattr(slicer, "selfTests"):
            del slicer.selfTests
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_MISSING = object()
