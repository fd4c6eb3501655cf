"""Pixel data: the one DICOM pixel decoder (single- and multi-frame files), the modality rescale,
and the content check of a finished volume."""

from __future__ import annotations

import numpy as np

from ..errors import DicomError, ImageContentError
from .dicom import _float


def check_content(array: np.ndarray, where) -> None:
    """Raise ``ImageContentError`` for NaN/Inf or constant images."""
    if not np.all(np.isfinite(array)):
        raise ImageContentError("image holds NaN or Inf values", where)
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise ImageContentError("constant image (no contrast)", where)


def decode(path: str):
    """(dataset, stored pixel values) of a DICOM file, decoded by pydicom (all frames of a
    multi-frame file).  ``DicomError`` naming the file when there is no pixel data or it cannot
    be decoded (with the compressed transfer syntax's name and pydicom's reason, e.g. a missing
    decoder plugin)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise DicomError("missing pixel data", path)
        return ds, ds.pixel_array
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


def rescale(px: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """Stored values -> float32 modality values (``px * RescaleSlope + RescaleIntercept``)."""
    out = px.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def read_pixels(path: str) -> np.ndarray:
    """Rescaled pixels (float32) of a single-frame DICOM file."""
    ds, px = decode(path)
    return rescale(px, _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept")))
