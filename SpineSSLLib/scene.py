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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import DISC_NAMES, LEVEL_NAMES
from .atomic import atomic_path
from .errors import GeometryError, InputError, LevelsError
from .io import Scan
from .levels import Level, LevelSet

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

# Slicer segmentation terminology (DICOM master list, SNOMED CT codes, DICOM CID 7603).  DICOM
# has one code per lumbar/thoracic vertebra; S1 is coded as the sacrum (DICOM lists no S1 code)
# and discs share the generic "Intervertebral disc" code (the segment name carries the level).
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
    return (f"Segmentation category and type - DICOM master list~{_ANATOMICAL_STRUCTURE}~SCT^{code}^{meaning}"
            f"~^^~Anatomic codes - DICOM master list~^^~^^|")


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
    return Scan(array=array, affine=LPS_TO_RAS @ volume_to_world_ras(node), meta={"source": "mrml"})


def load_volume(scene, path, name: str | None = None):
    """Read an image file (NRRD, NIfTI, MHA, or a DICOM series: a folder or its file list) into a
    scalar volume node with Slicer's own reader."""
    slicer = _slicer()
    files = _volume_files(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(files[0]))
    if len(files) > 1:
        storage.ResetFileNameList()
        for f in files:
            storage.AddFileName(str(f))
        storage.SetSingleFile(0)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or _stem(files[0]))
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError("cannot be read as an image volume", path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def _volume_files(path) -> list[Path]:
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        else:
            files = [p]
    if not files:
        raise InputError("no image files", path)
    for f in files:
        if not f.is_file():
            raise InputError("file not found", f)
    return files


def save_volume(node, path) -> Path:
    """Write a volume node (``.nrrd``, ``.nii.gz``, ``.mha``) atomically."""
    slicer = _slicer()
    path = Path(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(1)
    with atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise InputError("could not write volume", path)
    return path


# --------------------------------------------------------------------------------------------
# levels <-> markups

def markups_from_levels(scene, levels: LevelSet, name: str, locked: bool = True, node=None):
    """A point list with one labelled control point per level at its centroid (RAS), locked.

    The four corners of each vertebral body (when known) travel in the point's description as
    ``corners_ras=[[x,y,z],...]`` so a saved ``.mrk.json`` keeps the full level geometry.
    """
    import vtk

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    else:
        node.RemoveAllControlPoints()
    for level in levels:
        r = ras_from_lps(level.centroid)
        i = node.AddControlPoint(vtk.vtkVector3d(*r), level.name)
        if level.corners is not None:
            corners = ras_from_lps(level.corners)
            node.SetNthControlPointDescription(
                i, "corners_ras=" + repr([[round(float(v), 4) for v in c] for c in corners]).replace(" ", ""))
        node.SetNthControlPointLocked(i, bool(locked))
    node.SetLocked(bool(locked))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def level_placement_markups(scene, name: str):
    """The "Place levels" helper: a point list with the seven labels T12..S1 pre-created and
    unplaced, so clicking in the viewer places them in order (superior to inferior)."""
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for level in LEVEL_NAMES:
        i = node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), level)
        node.UnsetNthControlPointPosition(i)
    node.SetMaximumNumberOfControlPoints(len(LEVEL_NAMES))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _parse_corners(description: str):
    import ast

    for part in (description or "").split(";"):
        part = part.strip()
        if part.startswith("corners_ras="):
            try:
                corners = np.array(ast.literal_eval(part[len("corners_ras="):]), dtype=np.float64)
            except (ValueError, SyntaxError):
                return None
            return corners if corners.shape == (4, 3) else None
    return None


def normalise_level_label(label: str) -> str | None:
    """``"l4"``, ``" L4 "``, ``"L4 vertebra"`` -> ``"L4"``; ``None`` when not a level name."""
    token = (label or "").strip().split(" ")[0].upper()
    return token if token in LEVEL_NAMES else None


def levels_from_markups(node) -> LevelSet:
    """A ``LevelSet`` (LPS) from a markups node whose control points are labelled T12..S1.

    Unplaced points (the placement helper's leftovers) and points with other labels are skipped
    and listed in ``issues``; a level placed twice is an error.
    """
    if node is None:
        raise LevelsError("no levels markups node selected")
    world = _markups_world_positions(node)
    levels: dict[str, Level] = {}
    issues: list[str] = []
    for i in range(node.GetNumberOfControlPoints()):
        label = node.GetNthControlPointLabel(i)
        level = normalise_level_label(label)
        if level is None:
            issues.append(f"{label}: not a level name T12..S1 (ignored)")
            continue
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            issues.append(f"{level}: not placed")
            continue
        if level in levels:
            raise LevelsError(f"level {level} is placed twice in {node.GetName()!r}")
        corners = _parse_corners(node.GetNthControlPointDescription(i))
        levels[level] = Level(name=level, centroid=lps_from_ras(world[i]),
                              corners=None if corners is None else lps_from_ras(corners))
    if not levels:
        raise LevelsError(f"{node.GetName()!r} has no placed points labelled T12..S1")
    return LevelSet(levels, issues, source="markups")


def _markups_world_positions(node) -> np.ndarray:
    out = np.zeros((node.GetNumberOfControlPoints(), 3))
    for i in range(len(out)):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out[i] = p
    return out


# --------------------------------------------------------------------------------------------
# save / load through Slicer's storage nodes

def save_markups(node, path) -> Path:
    """Write a markups node as ``.mrk.json`` (Slicer's markups schema, LPS on disk) atomically."""
    slicer = _slicer()
    path = Path(path)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    with atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise InputError("could not write markups", path)
    return path


def load_markups(scene, path, name: str | None = None):
    slicer = _slicer()
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or _stem(path))
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError("not a readable Slicer markups file", path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _stem(path) -> str:
    name = Path(path).name
    for suffix in (".mrk.json", ".seg.nrrd", ".nii.gz", ".schema.csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
