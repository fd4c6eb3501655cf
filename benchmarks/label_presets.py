"""Levels from the label maps of real tools (issue #15 part 2), against ground truth.

1. Phantom (``Testing/extract_phantom.py``, 13 x 256 x 112, 1.2 x 1.2 x 4 mm) labelled the way
   TotalSegmentator (``vertebrae_mr``) and TotalSpineSeg label bones (``Testing/label_helpers.py``:
   whole vertebrae with pedicles, laminae, spinous and transverse processes; the sacrum as one
   label with S2-S3, alae and crest; TotalSpineSeg also discs and canal).  Per level: centroid
   and worst-corner error of ``levels.from_labelmap`` with the preset, and the error of the
   whole label's centre (what a plain mapping would give); volumes against the truth's.
2. The synthetic cohort (``tiny``, 2 subjects, follow-up 0.5: 3 scans) whose SPIDER-numbered
   label maps are relabelled into each numbering: VB/IVD volume centres against the truth's
   (in-plane and across slices) and the volumes' correlation.

3. A sacrum with the synthetic renderer's real lumbosacral geometry (S1 tilted ~15 deg more
   than L5, S2/S3 curving on): a ``tiny`` cohort (4 subjects) rendered with S2 and S3 labelled
   as well (the renderer's ``vertebra_label`` patched for this run; the 1.2 mm gaps between the
   fused segments closed), relabelled to ``totalseg_mr``.  S1 and L5-S1 against the truth, for
   S1 cut from the sacrum (the preset), the whole sacrum taken as S1 (a plain mapping), and the
   S1 segment labelled alone (the ``synthetic`` preset on the unpatched map).

Usage:  .venv/bin/python benchmarks/label_presets.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

CENTRE_VB = np.array([111.5, 111.5, 4.0, 1.0])
CENTRE_IVD = np.array([111.5, 55.5, 4.0, 1.0])


def phantom_part() -> dict:
    from extract_phantom import phantom_scan
    from label_helpers import TOTALSEG_MR, TOTALSPINESEG, whole_bone_labels

    from SpineSSLLib import LEVEL_NAMES
    from SpineSSLLib import levels as L
    from SpineSSLLib.extract import extract_scan
    from SpineSSLLib.io import Scan

    scan, lv = phantom_scan(shape=(13, 256, 112), spacing=(1.2, 1.2, 4.0))
    ref = extract_scan(scan, lv)
    out = {}
    for tool, values in (("totalseg_mr", TOTALSEG_MR), ("totalspineseg", TOTALSPINESEG)):
        lab = whole_bone_labels(scan.affine, scan.shape, lv, values)
        mapping = L.resolve_label_mapping(tool)
        got = L.from_labelmap(Scan(lab.astype(np.float32), scan.affine), scan, mapping, where=tool)
        rows = {}
        inv = {v: k for k, v in mapping.items()}
        inv["S1"] = mapping.sacrum
        for n in LEVEL_NAMES:
            whole = np.argwhere(lab == inv[n])[:, ::-1].mean(axis=0)
            rows[n] = {"centroid_mm": float(np.linalg.norm(got[n].centroid - lv[n].centroid)),
                       "corner_mm": float(np.linalg.norm(got[n].corners - lv[n].corners, axis=1).max()),
                       "whole_label_centre_mm": float(np.linalg.norm(scan.index_to_lps(whole) - lv[n].centroid))}
        sv = extract_scan(scan, got)
        out[tool] = {"levels": rows, "vb_mean_abs_diff": float(np.abs(sv.vb - ref.vb).mean()),
                     "ivd_mean_abs_diff": float(np.abs(sv.ivd - ref.ivd).mean()),
                     "vb_corr": float(np.corrcoef(sv.vb.ravel(), ref.vb.ravel())[0, 1]),
                     "ivd_corr": float(np.corrcoef(sv.ivd.ravel(), ref.ivd.ravel())[0, 1])}
    return out


def cohort_part(work: Path) -> dict:
    import shutil

    import SimpleITK as sitk
    from label_helpers import TOTALSEG_MR, TOTALSPINESEG, relabel_synthetic

    from SpineSSLLib.cli import main as cli
    from SpineSSLLib.extract import load_volumes
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset

    syn = work / "syn"
    generate_cohort(syn, preset("tiny", subjects=2, followup_fraction=0.5, twin_fraction=0.0))
    c = work / "C"
    assert cli(["-q", "index", str(syn / "dicom"), "--out", str(c)]) == 0
    base = work / "C_base"
    shutil.copytree(c, base)
    assert cli(["-q", "extract", str(c), "--levels", f"truth:{syn / 'truth'}"]) == 0
    out = {}
    for tool, values in (("synthetic", None), ("totalseg_mr", TOTALSEG_MR), ("totalspineseg", TOTALSPINESEG)):
        lab_dir = syn / "truth" if values is None else work / f"labels_{tool}"
        if values is not None:
            lab_dir.mkdir()
            for p in (syn / "truth").glob("*_labels.nii.gz"):
                img = sitk.ReadImage(str(p))
                new = sitk.GetImageFromArray(relabel_synthetic(sitk.GetArrayFromImage(img), values).astype(np.uint16))
                new.CopyInformation(img)
                sitk.WriteImage(new, str(lab_dir / p.name))
        c2 = work / f"C_{tool}"
        shutil.copytree(base, c2)
        assert cli(["-q", "extract", str(c2), "--levels", f"labels:{lab_dir}", "--label-mapping", tool]) == 0
        inpl, across, corr = [], [], []
        for p in (c / "volumes").glob("*.npz"):
            a, b = load_volumes(p), load_volumes(c2 / "volumes" / p.name)
            step = a.vb_affine[0, :3, 2]
            for aa, bb, ce in ((a.vb_affine, b.vb_affine, CENTRE_VB), (a.ivd_affine, b.ivd_affine, CENTRE_IVD)):
                d = aa[:, :3] @ ce - bb[:, :3] @ ce
                x = d @ step / (step @ step)
                inpl += list(np.linalg.norm(d - x[:, None] * step, axis=1))
                across += list(np.abs(x))
            corr.append(float(np.corrcoef(np.concatenate([a.vb.ravel(), a.ivd.ravel()]),
                                          np.concatenate([b.vb.ravel(), b.ivd.ravel()]))[0, 1]))
        out[tool] = {"scans": len(corr), "inplane_mean_mm": float(np.mean(inpl)), "inplane_max_mm": float(np.max(inpl)),
                     "across_max_slices": float(np.max(across)), "corr_min": float(np.min(corr)),
                     "corr_mean": float(np.mean(corr))}
    return out


def sacrum_part(work: Path) -> dict:
    from unittest import mock

    from label_helpers import TOTALSEG_MR, relabel_synthetic
    from scipy import ndimage

    import SpineSSLLib.synth.render as render
    from SpineSSLLib import levels as L
    from SpineSSLLib.extract import extract_scan
    from SpineSSLLib.io import Scan, read_dicom_series, read_image
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset
    from SpineSSLLib.synth.labels import SACRUM_LABEL, vertebra_label

    out = work / "sacrum"
    sacral = lambda n: SACRUM_LABEL if n in ("S2", "S3") else vertebra_label(n)  # noqa: E731
    with mock.patch.object(render, "vertebra_label", sacral):
        generate_cohort(out, preset("tiny", subjects=4, followup_fraction=0.0, twin_fraction=0.0))
    plain = {v: k for k, v in L.resolve_label_mapping("totalseg_mr").items()} | {"S1": 1}
    ways = {"S1 cut from the sacrum (totalseg_mr)": [], "whole sacrum as S1 (plain mapping)": [],
            "S1 segment labelled alone (synthetic)": []}
    for t in sorted((out / "truth").glob("*.json")):
        doc = json.loads(t.read_text())
        scan = read_dicom_series(out / doc["dicom_dir"])
        truth = L.from_truth_json(t)
        labs = read_image(out / "truth" / doc["labelmap"])
        arr = labs.array.astype(int)
        fused = ndimage.binary_closing(arr == SACRUM_LABEL, structure=np.ones((1, 3, 3)), iterations=2)
        arr[fused & (arr == 0)] = SACRUM_LABEL
        tool = Scan(relabel_synthetic(arr, TOTALSEG_MR).astype(np.float32), labs.affine)
        # the S1 segment alone: the S1 body's own voxels (the renderer's truth slab of S1)
        alone = arr.copy()
        k = np.nonzero(arr == SACRUM_LABEL)
        pts = scan.index_to_lps(np.stack(k[::-1], 1).astype(float))
        c = truth["S1"].corners
        v = (c[3] - c[0]) + (c[2] - c[1])
        v /= np.linalg.norm(v)
        sv = (pts - truth["S1"].centroid) @ v
        h = 0.5 * float(np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2
        drop = np.abs(sv) > h + 0.5
        alone[tuple(np.array(k)[:, drop])] = 0
        alone_scan = Scan(alone.astype(np.float32), labs.affine)
        sets = {"S1 cut from the sacrum (totalseg_mr)":
                L.from_labelmap(tool, scan, L.resolve_label_mapping("totalseg_mr"), where="t"),
                "whole sacrum as S1 (plain mapping)":
                L.from_labelmap(tool, scan, {v_: k_ for k_, v_ in plain.items()}, where="p"),
                "S1 segment labelled alone (synthetic)":
                L.from_labelmap(alone_scan, scan, L.resolve_label_mapping("synthetic"), where="s")}
        ref = extract_scan(scan, truth)
        n = scan.affine[:3, 2] / np.linalg.norm(scan.affine[:3, 2])

        def inplane(x, y):
            d = x - y
            return float(np.linalg.norm(d - (d @ n) * n))

        for way, lv in sets.items():
            sv_ = extract_scan(scan, lv)
            if not (sv_.vb_present[6] and sv_.ivd_present[5]):
                ways[way].append([np.nan] * 5)  # S1 not extracted (e.g. implausible width)
                continue
            ways[way].append([inplane(lv["S1"].centroid, truth["S1"].centroid),
                              float(np.linalg.norm(lv["S1"].corners[:2] - truth["S1"].corners[:2], axis=1).max()),
                              inplane(sv_.ivd_affine[5, :3] @ CENTRE_IVD, ref.ivd_affine[5, :3] @ CENTRE_IVD),
                              float(np.corrcoef(sv_.vb[6].ravel(), ref.vb[6].ravel())[0, 1]),
                              float(np.corrcoef(sv_.ivd[5].ravel(), ref.ivd[5].ravel())[0, 1])])
    return {way: dict(zip(("s1_centroid_inplane_mm", "s1_superior_corner_mm", "l5s1_centre_inplane_mm",
                           "s1_vb_corr", "l5s1_ivd_corr"), np.nanmean(x, axis=0).tolist() if not np.isnan(x).all()
                          else [float("nan")] * 5),
                      scans=len(x), s1_extracted=int(np.sum(~np.isnan(np.array(x)[:, 0]))))
            for way, x in ways.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = {"phantom": phantom_part()}
    with tempfile.TemporaryDirectory() as tmp:
        res["cohort"] = cohort_part(Path(tmp))
        res["sacrum"] = sacrum_part(Path(tmp))
    for tool, r in res["phantom"].items():
        print(f"phantom, {tool}: VB mean|d| {r['vb_mean_abs_diff']:.4f} corr {r['vb_corr']:.3f}; "
              f"IVD mean|d| {r['ivd_mean_abs_diff']:.4f} corr {r['ivd_corr']:.3f}")
        print("| level | centroid error (mm) | worst corner (mm) | whole-label centre (mm) |")
        print("|---|---|---|---|")
        for n, x in r["levels"].items():
            print(f"| {n} | {x['centroid_mm']:.2f} | {x['corner_mm']:.2f} | {x['whole_label_centre_mm']:.1f} |")
    print("| preset | scans | centre in-plane mean / max (mm) | across (slices, max) | correlation min / mean |")
    print("|---|---|---|---|---|")
    for tool, r in res["cohort"].items():
        print(f"| {tool} | {r['scans']} | {r['inplane_mean_mm']:.2f} / {r['inplane_max_mm']:.2f} | "
              f"{r['across_max_slices']:.0f} | {r['corr_min']:.3f} / {r['corr_mean']:.3f} |")
    print("| S1 from | S1 extracted | S1 centre in-plane (mm) | S1 superior corners (mm) | "
          "L5-S1 centre in-plane (mm) | S1 VB corr | L5-S1 IVD corr |")
    print("|---|---|---|---|---|---|---|")
    for way, r in res["sacrum"].items():
        print(f"| {way} | {r['s1_extracted']}/{r['scans']} | {r['s1_centroid_inplane_mm']:.1f} | "
              f"{r['s1_superior_corner_mm']:.1f} | {r['l5s1_centre_inplane_mm']:.1f} | {r['s1_vb_corr']:.2f} | "
              f"{r['l5s1_ivd_corr']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
