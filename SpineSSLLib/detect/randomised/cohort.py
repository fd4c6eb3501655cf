"""A cohort of randomised scans on disk, for evaluating a detector with ``spine-ssl detect
--reference``: ``OUT/images/<key>.nii.gz`` (uint16, native pixels) and ``OUT/truth/<key>.json``
(the levels T12..S1 shown in the image, ``spinessl.levels/1``), plus ``OUT/cohort.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import atomic


def write_image(path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A (K, J, I) array with voxel -> LPS ``affine`` as NIfTI, scaled into uint16."""
    import SimpleITK as sitk

    a = np.asarray(array, dtype=np.float64)
    a = np.clip(np.round(a / max(float(np.percentile(a, 99.9)), 1e-6) * 3000.0), 0, 65535).astype(np.uint16)
    A = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(a))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in A[:3, 3]])
    img.SetDirection([float(v) for v in (A[:3, :3] / spacing).reshape(-1)])
    path = Path(path)
    with atomic.atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path


def write_cohort(out, seed: int, n: int, workers: int = 1, cache=None) -> list[str]:
    """Cases 0..n-1 of ``seed`` (labels cached in ``cache``, default OUT/cache), one random
    appearance each; returns the keys."""
    from ...progress import track
    from .cases import build_cases, scan

    out = Path(out)
    cases = build_cases(cache or out / "cache", seed, n, workers=workers, desc="cohort scans")
    keys, rows = [], []
    for i, case in enumerate(track(cases, desc="writing scans", unit="scan")):
        sc, contrast = scan(case, np.random.default_rng([seed, i, 99]))
        write_image(out / "images" / f"{case.key}.nii.gz", sc.array, sc.affine)
        d = {"schema": "spinessl.levels/1", "key": case.key}
        d.update(case.levels.to_dict())
        atomic.write_json(out / "truth" / f"{case.key}.json", d)
        keys.append(case.key)
        rows.append({"key": case.key, "contrast": contrast, "sacrum_style": case.sacrum_style,
                     "sacrum_in_view": case.sacrum_in_view, "levels": " ".join(case.levels.names),
                     "native_mm": round(case.label_mm / case.factor, 3), "slices": int(case.tissue.shape[0])})
    atomic.write_csv(out / "scans.csv", rows, list(rows[0]) if rows else ["key"])
    atomic.write_json(out / "cohort.json", {"generator": "SpineSSLLib.detect.randomised", "seed": seed, "scans": n})
    return keys


def sample_figure(png, seed: int = 1000, n: int = 8, cache=None) -> None:
    """A row of training samples of randomised cases 0..n-1 of ``seed`` (one random appearance
    each, slice nearest the spine's middle) over their training classes: what the network sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..model import DetectorConfig
    from ..targets import N_CLASSES
    from .cases import build_cases, sample

    cfg = DetectorConfig()
    cases = build_cases(cache or Path(png).parent / "figure-cache", seed, n, desc="figure cases")
    fig, ax = plt.subplots(2, n, figsize=(2.2 * n, 5.6))
    for i, case in enumerate(cases):
        spine = case.spine_slices
        k = int(spine[len(spine) // 2])
        x, t = sample(case, k, cfg.context, cfg, np.random.default_rng([seed, i, 5]))
        ax[0, i].imshow(x[cfg.context], cmap="gray", vmin=0, vmax=max(float(x.max()), 1e-6))
        ax[0, i].set_title(f"{case.sacrum_style}", fontsize=7)
        ax[1, i].imshow(t[:N_CLASSES].argmax(axis=0), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        for a in ax[:, i]:
            a.axis("off")
    ax[1, 0].set_title("classes: above T12, T12..S1, sacrum", fontsize=7, loc="left")
    fig.tight_layout()
    with atomic.atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
