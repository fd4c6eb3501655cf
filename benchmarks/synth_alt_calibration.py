"""Calibration and speed of the held-out evaluation generator (``spine-ssl synth-alt``).

    .venv/bin/python benchmarks/synth_alt_calibration.py                  # 40 subjects, all followed up and graded
    .venv/bin/python benchmarks/synth_alt_calibration.py --pipeline       # + index/extract, pipeline-level AUC
    .venv/bin/python benchmarks/synth_alt_calibration.py --cohort DIR     # measure an existing cohort
    .venv/bin/python benchmarks/synth_alt_calibration.py --speed 40       # CPU time of 40 subjects (eval preset, one process)

Prints the figures and whether each meets its target (docs/synthetic-cohort.md, "Held-out
generator", records them): raw-pixel L2 AUC <= 0.75, z-scored crop AUC <= 0.80, hidden
fingerprint AUC >= 0.95, hand-feature grading average class accuracy <= 0.75.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cohort", help="measure this existing cohort instead of generating one")
    ap.add_argument("--keep", help="generate into this folder and keep it")
    ap.add_argument("--pipeline", action="store_true", help="also index + extract and measure the extracted volumes")
    ap.add_argument("--speed", type=int, metavar="N", help="only time the generation of N subjects (eval preset)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from SpineSSLLib import progress
    from SpineSSLLib.synth_alt import calibration
    from SpineSSLLib.synth_alt.cohort import generate_cohort
    from SpineSSLLib.synth_alt.config import preset

    progress.set_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        if args.speed:
            cfg = preset("eval", subjects=args.speed, seed=args.seed)
            t, c = time.perf_counter(), _cpu()
            # in this process: the CPU time of forkserver workers is not counted by getrusage
            s = generate_cohort(Path(tmp) / "speed", cfg, workers=1)
            dt, cpu = time.perf_counter() - t, _cpu() - c
            rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
            size = sum(f.stat().st_size for f in (Path(tmp) / "speed").rglob("*") if f.is_file()) / 2**20
            res = {"subjects": s["subjects"], "scans": s["scans"], "wall_seconds_one_process": round(dt, 1),
                   "cpu_seconds": round(cpu, 1), "cpu_seconds_per_scan": round(cpu / s["scans"], 2),
                   f"wall_with_{args.workers}_free_cores": round(cpu / args.workers, 1), "peak_rss_mb": round(rss),
                   "output_mb": round(size), "summary": s}
            print(json.dumps(res, indent=1))
        else:
            root = Path(args.cohort) if args.cohort else Path(args.keep or Path(tmp) / "calib")
            if not args.cohort:
                cfg = preset("eval", subjects=args.subjects, seed=args.seed, followup_fraction=1.0,
                             three_visit_fraction=0.0, graded_fraction=1.0)
                t = time.perf_counter()
                generate_cohort(root, cfg, overwrite=bool(args.keep), workers=args.workers)
                print(f"generated {args.subjects} subjects in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            res = calibration.measure(root, seed=args.seed)
            if args.pipeline:
                from SpineSSLLib.cli import main as cli

                C = Path(tmp) / "C"  # through the command line, as a user would
                assert cli(["-q", "index", str(root / "dicom"), "--out", str(C), "--families", str(root / "subjects.csv")]) == 0
                assert cli(["-q", "extract", str(C), "--levels", f"truth:{root / 'truth'}",
                            "--workers", str(args.workers)]) in (0, 1)
                res.update(calibration.pipeline_identity(C, seed=args.seed))
            ok = calibration.check(res)
            for k, v in res.items():
                mark = "" if k not in ok else ("  target %s %.2f: %s" % (*calibration.TARGETS[k], "met" if ok[k] else "MISSED"))
                print(f"{k:>32}: {v}{mark}")
            res["targets_met"] = ok
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
