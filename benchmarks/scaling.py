"""How `spine-ssl index` and `spine-ssl extract` time grows with the cohort: 10, 100, 1000 scans.

Synthesising 1000 scans would take far longer than indexing them, so a few real series are
synthesised once (`tiny` preset) and the larger cohorts are made of copies: each copy of a
subject is a real DICOM rewrite through pydicom with a fresh PatientID/PatientName and fresh
Study/Series/SOP/FrameOfReference UIDs (all visits of one subject copy share the new PatientID, so
the cohort keeps its follow-up structure), and the copy's truth JSON is written as
`truth/<new SeriesInstanceUID>.json` (the key `extract --levels truth:FOLDER` looks up).  A pool of
max(sizes) scans is written once; the cohort of n scans is a folder of hard links to the pool's
first n scans.

For each size, in this process (imports and first-call set-up are paid by a warm-up run on
a 3-scan cohort first, so the figures are the commands' work, not interpreter start-up):
- ``spine-ssl index ROOT --out C`` and ``spine-ssl extract C --levels truth:TRUTH --overwrite``,
  repeated (``--repeats`` times up to 10 scans, at most twice up to 100, once above: see
  ``repeats_for``);
- wall seconds and CPU seconds (this process, its reaped children and, with ``--workers`` > 1,
  the fork server's workers) per run; medians reported,
  seconds per scan, and the growth exponent = least-squares slope of log(time) on log(n)
  (1.0 = linear; < 1 where fixed costs still matter at the small end).

Usage:  .venv/bin/python benchmarks/scaling.py [--sizes 10,100,1000] [--repeats 3] [--workers 1]
                                              [--json OUT.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_NEW_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def source_series(synth_dir: Path) -> list[list[dict]]:
    """Subjects of a synthetic cohort -> visits in order -> {files, datasets, truth}."""
    import pydicom

    truth = {}
    for p in sorted((synth_dir / "truth").glob("*.json")):
        d = json.loads(p.read_text())
        truth[d["series_instance_uid"]] = d
    by_subject: dict[str, list[dict]] = {}
    for t in sorted(truth.values(), key=lambda d: (d["subject_id"], d["visit"])):
        files = sorted(f for f in (synth_dir / t["dicom_dir"]).iterdir()
                       if f.is_file() and not f.name.startswith("."))  # names vary: IM0001.dcm, slice_001, MR.<uid>.dcm
        dss = [pydicom.dcmread(f) for f in files]
        by_subject.setdefault(t["subject_id"], []).append({"names": [f.name for f in files], "datasets": dss,
                                                           "truth": t})
    return list(by_subject.values())


def write_pool(subjects: list[list[dict]], pool: Path, n_scans: int) -> list[str]:
    """Write n_scans copied series under pool/dicom/<copy subject>/<visit>/ and their truth files
    under pool/truth/; returns the scan folders (relative to pool/dicom) in order."""
    from pydicom.uid import generate_uid

    from SpineSSLLib import atomic

    (pool / "truth").mkdir(parents=True, exist_ok=True)
    scans: list[str] = []
    c = 0
    while len(scans) < n_scans:
        for si, visits in enumerate(subjects):
            pid = f"SCALE{c:05d}S{si}"
            for v in visits:
                if len(scans) >= n_scans:
                    return scans
                uids = {k: generate_uid() for k in _NEW_UIDS}
                rel = f"{pid}/{v['truth']['visit']}"
                out = pool / "dicom" / rel
                out.mkdir(parents=True, exist_ok=True)
                for name, ds in zip(v["names"], v["datasets"]):
                    for k, u in uids.items():
                        setattr(ds, k, u)
                    ds.SOPInstanceUID = generate_uid()
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    ds.PatientID = pid
                    ds.PatientName = f"Scale^{pid}"
                    with atomic.atomic_path(out / name) as tmp:
                        ds.save_as(tmp, enforce_file_format=True)
                t = dict(v["truth"], series_instance_uid=uids["SeriesInstanceUID"],
                         study_instance_uid=uids["StudyInstanceUID"], subject_id=pid,
                         dicom_dir=f"dicom/{rel}")
                atomic.write_json(pool / "truth" / f"{uids['SeriesInstanceUID']}.json", t)
                scans.append(rel)
            if len(scans) >= n_scans:
                return scans
        c += 1
    return scans


def link_cohort(pool: Path, scans: list[str], root: Path) -> None:
    """root/<scan folder>/<file> hard-linked (copied where links are not possible) from the pool."""
    for rel in scans:
        (root / rel).mkdir(parents=True, exist_ok=True)
        for f in (pool / "dicom" / rel).iterdir():
            try:
                os.link(f, root / rel / f.name)
            except OSError:
                shutil.copy2(f, root / rel / f.name)


def _forkserver_cpu() -> tuple[int | None, float]:
    """(pid, CPU seconds of the multiprocessing fork server and its reaped children): `extract
    --workers N` forks its workers from that server, so their time is not ours (RUSAGE_CHILDREN)."""
    try:
        from multiprocessing import forkserver

        pid = forkserver._forkserver._forkserver_pid
        if not pid:
            return None, 0.0
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return pid, sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    except (AttributeError, ImportError, OSError, ValueError, IndexError):
        return None, 0.0


def _cpu() -> tuple[float, int | None, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, *_forkserver_cpu())


def timed_cli(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `spine-ssl` command run in this process (its summary lines are
    swallowed); a non-zero exit is an error."""
    import contextlib
    import io

    from SpineSSLLib.cli import main as cli

    buf = io.StringIO()
    w0, (c0, fpid0, f0) = time.perf_counter(), _cpu()
    with contextlib.redirect_stdout(buf):
        rc = cli(["-q", *argv])
    w = time.perf_counter() - w0
    c1, fpid1, f1 = _cpu()
    c = c1 - c0 + (f1 - (f0 if fpid1 == fpid0 else 0.0))
    if rc != 0:
        raise RuntimeError(f"spine-ssl {' '.join(argv)} exited {rc}: {buf.getvalue()[-500:]}")
    return w, c


def repeats_for(n: int, repeats: int) -> int:
    """Fewer repeats for large cohorts (the 1000-scan extraction alone takes minutes)."""
    return repeats if n <= 10 else min(repeats, 2) if n <= 100 else 1


def slope(ns: list[int], ts: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    x = [math.log(n) for n in ns]
    y = [math.log(max(t, 1e-9)) for t in ts]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def count_rows(path: Path) -> int:
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def run(sizes: list[int], repeats: int, workers: int, work: Path, subjects: int = 3, seed: int = 0,
        log=print) -> dict:
    from SpineSSLLib import progress

    progress.set_enabled(False)
    t0 = time.perf_counter()
    synth = work / "synth"
    timed_cli(["synth", str(synth), "--preset", "tiny", "--subjects", str(subjects), "--seed", str(seed),
               "--workers", "1", "--overwrite"])
    src = source_series(synth)
    n_src = sum(len(v) for v in src)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = work / "pool"
    scans = write_pool(src, pool, max(sizes))
    t_pool = time.perf_counter() - t0
    log(f"scaling: {n_src} synthetic series ({t_synth:.0f} s), pool of {len(scans)} copies written in "
        f"{t_pool:.0f} s")
    truth = str(pool / "truth")
    ext = ["--levels", f"truth:{truth}", "--workers", str(workers), "--overwrite"]

    # warm-up (imports, oneDNN/first-call set-up): a 3-scan cohort, not timed
    link_cohort(pool, scans[:3], work / "root_warm")
    timed_cli(["index", str(work / "root_warm"), "--out", str(work / "C_warm")])
    timed_cli(["extract", str(work / "C_warm"), *ext])

    rows = []
    for n in sizes:
        root, coh = work / f"root_{n}", work / f"C_{n}"
        link_cohort(pool, scans[:n], root)
        reps = repeats_for(n, repeats)
        r = {"scans": n, "repeats": reps, "index_wall_s": [], "index_cpu_s": [], "extract_wall_s": [],
             "extract_cpu_s": []}
        for _ in range(reps):
            if coh.exists():
                shutil.rmtree(coh)
            w, c = timed_cli(["index", str(root), "--out", str(coh)])
            r["index_wall_s"].append(w)
            r["index_cpu_s"].append(c)
            w, c = timed_cli(["extract", str(coh), *ext])
            r["extract_wall_s"].append(w)
            r["extract_cpu_s"].append(c)
        with open(coh / "scans.csv", newline="") as f:
            st = [row["status"] for row in csv.DictReader(f)]
        r["selected"], r["extracted_ok"] = len(st), sum(s == "ok" for s in st)
        r["volumes"] = count_rows(coh / "volumes.csv")
        if r["extracted_ok"] != n:
            raise RuntimeError(f"scaling: {r['extracted_ok']} of {n} scans extracted (see {coh}/errors.csv)")
        for k in ("index_wall_s", "index_cpu_s", "extract_wall_s", "extract_cpu_s"):
            m = statistics.median(r[k])
            r[k] = [round(v, 3) for v in r[k]]
            r[k.replace("_s", "_median_s")] = round(m, 3)
            r[k.replace("_s", "_per_scan_s")] = round(m / n, 4)
        log(f"scaling: {n:5d} scans x{reps}: index {r['index_wall_median_s']:.1f} s "
            f"({r['index_wall_per_scan_s'] * 1000:.1f} ms/scan), extract {r['extract_wall_median_s']:.1f} s "
            f"({r['extract_wall_per_scan_s']:.3f} s/scan)")
        rows.append(r)
        shutil.rmtree(root)
    ns = [r["scans"] for r in rows]
    res = {"sizes": rows, "workers": workers, "source_series": n_src, "synth_preset": "tiny",
           "pool_write_s": round(t_pool, 1), "copies": "pydicom rewrite, fresh PatientID and UIDs per copy"}
    for k in ("index_wall", "index_cpu", "extract_wall", "extract_cpu"):
        s = slope(ns, [r[f"{k}_median_s"] for r in rows])
        res[f"{k}_exponent"] = None if s is None else round(s, 3)
        if len(rows) >= 3:  # the upper half alone: fixed costs have faded there
            s2 = slope(ns[-2:], [r[f"{k}_median_s"] for r in rows[-2:]])
            res[f"{k}_exponent_upper"] = round(s2, 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="cohort sizes in scans (comma separated)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats at the smallest size (fewer for large)")
    ap.add_argument("--workers", type=int, default=1, help="spine-ssl extract --workers")
    ap.add_argument("--subjects", type=int, default=3, help="synthetic source subjects (tiny preset)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        ap.error("--sizes: positive integers")
    if args.keep:
        res = run(sizes, args.repeats, args.workers, Path(args.keep), args.subjects)
    else:
        with tempfile.TemporaryDirectory(prefix="spinessl-scaling-") as tmp:
            res = run(sizes, args.repeats, args.workers, Path(tmp), args.subjects)
    print(json.dumps({k: v for k, v in res.items() if k != "sizes"}, indent=1))
    if args.json:
        from SpineSSLLib.atomic import write_json

        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
