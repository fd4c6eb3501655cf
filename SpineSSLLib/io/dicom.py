"""DICOM files: one file's header facts (``read_header``, no pixel data), file listing, and the
tolerant value parsers the headers use."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# DICOM headers
# --------------------------------------------------------------------------------------------

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


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

    from ..errors import DicomError

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
    from ..multiframe import is_multiframe, multiframe_header

    # Enhanced / Legacy Converted Enhanced MR: per-frame geometry from the functional groups
    return multiframe_header(ds, header) if is_multiframe(ds, header.frames) else header


def iter_files(root) -> list[str]:
    """All regular files under ``root`` (any nesting, any names), sorted, hidden files skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out
