"""The MRML scene layer: SpineSSLLib structures <-> Slicer nodes, without Qt.

Every function takes the ``vtkMRMLScene`` (or nodes in it) as an argument, so the same code runs
inside 3D Slicer, in ``Slicer --no-main-window`` batch mode and under pytest with the
``slicer-core`` package (real MRML classes, no application).

Coordinates: SpineSSLLib works in patient **LPS** (DICOM); Slicer's scene is **RAS**.  This module
is the only place where the two meet: ``RAS = diag(-1, -1, 1) . LPS``.  A volume node's IJK->RAS
matrix is ``diag(-1, -1, 1, 1) @ Scan.affine`` (``Scan`` maps ``(i, j, k, 1)`` -> LPS and its array
is ``(K, J, I)``, which is exactly ``slicer.util.arrayFromVolume``'s axis order).

Outputs for one input volume ``V`` (names follow the input volume):
  ``V levels``        markups point list, one locked labelled point per vertebral body T12..S1
  ``V structures``    segmentation, one segment per disc (and VB), coloured by predicted grade
  ``V grades``        table node: level, grade, class probabilities, comparison distance
  ``V probabilities`` plot chart of the class probabilities per disc
Files: ``<stem>.mrk.json``, ``<stem>.seg.nrrd``, ``<stem>.csv`` (+ ``.schema.csv``), ``.nrrd``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import DISC_NAMES, LEVEL_NAMES
from . import atomic
from .atomic import atomic_path
from .errors import GeometryError, InputError, LevelsError
from .io import Scan
from .levels import LevelSet

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 homogeneous LPS <-> RAS conversion (its own inverse)."""

GRADE_COLORS = {
    1: (0.20, 0.63, 0.17),  # green: normal disc
    2: (0.99, 0.80, 0.20),  # yellow
    3: (0.98, 0.50, 0.05),  # orange
    4: (0.84, 0.10, 0.11),  # red: severe degeneration
    None: (0.60, 0.60, 0.60),  # grey: not graded
}
"""Display colour of a disc segment by predicted grade (1-4, ``None`` = not graded)."""

GRADE_LABELS = {1: "Grade 1", 2: "Grade 2", 3: "Grade 3", 4: "Grade 4", None: "Not graded"}

VB_COLOR = (0.89, 0.85, 0.79)  # bone
LEVELS_SUFFIX, SEGMENTATION_SUFFIX, TABLE_SUFFIX, PLOT_SUFFIX = " levels", " structures", " grades", " probabilities"
GRADE_TAG = "SpineSSL.Grade"  # segment tag holding the predicted grade ("" when not graded)
KIND_TAG = "SpineSSL.Kind"  # "IVD" or "VB"

# Slicer segmentation terminology: SNOMED CT codes, one per lumbar/thoracic vertebra; S1 is coded
# as the sacrum (there is no S1 code) and discs share the generic "Intervertebral disc" code (the
# segment name carries the level).  These types are not in Slicer's DICOM master list, so the
# module ships them as its own terminology context (SpineSSL/Resources/
# SegmentationCategoryTypeModifier-SpineSSL.term.json, loaded at start-up) and the tags name it.
TERMINOLOGY_CONTEXT = "Segmentation category and type - SpineSSL"
_ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
_VERTEBRA_CODES = {
    "T12": ("23215003", "T12 vertebra"), "L1": ("66794005", "L1 vertebra"), "L2": ("14293000", "L2 vertebra"),
    "L3": ("36470004", "L3 vertebra"), "L4": ("11994002", "L4 vertebra"), "L5": ("49668003", "L5 vertebra"),
    "S1": ("54735007", "Sacrum"),
}
_DISC_CODE = ("360499006", "Intervertebral disc")


def terminology_entry(name: str) -> str:
    """Slicer ``TerminologyEntry`` segment tag for a VB name (``L4``) or a disc name (``L4-L5``)."""
    if name in _VERTEBRA_CODES:
        code, meaning = _VERTEBRA_CODES[name]
    elif name in DISC_NAMES:
        code, meaning = _DISC_CODE
    else:
        raise LevelsError(f"no terminology for structure {name!r}")
    return (f"{TERMINOLOGY_CONTEXT}~{_ANATOMICAL_STRUCTURE}~SCT^{code}^{meaning}"
            f"~^^~Anatomic codes - DICOM master list~^^~^^")


# --------------------------------------------------------------------------------------------
# coordinates

def ras_from_lps(points) -> np.ndarray:
    """Points ``(..., 3)`` from LPS to RAS (also RAS -> LPS: the flip is its own inverse)."""
    p = np.array(points, dtype=np.float64)
    p[..., :2] *= -1.0
    return p


lps_from_ras = ras_from_lps


def ijk_to_ras(affine_lps) -> np.ndarray:
    """IJK->RAS matrix of a voxel->LPS affine (both 4x4)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64).reshape(4, 4)


def _slicer():
    import slicer  # slicer-core outside Slicer, the application's module inside it

    return slicer


def _vtk_matrix(array) -> "object":
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r][c]))
    return m


def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def register_segmentation_converters() -> None:
    """Register the segmentation representation converters (idempotent).

    Slicer's Segmentations module does this at start-up; with ``slicer-core`` nobody does, and a
    segment cannot be created until it is done.
    """
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {type(r).__name__ for r in _iter_vtk(factory.GetConverterRules())}
    for cls in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                "vtkFractionalLabelmapToClosedSurfaceConversionRule"):
        if cls not in have and hasattr(slicer, cls):
            factory.RegisterConverterRule(getattr(slicer, cls)())


def _ensure_selection_node(scene) -> None:
    """Markups look up the scene's selection node (units); Slicer's application scene has one, a
    bare ``vtkMRMLScene`` (slicer-core, batch) gets the same singleton here."""
    if scene is not None and scene.GetFirstNodeByClass("vtkMRMLSelectionNode") is None:
        node = _slicer().vtkMRMLSelectionNode()
        node.SetSingletonTag("Singleton")
        scene.AddNode(node)


def _ensure_label_colors(scene) -> None:
    """The default label-map colour table that every labelmap display node refers to.  Slicer's
    application scene has it; a bare ``vtkMRMLScene`` (slicer-core, batch) gets the same node here,
    so that temporary label maps do not log "the color table node ... can't be found"."""
    if scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is None:
        node = _slicer().vtkMRMLColorTableNode()
        node.SetTypeToLabels()
        node.SetSingletonTag("Labels")  # node ID vtkMRMLColorTableNodeLabels, as Slicer's colour logic makes it
        node.SetName("Labels")
        scene.AddNode(node)


def _iter_vtk(collection):
    if collection is None:
        return []
    if isinstance(collection, (list, tuple)):
        return list(collection)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


# --------------------------------------------------------------------------------------------
# volumes

def volume_node_from_scan(scene, scan: Scan, name: str, node=None):
    """Put a ``Scan`` into the scene as a scalar volume node (float32 voxels, IJK->RAS geometry)."""
    slicer = _slicer()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    array = np.ascontiguousarray(scan.array, dtype=np.float32)
    if array.ndim != 3:
        raise GeometryError(f"volume {name!r} must be 3D, got shape {array.shape}")
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(scan.affine)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def volume_to_world_ras(node) -> np.ndarray:
    """The node's IJK -> world RAS matrix, including a linear parent transform."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras_m = _numpy_matrix(m)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise GeometryError(f"volume {node.GetName()!r} is under a non-linear transform; harden it first")
        t = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(t)
        ijk_to_ras_m = _numpy_matrix(t) @ ijk_to_ras_m
    return ijk_to_ras_m


def scan_from_volume_node(node) -> Scan:
    """A ``Scan`` (array (K, J, I) float32, voxel->LPS affine) from a scalar volume node."""
    slicer = _slicer()
    if node is None or node.GetImageData() is None:
        raise InputError("no image data in the selected volume")
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise GeometryError(f"volume {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components; "
                            "a scalar volume is needed")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise GeometryError(f"volume {node.GetName()!r} must be 3D, got shape {array.shape}")
    return Scan(array=array, affine=LPS_TO_RAS @ volume_to_world_ras(node),
                meta={"source": f"volume {node.GetName()!r}"})


def load_volume(scene, path, name: str | None = None):
    """Read an image file (NRRD, NIfTI, MHA, or a DICOM series: a folder or its file list) into a
    scalar volume node with Slicer's own reader."""
    slicer = _slicer()
    files = _volume_files(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(files[0]))
    if len(files) > 1:
        storage.ResetFileNameList()
        for f in files:
            storage.AddFileName(str(f))
        storage.SetSingleFile(0)
    return _read(scene, "vtkMRMLScalarVolumeNode", storage, path, name or _stem(files[0]), "image volume",
                 check=lambda n: n.GetImageData() is not None)


def _volume_files(path) -> list[Path]:
    """The file(s) to read: a DICOM folder gives its series' files in slice-position order (GDCM's
    sorter, as Slicer's DICOM module does), never in file-name order."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        p = Path(path)
        files = _dicom_series_files(p) if p.is_dir() else [p]
    if not files:
        raise InputError("no image files", path)
    for f in files:
        if not f.is_file():
            raise InputError("file not found", f)
    return files


def _dicom_series_files(folder: Path) -> list[Path]:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError("no DICOM image series in this folder", folder)
    if len(series) > 1:
        raise InputError(f"{len(series)} DICOM series in this folder; give one series' folder", folder)
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]


def save_volume(node, path) -> Path:
    """Write a volume node (``.nrrd``, ``.nii.gz``, ``.mha``) atomically."""
    storage = _slicer().vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(1)
    return _write(storage, node, path, "volume")


def _write(storage, node, path, what: str) -> Path:
    """Write ``node`` with a Slicer storage node to a temporary file renamed onto ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the writer creates it (an existing file makes VTK log "removing old version")
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise InputError(f"could not write {what}", path)
    return path


def _read(scene, node_class: str, storage, path, name: str, what: str, check=None):
    """Read a file into a new node with a configured Slicer storage node (nothing left in the
    scene when it fails)."""
    scene.AddNode(storage)
    node = scene.AddNewNodeByClass(node_class, name)
    if not storage.ReadData(node) or (check is not None and not check(node)):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"not a readable {what}", path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    if hasattr(node, "GetDisplayNode") and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    return path


# --------------------------------------------------------------------------------------------
# levels <-> markups

def markups_from_levels(scene, levels: LevelSet, name: str, locked: bool = True, node=None):
    """A point list with one labelled control point per level at its centroid (RAS), locked.

    The four corners of each vertebral body (when known) are kept as hidden points labelled
    ``L4-AS``, ``L4-PS``, ``L4-PI``, ``L4-AI`` (the ``.mrk.json`` convention of
    ``levels.from_markups``), so a saved file keeps the full level geometry.
    """
    import vtk

    _ensure_selection_node(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    else:
        node.RemoveAllControlPoints()
    for level in levels:
        i = node.AddControlPoint(vtk.vtkVector3d(*ras_from_lps(level.centroid)), level.name)
        node.SetNthControlPointLocked(i, bool(locked))
    for level in levels:
        if level.corners is None:
            continue
        for tag, corner in zip(_CORNER_TAGS, ras_from_lps(level.corners)):
            i = node.AddControlPoint(vtk.vtkVector3d(*corner), f"{level.name}-{tag}")
            node.SetNthControlPointVisibility(i, False)
            node.SetNthControlPointLocked(i, bool(locked))
    node.SetLocked(bool(locked))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


_CORNER_TAGS = ("AS", "PS", "PI", "AI")  # CORNER_NAMES order


def level_placement_markups(scene, name: str):
    """The "Place levels" helper: a point list with the seven labels T12..S1 pre-created and
    unplaced, so clicking in the viewer places them in order (superior to inferior)."""
    import vtk

    _ensure_selection_node(scene)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for level in LEVEL_NAMES:
        i = node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), level)
        node.UnsetNthControlPointPosition(i)
    node.SetMaximumNumberOfControlPoints(len(LEVEL_NAMES))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def levels_from_markups(node) -> LevelSet:
    """A ``LevelSet`` (LPS) from a markups node labelled ``T12``..``S1`` (centres) and optionally
    ``L4-AS``... (corners).

    The node is written with Slicer's own markups writer and read by ``levels.from_markups``,
    so a node in the scene and its saved ``.mrk.json`` give exactly the same levels.  Unplaced
    points (the placement helper's leftovers) are skipped and reported in ``issues``.
    """
    from . import levels as levels_mod

    if node is None:
        raise LevelsError("no levels markups node selected")
    where = f"markups {node.GetName()!r}"
    if node.GetParentTransformNode() is not None:
        raise LevelsError("the points are under a transform; harden the transform first", where)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="spinessl-markups-") as d:
        path = save_markups(node, Path(d) / "levels.mrk.json")
        try:
            result = levels_mod.from_markups(path)
        except LevelsError as e:
            raise LevelsError(e.cause, where) from e
    if not len(result):
        raise LevelsError("no placed points labelled T12..S1", where)
    return result.replace(source=f"markups:{node.GetName()}")


def levels_from_label_node(label_node, volume_node, mapping="synthetic") -> LevelSet:
    """Levels from a labelmap volume node (values mapped to levels by ``mapping``: a preset name
    of ``levels.LABEL_PRESETS``, a mapping file or a dict) or from a segmentation node
    (``levels_from_segmentation_node``; mapping ignored), on the volume node's grid."""
    from . import levels as L

    if label_node is None:
        raise LevelsError("no label map or segmentation selected")
    if label_node.IsA("vtkMRMLSegmentationNode"):
        return levels_from_segmentation_node(label_node, volume_node)
    scan = scan_from_volume_node(volume_node)
    labels = scan_from_volume_node(label_node)
    if isinstance(mapping, str):
        mapping = L.resolve_label_mapping(mapping)
    labels.array = np.rint(labels.array)
    return L.from_labelmap(labels, scan, mapping, where=f"{label_node.GetName()!r}")


def levels_from_segmentation_node(segmentation_node, volume_node) -> LevelSet:
    """Levels from a segmentation node, its segments matched by name (or ID) with
    ``labelmaps.segment_structure``: SpineSSL's ``L4``, TotalSegmentator's ``vertebrae_L4``,
    ``sacrum`` (and SlicerTotalSegmentator's standard names ``L4 vertebra``, ``Sacrum``),
    TotalSpineSeg's ``vertebrae_L4``, ``disc_L4_L5``.  Whole-bone segments are reduced to
    vertebral bodies and a sacrum segment gives S1 as for the ``totalseg_mr`` preset (see
    ``labelmaps``); other segments (organs, cord...) are ignored.  On the volume node's grid."""
    import vtk

    from . import levels as L
    from .labelmaps import LabelMapping, segment_structure

    slicer = _slicer()
    scan = scan_from_volume_node(volume_node)
    where = f"{segmentation_node.GetName()!r}"
    segmentation = segmentation_node.GetSegmentation()
    ids, found = vtk.vtkStringArray(), {}
    for n in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(n)
        what = segment_structure(segmentation.GetNthSegment(n).GetName()) or segment_structure(seg_id)
        if what is not None and what not in found:
            ids.InsertNextValue(seg_id)
            found[what] = ids.GetNumberOfValues()  # exported label value: position in ``ids``
    levels = {v: k for k, v in found.items() if k in LEVEL_NAMES}
    if not levels:
        raise LevelsError("no segment named after a vertebra (T12..S1, vertebrae_L4, L4 vertebra...)", where)
    mapping = LabelMapping(levels, "segments", sacrum=found.get("sacrum"),
                           discs={v: k for k, v in found.items() if k in DISC_NAMES})
    scene = segmentation_node.GetScene()
    _ensure_label_colors(scene)
    tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__spinessl_levels__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, tmp,
                                                                                       volume_node):
            raise LevelsError("could not export the segments to a label map", where)
        labels = scan_from_volume_node(tmp)
    finally:
        scene.RemoveNode(tmp)
    labels.array = np.rint(labels.array)
    return L.from_labelmap(labels, scan, mapping, where=where)


# --------------------------------------------------------------------------------------------
# save / load through Slicer's storage nodes

def save_markups(node, path) -> Path:
    """Write a markups node as ``.mrk.json`` (Slicer's markups schema, LPS on disk) atomically."""
    return _write(_slicer().vtkMRMLMarkupsJsonStorageNode(), node, path, "markups")


def load_markups(scene, path, name: str | None = None):
    path = _existing_file(path)
    _ensure_selection_node(scene)
    storage = _slicer().vtkMRMLMarkupsJsonStorageNode()
    storage.SetFileName(str(path))
    return _read(scene, "vtkMRMLMarkupsFiducialNode", storage, path, name or _stem(path), "Slicer markups file")


@contextlib.contextmanager
def _private_dir(parent: Path):
    import shutil
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=".spinessl-", dir=parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _stem(path) -> str:
    name = Path(path).name
    for suffix in (".mrk.json", ".seg.nrrd", ".nii.gz", ".schema.csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --------------------------------------------------------------------------------------------
# results -> table, plot, colour legend

@dataclass
class StructureResult:
    """One row of the results table: a disc (grade, class probabilities) or a vertebral body
    (fc7 distance to the other time point and the same/different call when comparing)."""

    name: str  # "L4-L5" (disc) or "L4" (vertebral body)
    grade: int | None = None
    probabilities: Sequence[float] | None = None  # one per grade 1..n
    distance: float | None = None
    same: bool | None = None

    @property
    def kind(self) -> str:
        return "IVD" if self.name in DISC_NAMES else "VB"


def results_from_grades(grades: dict, probabilities: dict | None = None) -> list[StructureResult]:
    """Disc rows from ``{disc: grade}`` (and optionally ``{disc: [p1..p4]}``), T12-L1..L5-S1 order."""
    probabilities = probabilities or {}
    out = []
    for disc in DISC_NAMES:
        if disc in grades or disc in probabilities:
            g = grades.get(disc)
            out.append(StructureResult(disc, None if g is None else int(g), probabilities.get(disc)))
    return out


def _n_classes(results: Iterable[StructureResult]) -> int:
    return max([len(r.probabilities) for r in results if r.probabilities is not None] or [0])


def table_from_results(scene, results: Sequence[StructureResult], name: str, node=None):
    """Table node: index, level, kind (IVD|VB), grade, p_grade1..n, distance (fc7, when comparing), same."""
    import vtk

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    n_cls = _n_classes(results)

    def column(cls, col_name):
        a = cls()
        a.SetName(col_name)
        table.AddColumn(a)
        return a

    cols = {"index": column(vtk.vtkIntArray, "index"), "level": column(vtk.vtkStringArray, "level"),
            "kind": column(vtk.vtkStringArray, "kind"), "grade": column(vtk.vtkStringArray, "grade")}
    for c in range(n_cls):
        cols[f"p{c + 1}"] = column(vtk.vtkDoubleArray, f"p_grade{c + 1}")
    cols["distance"] = column(vtk.vtkDoubleArray, "distance")
    cols["same"] = column(vtk.vtkStringArray, "same")
    for n, r in enumerate(results):
        cols["index"].InsertNextValue(n)
        cols["level"].InsertNextValue(r.name)
        cols["kind"].InsertNextValue(r.kind)
        cols["grade"].InsertNextValue("" if r.grade is None else str(int(r.grade)))
        for c in range(n_cls):
            p = np.nan if r.probabilities is None else float(r.probabilities[c])
            cols[f"p{c + 1}"].InsertNextValue(p)
        cols["distance"].InsertNextValue(np.nan if r.distance is None else float(r.distance))
        cols["same"].InsertNextValue("" if r.same is None else ("same" if r.same else "different"))
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def results_from_table(node) -> list[StructureResult]:
    """Inverse of ``table_from_results`` (also for a table read back from CSV)."""
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    p_cols = sorted((n for n in names if n.startswith("p_grade")), key=lambda s: int(s[len("p_grade"):]))

    def cell(row, col):
        return table.GetValueByName(row, col).ToString()

    def num(text):
        text = text.strip()
        return None if text in ("", "nan", "NaN") else float(text)

    out = []
    for row in range(table.GetNumberOfRows()):
        grade = cell(row, "grade").strip()
        probs = [num(cell(row, c)) for c in p_cols]
        same = cell(row, "same").strip()
        out.append(StructureResult(
            name=cell(row, "level"), grade=int(float(grade)) if grade else None,
            probabilities=None if not probs or any(p is None for p in probs) else probs,
            distance=num(cell(row, "distance")), same=None if not same else same == "same"))
    return out


def plot_from_table(scene, table_node, name: str, n_classes: int | None = None):
    """Bar chart of the class probabilities per disc (one series per grade) from the table."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("disc (row of the table)")
    chart.SetYAxisTitle("probability")
    table = table_node.GetTable()
    cols = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    p_cols = [c for c in cols if c.startswith("p_grade")][: n_classes or None]
    for col in p_cols:
        grade = int(col[len("p_grade"):])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} grade {grade}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("index")
        series.SetYColumnName(col)
        series.SetLabelColumnName("level")
        series.SetPlotType(series.PlotTypeBar)
        series.SetColor(*GRADE_COLORS.get(grade, GRADE_COLORS[None]))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def grade_color_table(scene, name: str = "SpineSSL grade colours"):
    """Colour table node mapping grade -> colour (the legend); one per scene, reused."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    keys = [None, 1, 2, 3, 4]
    node.SetNumberOfColors(len(keys))
    for idx, key in enumerate(keys):
        node.SetColor(idx, GRADE_LABELS[key], *GRADE_COLORS[key], 1.0)
    node.SetAttribute("SpineSSL.Role", "grade legend")
    return node


def save_table(node, path) -> Path:
    """Write a table node as CSV plus Slicer's ``.schema.csv`` (column types), atomically."""
    slicer = _slicer()
    path = Path(path)
    schema = path.with_name(_stem(path) + ".schema.csv")
    storage = slicer.vtkMRMLTableStorageNode()
    # Slicer derives the schema file name from the table's: write both in a private folder, then
    # move each into place atomically.
    with _private_dir(path.parent) as tmp_dir:
        storage.SetFileName(str(tmp_dir / "table.csv"))
        if not storage.WriteData(node):
            raise InputError("could not write table", path)
        atomic.write_bytes(schema, (tmp_dir / "table.schema.csv").read_bytes())
        atomic.write_bytes(path, (tmp_dir / "table.csv").read_bytes())
    return path


def load_table(scene, path, name: str | None = None):
    path = _existing_file(path)
    storage = _slicer().vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    schema = path.with_name(_stem(path) + ".schema.csv")
    if schema.is_file():
        storage.SetSchemaFileName(str(schema))
    return _read(scene, "vtkMRMLTableNode", storage, path, name or _stem(path), "table")


# --------------------------------------------------------------------------------------------
# extraction geometry -> segmentation

@dataclass
class StructureShape:
    """A disc or vertebral body as a solid in LPS: centre, orthonormal axes (rows: u anterior->
    posterior, v superior->inferior, n lateral) and half extents along them (mm)."""

    name: str
    kind: str  # "IVD" (ellipsoid) or "VB" (box)
    centre: np.ndarray
    axes: np.ndarray  # (3, 3)
    half: np.ndarray  # (3,)

    def contains(self, lps: np.ndarray) -> np.ndarray:
        q = (lps - self.centre) @ self.axes.T / self.half
        if self.kind == "IVD":
            return (q ** 2).sum(-1) <= 1.0
        return np.all(np.abs(q) <= 1.0, axis=-1)

    def corners(self) -> np.ndarray:
        s = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        return self.centre + (s * self.half) @ self.axes


def structure_shapes(levels: LevelSet, volumes, lateral_fraction: float = 1.0) -> list[StructureShape]:
    """Solids placed by the extraction geometry: orientation and in-plane centre from each
    extracted volume's voxel->LPS affine (``ScanVolumes.vb_affine`` / ``ivd_affine``), size and
    lateral centre from the level corners the extraction used.

    Disc: an ellipsoid spanning the mean of the two endplate lengths (u) and the mean of its
    anterior and posterior heights (v).  VB: a box spanning its mean endplate length and mean
    height.  Laterally both extend ``lateral_fraction`` x the endplate length, centred on the
    structure's own (continuous) lateral position rather than on the nearest scan slice.
    """
    shapes = []

    def frame(aff):
        u, v, n = (aff[:3, c] / np.linalg.norm(aff[:3, c]) for c in range(3))
        return np.stack([u, v, n])

    def box_centre(aff, shape_rows_cols):
        H, W = shape_rows_cols
        return aff[:3, :3] @ np.array([(W - 1) / 2, (H - 1) / 2, 0.0]) + aff[:3, 3]

    n_slices = volumes.vb.shape[1]
    mid = n_slices // 2
    for li, name in enumerate(volumes.levels):
        if not volumes.vb_present[li] or name not in levels or levels[name].corners is None:
            continue
        aff = volumes.vb_affine[li]
        axes = frame(aff)
        c = levels[name].corners
        length = 0.5 * (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3]))
        height = 0.5 * (np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1]))
        centre = box_centre(aff, volumes.vb.shape[2:]) + aff[:3, 2] * mid
        centre = centre + ((c.mean(0) - centre) @ axes[2]) * axes[2]  # continuous lateral centre
        shapes.append(StructureShape(name, "VB", centre, axes,
                                     np.array([length / 2, height / 2, lateral_fraction * length / 2])))
    for di, disc in enumerate(volumes.discs):
        up, lo = disc.split("-")
        if not volumes.ivd_present[di] or up not in levels or lo not in levels:
            continue
        cu, cl = levels[up].corners, levels[lo].corners
        if cu is None or cl is None:
            continue
        aff = volumes.ivd_affine[di]
        axes = frame(aff)
        quad = np.stack([cu[3], cu[2], cl[1], cl[0]])  # upper AI, PI; lower PS, AS
        length = 0.5 * (np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3]))
        height = 0.5 * (np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1]))
        centre = box_centre(aff, volumes.ivd.shape[2:]) + aff[:3, 2] * mid
        centre = centre + ((quad.mean(0) - centre) @ axes[2]) * axes[2]
        shapes.append(StructureShape(disc, "IVD", centre, axes,
                                     np.array([length / 2, max(height, 1.0) / 2, lateral_fraction * length / 2])))
    return shapes


def segmentation_grid(scan_affine, max_lateral_mm: float = 1.0) -> tuple[np.ndarray, int]:
    """Voxel->LPS affine of the segmentation labelmaps: the scan's grid with its slices split
    into ``f`` sub-slices (``f`` = ceil(slice spacing / max_lateral_mm)), so a segment can sit
    between two scan slices.  Returns (affine, f)."""
    a = np.asarray(scan_affine, dtype=np.float64).copy()
    dk = float(np.linalg.norm(a[:3, 2]))
    f = max(1, int(np.ceil(dk / max_lateral_mm - 1e-9)))
    fine = a.copy()
    fine[:3, 2] = a[:3, 2] / f
    fine[:3, 3] = a[:3, 3] - a[:3, 2] * (f - 1) / (2 * f)  # sub-slice centres subdivide each slice
    return fine, f


def _oriented_image(mask: np.ndarray, extent_lo, affine_lps):
    """vtkOrientedImageData (uint8) holding ``mask`` (k, j, i) at index offset ``extent_lo``."""
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    img = slicer.vtkOrientedImageData()
    i0, j0, k0 = (int(v) for v in extent_lo)
    K, J, I = mask.shape
    img.SetExtent(i0, i0 + I - 1, j0, j0 + J - 1, k0, k0 + K - 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    img.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras(affine_lps)))
    return img


def _rasterise(shape: StructureShape, grid_affine: np.ndarray):
    """(mask (k, j, i), index lower corner (i, j, k)) of a solid on a grid (unbounded)."""
    inv = np.linalg.inv(grid_affine)
    idx = shape.corners() @ inv[:3, :3].T + inv[:3, 3]
    lo = np.floor(idx.min(0)).astype(int)
    hi = np.ceil(idx.max(0)).astype(int)
    ii, jj, kk = (np.arange(lo[d], hi[d] + 1) for d in range(3))
    K, J, I = np.meshgrid(kk, jj, ii, indexing="ij")
    ijk = np.stack([I, J, K], -1).reshape(-1, 3).astype(np.float64)
    lps = ijk @ grid_affine[:3, :3].T + grid_affine[:3, 3]
    mask = shape.contains(lps).reshape(K.shape)
    return mask, lo


def segmentation_from_shapes(scene, shapes: Sequence[StructureShape], results: Sequence[StructureResult],
                             name: str, scan_affine, volume_node=None, node=None):
    """One segment per structure, named after it ("L4-L5", "L4"), with Slicer terminology,
    coloured by predicted grade (discs) or bone colour (VBs); tags ``SpineSSL.Grade``/``Kind``.

    The labelmaps live on ``segmentation_grid(scan_affine)`` (the scan's grid with sub-slices)
    so the saved ``.seg.nrrd`` keeps sub-slice placement; the volume node, when given, is set as
    the segmentation's source volume for display and editing.
    """
    slicer = _slicer()
    register_segmentation_converters()
    grid, _ = segmentation_grid(scan_affine)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    by_name = {r.name: r for r in results}
    geometry = None
    for shape in shapes:
        mask, lo = _rasterise(shape, grid)
        if not mask.any():
            continue
        result = by_name.get(shape.name)
        grade = None if result is None or result.grade is None else int(result.grade)
        color = GRADE_COLORS.get(grade, GRADE_COLORS[None]) if shape.kind == "IVD" else VB_COLOR
        seg_id = segmentation.AddEmptySegment(shape.name, shape.name, list(color))
        image = _oriented_image(mask, lo, grid)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, node, seg_id):
            raise InputError(f"could not create segment {shape.name}")
        segment = segmentation.GetSegment(seg_id)
        segment.SetColor(*color)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry(shape.name))
        segment.SetTag(KIND_TAG, shape.kind)
        segment.SetTag(GRADE_TAG, "" if grade is None else str(grade))
        geometry = image if geometry is None else geometry
    if geometry is not None:
        full = _oriented_image(np.zeros((1, 1, 1), np.uint8), (0, 0, 0), grid)
        segmentation.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                            slicer.vtkSegmentationConverter.SerializeImageGeometry(full))
    if volume_node is not None:
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def segment_mask(segmentation_node, segment_name: str, grid_affine, shape_kji) -> np.ndarray:
    """Binary mask (k, j, i) of one segment resampled onto a grid (nearest neighbour), read
    through Slicer's own export to a labelmap volume."""
    import vtk

    slicer = _slicer()
    scene = segmentation_node.GetScene()
    seg_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    if not seg_id:
        raise InputError(f"no segment named {segment_name!r}")
    ref = volume_node_from_scan(scene, Scan(np.zeros(shape_kji, np.float32), grid_affine), "__spinessl_ref__")
    _ensure_label_colors(scene)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__spinessl_label__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(seg_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, label, ref):
            raise InputError(f"could not export segment {segment_name!r}")
        return np.array(slicer.util.arrayFromVolume(label)) > 0
    finally:
        for n in (label, ref):
            display = n.GetDisplayNode()
            scene.RemoveNode(n)
            if display is not None:
                scene.RemoveNode(display)


def segment_centroids(segmentation_node) -> dict[str, np.ndarray]:
    """RAS centroid of every segment, from its own binary labelmap (voxel centres)."""
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    out = {}
    segmentation = segmentation_node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(n)
        image = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(seg_id, image)
        e = image.GetExtent()
        if e[1] < e[0]:
            continue
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
            e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        k, j, i = np.nonzero(values)  # Slicer hands out this segment alone, as 0/1
        if len(k) == 0:
            continue
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        ijk = np.stack([i + e[0], j + e[2], k + e[4], np.ones_like(i)], -1).astype(np.float64)
        out[segmentation.GetSegment(seg_id).GetName()] = (ijk @ _numpy_matrix(m).T)[:, :3].mean(0)
    return out


def save_segmentation(node, path) -> Path:
    """Write a segmentation node as ``.seg.nrrd`` (names, colours, terminology tags kept)."""
    return _write(_slicer().vtkMRMLSegmentationStorageNode(), node, path, "segmentation")


def load_segmentation(scene, path, name: str | None = None):
    path = _existing_file(path)
    register_segmentation_converters()
    storage = _slicer().vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    return _read(scene, "vtkMRMLSegmentationNode", storage, path, name or _stem(path), "segmentation")


def segment_info(node) -> list[dict]:
    """Name, colour and tags of every segment (for comparisons and reports)."""
    import vtk

    out = []
    segmentation = node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        s = segmentation.GetNthSegment(n)
        tags = {}
        for key in (s.GetTerminologyEntryTagName(), GRADE_TAG, KIND_TAG):
            ref = vtk.reference("")
            if s.GetTag(key, ref):
                tags[key] = str(ref)
        out.append({"name": s.GetName(), "color": tuple(round(c, 4) for c in s.GetColor()), "tags": tags})
    return out


# --------------------------------------------------------------------------------------------
# the module's workflow on one volume (used by the Slicer module's Logic and the batch script)

def output_names(volume_name: str) -> dict[str, str]:
    """Scene node names of the outputs, named after the input volume."""
    return {"levels": volume_name + LEVELS_SUFFIX, "segmentation": volume_name + SEGMENTATION_SUFFIX,
            "table": volume_name + TABLE_SUFFIX, "plot": volume_name + PLOT_SUFFIX}


def file_stem(volume_name: str) -> str:
    """A file-system-safe stem from a node name."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", volume_name).strip("._")
    return stem or "volume"


@dataclass
class SceneOutputs:
    scan: Scan
    levels: LevelSet  # as used by the extraction (corners estimated where missing)
    volumes: object  # extract.ScanVolumes
    results: list
    levels_node: object = None
    segmentation_node: object = None
    table_node: object = None
    plot_node: object = None


def prepared_levels(scan: Scan, levels: LevelSet) -> LevelSet:
    """The levels as ``extract.extract_scan`` uses them: inside the volume, corners estimated
    from neighbouring centres where only centres were given."""
    from .levels import check_in_volume, estimate_corners

    normal = scan.affine[:3, 2] / np.linalg.norm(scan.affine[:3, 2])
    return estimate_corners(check_in_volume(levels, scan), normal)


def extract_in_scene(volume_node, levels: LevelSet, config=None):
    """Extract the VB/IVD volumes of a volume node: (Scan in LPS, levels used, ScanVolumes)."""
    from . import extract

    scan = scan_from_volume_node(volume_node)
    volumes = extract.extract_scan(scan, levels, config)
    return scan, prepared_levels(scan, levels), volumes


def _node_by_name(scene, name: str, cls: str):
    node = scene.GetFirstNodeByName(name)
    return node if node is not None and node.IsA(cls) else None


def show_results(scene, volume_node, scan: Scan, levels: LevelSet, volumes,
                 results: Sequence[StructureResult] = ()) -> SceneOutputs:
    """Create (or update, when they exist) the output nodes of one volume."""
    names = output_names(volume_node.GetName())
    out = SceneOutputs(scan, levels, volumes, list(results))
    out.levels_node = markups_from_levels(
        scene, levels, names["levels"],
        node=_node_by_name(scene, names["levels"], "vtkMRMLMarkupsFiducialNode"))
    out.segmentation_node = segmentation_from_shapes(
        scene, structure_shapes(levels, volumes), results, names["segmentation"], scan.affine, volume_node,
        node=_node_by_name(scene, names["segmentation"], "vtkMRMLSegmentationNode"))
    if results:
        out.table_node = table_from_results(scene, results, names["table"],
                                            node=_node_by_name(scene, names["table"], "vtkMRMLTableNode"))
        old = _node_by_name(scene, names["plot"], "vtkMRMLPlotChartNode")
        if old is not None:
            series = [old.GetNthPlotSeriesNode(i) for i in range(old.GetNumberOfPlotSeriesNodes())]
            for n in series + [old]:
                scene.RemoveNode(n)
        if _n_classes(results):
            out.plot_node = plot_from_table(scene, out.table_node, names["plot"])
    grade_color_table(scene)
    return out


def save_outputs(outputs: SceneOutputs, out_dir, stem: str) -> dict[str, Path]:
    """``<stem>.mrk.json``, ``<stem>.seg.nrrd`` and ``<stem>.csv`` (+ schema) in ``out_dir``."""
    out_dir = Path(out_dir)
    files = {"levels": save_markups(outputs.levels_node, out_dir / f"{stem}.mrk.json"),
             "segmentation": save_segmentation(outputs.segmentation_node, out_dir / f"{stem}.seg.nrrd")}
    if outputs.table_node is not None:
        files["table"] = save_table(outputs.table_node, out_dir / f"{stem}.csv")
    return files


# --------------------------------------------------------------------------------------------
# models on one scan (in-process: grading one scan is fast enough for the GUI thread); the
# library's loaders, adapted to the results table

def results_from_grades_doc(doc: dict) -> list[StructureResult]:
    """Disc rows of the results table from a grades document (``grading.grade_volumes``)."""
    out = []
    names = doc["model"]["class_names"]
    for d in doc["discs"]:
        if not d["present"]:
            continue
        g = d["grade"]
        out.append(StructureResult(d["level"], int(g) if g is not None and str(g).isdigit() else None,
                                   [float(d["probabilities"][c]) for c in names]))
    return out


def grade_volumes(volumes, checkpoint_dir, tta: bool = True, device: str = "auto") -> list[StructureResult]:
    """Grade the extracted discs of one scan with a grading checkpoint (``spine-ssl grade-train``):
    ``grading.load_grading_model`` + ``grading.grade_volumes``, adapted to table rows."""
    from . import grading

    gm = grading.load_grading_model(checkpoint_dir, device)
    doc = grading.grade_volumes(gm, volumes.ivd, volumes.ivd_present, volumes.discs, volumes.ivd_affine,
                                grading.TTAConfig() if tta else grading.TTAConfig.none())
    return results_from_grades_doc(doc)


def compare_volumes(volumes_a, volumes_b, checkpoint_dir, threshold: float | None = None,
                    device: str = "auto") -> list[StructureResult]:
    """Per vertebral level, the distance between the pair embeddings of the same VB in two scans
    (the paper's Fig. 6; the space the pretraining's pair loss shaped: fc7, or its projection),
    and the same/different call when a threshold is given."""
    import torch

    from .pretrain import load_pretrained

    pm = load_pretrained(checkpoint_dir, device)
    both = np.flatnonzero(volumes_a.vb_present & volumes_b.vb_present)
    if len(both) == 0:
        return []
    dev = next(pm.model.parameters()).device
    with torch.inference_mode():
        za, _ = pm.model.pair_embedding(torch.as_tensor(volumes_a.vb[both], dtype=torch.float32, device=dev).unsqueeze(1))
        zb, _ = pm.model.pair_embedding(torch.as_tensor(volumes_b.vb[both], dtype=torch.float32, device=dev).unsqueeze(1))
        if pm.normalize:
            za, zb = torch.nn.functional.normalize(za, dim=1), torch.nn.functional.normalize(zb, dim=1)
        dist = torch.linalg.vector_norm(za - zb, dim=1).cpu().numpy()
    return [StructureResult(volumes_a.levels[i], distance=float(d),
                            same=None if threshold is None else bool(d <= threshold))
            for i, d in zip(both, dist)]
