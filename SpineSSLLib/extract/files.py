"""The volume file contract: ``volumes/<scan_key>.npz`` (docs/developer.md)."""

from __future__ import annotations

import numpy as np

from .. import DISC_NAMES
from .volumes import ScanVolumes


def save_volumes(path, sv: ScanVolumes, scan_affine=None, scan_shape=None) -> None:
    from .. import atomic

    arrays = dict(
        vb=sv.vb.astype(np.float16), vb_present=sv.vb_present, vb_affine=sv.vb_affine.astype(np.float64),
        ivd=sv.ivd.astype(np.float16), ivd_present=sv.ivd_present, ivd_affine=sv.ivd_affine.astype(np.float64),
        levels=np.array(sv.levels), discs=np.array(sv.discs),
        vb_mid_slice=sv.vb_mid_slice, ivd_mid_slice=sv.ivd_mid_slice,
        vb_width_mm=sv.vb_width_mm, vb_median=sv.vb_median,
    )
    if scan_affine is not None:
        arrays["scan_affine"] = np.asarray(scan_affine, dtype=np.float64)
    if scan_shape is not None:
        arrays["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
    # a standard .npz (zip of .npy members, np.load reads it), deflate level 1: ~4x faster than
    # np.savez_compressed's default level for about 10% larger files
    import zipfile

    with atomic.atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def load_volumes(path) -> ScanVolumes:
    import zipfile

    from ..errors import ManifestError

    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ManifestError(f"cannot read volume file ({type(e).__name__}: truncated or not a SpineSSL .npz)",
                            path) from e
    missing = [k for k in ("vb", "vb_present", "vb_affine", "ivd", "ivd_present", "ivd_affine", "levels")
               if k not in d]
    if missing:
        raise ManifestError(f"not a SpineSSL volume file (no {', '.join(missing)})", path)
    return ScanVolumes(
        vb=d["vb"].astype(np.float32), vb_present=d["vb_present"], vb_affine=d["vb_affine"],
        ivd=d["ivd"].astype(np.float32), ivd_present=d["ivd_present"], ivd_affine=d["ivd_affine"],
        levels=tuple(str(x) for x in d["levels"]), discs=tuple(str(x) for x in d.get("discs", DISC_NAMES)),
        vb_mid_slice=d.get("vb_mid_slice"), ivd_mid_slice=d.get("ivd_mid_slice"),
        vb_width_mm=d.get("vb_width_mm"), vb_median=d.get("vb_median"))
