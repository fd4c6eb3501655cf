"""Write a 3D volume as a real DICOM MR Image Storage series (one file per slice) with pydicom.

The volume follows ``SpineSSLLib.io.Scan`` conventions: ``array`` has shape ``(K, J, I)`` =
(slices, rows, columns) and ``affine`` maps voxel ``(i, j, k, 1)`` = (column, row, slice) to
patient LPS millimetres.  Any affine is accepted (sagittal, axial, oblique, flipped slice order):

- ImageOrientationPatient = [unit column-index direction (row cosine), unit row-index direction
  (column cosine)], i.e. ``affine[:3, 0] / |.|`` then ``affine[:3, 1] / |.|``;
- PixelSpacing = [row spacing ``|affine[:3, 1]|``, column spacing ``|affine[:3, 0]|``];
- ImagePositionPatient of file ``k`` = ``affine @ (0, 0, k, 1)``;
- SliceThickness / SpacingBetweenSlices = ``|affine[:3, 2]|`` unless the header overrides them.

Pixels: integer arrays that fit uint16 (or int16) are stored as they are; other arrays are
linearly quantised to uint16 with one RescaleSlope/RescaleIntercept for the whole series, so
``stored * slope + intercept`` reproduces the input to within half a quantisation step.
Files are Explicit VR Little Endian with a valid file meta header, written atomically.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import ConfigError

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

# Header keys the writer itself derives from array/affine; passing them is an error because the
# file would contradict its own geometry or pixel data.
_DERIVED = {
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "PixelData", "RescaleSlope", "RescaleIntercept",
    "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "InstanceNumber",
    "SliceLocation",
}


def _ds(value: float) -> str:
    """Format a float as a valid DICOM DS string (at most 16 characters)."""
    for digits in range(12, 3, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.3e}"


def _uid_from(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _pixels(array: np.ndarray) -> tuple[np.ndarray, str, str, int]:
    """Return (stored pixels, slope DS, intercept DS, PixelRepresentation)."""
    if not np.all(np.isfinite(array)):
        raise ConfigError("array holds NaN or Inf values; cannot write DICOM pixels")
    if np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)):
        lo, hi = float(array.min()), float(array.max())
        if lo >= 0 and hi <= 65535:
            return array.astype(np.uint16), "1", "0", 0
        if lo >= -32768 and hi <= 32767:
            return array.astype(np.int16), "1", "0", 1
    a = array.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    slope_s, icpt_s = _ds(slope), _ds(lo)
    slope_f, icpt_f = float(slope_s), float(icpt_s)
    stored = np.clip(np.round((a - icpt_f) / slope_f), 0, 65535).astype(np.uint16)
    return stored, slope_s, icpt_s, 0


def write_series(out_dir, array, affine, header: dict | None = None, *, series_uid: str | None = None,
                 study_uid: str | None = None, file_names: list[str] | None = None) -> list[Path]:
    """Write ``array`` (K, J, I) with voxel->LPS ``affine`` as an MR Image Storage series.

    ``header``: extra DICOM attributes by keyword (``PatientID``, ``PatientSex``, ``PatientAge``,
    ``StudyDate``, ``MagneticFieldStrength``, ``SeriesDescription``, ``SliceThickness``...).
    Geometry, pixel and UID attributes are derived here and may not be passed in ``header``.
    ``series_uid``/``study_uid`` default to UIDs derived from the content, so writing the same
    input twice gives byte-identical files.  ``file_names`` (K names, any extension or none)
    default to ``IM0001.dcm``...  Returns the written paths in slice-index order.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    out_dir = Path(out_dir)
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ConfigError(f"array must be 3D (K, J, I) with no empty axis, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ConfigError("affine must be a finite 4x4 matrix")
    K, J, I = array.shape
    col_vec, row_vec, slc_vec = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    di, dj, dk = (float(np.linalg.norm(v)) for v in (col_vec, row_vec, slc_vec))
    if min(di, dj) <= 0 or (K > 1 and dk <= 0):
        raise ConfigError("affine has a zero-length voxel axis")
    rc, cc = col_vec / di, row_vec / dj
    if abs(float(rc @ cc)) > 1e-4:
        raise ConfigError("affine row and column directions are not orthogonal; DICOM cannot store that")
    normal = np.cross(rc, cc)
    header = dict(header or {})
    for kw in header:
        if kw in _DERIVED:
            raise ConfigError(f"header key {kw} is derived from the array/affine and cannot be set")
        if tag_for_keyword(kw) is None:
            raise ConfigError(f"header key {kw} is not a DICOM keyword")
    if file_names is None:
        file_names = [f"IM{k + 1:04d}.dcm" for k in range(K)]
    if len(file_names) != K or len(set(file_names)) != K:
        raise ConfigError(f"file_names must hold {K} distinct names")
    for n in file_names:
        if not n or os.sep in n or (os.altsep and os.altsep in n) or n in (".", ".."):
            raise ConfigError(f"invalid file name {n!r}")

    stored, slope_s, icpt_s, pixrep = _pixels(array)
    if series_uid is None or study_uid is None:
        h = hashlib.sha256(np.ascontiguousarray(stored).tobytes())
        h.update(affine.tobytes())
        h.update(repr(sorted((k, str(v)) for k, v in header.items())).encode())
        digest = h.hexdigest()
        study_uid = study_uid or _uid_from("study", digest)
        series_uid = series_uid or _uid_from("series", digest, study_uid)
    frame_uid = header.pop("FrameOfReferenceUID", None) or _uid_from("frame", study_uid)
    thickness = header.pop("SliceThickness", _ds(dk if K > 1 else 1.0))
    between = header.pop("SpacingBetweenSlices", _ds(dk if K > 1 else 1.0))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(K):
        sop_uid = _uid_from("sop", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "MR"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = k + 1
        ipp = affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]
        ds.ImagePositionPatient = [_ds(float(v)) for v in ipp]
        ds.ImageOrientationPatient = [_ds(float(v)) for v in np.concatenate([rc, cc])]
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.PixelSpacing = [_ds(dj), _ds(di)]
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = between
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = J, I
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = pixrep
        ds.RescaleIntercept, ds.RescaleSlope = icpt_s, slope_s
        ds.RescaleType = "US"
        for kw, value in header.items():
            tag = tag_for_keyword(kw)
            if dictionary_VR(tag) == "SQ":
                raise ConfigError(f"header key {kw} is a sequence; not supported")
            setattr(ds, kw, value)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        path = out_dir / file_names[k]
        with atomic.atomic_path(path, suffix=".tmp") as tmp:
            _dcmwrite(tmp, ds)
        paths.append(path)
    return paths


def _dcmwrite(path, ds) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, file meta, explicit VR little endian) with
    pydicom 3 or pydicom 2.4 (the version Slicer 5.10 bundles; it has no ``enforce_file_format``)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)
