"""Image input/output: the ``Scan`` structure and readers for DICOM series and NIfTI/NRRD/MHA.

Conventions used everywhere in SpineSSLLib:
- ``Scan.array`` is float32 with shape ``(K, J, I)`` = (sagittal slices, rows, columns).
- ``Scan.affine`` is a 4x4 matrix mapping the voxel index ``(i, j, k, 1)`` (column, row, slice)
  to patient **LPS** millimetres (DICOM convention).  Slicer's RAS appears only in ``scene``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scan:
    array: np.ndarray  # (K, J, I) float32
    affine: np.ndarray  # 4x4, (i, j, k, 1) -> LPS mm
    meta: dict = field(default_factory=dict)  # non-identifying acquisition facts only

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (di, dj, dk) in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def index_to_lps(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps) -> np.ndarray:
        lps = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return lps @ inv[:3, :3].T + inv[:3, 3]


# --------------------------------------------------------------------------------------------
# DICOM headers
# --------------------------------------------------------------------------------------------

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


@dataclass
class DicomHeader:
    """Header facts of one DICOM image file (read without pixel data).

    ``patient_id``/``patient_name``/``study_date`` are identifying: they live only in memory,
    are used for grouping and pseudonymous keys, and are never written by SpineSSL.
    """

    path: str
    series_uid: str
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    series_description: str
    series_number: int | None
    echo_time: float | None
    field_strength: float | None
    iop: np.ndarray | None  # (6,)
    ipp: np.ndarray | None  # (3,)
    pixel_spacing: np.ndarray | None  # (2,) row spacing, column spacing
    rows: int
    columns: int
    instance_number: int | None
    slice_thickness: float | None
    frames: int
    manufacturer: str = ""
    sop_uid: str = ""
    patient_sex: str = ""  # PatientSex (M/F/O)
    patient_age: str = ""  # PatientAge ("045Y"): identifying, in memory only (index writes a decade bin)
    birth_date: str = ""  # PatientBirthDate: identifying, in memory only


def is_image_file(path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _float(v) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _int(v) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _vec(v, n: int) -> np.ndarray | None:
    if v is None:
        return None
    try:
        a = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a if a.shape == (n,) and np.all(np.isfinite(a)) else None


def read_header(path) -> DicomHeader | None:
    """Read one file's header (no pixel data).

    Returns ``None`` for files that are not DICOM images (text files, DICOMDIR, structured
    reports...).  Raises ``DicomError`` for a DICOM file that is truncated or has no pixel data.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from .errors import DicomError

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise DicomError(f"cannot read file ({e.strerror or type(e).__name__})", path) from e
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    try:
        # defer_size: big values (pixel data) are skipped, their offset and length recorded
        ds = pydicom.dcmread(path, defer_size=1024, force=not has_preamble)
    except InvalidDicomError:
        return None
    except Exception as e:  # pydicom raises many types on corrupt input
        if has_preamble:
            raise DicomError(f"unreadable DICOM ({type(e).__name__}: {str(e).splitlines()[0][:120]})", path) from e
        return None
    meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if meta_class == DICOMDIR_CLASS:
        return None
    if "SeriesInstanceUID" not in ds or "SOPClassUID" not in ds:
        if has_preamble:
            raise DicomError("truncated or incomplete DICOM (no SeriesInstanceUID/SOPClassUID)", path)
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # not an image (report, presentation state...)
    raw = ds._dict.get(0x7FE00010)  # PixelData, possibly deferred
    if raw is None:
        raise DicomError("missing pixel data", path)
    tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    if tell is not None and length not in (None, 0xFFFFFFFF) and tell + length > os.path.getsize(path):
        raise DicomError(f"truncated DICOM (pixel data needs {tell + length} bytes, file has "
                         f"{os.path.getsize(path)})", path)
    name = ds.get("PatientName", "")
    header = DicomHeader(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_name=str(name or ""),
        study_date=str(ds.get("StudyDate", "") or ds.get("SeriesDate", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or ""),
        series_number=_int(ds.get("SeriesNumber")),
        echo_time=_float(ds.get("EchoTime")),
        field_strength=_float(ds.get("MagneticFieldStrength")),
        iop=_vec(ds.get("ImageOrientationPatient"), 6),
        ipp=_vec(ds.get("ImagePositionPatient"), 3),
        pixel_spacing=_vec(ds.get("PixelSpacing"), 2),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        instance_number=_int(ds.get("InstanceNumber")),
        slice_thickness=_float(ds.get("SliceThickness")),
        frames=_int(ds.get("NumberOfFrames")) or 1,
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        patient_sex=str(ds.get("PatientSex", "") or "").strip(),
        patient_age=str(ds.get("PatientAge", "") or "").strip(),
        birth_date=str(ds.get("PatientBirthDate", "") or "").strip(),
    )
    from .multiframe import is_multiframe, multiframe_header

    # Enhanced / Legacy Converted Enhanced MR: per-frame geometry from the functional groups
    return multiframe_header(ds, header) if is_multiframe(ds, header.frames) else header


def iter_files(root) -> list[str]:
    """All regular files under ``root`` (any nesting, any names), sorted, hidden files skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


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
    from .errors import DicomError

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
    from .errors import DicomError, GeometryError
    from .multiframe import expand_frames, where_of

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
    from .errors import GeometryError

    ps = [float(v) for v in pixel_spacing]
    lo, hi = PIXEL_SPACING_MM
    if not all(lo <= v <= hi for v in ps):
        raise GeometryError(f"implausible pixel spacing {'x'.join(f'{v:g}' for v in ps)} mm "
                            f"(expected {lo:g}..{hi:g} mm; check PixelSpacing)", where)
    lo, hi = SLICE_SPACING_MM
    if not lo <= float(slice_spacing) <= hi:
        raise GeometryError(f"implausible slice spacing {float(slice_spacing):g} mm (expected {lo:g}..{hi:g} mm)",
                            where)


# --------------------------------------------------------------------------------------------
# Pixel data
# --------------------------------------------------------------------------------------------

def check_content(array: np.ndarray, where) -> None:
    """Raise ``ImageContentError`` for NaN/Inf or constant images."""
    from .errors import ImageContentError

    if not np.all(np.isfinite(array)):
        raise ImageContentError("image holds NaN or Inf values", where)
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise ImageContentError("constant image (no contrast)", where)


def _read_pixels(path: str) -> np.ndarray:
    import pydicom

    from .errors import DicomError

    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise DicomError("missing pixel data", path)
        px = ds.pixel_array
    except DicomError:
        raise
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) if "ds" in locals() else None
        if ts is not None and not ts.is_compressed:
            ts = None
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]  # pydicom lists missing plugins
        detail = f"{type(e).__name__}: {' '.join(lines)[:300]}"
        raise DicomError(f"cannot decode pixel data{f' in transfer syntax {ts.name}' if ts else ''} ({detail})",
                         path) from e
    slope = _float(ds.get("RescaleSlope"))
    icpt = _float(ds.get("RescaleIntercept"))
    out = px.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if icpt:
        out += np.float32(icpt)
    return out


def read_dicom_series(source, max_oblique_deg: float | None = 30.0, spacing_tol: float = 0.05,
                      headers: list | None = None) -> Scan:
    """Read a DICOM series into a ``Scan``.

    ``source``: a folder holding exactly one series, or a list of file paths.  ``headers`` (from
    ``read_header``) may be passed to avoid reading them twice.  ``Scan.meta`` holds
    non-identifying facts plus ``series_instance_uid`` (used to look up level files).
    """
    from .errors import DicomError

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
    from .multiframe import choose_stack, expand_frames, files_of, frame_pixels, stacks, where_of

    headers = expand_frames(headers)  # multi-frame files: one header per frame, grouped in stacks
    where = where_of(headers, where) if headers else where
    groups = stacks(headers)
    headers = groups[choose_stack(groups, where, spacing_tol, max_oblique_deg)] if headers else headers
    geom = series_geometry(headers, where, spacing_tol=spacing_tol, max_oblique_deg=max_oblique_deg)
    ref = geom.headers[0]
    array = np.empty((len(geom.headers), ref.rows, ref.columns), dtype=np.float32)
    frames: dict = {}  # multi-frame files decoded once
    for k, h in enumerate(geom.headers):
        px = _read_pixels(h.path) if getattr(h, "frame", None) is None else frame_pixels(h, frames)
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

    from .errors import InputError

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
    from .errors import InputError

    if os.path.isdir(path):
        return read_dicom_series(path, max_oblique_deg=max_oblique_deg)
    if is_image_file(path):
        scan = read_image(path)
        check_content(scan.array, path)
        if max_oblique_deg is not None:
            check_sagittal(scan.affine, path, max_oblique_deg, scan.meta.get("acquired_normal"))
        if scan.shape[0] < 2:
            from .errors import GeometryError

            raise GeometryError("single-slice volume (a 3D sagittal stack is needed)", path)
        check_spacing(scan.spacing[:2], scan.spacing[2], path)
        return scan
    if os.path.isfile(path):  # a multi-frame DICOM file holds a whole series
        from .multiframe import MultiFrameHeader

        header = read_header(path)
        if isinstance(header, MultiFrameHeader):
            return read_dicom_series([os.fspath(path)], max_oblique_deg=max_oblique_deg, headers=[header])
    raise InputError("not a folder of DICOM files, a multi-frame DICOM file nor a NIfTI/NRRD/MHA image", path)


def check_sagittal(affine, where, max_oblique_deg: float = 30.0, normal=None) -> None:
    """Raise ``GeometryError`` unless the slice normal (default: of the affine's k axis) is
    within ``max_oblique_deg`` of left-right."""
    from .errors import GeometryError

    a = np.asarray(affine)[:3, :3]
    normal = np.cross(a[:, 0], a[:, 1]) if normal is None else np.asarray(normal, dtype=np.float64)
    if plane_name(normal) != "sagittal":
        raise GeometryError(f"not sagittal ({plane_name(normal)} slices)", where)
    obl = obliquity_deg(normal)
    if obl > max_oblique_deg:
        raise GeometryError(f"oblique sagittal: {obl:.1f} deg from true sagittal (limit {max_oblique_deg:g})", where)
