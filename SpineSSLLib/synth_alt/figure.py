"""Figure: one held-out subject at baseline and follow-up, read back from the written DICOM.

    python -m SpineSSLLib.synth_alt.figure docs/images/synthetic_alt_subject.png [--seed 0]

Writes a one-subject cohort (all visits followed up, graded) into a temporary folder, reads each
series with ``SpineSSLLib.io`` and shows, per visit, the slice through the L3 centroid twice: as
stored (the image axes of its orientation convention) and resampled upright in the patient frame
(anterior left, superior up) with the ground-truth body outlines (corners) and the rater's grades.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def _upright(scan, x_lps: float, box, step: float):
    """Sagittal plane x = x_lps in the patient frame: columns anterior->posterior, rows
    superior->inferior; returns (image, extent (y0, y1, z1, z0))."""
    from scipy.ndimage import map_coordinates

    y0, y1, z0, z1 = box
    ys = np.arange(y0, y1, step)
    zs = np.arange(z1, z0, -step)
    pts = np.stack(np.broadcast_arrays(np.full((len(zs), len(ys)), x_lps), ys[None, :], zs[:, None]), -1)
    ijk = scan.lps_to_index(pts.reshape(-1, 3))
    v = map_coordinates(scan.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="constant", cval=0.0)
    return v.reshape(len(zs), len(ys)), (y0, y1, z0, z1)


def make_figure(out_png, seed: int = 0, subject: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import progress
    from ..io import read_dicom_series
    from .cohort import generate_cohort
    from .config import AltConfig

    progress.set_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "one"
        cfg = AltConfig(subjects=subject + 1, seed=seed, followup_fraction=1.0, three_visit_fraction=0.0,
                        twin_fraction=0.0, graded_fraction=1.0, preset="figure")
        generate_cohort(root, cfg, workers=1)
        sid = f"H{subject + 1:04d}"
        truths = sorted((json.loads(p.read_text()) for p in (root / "truth").glob("*.json")), key=lambda t: t["visit"])
        truths = [t for t in truths if t["subject_id"] == sid]
        fig, axes = plt.subplots(2, len(truths), figsize=(5.2 * len(truths), 11),
                                 gridspec_kw={"height_ratios": [1, 1.35]})
        for col, t in enumerate(truths):
            scan = read_dicom_series(root / t["dicom_dir"], max_oblique_deg=None)
            lv = {l["name"]: l for l in t["levels"]["levels"]}
            ref = lv.get("L3") or next(iter(lv.values()))
            a = t["acquisition"]
            ax = axes[0, col]
            k = int(ref["mid_slice"])
            ax.imshow(scan.array[k], cmap="gray", vmax=np.percentile(scan.array[k], 99.5))
            ax.set_title(f"as stored: {a['vendor']}, {t['field_strength']:g} T, "
                         f"{'fat-sat, ' if a['fat_suppressed'] else ''}{a['matrix'][1]}x{a['matrix'][0]} "
                         f"@ {a['pixel_mm']:.2f} mm, {a['slices']} x {a['slice_spacing_mm']:g} mm", fontsize=8)
            ax.axis("off")
            cen = np.array([l["centroid_lps"] for l in lv.values()])
            box = (cen[:, 1].min() - 70, cen[:, 1].max() + 90, cen[:, 2].min() - 45, cen[:, 2].max() + 45)
            img, ext = _upright(scan, float(ref["centroid_lps"][0]), box, 0.5)
            ax = axes[1, col]
            ax.imshow(img, cmap="gray", extent=ext, vmax=np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1)
            for name, l in lv.items():
                c = np.array(l["corners_lps"] + [l["corners_lps"][0]])
                ax.plot(c[:, 1], c[:, 2], "-", color="red", lw=0.8)
                ax.text(np.max(c[:, 1]) + 4, l["centroid_lps"][2], name, color="orange", fontsize=7, va="center")
            for d in t["discs"]:
                if d["in_fov"]:
                    ax.text(d["centroid_lps"][1] - 55, d["centroid_lps"][2], f"grade {d['grade']}", color="deepskyblue",
                            fontsize=7, va="center")
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
            ax.set_title(f"{sid} visit {t['visit']}: age {t['age_years']:.0f}, +{t['interval_days'] / 365.25:.1f} y "
                         f"(upright, truth outlines)", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=90)
        plt.close(fig)
    return out_png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subject", type=int, default=0, help="subject index in the cohort of that seed")
    args = ap.parse_args(argv)
    print(make_figure(args.out, args.seed, args.subject))
    return 0


if __name__ == "__main__":
    sys.exit(main())
