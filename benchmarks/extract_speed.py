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
- "save": ``save_volumes`` (the volume file: vb/ivd as Zstandard ``.npy.zst`` members, issue #17),
  and "save (pre-#17)": the same arrays written the old way (every member zip-deflated, level 1),
  with both files' sizes and the time to read the ``vb`` array back for training
  (``extract.files.read_arrays``).  Issue #17's targets: save <= extract, size <= 1.25 x pre-#17.
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


def save_pre17(path, arrays) -> None:
    """The volume-file writer before issue #17 (zip deflate level 1 of every .npy member), kept here
    as the reference the new storage is compared with."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def bench_size(shape, spacing, repeats, tmp):
    import numpy as np
    from extract_phantom import render, sagittal_affine, truth_levels

    from SpineSSLLib.extract import extract_scan, save_volumes
    from SpineSSLLib.extract.files import read_arrays
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
    new, old = Path(tmp) / "v.npz", Path(tmp) / "v_pre17.npz"
    save_volumes(new, sv, scan.affine, scan.shape)
    arrays = read_arrays(new)
    keys = ("pydicom_read", "spinessl_read", "extract", "save", "save_pre17", "read_vb", "read_vb_pre17")
    t = {k: [] for k in keys}
    c = {k: [] for k in keys}  # CPU time of this process (the other load on a shared machine barely moves it)
    for _ in range(repeats):
        fns = (lambda: pydicom_read(files), lambda: read_dicom_series(d), lambda: extract_scan(scan, lv),
               lambda: save_volumes(new, sv, scan.affine, scan.shape), lambda: save_pre17(old, arrays),
               lambda: read_arrays(new, ["vb"]), lambda: read_arrays(old, ["vb"]))
        for k, fn in zip(keys, fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t[k].append(time.perf_counter() - t0)
            c[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in t.items()}
    cpu = {k: statistics.median(v) for k, v in c.items()}
    n_pts = 7 * 224 * 224 + 6 * 112 * 224
    extra_mb = (scan.array.nbytes + n_pts * 4 * (K + 2) + 2 * (7 * 9 * 224 * 224 + 6 * 9 * 112 * 224) * 4) / 2**20
    return {
        "series": f"{K} x {J} x {I}", "spacing_mm": list(spacing), "repeats": repeats,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        **{f"{k}_cpu_s": round(v, 4) for k, v in cpu.items()},
        "ratio_extract_over_pydicom_read": round(med["extract"] / med["pydicom_read"], 3),
        "ratio_save_over_extract": round(med["save"] / med["extract"], 3),
        "ratio_save_over_extract_cpu": round(cpu["save"] / cpu["extract"], 3),
        "ratio_save_pre17_over_save": round(med["save_pre17"] / med["save"], 2),
        "file_mb": round(new.stat().st_size / 1e6, 3), "file_pre17_mb": round(old.stat().st_size / 1e6, 3),
        "ratio_size_over_pre17": round(new.stat().st_size / old.stat().st_size, 3),
        "raw_volume_mb": round((arrays["vb"].nbytes + arrays["ivd"].nbytes) / 1e6, 3),
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
    res = {"machine": describe(), "target": "extract <= 1.5 x pydicom read; save <= extract; size <= 1.25 x pre-#17",
           "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shape, spacing in (((15, 512, 512), (0.6, 0.6, 4.0)), ((12, 256, 256), (1.15, 1.15, 4.0))):
            r = bench_size(shape, spacing, args.repeats, tmp)
            res["sizes"].append(r)
            ok = "OK" if r["ratio_extract_over_pydicom_read"] <= 1.5 else "ABOVE TARGET"
            print(f"{r['series']:>16}: pydicom read {r['pydicom_read_s'] * 1000:7.1f} ms | SpineSSL read "
                  f"{r['spinessl_read_s'] * 1000:7.1f} ms | extract {r['extract_s'] * 1000:7.1f} ms | save "
                  f"{r['save_s'] * 1000:7.1f} ms | extract/pydicom = {r['ratio_extract_over_pydicom_read']:.2f} {ok}")
            print(f"{'':>16}  save {r['save_s'] * 1000:.1f} ms (pre-#17 {r['save_pre17_s'] * 1000:.1f} ms) = "
                  f"{r['ratio_save_over_extract']:.2f}x extract; file {r['file_mb']:.2f} MB (pre-#17 "
                  f"{r['file_pre17_mb']:.2f} MB, raw {r['raw_volume_mb']:.2f} MB); read vb "
                  f"{r['read_vb_s'] * 1000:.1f} ms (pre-#17 {r['read_vb_pre17_s'] * 1000:.1f} ms)")
    if args.json:
        from SpineSSLLib import atomic

        atomic.write_json(args.json, res)
    print(json.dumps(res["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
