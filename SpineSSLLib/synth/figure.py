"""The docs picture: one synthetic subject at baseline and follow-up, ground truth drawn on.

    .venv/bin/python -m SpineSSLLib.synth.figure docs/images/synthetic_subject.png

Generates a one-subject cohort (seed 0, one follow-up) in a temporary folder, reads the DICOM
series back with SimpleITK, and draws the mid-sagittal slice of each visit with the vertebra
outlines (GT corners), level names and disc grades.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def draw(cohort: Path, out_png: Path, subject: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from .. import atomic

    truths = [json.loads(p.read_text()) for p in sorted((cohort / "truth").glob("*.json"))]
    if subject is None:
        subject = next(t["subject_id"] for t in truths if t["visit"] > 0)
    visits = sorted((t for t in truths if t["subject_id"] == subject), key=lambda t: t["visit"])
    fig, axes = plt.subplots(1, len(visits), figsize=(4.2 * len(visits), 4.6), dpi=80)
    for ax, t in zip(np.atleast_1d(axes), visits):
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(cohort / t["dicom_dir"])))
        img = r.Execute()
        arr = sitk.GetArrayFromImage(img)
        l3 = next(l for l in t["levels"]["levels"] if l["name"] == "L3")
        k = int(round(img.TransformPhysicalPointToContinuousIndex(l3["centroid_lps"])[2]))
        ax.imshow(arr[k], cmap="gray", vmin=0, vmax=float(np.percentile(arr[k], 99.7)))
        for lvl in t["levels"]["levels"]:
            pts = np.array([img.TransformPhysicalPointToContinuousIndex(c) for c in lvl["corners_lps"]])
            ax.plot(np.r_[pts[:, 0], pts[0, 0]], np.r_[pts[:, 1], pts[0, 1]], "-", color="#ff5050", lw=0.8)
            c = img.TransformPhysicalPointToContinuousIndex(lvl["centroid_lps"])
            ax.text(c[0] + 0.09 * arr.shape[2], c[1], lvl["name"], color="#ffd040", fontsize=7, va="center")
        for d in t["discs"]:
            c = img.TransformPhysicalPointToContinuousIndex(d["centroid_lps"])
            g = "-" if d["grade"] is None else str(d["grade"])
            ax.text(c[0] - 0.13 * arr.shape[2], c[1], f"grade {g}", color="#60d0ff", fontsize=6.5, va="center", ha="right")
        ax.set_title(f"{t['subject_id']} visit {t['visit']}: age {t['age_years']:.0f}, {t['field_strength']:.1f} T,"
                     f" +{t['interval_days'] / 365.25:.1f} y", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    small = io.BytesIO()  # palette PNG: 48 greys + the overlay colours (noisy MR compresses poorly)
    rgb = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    overlay = np.array([[255, 80, 80], [255, 208, 64], [96, 208, 255]])
    grey = rgb.mean(-1)
    idx = np.clip(np.round(grey / 255 * 47), 0, 47).astype(np.uint8)
    colourful = (rgb.max(-1) - rgb.min(-1)) > 40
    near = np.argmin(((rgb[..., None, :] - overlay) ** 2).sum(-1), axis=-1)
    idx = np.where(colourful, 48 + near, idx).astype(np.uint8)
    pal = [int(round(g / 47 * 255)) for g in range(48) for _ in range(3)] + overlay.reshape(-1).tolist()
    img = Image.fromarray(idx, mode="P")
    img.putpalette(pal + [0] * (768 - len(pal)))
    img.save(small, format="PNG", optimize=True)
    atomic.write_bytes(out_png, small.getvalue())
    return out_png


def main(argv=None) -> int:
    from .. import progress
    from .cohort import generate_cohort
    from .config import preset

    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/images/synthetic_subject.png")
    progress.set_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "one"
        generate_cohort(root, preset("demo", subjects=1, followup_fraction=1.0, three_visit_fraction=0.0,
                                     graded_fraction=1.0, twin_fraction=0.0, seed=0))
        draw(root, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
