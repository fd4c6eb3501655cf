"""Minimal stand-ins for the parts of 3D Slicer that are compiled C++/Qt: the ``qt`` and ``ctk``
modules (PythonQt), the MRML widgets and ``slicer.app``.

Everything else the SpineSSL module touches is real: Slicer's own Python layer
(``slicer.util``, ``slicer.parameterNodeWrapper``, ``slicer.ScriptedLoadableModule``,
``SampleData``; unmodified copies in ``../shared/slicer-python/<version>``), the MRML scene and
the module logics (``slicer-core``), and the subprocesses.  The stand-ins only hold state,
emit Qt-style signals and read the ``.ui`` XML; they implement no SpineSSL behaviour.  A Qt class
that no stand-in implements is a distinct placeholder type (the parameter-node GUI connectors
compare widget types against many classes) that refuses to be instantiated.
"""

from __future__ import annotations

import inspect
import os
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

# --------------------------------------------------------------------------------------------
# signals and objects


class Signal:
    """A Qt signal: slots are called with as many of the emitted arguments as they accept
    (PythonQt's behaviour)."""

    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args):
        for slot in list(self._slots):
            slot(*args[: _arity(slot, len(args))])


def _arity(slot, available: int) -> int:
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return available
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


class _SignalSlot:
    """Class attribute declaring a signal; each instance gets its own ``Signal``."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj.__dict__.setdefault("_signal_" + self.name, Signal())


class QObject:
    destroyed = _SignalSlot()

    def __init__(self, parent=None):
        self._children = []
        self._properties = {}
        self._parent = None
        self.name = ""
        if parent is not None:
            self.setParent(parent)

    # PythonQt: obj.connect("clicked(bool)", slot)
    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    @property
    def objectName(self):
        return self.name

    def setObjectName(self, name):
        self.name = name

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, cls=None):
        out = []
        for c in self._children:
            if cls is None or isinstance(c, cls):
                out.append(c)
            out.extend(c.findChildren(cls))
        return out

    def setProperty(self, name, value):
        self._properties[name] = value

    def property(self, name):
        return self._properties.get(name)

    def deleteLater(self):
        pass

    def className(self):
        return type(self).__name__


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled = True
        self.visible = False
        self.toolTip = ""
        self._layout = None

    def isWidgetType(self):
        return True

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setVisible(self, visible):
        self.visible = bool(visible)

    def isVisible(self):
        return self.visible

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def isEnabled(self):
        return self.enabled


class _Layout(QObject):
    def __init__(self, parent=None):
        super().__init__()
        self._owner = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)


class QVBoxLayout(_Layout):
    pass


class QHBoxLayout(_Layout):
    pass


class QFormLayout(_Layout):
    pass


class QLabel(QWidget):
    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text = text


class QAbstractButton(QWidget):
    clicked = _SignalSlot()
    toggled = _SignalSlot()

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text = text
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)
            self._stateChanged(value)

    def _stateChanged(self, value):
        pass

    def click(self):
        """A user's click: a disabled button does nothing (as in Qt)."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self._checked
        self.clicked.emit(self._checked)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    stateChanged = _SignalSlot()

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def _stateChanged(self, value):
        self.stateChanged.emit(2 if value else 0)


class QComboBox(QWidget):
    currentIndexChanged = _SignalSlot()
    currentTextChanged = _SignalSlot()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._index = -1

    def clear(self):
        self._items = []
        self._setIndex(-1)

    def addItem(self, text, *args):
        self._items.append(str(text))
        if self._index < 0:
            self._setIndex(0)

    def addItems(self, texts):
        for t in texts:
            self.addItem(t)

    def count(self):
        return len(self._items)

    def itemText(self, i):
        return self._items[i]

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, i):
        if not -1 <= i < len(self._items):
            return  # Qt ignores an out-of-range index
        self._setIndex(i)

    def setCurrentIndex(self, i):
        self.currentIndex = i

    def _setIndex(self, i):
        if i != self._index:
            self._index = i
            self.currentIndexChanged.emit(i)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentText(self):
        return self._items[self._index] if self._index >= 0 else ""

    def findText(self, text):
        return self._items.index(text) if text in self._items else -1


class QLineEdit(QWidget):
    textChanged = _SignalSlot()

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self._text = text

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, value):
        if value != self._text:
            self._text = value
            self.textChanged.emit(value)


class QPlainTextEdit(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.readOnly = False
        self.maximumBlockCount = 0
        self._lines = []

    def appendPlainText(self, text):
        self._lines.extend(str(text).split("\n"))
        if self.maximumBlockCount:
            self._lines = self._lines[-self.maximumBlockCount:]

    def toPlainText(self):
        return "\n".join(self._lines)

    @property
    def plainText(self):
        return self.toPlainText()

    def clear(self):
        self._lines = []


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.value, self.format = 0, 100, 0, "%p%"

    def setValue(self, v):
        self.value = max(self.minimum, min(int(v), self.maximum))

    def setMaximum(self, v):
        self.maximum = int(v)

    def setMinimum(self, v):
        self.minimum = int(v)

    def setFormat(self, f):
        self.format = f

    def text(self):
        return self.format.replace("%v", str(self.value)).replace("%m", str(self.maximum))


class QDoubleSpinBox(QWidget):
    valueChanged = _SignalSlot()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.decimals, self.singleStep = 2, 1.0
        self._min, self._max, self._value = 0.0, 99.99, 0.0

    minimum = property(lambda s: s._min, lambda s, v: s._setRange(v, max(v, s._max)))
    maximum = property(lambda s: s._max, lambda s, v: s._setRange(min(v, s._min), v))

    def _setRange(self, lo, hi):
        self._min, self._max = float(lo), float(hi)
        self.value = self._value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, v):
        v = round(min(max(float(v), self._min), self._max), int(self.decimals))
        if v != self._value:
            self._value = v
            self.valueChanged.emit(v)


class QTimer(QObject):
    """Fires from ``slicer.app.processEvents()`` (the stand-in event loop) once due."""

    timeout = _SignalSlot()
    active: list = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._due = None

    def setInterval(self, msec):
        self.interval = int(msec)

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in QTimer.active:
            QTimer.active.append(self)

    def stop(self):
        self._due = None
        if self in QTimer.active:
            QTimer.active.remove(self)

    def isActive(self):
        return self._due is not None

    @staticmethod
    def singleShot(msec, slot):
        t = QTimer()
        t.singleShot_ = True
        t.timeout.connect(slot)
        t.start(msec)

    @staticmethod
    def fireDue():
        now = time.monotonic()
        for t in list(QTimer.active):
            if t._due is not None and t._due <= now:
                if t.singleShot_:
                    t.stop()
                else:
                    t._due = now + t.interval / 1000.0
                t.timeout.emit()


class QSettings:
    """Application settings; one store per process, like the user's Slicer.ini."""

    store: dict = {}

    def value(self, key, default=None):
        return QSettings.store.get(key, default)

    def setValue(self, key, value):
        QSettings.store[key] = value

    def contains(self, key):
        return key in QSettings.store

    def remove(self, key):
        QSettings.store.pop(key, None)

    def sync(self):
        pass


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.exists(self.path)

    def open(self, mode):
        return self.exists()

    def remove(self):
        try:
            os.remove(self.path)
            return True
        except OSError:
            return False


class QDir:
    def mkpath(self, path):
        os.makedirs(path, exist_ok=True)
        return True


class QIcon:
    def __init__(self, path=""):
        self.path = str(path)


class QColor:
    pass


class QFileDialog:
    """The user's answer to the next folder dialog (a test sets it, like a user picking a folder)."""

    nextDirectory = ""

    @staticmethod
    def getExistingDirectory(*args, **kwargs):
        return QFileDialog.nextDirectory


class QMessageBox:
    NoButton, Ok, Cancel, Yes, No = 0, 0x400, 0x400000, 0x4000, 0x10000
    Retry, Close = 0x80000, 0x200000
    Information, Warning, Critical, Question = 1, 2, 3, 4


class Qt:
    WaitCursor = 3
    ShiftModifier = 0x02000000
    RichText = 1


class QApplication:
    overrideCursors: list = []

    @staticmethod
    def setOverrideCursor(cursor):
        QApplication.overrideCursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor():
        if QApplication.overrideCursors:
            QApplication.overrideCursors.pop()


class QUiLoader:
    """Builds stand-in widgets from a Qt Designer ``.ui`` file: classes, names, properties
    (``SlicerParameterName`` included) and the file's signal/slot connections."""

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot()
        top = root.find("widget")
        widgets = {}
        widget = self._build(top, None, widgets)
        for c in root.iter("connection"):
            sender, receiver = widgets[c.findtext("sender")], widgets[c.findtext("receiver")]
            slot = getattr(receiver, c.findtext("slot").split("(")[0])
            sender.connect(c.findtext("signal"), slot)
        return widget

    def _build(self, element, parent, widgets):
        cls = _widget_class(element.get("class"))
        w = cls()
        w.name = element.get("name")
        widgets[w.name] = w
        if parent is not None:
            w.setParent(parent)
        for prop in element.findall("property"):
            name, value = prop.get("name"), _property_value(prop)
            if prop.get("stdset") == "0":
                w.setProperty(name, value)  # dynamic property (SlicerParameterName)
            elif name != "geometry":
                setattr(w, name, value)
        self._children(element, w, widgets)
        return w

    def _children(self, node, w, widgets):
        """Widgets below ``node`` (through layouts and items) become children of ``w``."""
        for sub in node:
            if sub.tag == "widget":
                self._build(sub, w, widgets)
            elif sub.tag in ("layout", "item"):
                self._children(sub, w, widgets)


def _property_value(prop):
    v = prop[0]
    if v.tag == "string":
        return v.text or ""
    if v.tag == "bool":
        return v.text == "true"
    if v.tag == "number":
        return int(v.text)
    if v.tag == "double":
        return float(v.text)
    if v.tag == "stringlist":
        return [s.text for s in v.findall("string")]
    return v.text


def _widget_class(name):
    import ctk
    import qt
    import slicer

    for module in (qt, ctk, slicer):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, QWidget):
            return cls
    raise NotImplementedError(f"no stand-in for widget class {name}")


class _Placeholder:
    """A Qt class that no stand-in implements: a distinct type, never instantiated."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"stand-in does not implement {type(self).__module__}.{type(self).__name__}")


def _module(name, namespace):
    mod = types.ModuleType(name)
    mod.__dict__.update(namespace)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = type(attr, (_Placeholder,), {"__module__": name})
        setattr(mod, attr, cls)
        return cls

    mod.__getattr__ = __getattr__
    return mod


def make_qt():
    names = ["Signal", "QObject", "QWidget", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QLabel",
             "QAbstractButton", "QPushButton", "QCheckBox", "QComboBox", "QLineEdit", "QPlainTextEdit",
             "QProgressBar", "QDoubleSpinBox", "QTimer", "QSettings", "QFile", "QDir", "QIcon", "QColor",
             "QFileDialog", "QMessageBox", "Qt", "QApplication", "QUiLoader"]
    g = globals()
    return _module("qt", {n: g[n] for n in names})


# --------------------------------------------------------------------------------------------
# ctk


class ctkCollapsibleButton(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__("", parent)
        self.collapsed = False


class ctkPathLineEdit(QWidget):
    currentPathChanged = _SignalSlot()
    Dirs, Drives, NoDot, NoDotDot = 1, 2, 4, 8

    def __init__(self, parent=None):
        super().__init__(parent)
        self.filters = 0
        self._path = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, value):
        if value != self._path:
            self._path = value
            self.currentPathChanged.emit(value)


class ctkDoubleSpinBox(QDoubleSpinBox):
    pass


class ctkMessageBox(QWidget):
    """A modal message box: ``exec_`` returns the user's answer (tests queue answers in
    ``answers``; with none queued the box is "closed", i.e. Cancel)."""

    answers: list = []
    shown: list = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""

    def exec_(self):
        ctkMessageBox.shown.append(self.text)
        return ctkMessageBox.answers.pop(0) if ctkMessageBox.answers else QMessageBox.Cancel


def make_ctk():
    names = ["ctkCollapsibleButton", "ctkPathLineEdit", "ctkDoubleSpinBox", "ctkMessageBox"]
    g = globals()
    return _module("ctk", {n: g[n] for n in names})


# --------------------------------------------------------------------------------------------
# MRML widgets and the application


class qMRMLWidget(QWidget):
    mrmlSceneChanged = _SignalSlot()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    """Node selector: holds the current node of one of ``nodeTypes`` (or none)."""

    currentNodeChanged = _SignalSlot()
    currentNodeIDChanged = _SignalSlot()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = []
        self.noneEnabled = False
        self.addEnabled = self.removeEnabled = self.renameEnabled = False
        self._node = None

    def currentNode(self):
        return self._node

    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not None and not any(node.IsA(t) for t in self.nodeTypes):
            raise TypeError(f"{self.name}: a {node.GetClassName()} is not one of {self.nodeTypes}")
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID())


class _ProcessEnvironment:
    def __init__(self, env):
        self._env = dict(env)

    def keys(self):
        return list(self._env)

    def value(self, key):
        return self._env.get(key, "")


class LayoutManager:
    """The view layout: ``setLayout`` sets the layout node's view arrangement (what Slicer's
    layout manager does); there are no rendered views."""

    def __init__(self, scene):
        self.scene = scene

    def _layoutNode(self):
        return self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")

    def setLayout(self, layout):
        self._layoutNode().SetViewArrangement(layout)

    def layout(self):
        return self._layoutNode().GetViewArrangement()

    def sliceViewNames(self):
        return []

    def mrmlSliceLogics(self):
        import vtk

        return vtk.vtkCollection()


class CoreIOManager:
    """Slicer's file readers for the file types SampleData hands over (volumes and markups),
    through slicer-core's storage nodes."""

    def fileType(self, path):
        return "MarkupsFile" if str(path).endswith(".mrk.json") else "VolumeFile"

    def loadNodes(self, fileType, properties, loaded):
        import slicer

        from SpineSSLLib import scene as S

        path, name = properties["fileName"], properties.get("name")
        if fileType == "MarkupsFile":
            node = S.load_markups(slicer.mrmlScene, path, name)
        else:
            node = S.load_volume(slicer.mrmlScene, path, name)
        loaded.AddItem(node)
        return True


class Application(QObject):
    """``slicer.app``: settings, temporary folder, the stand-in event loop, the view layout and
    the application logic (a real ``vtkSlicerApplicationLogic``)."""

    startupCompleted = _SignalSlot()

    def __init__(self, scene, temporaryPath, appLogic):
        super().__init__()
        self.applicationName = "Slicer"
        self.temporaryPath = str(temporaryPath)
        self.testing = True
        self.scene = scene
        self._appLogic = appLogic
        self._layoutManager = LayoutManager(scene)
        self._ioManager = CoreIOManager()
        self._moduleManager = QObject()
        self._moduleManager.moduleAboutToBeUnloaded = Signal()

    def testingEnabled(self):
        return self.testing

    def topLevelWidgets(self):
        return []  # no main window

    def processEvents(self):
        QTimer.fireDue()

    def setOverrideCursor(self, cursor):
        QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QApplication.restoreOverrideCursor()

    def layoutManager(self):
        return self._layoutManager

    def applicationLogic(self):
        return self._appLogic

    def moduleManager(self):
        return self._moduleManager

    def coreIOManager(self):
        return self._ioManager

    def startupEnvironment(self):
        return _ProcessEnvironment(os.environ)

    def userSettings(self):
        return QSettings()

    def settings(self):
        return QSettings()


class ModuleEntry:
    """``slicer.modules.<name>``: the module's path and logic (as qSlicerAbstractModule)."""

    def __init__(self, path="", logic=None):
        self.path = str(path)
        self._logic = logic
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None

    def logic(self):
        return self._logic


def tr(text):
    return text


def translate(context, text):
    return text


def make_i18n():
    return _module("slicer.i18n", {"tr": tr, "translate": translate})


def ui_path(module_dir: Path, name: str) -> Path:
    return Path(module_dir) / "Resources" / "UI" / name
