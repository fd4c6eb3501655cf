"""Extraction geometry -> segmentation (one segment per disc / vertebral body, coloured by grade, with
Slicer terminology), segment masks and centroids, ``.seg.nrrd`` files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..io import Scan
from ..levels import LevelSet
from .nodes import (GRADE_COLORS, GRADE_TAG, KIND_TAG, VB_COLOR, _ensure_label_colors, _existing_file, _numpy_matrix,
                    _read, _slicer, _stem, _vtk_matrix, _write, ijk_to_ras, register_segmentation_converters,
                    terminology_entry)
from .results import StructureResult
from .volumes import volume_node_from_scan

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

