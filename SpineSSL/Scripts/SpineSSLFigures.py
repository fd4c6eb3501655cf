"""Figures for the user guide from real SpineSSL module outputs (no Slicer window needed).

    python SpineSSL/Scripts/SpineSSLFigures.py BATCH_OUT --out docs/images
    python SpineSSL/Scripts/SpineSSLFigures.py BATCH_OUT --out docs/images --panel   # one scan, as the panel shows it

``BATCH_OUT`` is a folder written by ``SpineSSLBatch.py --save-volume``: per scan ``<key>.nrrd``,
``<key>.seg.nrrd``, ``<key>.mrk.json`` and ``<key>.csv``.  All files are read back through
Slicer's own storage nodes (slicer-core), the segments are resampled onto the scan grid by
Slicer's segmentation export, and drawn over the scan's mid-sagittal slice with the level
points; one panel per scan (e.g. baseline and follow-up of one subject).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def scan_panel(ax, folder: Path, title: str | None = None):
    import numpy as np
    import slicer

    from SpineSSLLib import scene as S

    key = folder.name
    sc = slicer.vtkMRMLScene()
    volume = S.load_volume(sc, folder / f"{key}.nrrd")
    scan = S.scan_from_volume_node(volume)
    seg = S.load_segmentation(sc, folder / f"{key}.seg.nrrd")
    levels = S.levels_from_markups(S.load_markups(sc, folder / f"{key}.mrk.json"))
    table = folder / f"{key}.csv"
    grades = {r.name: r.grade for r in S.results_from_table(S.load_table(sc, table))} if table.is_file() else {}
    # mid-sagittal slice: the scan slice nearest the mean of the level centroids
    centre = np.mean([lv.centroid for lv in levels], axis=0)
    k = int(np.clip(np.rint(scan.lps_to_index(centre)[2]), 0, scan.shape[0] - 1))
    image = scan.array[k]
    di, dj = scan.spacing[0], scan.spacing[1]
    extent = (-0.5 * di, (image.shape[1] - 0.5) * di, (image.shape[0] - 0.5) * dj, -0.5 * dj)
    lo, hi = np.percentile(image, [1, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=extent)
    for info in S.segment_info(seg):
        mask = S.segment_mask(seg, info["name"], scan.affine, scan.shape)[k]
        if not mask.any():
            continue
        ax.contour(np.arange(image.shape[1]) * di, np.arange(image.shape[0]) * dj, mask.astype(float),
                   levels=[0.5], colors=[info["color"]], linewidths=1.2)
        if info["tags"].get(S.KIND_TAG) == "IVD":
            jj, ii = np.nonzero(mask)
            g = grades.get(info["name"])
            ax.text(ii.max() * di + 3, jj.mean() * dj, f"{info['name']}: {'-' if g is None else g}",
                    color=info["color"], fontsize=7, va="center")
    for lv in levels:
        i, j, _ = scan.lps_to_index(lv.centroid)
        ax.plot(i * di, j * dj, "o", ms=3, color="#00e5ff")
        ax.text(i * di - 4, j * dj, lv.name, color="#00e5ff", fontsize=7, ha="right", va="center")
    ax.set_title(title or key, fontsize=9)
    ax.set_axis_off()


def panel_views(fig, folder: Path, title: str):
    """The views the module fills after Grade, from one scan's saved outputs read back into MRML
    nodes: the slice view (scan, segments, levels), the table view (``V grades``) and the plot
    view (``V probabilities``: the plot chart node built from the table, series by series)."""
    import numpy as np
    import slicer

    from SpineSSLLib import scene as S

    key = folder.name
    grid = fig.add_gridspec(2, 2, width_ratios=[1.0, 1.35], height_ratios=[1.0, 1.0])
    scan_panel(fig.add_subplot(grid[:, 0]), folder, f"Slice view: {title}")
    sc = slicer.vtkMRMLScene()
    table_node = S.load_table(sc, folder / f"{key}.csv", f"{key} grades")
    chart = S.plot_from_table(sc, table_node, f"{key} probabilities")
    table = table_node.GetTable()
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    shown = [c for c in columns if c in ("level", "grade") or c.startswith("p_grade")]
    cells = []
    for r in range(table.GetNumberOfRows()):
        row = []
        for c in shown:
            text = table.GetValueByName(r, c).ToString()
            row.append(f"{float(text):.2f}" if c.startswith("p_grade") and text not in ("", "nan") else text)
        cells.append(row)
    ax = fig.add_subplot(grid[0, 1])
    ax.set_axis_off()
    ax.set_title(f"Table view: node '{table_node.GetName()}'", fontsize=9)
    t = ax.table(cellText=cells, colLabels=[c.replace("p_grade", "p(grade ") + (")" if c.startswith("p_") else "")
                                            for c in shown], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(7.5)
    t.scale(1.0, 1.25)
    ax = fig.add_subplot(grid[1, 1])
    n = chart.GetNumberOfPlotSeriesNodes()
    width = 0.8 / max(n, 1)
    labels = None
    for i in range(n):
        series = chart.GetNthPlotSeriesNode(i)
        x = [float(table.GetValueByName(r, series.GetXColumnName()).ToDouble()) for r in range(table.GetNumberOfRows())]
        y = [float(table.GetValueByName(r, series.GetYColumnName()).ToDouble()) for r in range(table.GetNumberOfRows())]
        labels = [table.GetValueByName(r, series.GetLabelColumnName()).ToString() for r in range(table.GetNumberOfRows())]
        ax.bar(np.array(x) + (i - (n - 1) / 2) * width, y, width, color=series.GetColor(),
               label=" ".join(series.GetName().split()[-2:]))
    if labels:
        ax.set_xticks(range(len(labels)), labels, fontsize=7.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel(chart.GetYAxisTitle(), fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.legend(fontsize=7, ncol=4, loc="upper left", frameon=False)
    ax.set_title(f"Plot view: node '{chart.GetName()}'", fontsize=9)


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from SpineSSLLib import atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("batch_out", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    p.add_argument("--name", default=None, help="file name (default slicer_module_outputs.png, with --panel "
                                                "slicer_module_panel.png)")
    p.add_argument("--panel", action="store_true", help="the first scan's slice, table and plot views")
    args = p.parse_args(argv)
    args.name = args.name or ("slicer_module_panel.png" if args.panel else "slicer_module_outputs.png")
    import csv

    order = []
    if (args.batch_out / "batch.csv").is_file():  # the batch's scan order (baseline first for a cohort)
        with open(args.batch_out / "batch.csv", newline="") as f:
            order = [r["key"] for r in csv.DictReader(f)]
    folders = [d for d in args.batch_out.iterdir() if d.is_dir() and (d / f"{d.name}.nrrd").is_file()]
    folders.sort(key=lambda d: (order.index(d.name) if d.name in order else len(order), d.name))
    if not folders:
        print(f"{args.batch_out}: no scan folders with <key>.nrrd (run SpineSSLBatch.py --save-volume)",
              file=sys.stderr)
        return 2
    if args.panel:
        if not (folders[0] / f"{folders[0].name}.csv").is_file():
            print(f"{folders[0]}: no grades table (run SpineSSLBatch.py with --model or on a synthetic cohort)",
                  file=sys.stderr)
            return 2
        fig = plt.figure(figsize=(11.5, 6.2))
        panel_views(fig, folders[0], f"scan 1 ({folders[0].name})")
        fig.suptitle("SpineSSL after Grade: levels (cyan), vertebral-body and disc segments (discs coloured by "
                     "grade), the grades table and the class-probability chart", fontsize=9)
    else:
        fig, axes = plt.subplots(1, len(folders), figsize=(4.2 * len(folders), 5.2), squeeze=False)
        for n, (ax, folder) in enumerate(zip(axes[0], folders)):
            scan_panel(ax, folder, f"scan {n + 1} ({folder.name})")
        fig.suptitle("SpineSSL outputs over the mid-sagittal slice: levels (cyan), VB and disc segments "
                     "(discs coloured by grade)", fontsize=9)
    fig.tight_layout()
    with atomic.atomic_path(args.out / args.name) as tmp:
        fig.savefig(tmp, dpi=130)
    print(args.out / args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
