"""Extraction speed: 7 VBs + 6 IVDs from one scan vs reading that series with pydicom.

Target (issue #4): extraction <= 1.5 x the pydicom read time of the same series, as a ratio
measured in one run (interleaved repeats, so machine load affects both alike).

For each series size (default: 15 x 512 x 512, a typical clinical sagittal T2, and the
synthetic `tiny` size 12 x 256 x 256) a phantom spine is written as real DICOM (one file per
slice, via SpineSSLLib.synth.dicom.write_series), then, interleaved, ``--repeats`` times:
- "pydicom read": ``pydicom.dcmread`` + ``pixel_array`` (+ rescale) of every file, stacked;
- "SpineSSL read": ``io.read_dicom_series`` (headers, geometry ordering, checks, pixels);
- "extract": ``extract.extract_scan`` (one batched grid_sample, normalisation; the scan already
  in memory);
- "save": writing the compressed ``.npz`` (reported, not part of the target).
Medians are reported.  Peak extra memory of one extraction is reported too (tracemalloc does
not see torch buffers, so it is computed from the tensor sizes the code allocates).

Usage:  .venv/bin/python benchmarks/extract_speed.py [--threads 1] [--repeats 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))


def pydicom_read(files):
    import numpy as np
    import pydicom

    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        a = ds.pixel_array.astype(np.float32)
        slope, icpt = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        out.append(a * slope + icpt)
    return np.stack(out)


def bench_size(shape, spacing, repeats, tmp):
    import numpy as np
    from extract_phantom import render, sagittal_affine, truth_levels

    from SpineSSLLib.extract import extract_scan, save_volumes
    from SpineSSLLib.io import read_dicom_series
    from SpineSSLLib.synth.dicom import write_series

    K, J, I = shape
    aff = sagittal_affine(shape, spacing, origin=(2.0 * (K - 1), -110.0, 150.0))
    lv = truth_levels(top=(0.0, 10.0, 115.0))
    arr = render(aff, shape, lv)
    arr += np.random.default_rng(0).normal(0, 10, arr.shape).astype(np.float32)
    d = Path(tmp) / f"s{K}x{J}x{I}"
    files = [str(p) for p in write_series(d, np.clip(arr, 0, None).round(), aff,
                                          {"PatientID": "BENCH", "SeriesDescription": "SAG T2"})]
    scan = read_dicom_series(d)
    sv = extract_scan(scan, lv)  # warm-up
    assert sv.vb_present.all() and sv.ivd_present.all(), sv.issues
    t = {"pydicom_read": [], "spinessl_read": [], "extract": [], "save": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        pydicom_read(files)
        t1 = time.perf_counter()
        scan = read_dicom_series(d)
        t2 = time.perf_counter()
        sv = extract_scan(scan, lv)
        t3 = time.perf_counter()
        save_volumes(Path(tmp) / "v.npz", sv, scan.affine, scan.shape)
        t4 = time.perf_counter()
        for k, a, b in (("pydicom_read", t0, t1), ("spinessl_read", t1, t2), ("extract", t2, t3), ("save", t3, t4)):
            t[k].append(b - a)
    med = {k: statistics.median(v) for k, v in t.items()}
    n_pts = 7 * 224 * 224 + 6 * 112 * 224
    extra_mb = (scan.array.nbytes + n_pts * 4 * (K + 2) + 2 * (7 * 9 * 224 * 224 + 6 * 9 * 112 * 224) * 4) / 2**20
    return {
        "series": f"{K} x {J} x {I}", "spacing_mm": list(spacing), "repeats": repeats,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "ratio_extract_over_pydicom_read": round(med["extract"] / med["pydicom_read"], 3),
        "ratio_extract_over_spinessl_read": round(med["extract"] / med["spinessl_read"], 3),
        "extract_peak_extra_mb_estimate": round(extra_mb, 1),
        "scan_mb": round(scan.array.nbytes / 2**20, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (pydicom is single-threaded)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    import torch

    from machine import describe

    torch.set_num_threads(args.threads)
    res = {"machine": describe(), "target": "extract <= 1.5 x pydicom read", "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shape, spacing in (((15, 512, 512), (0.6, 0.6, 4.0)), ((12, 256, 256), (1.15, 1.15, 4.0))):
            r = bench_size(shape, spacing, args.repeats, tmp)
            res["sizes"].append(r)
            ok = "OK" if r["ratio_extract_over_pydicom_read"] <= 1.5 else "ABOVE TARGET"
            print(f"{r['series']:>16}: pydicom read {r['pydicom_read_s'] * 1000:7.1f} ms | SpineSSL read "
                  f"{r['spinessl_read_s'] * 1000:7.1f} ms | extract {r['extract_s'] * 1000:7.1f} ms | save "
                  f"{r['save_s'] * 1000:7.1f} ms | extract/pydicom = {r['ratio_extract_over_pydicom_read']:.2f} {ok}")
    if args.json:
        from SpineSSLLib import atomic

        atomic.write_json(args.json, res)
    print(json.dumps(res["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
