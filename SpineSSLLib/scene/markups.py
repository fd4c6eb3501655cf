"""Levels <-> markups point lists (``.mrk.json`` through Slicer's storage node), and levels from a
label-map or segmentation node."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES
from ..errors import LevelsError
from ..levels import LevelSet
from .nodes import (_ensure_label_colors, _ensure_selection_node, _existing_file, _read, _slicer, _stem, _write,
                    ras_from_lps)
from .volumes import scan_from_volume_node

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
    from .. import levels as levels_mod

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
    from .. import levels as L

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

    from .. import levels as L
    from ..labelmaps import LabelMapping, segment_structure

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

