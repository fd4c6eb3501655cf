"""Series geometry: the files of one DICOM series ordered along the slice normal, its voxel->LPS
affine, and the orientation / spacing checks shared by every reader."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------------------------
# Series geometry
# --------------------------------------------------------------------------------------------

@dataclass
class SeriesGeometry:
    headers: list  # DicomHeader, ordered along the slice normal
    affine: np.ndarray  # 4x4 (i, j, k, 1) -> LPS
    normal: np.ndarray  # unit slice normal (direction of increasing k)
    slice_spacing: float
    obliquity_deg: float  # angle between the slice normal and the left-right axis

    @property
    def orientation(self) -> str:
        return plane_name(self.normal)


def plane_name(normal) -> str:
    ax = int(np.argmax(np.abs(np.asarray(normal))))
    return ("sagittal", "coronal", "axial")[ax]


def obliquity_deg(normal) -> float:
    """Angle (degrees) between a slice normal and the patient left-right axis."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    return float(np.degrees(np.arccos(min(1.0, abs(n[0])))))


def unique_instances(headers: list) -> list:
    """Drop copies of an instance (same SOPInstanceUID and position, e.g. ``IM0001 (1).dcm``).

    A "copy" whose pixel data differs is not a copy: ``DicomError`` (which file is right
    cannot be told)."""
    from ..errors import DicomError

    seen, out, same = {}, [], {}
    for h in headers:
        key = (h.sop_uid, h.rows, h.columns, None if h.ipp is None else tuple(np.round(h.ipp, 3)))
        if h.sop_uid and key in seen:
            first = seen[key]
            pair = (first.path, h.path)  # frames of one multi-frame copy: its files compared once
            if pair not in same:
                same[pair] = _same_pixel_data(*pair)
            if not same[pair]:
                raise DicomError(f"two files with the same SOPInstanceUID hold different pixel data "
                                 f"({os.path.basename(first.path)}, {os.path.basename(h.path)})",
                                 os.path.dirname(h.path))
            continue
        seen[key] = h
        out.append(h)
    return out


def _same_pixel_data(a: str, b: str) -> bool:
    """Whether two DICOM files hold the same PixelData bytes (only read for duplicate instances;
    unreadable files count as the same here: reading their pixels reports the problem)."""
    import pydicom

    try:
        pa, pb = (pydicom.dcmread(p).get("PixelData") for p in (a, b))
    except Exception:
        return True
    return pa == pb


def series_geometry(headers: list, where: str | None = None, spacing_tol: float = 0.05,
                    max_oblique_deg: float | None = 30.0) -> SeriesGeometry:
    """Order the files of one series along the slice normal and build its voxel->LPS affine.

    Slices are ordered by ImagePositionPatient projected on the normal (IOP row x column
    cosines), never by file name or InstanceNumber.  Raises ``DicomError``/``GeometryError``
    for mixed series, single slices, missing/irregular geometry, non-sagittal or too-oblique
    orientation (``max_oblique_deg``; ``None`` skips the orientation check).
    ``spacing_tol`` is the largest allowed deviation of a slice gap from the median gap, in mm.
    """
    from ..errors import DicomError, GeometryError
    from ..multiframe import expand_frames, where_of

    if not headers:
        raise DicomError("no DICOM images", where)
    headers = expand_frames(headers)  # multi-frame files: one header per frame
    where = where or where_of(headers, os.path.dirname(headers[0].path))
    headers = unique_instances(headers)
    uids = {h.series_uid for h in headers}
    if len(uids) > 1:
        raise DicomError(f"mixed series: {len(uids)} SeriesInstanceUIDs in one series", where)
    for h in headers:
        if h.iop is None or h.ipp is None or h.pixel_spacing is None:
            raise GeometryError("missing ImageOrientationPatient/ImagePositionPatient/PixelSpacing", h.path)
        if h.frames != 1:
            raise DicomError(f"multi-frame images ({h.frames} frames) are not supported", h.path)
    ref = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns) != (ref.rows, ref.columns):
            raise DicomError(f"mixed series: matrix {h.rows}x{h.columns} vs {ref.rows}x{ref.columns}", h.path)
        if np.max(np.abs(h.iop - ref.iop)) > 1e-3:
            raise DicomError("mixed series: slices with different ImageOrientationPatient", h.path)
        if np.max(np.abs(h.pixel_spacing - ref.pixel_spacing)) > 1e-3:
            raise GeometryError("inconsistent PixelSpacing within the series", h.path)
    if len(headers) < 2:
        raise GeometryError("single-slice series (a 3D sagittal stack is needed)", where)
    rc, cc = ref.iop[:3], ref.iop[3:]
    rc, cc = rc / np.linalg.norm(rc), cc / np.linalg.norm(cc)
    if abs(float(rc @ cc)) > 1e-3:
        raise GeometryError("ImageOrientationPatient row/column cosines are not orthogonal", ref.path)
    normal = np.cross(rc, cc)
    pos = np.array([h.ipp @ normal for h in headers])
    order = np.argsort(pos, kind="stable")
    headers = [headers[i] for i in order]
    pos = pos[order]
    gaps = np.diff(pos)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise DicomError(f"two slices at the same position ({os.path.basename(headers[i].path)}, "
                         f"{os.path.basename(headers[i + 1].path)}): duplicate or mixed series", where)
    step = float(np.median(gaps))
    if np.max(np.abs(gaps - step)) > spacing_tol:
        raise GeometryError(f"inconsistent slice spacing (gaps {gaps.min():.2f}..{gaps.max():.2f} mm)", where)
    first, last = headers[0].ipp, headers[-1].ipp
    kvec = (last - first) / (len(headers) - 1)
    if np.linalg.norm(kvec - normal * step) > max(0.01, 0.01 * step):
        raise GeometryError("slices are sheared (positions do not follow the slice normal, "
                            "e.g. gantry tilt)", where)
    dr, dc = ref.pixel_spacing  # row spacing, column spacing
    check_spacing((dc, dr), step, where)
    affine = np.eye(4)
    affine[:3, 0] = rc * dc
    affine[:3, 1] = cc * dr
    affine[:3, 2] = normal * step
    affine[:3, 3] = first
    obl = obliquity_deg(normal)
    if max_oblique_deg is not None:
        if plane_name(normal) != "sagittal":
            raise GeometryError(f"not sagittal ({plane_name(normal)} slices)", where)
        if obl > max_oblique_deg:
            raise GeometryError(f"oblique sagittal: {obl:.1f} deg from true sagittal "
                                f"(limit {max_oblique_deg:g})", where)
    return SeriesGeometry(headers, affine, normal, step, obl)


# Plausible voxel sizes of a spine MR scan (mm); outside them the header is wrong (e.g.
# PixelSpacing in cm or um) and every later stage would silently work on the wrong scale.
PIXEL_SPACING_MM = (0.05, 10.0)
SLICE_SPACING_MM = (0.1, 30.0)


def check_spacing(pixel_spacing, slice_spacing: float, where) -> None:
    """Raise ``GeometryError`` for in-plane (column, row) or slice spacings outside the
    plausible ranges ``PIXEL_SPACING_MM`` / ``SLICE_SPACING_MM``."""
    from ..errors import GeometryError

    ps = [float(v) for v in pixel_spacing]
    lo, hi = PIXEL_SPACING_MM
    if not all(lo <= v <= hi for v in ps):
        raise GeometryError(f"implausible pixel spacing {'x'.join(f'{v:g}' for v in ps)} mm "
                            f"(expected {lo:g}..{hi:g} mm; check PixelSpacing)", where)
    lo, hi = SLICE_SPACING_MM
    if not lo <= float(slice_spacing) <= hi:
        raise GeometryError(f"implausible slice spacing {float(slice_spacing):g} mm (expected {lo:g}..{hi:g} mm)",
                            where)


def check_sagittal(affine, where, max_oblique_deg: float = 30.0, normal=None) -> None:
    """Raise ``GeometryError`` unless the slice normal (default: of the affine's k axis) is
    within ``max_oblique_deg`` of left-right."""
    from ..errors import GeometryError

    a = np.asarray(affine)[:3, :3]
    normal = np.cross(a[:, 0], a[:, 1]) if normal is None else np.asarray(normal, dtype=np.float64)
    if plane_name(normal) != "sagittal":
        raise GeometryError(f"not sagittal ({plane_name(normal)} slices)", where)
    obl = obliquity_deg(normal)
    if obl > max_oblique_deg:
        raise GeometryError(f"oblique sagittal: {obl:.1f} deg from true sagittal (limit {max_oblique_deg:g})", where)
