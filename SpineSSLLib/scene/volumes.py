"""Volume nodes <-> ``Scan`` (IJK->RAS = diag(-1, -1, 1, 1) @ Scan.affine), and volume files read
with Slicer's own readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError
from ..io import Scan
from .nodes import LPS_TO_RAS, _numpy_matrix, _read, _slicer, _stem, _vtk_matrix, _write, ijk_to_ras

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

