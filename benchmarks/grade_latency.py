"""Grading latency at `paper` size on this CPU: one scan's 6 discs, after model load.

Reports medians of ``--repeats`` runs, all measured in this one run (so machine load affects numerator and denominator alike):
- the CPU's fp32 matrix-product rate (a large square matmul, GFLOP/s) as the reference peak;
- grading 6 disc volumes without TTA with torch (s, GFLOP/s, fraction of the matmul rate) with
  the default network (batch norm) and the paper recipe's (LRN, ``lrn`` key); issue #9's target
  <= 1.5 s and >= 60 % of the matmul rate, issue #17's <= 1.0 s;
- the same per core in CPU time (1 thread; CPU time is what the other load on a shared machine
  barely changes): ``*_1t_cpu_s`` and the fraction of the 1-thread matmul rate in CPU time;
- the same with the memory-format / threading choices of the plain forward vs channels-last;
- the TTA cost (30 views) separately;
- ONNX Runtime on the exported model (same probabilities? which is faster?).

Usage:  .venv/bin/python benchmarks/grade_latency.py [--threads 2] [--repeats 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_of(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (the figure benchmarks/run_all.py reports)."""
    import statistics

    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cpu_median_of(fn, repeats: int) -> float:
    """Median CPU time (this process, all threads) of ``repeats`` calls."""
    import statistics

    ts = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        ts.append(time.process_time() - c0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--skip-tta", action="store_true")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from SpineSSLLib import grading
    from SpineSSLLib.models import ModelConfig, count_macs

    torch.set_num_threads(args.threads)
    res = {"threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count()}

    # reference: large fp32 matmul
    n = args.matmul_n
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = median_of(lambda: torch.mm(a, b), args.repeats)
    res["matmul_gflops"] = 2 * n ** 3 / t / 1e9

    rng = np.random.default_rng(0)
    vols = rng.random((6, 9, 112, 224), dtype=np.float32)
    present = np.ones(6, bool)
    discs = [f"d{i}" for i in range(6)]
    models = {}
    for norm in ("default", "lrn"):   # the default network (batch norm) and the paper recipe's LRN
        cfg = ModelConfig.preset("paper") if norm == "default" else ModelConfig.preset("paper", norm=norm)
        net = grading.build_grading_model(cfg, 4, "scratch", seed=0).eval()
        models[norm] = (net, grading.GradingModel(net, ["1", "2", "3", "4"],
                                                  {"config": {"mode": "scratch", "model": cfg.to_dict()}}))
    net, gm = models["default"]
    res["default_norm"] = net.config.norm
    res["gflop_per_disc"] = 2 * count_macs(net, grading.IVD_HW) / 1e9

    def grader(g):
        return lambda: grading.grade_volumes(g, vols, present, discs, None, grading.TTAConfig.none())

    for norm, (_, g) in models.items():
        grader(g)()  # warm-up (oneDNN primitive creation)
    # interleaved: each repeat times both networks
    walls = {k: [] for k in models}
    for _ in range(args.repeats):
        for norm, (_, g) in models.items():
            walls[norm].append(median_of(grader(g), 1))
    import statistics

    for norm in models:
        t = statistics.median(walls[norm])
        pre = "torch" if norm == "default" else "torch_lrn"
        res[f"{pre}_6disc_s"] = t
        res[f"{pre}_gflops"] = 6 * res["gflop_per_disc"] / t
        res[f"{pre}_fraction_of_matmul"] = res[f"{pre}_gflops"] / res["matmul_gflops"]
    # per core, in CPU time (1 thread)
    torch.set_num_threads(1)
    a1, b1 = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a1, b1)
    res["matmul_cpu_gflops_1t"] = 2 * n ** 3 / cpu_median_of(lambda: torch.mm(a1, b1), args.repeats) / 1e9
    for norm, (_, g) in models.items():
        grader(g)()
        c = cpu_median_of(grader(g), max(2, args.repeats - 1))
        pre = "torch" if norm == "default" else "torch_lrn"
        res[f"{pre}_6disc_1t_cpu_s"] = c
        res[f"{pre}_1t_fraction_of_matmul"] = 6 * res["gflop_per_disc"] / c / res["matmul_cpu_gflops_1t"]
    torch.set_num_threads(args.threads)

    if not args.skip_tta:
        tta = grading.TTAConfig()
        t0 = time.perf_counter()
        grading.grade_volumes(gm, vols, present, discs, None, tta)
        res["torch_6disc_tta_s"] = time.perf_counter() - t0
        res["tta_views"] = tta.n_views

    # ONNX Runtime
    try:
        import onnxruntime  # noqa: F401

        with tempfile.TemporaryDirectory() as d:
            path = grading.export_onnx(gm, Path(d) / "m.onnx")
            x = vols[:, None]
            grading.onnx_predict(path, x[:1], threads=args.threads)
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            sess.run(["probabilities"], {"volumes": x})
            t = median_of(lambda: sess.run(["probabilities"], {"volumes": x}), args.repeats)
            p_onnx = sess.run(["probabilities"], {"volumes": x})[0]
            p_torch = grading.predict_proba(net, vols, grading.TTAConfig.none())
            res["onnxruntime_6disc_s"] = t
            res["onnxruntime_gflops"] = 6 * res["gflop_per_disc"] / t
            res["onnx_max_abs_prob_diff"] = float(np.abs(p_onnx - p_torch).max())
            res["faster"] = "onnxruntime" if t < res["torch_6disc_s"] else "torch"
    except ImportError:
        res["onnxruntime"] = "not installed"

    for k, v in res.items():
        print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")
    if args.json:
        from SpineSSLLib.atomic import write_json

        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
