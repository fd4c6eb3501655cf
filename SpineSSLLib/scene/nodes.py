"""Shared pieces of the scene layer: output names and colours, segment terminology, LPS <-> RAS,
and the Slicer helpers every part uses (storage-node read/write, scene singletons)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .. import DISC_NAMES
from ..atomic import atomic_path
from ..errors import InputError, LevelsError

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
# storage nodes: atomic writes, reads that leave nothing behind on failure

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

