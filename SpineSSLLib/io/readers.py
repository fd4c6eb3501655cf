"""Readers: a DICOM series, a NIfTI/NRRD/MHA file (SimpleITK), or either by path (``read_scan``)
into a ``Scan``; volume files' axes permuted to the sagittal convention."""

from __future__ import annotations

import os

import numpy as np

from .dicom import is_image_file, iter_files, read_header
from .geometry import check_sagittal, check_spacing, series_geometry
from .pixels import check_content, read_pixels
from .scan import Scan


def read_dicom_series(source, max_oblique_deg: float | None = 30.0, spacing_tol: float = 0.05,
                      headers: list | None = None) -> Scan:
    """Read a DICOM series into a ``Scan``.

    ``source``: a folder holding exactly one series, or a list of file paths.  ``headers`` (from
    ``read_header``) may be passed to avoid reading them twice.  ``Scan.meta`` holds
    non-identifying facts plus ``series_instance_uid`` (used to look up level files).
    """
    from ..errors import DicomError

    if headers is None:
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isdir(source):
                raise DicomError("not a folder of DICOM files", source)
            files, where = iter_files(source), os.fspath(source)
        else:
            files = [os.fspath(p) for p in source]
            where = os.path.dirname(files[0]) if files else None
        headers = [h for h in (read_header(f) for f in files) if h is not None]
        if not headers:
            raise DicomError("no DICOM images found", where)
    else:
        where = os.path.dirname(headers[0].path) if headers else None
    from ..multiframe import choose_stack, expand_frames, files_of, frame_pixels, stacks, where_of

    headers = expand_frames(headers)  # multi-frame files: one header per frame, grouped in stacks
    where = where_of(headers, where) if headers else where
    groups = stacks(headers)
    headers = groups[choose_stack(groups, where, spacing_tol, max_oblique_deg)] if headers else headers
    geom = series_geometry(headers, where, spacing_tol=spacing_tol, max_oblique_deg=max_oblique_deg)
    ref = geom.headers[0]
    array = np.empty((len(geom.headers), ref.rows, ref.columns), dtype=np.float32)
    frames: dict = {}  # multi-frame files decoded once
    for k, h in enumerate(geom.headers):
        px = read_pixels(h.path) if getattr(h, "frame", None) is None else frame_pixels(h, frames)
        if px.shape != (ref.rows, ref.columns):
            raise DicomError(f"pixel data shape {px.shape} does not match Rows/Columns", h.path)
        array[k] = px
    check_content(array, where)
    meta = {
        "format": "dicom",
        "series_instance_uid": ref.series_uid,
        "series_description": ref.series_description,
        "echo_time_ms": ref.echo_time,
        "field_strength": ref.field_strength,
        "obliquity_deg": geom.obliquity_deg,
        "n_files": len(files_of(geom.headers)),
    }
    return Scan(array, geom.affine, meta)



# --------------------------------------------------------------------------------------------
# NIfTI / NRRD / MHA (SimpleITK)
# --------------------------------------------------------------------------------------------

def read_image(path, sagittal: bool = True) -> Scan:
    """Read a NIfTI/NRRD/MHA volume with SimpleITK into a ``Scan`` (LPS, as ITK).

    With ``sagittal`` (default) the axes are permuted (not resampled) so that ``k`` is the
    axis closest to left-right, ``j`` the remaining axis closest to superior-inferior and ``i``
    the anterior-posterior one, matching the DICOM sagittal convention.
    """
    import SimpleITK as sitk

    from ..errors import InputError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError("file not found", path)
    try:
        img = sitk.ReadImage(path)
    except Exception as e:
        raise InputError(f"cannot read image ({str(e).strip().splitlines()[-1][:120]})", path) from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expected a 3D scalar image, got {img.GetDimension()}D with "
                         f"{img.GetNumberOfComponentsPerPixel()} component(s)", path)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) = (k, j, i)
    d = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = d * np.array(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    scan = Scan(arr, affine, {"format": os.path.basename(path).split(".", 1)[-1].lower()})
    scan.meta["acquired_normal"] = acquired_normal(affine)
    if sagittal:
        scan = to_sagittal_axes(scan)
    return scan


def acquired_normal(affine, anisotropy: float = 1.5) -> list | None:
    """Direction of the acquisition's slice axis for a volume file: the voxel axis with the
    largest spacing when it is at least ``anisotropy`` x the others (2D multi-slice scans),
    else ``None`` (near-isotropic 3D acquisitions can be read in any plane)."""
    a = np.asarray(affine)[:3, :3]
    sp = np.linalg.norm(a, axis=0)
    ax = int(np.argmax(sp))
    others = [sp[i] for i in range(3) if i != ax]
    if sp[ax] < anisotropy * max(others):
        return None
    return [float(v) for v in a[:, ax] / sp[ax]]


def axis_permutation_for_sagittal(affine) -> tuple[int, int, int]:
    """Voxel axes (i, j, k order) chosen so that k ~ L-R, j ~ S-I, i ~ A-P."""
    dirs = np.abs(np.asarray(affine)[:3, :3] / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    k_ax = int(np.argmax(dirs[0]))
    rest = [a for a in range(3) if a != k_ax]
    j_ax = max(rest, key=lambda a: dirs[2, a])
    i_ax = [a for a in rest if a != j_ax][0]
    return i_ax, j_ax, k_ax


def to_sagittal_axes(scan: Scan) -> Scan:
    """Permute voxel axes so k is the left-right axis (no resampling, no flips)."""
    perm = axis_permutation_for_sagittal(scan.affine)
    if perm == (0, 1, 2):
        arr = np.ascontiguousarray(scan.array, dtype=np.float32)
        return Scan(arr, scan.affine, dict(scan.meta))
    # array axes are (k, j, i) = voxel axes (2, 1, 0)
    arr_axes = [2 - perm[2], 2 - perm[1], 2 - perm[0]]
    arr = np.ascontiguousarray(np.transpose(scan.array, arr_axes), dtype=np.float32)
    aff = np.eye(4)
    aff[:3, :3] = scan.affine[:3, list(perm)]
    aff[:3, 3] = scan.affine[:3, 3]
    return Scan(arr, aff, dict(scan.meta))


def read_scan(path, max_oblique_deg: float | None = 30.0) -> Scan:
    """A folder -> DICOM series; a .nii/.nii.gz/.nrrd/.mha/.mhd file -> SimpleITK; a multi-frame
    DICOM file (Enhanced MR) -> its series."""
    from ..errors import InputError

    if os.path.isdir(path):
        return read_dicom_series(path, max_oblique_deg=max_oblique_deg)
    if is_image_file(path):
        scan = read_image(path)
        check_content(scan.array, path)
        if max_oblique_deg is not None:
            check_sagittal(scan.affine, path, max_oblique_deg, scan.meta.get("acquired_normal"))
        if scan.shape[0] < 2:
            from ..errors import GeometryError

            raise GeometryError("single-slice volume (a 3D sagittal stack is needed)", path)
        check_spacing(scan.spacing[:2], scan.spacing[2], path)
        return scan
    if os.path.isfile(path):  # a multi-frame DICOM file holds a whole series
        from ..multiframe import MultiFrameHeader

        header = read_header(path)
        if isinstance(header, MultiFrameHeader):
            return read_dicom_series([os.fspath(path)], max_oblique_deg=max_oblique_deg, headers=[header])
    raise InputError("not a folder of DICOM files, a multi-frame DICOM file nor a NIfTI/NRRD/MHA image", path)
