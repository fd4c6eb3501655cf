"""The `small` CPU training step's share of the matmul rate (issue #17's CPU row), quickly and
without a cohort: ``pretrain_bench.model_only`` (Siamese forward + backward + SGD on in-memory
tensors, 16 pairs) for the default network (batch norm) and the paper recipe's LRN, interleaved
with the fp32 matmul reference, ``--repeats`` times.

- per core: 1 torch thread, CPU time of this process (what other load on a shared machine
  barely changes), GFLOP per CPU-second ÷ the 1-thread matmul's GFLOP per CPU-second;
- ``--threads`` threads (default 2): wall time ÷ the same-thread-count matmul in wall time
  (an upper bound on the step time when the machine is shared), plus that step's CPU time.

Usage:  .venv/bin/python benchmarks/cpu_step_share.py [--repeats 3] [--steps 2] [--json OUT]
(``benchmarks/run_all.py`` measures the same rows inside ``make bench``.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch

    import machine
    from pretrain_bench import model_only

    from SpineSSLLib.models import ModelConfig

    cpu = torch.device("cpu")
    nets = {"batch": ModelConfig.preset("small"), "lrn": ModelConfig.preset("small", norm="lrn")}
    raw = {"mm_1t_cpu": [], "mm_nt_wall": [], **{f"{k}_1t": [] for k in nets}, **{f"{k}_nt": [] for k in nets}}
    for _ in range(args.repeats):
        torch.set_num_threads(1)
        raw["mm_1t_cpu"].append(machine.matmul_gflops(2048, 3, clock="cpu"))
        for k, cfg in nets.items():
            raw[f"{k}_1t"].append(model_only(cfg, cpu, args.batch, args.steps))
        torch.set_num_threads(args.threads)
        raw["mm_nt_wall"].append(machine.matmul_gflops(2048, 3))
        for k, cfg in nets.items():
            raw[f"{k}_nt"].append(model_only(cfg, cpu, args.batch, args.steps))
    med = statistics.median
    mm1, mmn = med(raw["mm_1t_cpu"]), med(raw["mm_nt_wall"])
    res = {"machine": machine.describe(), "threads": args.threads, "batch_pairs": args.batch, "repeats": args.repeats,
           "steps": args.steps, "matmul_1t_cpu_gflops": mm1, "matmul_nt_wall_gflops": mmn, "raw": raw}
    for k in nets:
        one, many = raw[f"{k}_1t"], raw[f"{k}_nt"]
        res[k] = {"1t_cpu_s": med(r["cpu_s"] for r in one),
                  "1t_fraction_of_matmul": med(r["model_gflops_per_cpu_s"] for r in one) / mm1,
                  "nt_step_s": med(r["step_s"] for r in many), "nt_cpu_s": med(r["cpu_s"] for r in many),
                  "nt_fraction_of_matmul": med(r["model_gflops_per_s"] for r in many) / mmn}
        r = res[k]
        print(f"small, norm {k}: 1 thread {r['1t_cpu_s']:.2f} CPU-s/step = {r['1t_fraction_of_matmul']:.0%} of matmul "
              f"(CPU time); {args.threads} threads {r['nt_step_s']:.2f} s/step wall ({r['nt_cpu_s']:.2f} CPU-s) = "
              f"{r['nt_fraction_of_matmul']:.0%} of matmul (wall)")
    print(f"matmul: 1 thread {mm1:.1f} GFLOP/CPU-s; {args.threads} threads {mmn:.1f} GFLOP/s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
