"""QC picture of one scan's extraction (mid-slice with outlines, every VB and IVD volume)."""

from __future__ import annotations

import numpy as np

from ..levels import LevelSet
from .volumes import ScanVolumes


def qc_figure(path, scan, levels: LevelSet, sv: ScanVolumes, title: str = "") -> None:
    """PNG: the scan's mid-sagittal slice with VB outlines, IVD boxes and level names, and a
    montage of every extracted volume's middle slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import atomic

    mids = sv.vb_mid_slice[sv.vb_present] if sv.vb_present.any() else np.array([scan.shape[0] // 2])
    k = int(np.median(mids))
    fig = Figure(figsize=(14, 6), dpi=80)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 8, width_ratios=[3.2] + [1] * 7, height_ratios=[1, 0.6])
    ax = fig.add_subplot(gs[:, 0])
    img = scan.array[k]
    lo, hi = np.percentile(img, [1, 99.5])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=float(scan.spacing[1] / scan.spacing[0]))
    for lev in levels:
        if lev.corners is not None:
            ij = scan.lps_to_index(np.vstack([lev.corners, lev.corners[:1]]))
            ax.plot(ij[:, 0], ij[:, 1], "-", color="#ffcc00", lw=1.2)
        c = scan.lps_to_index(lev.centroid)
        ax.text(c[0], c[1], lev.name, color="#ffcc00", fontsize=9, ha="center", va="center")
    for d, name in enumerate(sv.discs):
        if not sv.ivd_present[d]:
            continue
        H, W = sv.ivd.shape[2:]
        box = np.array([[0, 0, 4, 1], [W - 1, 0, 4, 1], [W - 1, H - 1, 4, 1], [0, H - 1, 4, 1], [0, 0, 4, 1]], float)
        lps = (box @ sv.ivd_affine[d].T)[:, :3]
        ij = scan.lps_to_index(lps)
        ax.plot(ij[:, 0], ij[:, 1], "-", color="#33ccff", lw=1.0)
    ax.set_title(f"{title} slice {k}".strip(), fontsize=9)
    ax.axis("off")
    for i, name in enumerate(sv.levels):
        a = fig.add_subplot(gs[0, 1 + i])
        a.imshow(sv.vb[i, sv.vb.shape[1] // 2], cmap="gray", vmin=0, vmax=1)
        a.set_title(name if sv.vb_present[i] else f"{name} (absent)", fontsize=8)
        a.axis("off")
    for i, name in enumerate(sv.discs):
        a = fig.add_subplot(gs[1, 1 + i])
        a.imshow(sv.ivd[i, sv.ivd.shape[1] // 2], cmap="gray", vmin=0, vmax=1)
        a.set_title(name if sv.ivd_present[i] else f"{name} (absent)", fontsize=8)
        a.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.03, wspace=0.08, hspace=0.15)
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
