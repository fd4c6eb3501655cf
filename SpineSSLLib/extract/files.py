"""The volume file contract: ``volumes/<scan_key>.npz`` (docs/developer.md) — the one writer and
the one reader of volume files.

A volume file is a zip archive of NumPy ``.npy`` members (the ``.npz`` layout), every member
stored uncompressed inside the zip.  Since issue #17 the two large float16 arrays are members
``vb.npy.zst`` and ``ivd.npy.zst``: a complete ``.npy`` file (header + data) compressed as one
Zstandard frame with a checksum (level 1: for a 15x512^2 scan ~15 ms instead of ~200 ms for zip
deflate, about the same size; figures in docs/performance.md).  The small arrays (presence
flags, affines, level names, ...) are plain ``.npy`` members, so ``np.load`` still lists and
reads them.  Files written before issue #17 (every member a zip-deflated ``.npy``) are read the
same way: ``read_arrays`` accepts both.  Everything that reads volumes (``load_volumes``,
``data.VolumeCache``, ``grading.load_ivd_arrays``, the baselines) goes through ``read_arrays``.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from .. import DISC_NAMES
from ..errors import ManifestError
from .volumes import ScanVolumes

COMPRESSED = ("vb", "ivd")
"""Arrays stored as Zstandard-compressed ``.npy`` (``NAME.npy.zst``); the rest are plain ``.npy``."""
ZSTD_LEVEL = 1
REQUIRED = ("vb", "vb_present", "vb_affine", "ivd", "ivd_present", "ivd_affine", "levels")


def _zstd():
    try:
        import zstandard
    except ImportError:  # a dependency (pyproject); only a broken install lands here
        raise ManifestError("volume files are Zstandard-compressed: install the Python package "
                            "'zstandard' (pip install zstandard)") from None
    return zstandard


def _npy_zst(arr: np.ndarray, cctx) -> bytes:
    """A ``.npy`` file (format 1.0 header + C-order data) as one Zstandard frame."""
    arr = np.ascontiguousarray(arr)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    return cctx.compress(b"".join([head.getvalue(), memoryview(arr).cast("B") if arr.size else b""]))


def write_arrays(path, arrays: dict, compressed=COMPRESSED) -> None:
    """Write ``arrays`` (name -> array) as a volume file, atomically; names in ``compressed`` as
    Zstandard ``.npy.zst`` members, the others as plain ``.npy``.  Deterministic: the same arrays
    give the same file, byte for byte (no write-time timestamps)."""
    from .. import atomic

    cctx = _zstd().ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True) if any(k in compressed for k in arrays) else None
    with atomic.atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                # fixed member timestamps (ZipInfo's 1980-01-01): the same arrays give the same file
                if name in compressed:
                    zf.writestr(_member(name + ".npy.zst"), _npy_zst(np.asarray(arr), cctx))
                else:
                    with zf.open(_member(name + ".npy"), "w") as f:
                        np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _member(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name)  # date_time 1980-01-01 00:00:00
    zi.external_attr = 0o644 << 16
    return zi


def _float16(a) -> np.ndarray:
    """float32 -> float16 as ``astype`` (round to nearest even; identical bits), through torch's
    vectorised conversion: ~10x faster than NumPy's for a scan's 9 MB of volumes."""
    a = np.asarray(a)
    if a.dtype == np.float32 and a.flags.c_contiguous and a.size:
        import torch

        return torch.from_numpy(a).half().numpy()
    return a.astype(np.float16)


def read_arrays(path, names=None) -> dict[str, np.ndarray]:
    """Arrays of a volume file (this format or the pre-#17 deflated ``.npz``): all of them, or
    only ``names`` (only those members are read and decompressed).  Bad files -> ``ManifestError``
    naming the file: missing, truncated / not a zip, a member missing or undecodable."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ManifestError("volume file listed in volumes.csv is missing", path) from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ManifestError(f"cannot read volume file ({type(e).__name__}: truncated or not a SpineSSL "
                            "volume file)", path) from None
    out = {}
    with zf:
        members = {}
        for m in zf.namelist():
            if m.endswith(".npy.zst"):
                members[m[:-8]] = m
            elif m.endswith(".npy"):
                members.setdefault(m[:-4], m)
        want = list(members) if names is None else list(names)
        missing = [n for n in want if n not in members]
        if missing:
            raise ManifestError(f"not a SpineSSL volume file (no {', '.join(missing)})", path)
        for n in want:
            m = members[n]
            try:
                data = zf.read(m)
                if m.endswith(".zst"):
                    data = _zstd().ZstdDecompressor().decompress(data)
                out[n] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            except ManifestError:
                raise
            except Exception as e:  # zlib/zstd/zip/npy-header errors of a damaged member
                raise ManifestError(f"cannot read member {m} of the volume file ({type(e).__name__}: "
                                    "truncated or damaged)", path) from None
    return out


def save_volumes(path, sv: ScanVolumes, scan_affine=None, scan_shape=None) -> None:
    arrays = dict(
        vb=_float16(sv.vb), vb_present=sv.vb_present, vb_affine=sv.vb_affine.astype(np.float64),
        ivd=_float16(sv.ivd), ivd_present=sv.ivd_present, ivd_affine=sv.ivd_affine.astype(np.float64),
        levels=np.array(sv.levels), discs=np.array(sv.discs),
        vb_mid_slice=sv.vb_mid_slice, ivd_mid_slice=sv.ivd_mid_slice,
        vb_width_mm=sv.vb_width_mm, vb_median=sv.vb_median,
    )
    if scan_affine is not None:
        arrays["scan_affine"] = np.asarray(scan_affine, dtype=np.float64)
    if scan_shape is not None:
        arrays["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
    write_arrays(path, arrays)


def load_volumes(path) -> ScanVolumes:
    d = read_arrays(path)
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise ManifestError(f"not a SpineSSL volume file (no {', '.join(missing)})", path)
    return ScanVolumes(
        vb=d["vb"].astype(np.float32), vb_present=d["vb_present"], vb_affine=d["vb_affine"],
        ivd=d["ivd"].astype(np.float32), ivd_present=d["ivd_present"], ivd_affine=d["ivd_affine"],
        levels=tuple(str(x) for x in d["levels"]), discs=tuple(str(x) for x in d.get("discs", DISC_NAMES)),
        vb_mid_slice=d.get("vb_mid_slice"), ivd_mid_slice=d.get("ivd_mid_slice"),
        vb_width_mm=d.get("vb_width_mm"), vb_median=d.get("vb_median"))
