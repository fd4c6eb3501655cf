"""All SpineSSL benchmarks in one command: a table on stdout and docs/performance.md.

    make bench                                  # full (<= 25 min on a free 2-core machine)
    make bench-quick                            # about 5 min: fewer repeats, 10/100 scans
    .venv/bin/python benchmarks/run_all.py [--quick] [--sizes 10,100,1000] [--out docs/performance.md]

Each component runs in its own process (its own torch thread setting) and writes JSON:
1. extract_speed.py   extraction vs plain pydicom read of the same series (interleaved repeats);
2. grade_latency.py   6-disc grading at `paper` size on this CPU vs a large fp32 matmul;
3. scaling.py         `spine-ssl index` / `extract` time for 10, 100, 1000 scans (growth exponent);
4. the training part (this file, ``--part training``) on the scaling run's 100-scan cohort, with
   pretrain_bench.py's `model_only` and `input_pipeline`: input-pipeline pairs/s vs model-only
   pairs/s (`small` preset, interleaved repeats), the CPU training step time (`small`; `paper` in
   the full run) and its GFLOP/s as a fraction of the matmul rate measured in the same process.
GPU rows come from benchmarks/results/gpu/*.json (written by `benchmarks/pretrain_bench.py
--gpu-only` on a CUDA machine, e.g. through benchmarks/gpu_check.sh); they are shown in their own
section with the GPU's name and the file's date, never mixed with this machine's figures.
Every figure is the median of repeated runs; every ratio is of figures measured in the same run.
The collected JSON goes to benchmarks/results/bench_cpu.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FULL = {"extract_repeats": 7, "grade_repeats": 5, "tta": False, "sizes": "10,100,1000", "scaling_repeats": 3,
        "scaling_workers": 2, "train_repeats": 3, "train_steps": 2, "paper_cpu_step": True}
QUICK = {"extract_repeats": 3, "grade_repeats": 3, "tta": False, "sizes": "10,100", "scaling_repeats": 3,
         "scaling_workers": 2, "train_repeats": 2, "train_steps": 1, "paper_cpu_step": False}
BUDGET_MIN = {"full": 25.0}  # the quick run is meant to take about 5 min; no target


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# the training part: input pipeline vs model, CPU training step (run as a separate process)
# --------------------------------------------------------------------------------------------

def _passive_step(batch: int, steps: int, threads: int) -> dict:
    """The same `small` model-only step in a fresh process with OMP_WAIT_POLICY=PASSIVE (OpenMP
    threads sleep instead of spinning while they wait; must be set before torch starts)."""
    code = ("import json, sys, torch; sys.path.insert(0, 'benchmarks'); torch.set_num_threads(%d); "
            "from pretrain_bench import model_only; from SpineSSLLib.models import ModelConfig; "
            "print('RESULT', json.dumps(model_only(ModelConfig.preset('small'), torch.device('cpu'), %d, %d)))"
            % (threads, batch, steps))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"passive step failed: {out.stderr.strip()[-300:]}")
    return json.loads(line[7:])


def training_part(cohort: str, repeats: int, steps: int, paper: bool, threads: int) -> dict:
    import torch

    import machine
    from pretrain_bench import device_pipeline, input_pipeline, model_only

    from SpineSSLLib import data as D
    from SpineSSLLib import progress
    from SpineSSLLib.models import ModelConfig

    progress.set_enabled(False)
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    small = ModelConfig.preset("small")
    one_thread = {"small": small, "small_lrn": ModelConfig.preset("small", norm="lrn"),
                  "small_fold2d": ModelConfig.preset("small", conv_impl="fold2d")}
    rows = D.read_vb_table(cohort)
    hw = small.net_hw((224, 224))
    batch, workers = 16, 1
    nb = max(3, 96 // batch)
    res = {"cohort_vb_volumes": len(rows), "cohort_subjects": len({r.subject_key for r in rows}),
           "threads": threads, "batch_pairs": batch, "loader_workers": workers, "repeats": repeats,
           "steps_per_repeat": steps, "model_only": [], "model_only_passive": [], "input_pipeline": [],
           "device_pipeline": [], "matmul_gflops": [], "matmul_cpu_gflops_1t": [],
           **{f"{k}_1t": [] for k in one_thread}}
    input_pipeline(cohort, rows, hw, batch, 0, 1, True)  # cache + MONAI warm-up
    for _ in range(repeats):  # interleaved: the machine's load affects both sides alike
        torch.set_num_threads(threads)
        res["matmul_gflops"].append(machine.matmul_gflops(2048, 3))
        res["model_only"].append(model_only(small, cpu, batch, steps))
        try:
            res["model_only_passive"].append(_passive_step(batch, steps, threads))
        except (RuntimeError, subprocess.SubprocessError) as e:
            res.setdefault("errors", []).append(str(e))
        res["input_pipeline"].append(input_pipeline(cohort, rows, hw, batch, workers, nb, True))
        res["device_pipeline"].append(device_pipeline(cohort, rows, hw, batch, nb, True))
        torch.set_num_threads(1)  # per-core figures in CPU time: what the other load barely moves
        res["matmul_cpu_gflops_1t"].append(machine.matmul_gflops(2048, 3, clock="cpu"))
        for k, cfg in one_thread.items():
            res[f"{k}_1t"].append(model_only(cfg, cpu, batch, steps))
        torch.set_num_threads(threads)
    med = statistics.median
    res["matmul_gflops_median"] = med(res["matmul_gflops"])
    res["small_step_s"] = med(r["step_s"] for r in res["model_only"])
    res["small_model_pairs_per_s"] = med(r["pairs_per_s"] for r in res["model_only"])
    res["small_model_gflops_per_s"] = med(r["model_gflops_per_s"] for r in res["model_only"])
    res["small_fraction_of_matmul"] = res["small_model_gflops_per_s"] / res["matmul_gflops_median"]
    if res["model_only_passive"]:
        res["small_passive_step_s"] = med(r["step_s"] for r in res["model_only_passive"])
        res["small_passive_fraction_of_matmul"] = (med(r["model_gflops_per_s"] for r in res["model_only_passive"])
                                                   / res["matmul_gflops_median"])
    mm1 = res["matmul_cpu_gflops_1t_median"] = med(res["matmul_cpu_gflops_1t"])
    for k in one_thread:
        res[f"{k}_1t_cpu_s"] = med(r["cpu_s"] for r in res[f"{k}_1t"])
        res[f"{k}_1t_fraction_of_matmul"] = med(r["model_gflops_per_cpu_s"] for r in res[f"{k}_1t"]) / mm1
    res["input_pairs_per_s"] = med(r["pairs_per_s"] for r in res["input_pipeline"])
    res["input_vs_model"] = res["input_pairs_per_s"] / res["small_model_pairs_per_s"]
    res["input_vs_model_per_repeat"] = [i["pairs_per_s"] / m["pairs_per_s"]
                                        for i, m in zip(res["input_pipeline"], res["model_only"])]
    res["device_pairs_per_s"] = med(r["pairs_per_s"] for r in res["device_pipeline"])
    res["device_vs_dataloader"] = res["device_pairs_per_s"] / res["input_pairs_per_s"]
    if paper:
        pb = 1
        res["paper"] = [model_only(ModelConfig.preset("paper"), cpu, pb, 1) for _ in range(2)]
        res["paper_batch_pairs"] = pb
        res["paper_step_s"] = med(r["step_s"] for r in res["paper"])
        res["paper_model_gflops_per_s"] = med(r["model_gflops_per_s"] for r in res["paper"])
        res["paper_fraction_of_matmul"] = res["paper_model_gflops_per_s"] / res["matmul_gflops_median"]
    return res


# --------------------------------------------------------------------------------------------
# running the parts
# --------------------------------------------------------------------------------------------

def run_part(name: str, argv: list[str], json_path: Path, timeout: float) -> tuple[dict | None, str | None, float]:
    """Run one benchmark script in its own session; returns (its JSON, error text or None, wall
    seconds).  Its output goes to a file (not a pipe: worker processes orphaned by a killed script
    would hold a pipe open forever) and whatever it leaves running in its session is ended."""
    import signal

    log(f"{name}: {' '.join(argv)}")
    t0 = time.perf_counter()
    env = dict(os.environ, SPINESSL_PROGRESS="", PYTHONUNBUFFERED="1")
    out_path = json_path.with_suffix(".log")
    with open(out_path, "w") as out_f:
        p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True, stdout=out_f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
            if rc < 0:
                rc = f"killed by signal {-rc}"
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f} s"
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: only what this script started
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
    wall = time.perf_counter() - t0
    out = out_path.read_text(errors="replace")
    for line in out.splitlines()[-12:]:
        print(f"    {line}", flush=True)
    if rc != 0:
        return None, f"{name} failed ({rc}): {out.strip().splitlines()[-1] if out.strip() else 'no output'}", wall
    try:
        return json.loads(json_path.read_text()), None, wall
    except (OSError, ValueError) as e:
        return None, f"{name}: no result JSON ({e})", wall


def _rel(p) -> str:
    p = os.path.abspath(p)
    return os.path.relpath(p, ROOT) if p.startswith(str(ROOT) + os.sep) else p


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def gpu_results(folder=None) -> list[dict]:
    """pretrain_bench.py --gpu-only result files in ``folder`` (other files there, e.g. the rest of
    gpu_check.sh's output, are listed under ``other``)."""
    out = []
    for p in sorted(glob.glob(str(Path(folder or ROOT / "benchmarks" / "results" / "gpu") / "*"))):
        if not os.path.isfile(p):
            continue
        try:
            d = json.loads(Path(p).read_text()) if p.endswith(".json") else None
        except (OSError, ValueError) as e:
            out.append({"file": _rel(p), "error": str(e)})
            continue
        if isinstance(d, dict) and "bf16_contiguous" in d:  # benchmarks/gpu_variants.py
            out.append({"file": _rel(p), "variants": True, "data": d})
            continue
        if isinstance(d, dict) and d.get("schema") == "spinessl.bench.gpu_impls/1":  # benchmarks/gpu_impls.py
            out.append({"file": _rel(p), "impls": True, "date": d.get("date", ""), "data": d})
            continue
        if not isinstance(d, dict) or not any(k.endswith("_cuda") for k in d):
            out.append({"file": _rel(p), "other": True})
            continue
        date = d.get("date")
        if not date:  # committed file: the commit date; else the file's modification time
            try:
                date = subprocess.run(["git", "log", "-1", "--format=%cI", "--", p], cwd=ROOT, text=True,
                                      capture_output=True, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                date = ""
            date = date or dt.datetime.fromtimestamp(os.path.getmtime(p), dt.timezone.utc).isoformat(timespec="seconds")
        out.append({"file": _rel(p), "date": date, "data": d})
    return out


# --------------------------------------------------------------------------------------------
# table and report
# --------------------------------------------------------------------------------------------

def _f(v, fmt="{:.3g}", unit=""):
    return "n/a" if v is None else fmt.format(v) + unit


def build_rows(r: dict) -> list[dict]:
    """(quantity, measured, target, met) rows; met is True/False, or None without a target."""
    rows = []

    def add(q, measured, target="—", met=None, note=""):
        rows.append({"quantity": q, "measured": measured, "target": target, "met": met, "note": note})

    ex = r.get("extract_speed")
    if ex:
        for s in ex["sizes"]:
            q = s["ratio_extract_over_pydicom_read"]
            add(f"extraction ÷ pydicom read, {s['series']} series", f"{q:.2f}× ({s['extract_s'] * 1000:.0f} ms vs "
                f"{s['pydicom_read_s'] * 1000:.0f} ms)", "≤ 1.5×", q <= 1.5)
        s = ex["sizes"][0]
        if "ratio_save_over_extract_cpu" in s:
            q = s["ratio_save_over_extract_cpu"]
            add(f"volume-file write ÷ extraction, {s['series']} (CPU time; wall {s['ratio_save_over_extract']:.2f}×)",
                f"{q:.2f}× ({s['save_cpu_s'] * 1000:.0f} ms vs {s['extract_cpu_s'] * 1000:.0f} ms); pre-#17 write "
                f"{s['save_pre17_cpu_s'] * 1000:.0f} ms", "≤ 1.0×", q <= 1.0)
            q = s["ratio_size_over_pre17"]
            add(f"volume-file size ÷ pre-#17 .npz, {s['series']}", f"{q:.2f}× ({s['file_mb']:.2f} vs "
                f"{s['file_pre17_mb']:.2f} MB)", "≤ 1.25×", q <= 1.25)
            add(f"training read of the vb array, {s['series']} (CPU time)", f"{s['read_vb_cpu_s'] * 1000:.0f} ms "
                f"(pre-#17 {s['read_vb_pre17_cpu_s'] * 1000:.0f} ms)")
    tr = r.get("training")
    if tr:
        q = tr["input_vs_model"]
        add("input pipeline ÷ model-only pairs/s (small, CPU)", f"{q:.2f}× ({tr['input_pairs_per_s']:.1f} vs "
            f"{tr['small_model_pairs_per_s']:.2f} pairs/s)", "≥ 0.9×", q >= 0.9)
    gl = r.get("grade_latency")
    if gl:
        norm = gl.get("default_norm")
        add("grading latency, 6 discs, paper, CPU, no TTA" + (f" ({norm} norm, the default)" if norm else ""),
            f"{gl['torch_6disc_s']:.2f} s", "≤ 1.0 s", gl["torch_6disc_s"] <= 1.0)
        if "torch_lrn_6disc_s" in gl:
            add("grading latency, 6 discs, paper recipe (LRN), CPU, no TTA", f"{gl['torch_lrn_6disc_s']:.2f} s",
                "≤ 1.0 s", gl["torch_lrn_6disc_s"] <= 1.0)
        if "torch_6disc_1t_cpu_s" in gl:
            add("grading, 6 discs, per core: 1-thread CPU time (default / LRN)",
                f"{gl['torch_6disc_1t_cpu_s']:.2f} s / {gl['torch_lrn_6disc_1t_cpu_s']:.2f} s = "
                f"{gl['torch_1t_fraction_of_matmul']:.0%} / {gl['torch_lrn_1t_fraction_of_matmul']:.0%} of the "
                "1-thread matmul")
        q = gl["torch_fraction_of_matmul"]
        add("grading GFLOP/s ÷ fp32 matmul GFLOP/s", f"{q:.0%} ({gl['torch_gflops']:.1f} vs "
            f"{gl['matmul_gflops']:.1f} GFLOP/s)", "≥ 60 %", q >= 0.6)
        if "torch_6disc_tta_s" in gl:
            add(f"grading latency with TTA ({gl['tta_views']} views)", f"{gl['torch_6disc_tta_s']:.1f} s")
        if "onnxruntime_6disc_s" in gl:
            add("grading latency, ONNX Runtime, no TTA", f"{gl['onnxruntime_6disc_s']:.2f} s")
    if tr:
        if "small_1t_fraction_of_matmul" in tr:
            q = tr["small_1t_fraction_of_matmul"]
            add(f"training step, small, {tr['batch_pairs']} pairs: share of the matmul rate per core (CPU time, 1 thread)",
                f"{q:.0%} ({tr['small_1t_cpu_s']:.2f} CPU s/step)", "≥ 35 %", q >= 0.35)
            add("the same, paper recipe's LRN / conv_impl fold2d (CPU time, 1 thread)",
                f"{tr['small_lrn_1t_fraction_of_matmul']:.0%} ({tr['small_lrn_1t_cpu_s']:.2f} s) / "
                f"{tr['small_fold2d_1t_fraction_of_matmul']:.0%} ({tr['small_fold2d_1t_cpu_s']:.2f} s)")
        add(f"training step, small, CPU, {tr['batch_pairs']} pairs, {tr['threads']} threads (wall)",
            f"{tr['small_step_s']:.2f} s ({tr['small_model_gflops_per_s']:.1f} GFLOP/s = "
            f"{tr['small_fraction_of_matmul']:.0%} of matmul)")
        if "small_passive_step_s" in tr:
            add("the same with OMP_WAIT_POLICY=PASSIVE (wall)", f"{tr['small_passive_step_s']:.2f} s "
                f"({tr['small_passive_fraction_of_matmul']:.0%} of matmul)")
        if "device_pairs_per_s" in tr:
            add("device-resident pipeline ÷ DataLoader pipeline pairs/s (small, CPU)",
                f"{tr['device_vs_dataloader']:.2f}× ({tr['device_pairs_per_s']:.1f} vs {tr['input_pairs_per_s']:.1f})")
        if "paper_step_s" in tr:
            add(f"training step, paper, CPU, {tr['paper_batch_pairs']} pair(s)", f"{tr['paper_step_s']:.1f} s "
                f"({tr['paper_model_gflops_per_s']:.1f} GFLOP/s = {tr['paper_fraction_of_matmul']:.0%} of matmul)")
    variants = next((g for g in r.get("gpu", []) if g.get("variants")), None)
    for g in r.get("gpu", []):
        if g.get("impls") and not g["data"].get("dry_run"):
            d = g["data"]
            for preset, vs in (d.get("variants") or {}).items():
                ok = {k: v for k, v in vs.items() if "step_s" in v}
                if ok:
                    best = max(ok, key=lambda k: ok[k]["pairs_per_s"])
                    mfu = ok[best].get("mfu")
                    add(f"training step, {preset}, {ok[best]['batch_pairs']} pairs, {d['device']}, best implementation "
                        f"({best}; GPU file {g['date'][:10]})", f"{ok[best]['step_s'] * 1000:.1f} ms, MFU {_f(mfu, '{:.1%}')}",
                        "≥ 35 % MFU" if preset == "paper" else "—",
                        (mfu >= 0.35 if mfu is not None else None) if preset == "paper" else None, note=g["file"])
            for preset, es in (d.get("end_to_end") or {}).items():
                for v, e in es.items():
                    if "ratio_to_model_only" in e:
                        q = e["ratio_to_model_only"]
                        add(f"end-to-end step (device pipeline + GPU augmentation) ÷ model-only, {preset}, {v}, "
                            f"{d['device']} (GPU file)", f"{q:.2f}×", "≥ 0.9×" if preset == "paper" else "—",
                            q >= 0.9 if preset == "paper" else None, note=g["file"])
    for g in r.get("gpu", []):
        if g.get("variants") or g.get("impls"):
            continue
        d = g.get("data") or {}
        gpu = d.get("machine", {}).get("gpu") or (d.get("model_only_paper_cuda") or {}).get("gpu") or "GPU"
        p = d.get("model_only_paper_cuda")
        if p:
            add(f"training step, paper, {p['batch_pairs']} pairs, {gpu}, channels-last 3D (GPU file)", f"{p['step_s'] * 1000:.0f} ms, "
                f"MFU {_f(p.get('mfu'), '{:.1%}')}", note=g["file"])
        for k in ("paper", "small"):
            q = d.get(f"input_vs_model_{k}_cuda")
            ip, mo = d.get(f"input_pipeline_{k}_cuda") or {}, d.get(f"model_only_{k}_cuda") or {}
            if q is not None:
                add(f"input pipeline ÷ model-only pairs/s ({k}, {gpu}, channels-last model, GPU file)",
                    f"{q:.2f}× ({_f(ip.get('pairs_per_s'), '{:.0f}')} vs {_f(mo.get('pairs_per_s'), '{:.0f}')} pairs/s)",
                    "≥ 0.9×", q >= 0.9, note=g["file"])
        v = ((variants or {}).get("data") or {}).get("bf16_contiguous") or {}
        ip = d.get("input_pipeline_paper_cuda") or {}
        if v.get("pairs_per_s") and p:
            add(f"training step, paper, {p['batch_pairs']} pairs, {gpu}, contiguous NCDHW (the training default)",
                f"{v['step_s'] * 1000:.0f} ms, MFU {_f(v['model_gflops_per_s'] / 1e3 / p['peak_bf16_tflops'], '{:.1%}')}",
                note=variants["file"])
            if ip.get("pairs_per_s"):
                q = ip["pairs_per_s"] / v["pairs_per_s"]
                add(f"input pipeline ÷ model-only pairs/s (paper, {gpu}, contiguous model = the training default)",
                    f"{q:.2f}× ({ip['pairs_per_s']:.0f} vs {v['pairs_per_s']:.0f} pairs/s)", "≥ 0.9×", q >= 0.9,
                    note=variants["file"])
    sc = r.get("scaling")
    if sc:
        for s in sc["sizes"]:
            add(f"index / extract, {s['scans']} scans", f"{s['index_wall_per_scan_s'] * 1000:.0f} ms / "
                f"{s['extract_wall_per_scan_s']:.2f} s per scan (wall)")
        for k, name in (("index", "index"), ("extract", "extract")):
            e = sc.get(f"{k}_cpu_exponent")
            if e is not None:
                add(f"{name} time growth exponent (CPU time; wall {sc[f'{k}_wall_exponent']:.2f})", f"{e:.2f}",
                    "≤ 1.1 (linear)", e <= 1.1)
    tot = r.get("total_minutes")
    if tot is not None:
        b = BUDGET_MIN.get(r["mode"])
        add(f"benchmark run time ({r['mode']})", f"{tot:.1f} min", f"≤ {b:g} min" if b else "about 5 min",
            None if b is None else tot <= b)
    return rows


def gpu_impls_markdown(impls: list[dict]) -> list[str]:
    """The section of benchmarks/gpu_impls.py's results (issue #17), or the note that they are
    not measured yet."""
    real = [g for g in impls if not g["data"].get("dry_run")]
    if not real:
        return ["### Issue #17's implementations and the device-resident pipeline: not measured on a GPU yet", "",
                "`conv_impl=\"fold2d\"` (depth-unfold + conv2d), `torch.compile` (with and without CUDA graphs), "
                "channels-last 2D, fused SGD and the device-resident float16 input pipeline "
                "(`SpineSSLLib/device_cache.py`) were built and tested on the CPU on 2026-11-28 by a session that "
                "had no GPU; the GPU rows below keep their last measured values (dated). One short GPU session "
                "measures them all: `E2E=0 benchmarks/gpu_check.sh OUT` (packages the GPU image lacks: "
                "`benchmarks/gpu_wheels.sh`), then copy `OUT/gpu_impls.json` and `OUT/pretrain_bench_gpu.json` to "
                "`benchmarks/results/gpu/` and re-render this page (`benchmarks/run_all.py --render "
                "benchmarks/results/bench_cpu.json`)." + (" The CPU rehearsal's file (" + ", ".join(
                    f"`{g['file']}`" for g in impls) + ") only proves the script runs." if impls else ""), ""]
    L = []
    for g in real:
        d = g["data"]
        peak = d.get("peak_bf16_tflops")
        L += [f"### {d['device']} — training step by implementation (`{g['file']}`, {g['date']}, "
              "`benchmarks/gpu_impls.py`)", "",
              f"bf16 autocast, SGD step, FLOPs counted from the network; MFU of {_f(peak, '{:.0f}')} TFLOP/s dense "
              f"bf16 (measured bf16 matmul {_f(d.get('measured_bf16_matmul_tflops'), '{:.0f}')} TFLOP/s). First step = "
              "compilation / autotuning.", "",
              "| preset | variant | step | pairs/s | model TFLOP/s | MFU | first step |", "|---|---|---|---|---|---|---|"]
        for preset, vs in (d.get("variants") or {}).items():
            for k, v in vs.items():
                if "step_s" in v:
                    L.append(f"| {preset} | {k} | {v['step_s'] * 1000:.1f} ms | {v['pairs_per_s']:.0f} | "
                             f"{v['model_tflops']:.1f} | {_f(v.get('mfu'), '{:.1%}')} | {v['first_step_s']:.1f} s |")
                else:
                    L.append(f"| {preset} | {k} | failed: {v.get('error', '?')} | | | | |")
        L += ["", "| preset | DataLoader + GPU augmentation | device-resident + GPU augmentation | cache | "
              "end-to-end ÷ model-only |", "|---|---|---|---|---|"]
        for preset, pp in (d.get("pipelines") or {}).items():
            e2e = (d.get("end_to_end") or {}).get(preset, {})
            ratios = ", ".join(f"{v}: {e['ratio_to_model_only']:.2f}×" for v, e in e2e.items() if "ratio_to_model_only" in e)
            if "device_pairs_per_s" in pp:
                L.append(f"| {preset} | {pp['dataloader_pairs_per_s']:.0f} pairs/s ({pp['dataloader_workers']} workers) | "
                         f"{pp['device_pairs_per_s']:.0f} pairs/s | {pp['device_cache_gb']:.2f} GB on "
                         f"{pp['device_cache_where']}, built in {pp['device_cache_build_s']:.1f} s | {ratios} |")
        if d.get("errors"):
            L += ["", "Failed: " + "; ".join(d["errors"])]
        L.append("")
    return L


def table(rows: list[dict]) -> str:
    w = [max(len(x[k]) for x in rows + [{"quantity": "quantity", "measured": "measured", "target": "target"}])
         for k in ("quantity", "measured", "target")]
    lines = [f"{'quantity':<{w[0]}}  {'measured':<{w[1]}}  {'target':<{w[2]}}  met?"]
    lines.append("-" * (sum(w) + 12))
    for x in rows:
        met = "" if x["met"] is None else ("yes" if x["met"] else "NO")
        lines.append(f"{x['quantity']:<{w[0]}}  {x['measured']:<{w[1]}}  {x['target']:<{w[2]}}  {met}")
    return "\n".join(lines)


def markdown(r: dict, rows: list[dict]) -> str:
    m = r["machine"]
    met = {None: "", True: "yes", False: "**no**"}
    L = ["# Performance", "",
         "Written by `benchmarks/run_all.py` (do not edit by hand; re-run the command below). "
         "Every figure is the median of repeated runs; every ratio compares figures measured in the same run "
         "(interleaved where the script allows), so the machine's other load affects both sides alike. "
         "Targets are those of issues #9 and #17. On this shared 2-core machine the other work's load changes "
         "wall times several-fold; per-core figures are therefore also given in CPU time of one thread "
         "(numerator and denominator measured alike), and targets on them are judged that way where the row says so.", "",
         "## Run", "",
         f"- command: `{r['command']}`" + (f" (= `{r['make']}`)" if r.get("make") else "") + f", {r['mode']} run",
         f"- date: {r['started']} → {r['finished']} UTC ({r['total_minutes']:.1f} min)",
         f"- machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; "
         f"{m.get('gpu') or 'no GPU'}",
         f"- load average (1/5/15 min) at start {r['load_start']}, at end {r['load_end']} "
         "(the machine is shared with other work; the load average counts it)",
         f"- Python {m['python']}, torch {m['torch']}, torch threads {m['torch_threads']} "
         "(extraction benchmark 1 thread like pydicom; grading and training 2; scaling: "
         f"`extract --workers {r['config']['scaling_workers']}`)",
         f"- SpineSSL commit {r.get('commit', '?')}", "",
         "## Results", "",
         "| quantity | measured | target | met? |", "|---|---|---|---|"]
    for x in rows:
        L.append(f"| {x['quantity']} | {x['measured']} | {x['target']} | {met[x['met']]} |")
    L += ["", "## Targets missed", ""]
    missed = [x for x in rows if x["met"] is False]
    L += [f"- {x['quantity']}: measured {x['measured']}, target {x['target']}" for x in missed] or ["- none"]
    errs = r.get("errors") or []
    if errs:
        L += ["", "Benchmarks that did not run to the end (their rows are missing above):", ""]
        L += [f"- {e}" for e in errs]
    L += ["", "## Details", ""]
    ex = r.get("extract_speed")
    if ex:
        L += ["### Extraction vs pydicom read (`benchmarks/extract_speed.py`)", "",
              f"{ex['sizes'][0]['repeats']} interleaved repeats per series size, torch 1 thread. "
              "`pydicom read` = `dcmread` + `pixel_array` + rescale of every file, stacked; `extract` = "
              "`extract.extract_scan` on the scan in memory (7 VB + 6 IVD volumes); read and save are reported "
              "apart from the target. Details: [extraction.md](extraction.md).", "",
              "| series | pydicom read | SpineSSL read | extract | save .npz | extract ÷ pydicom |",
              "|---|---|---|---|---|---|"]
        for s in ex["sizes"]:
            L.append(f"| {s['series']} | {s['pydicom_read_s'] * 1000:.0f} ms | {s['spinessl_read_s'] * 1000:.0f} ms | "
                     f"{s['extract_s'] * 1000:.0f} ms | {s['save_s'] * 1000:.0f} ms | "
                     f"{s['ratio_extract_over_pydicom_read']:.2f}× |")
        s0 = ex["sizes"][0]
        if "save_pre17_s" in s0:
            L += ["", "Volume-file storage (issue #17; the same arrays written both ways in each repeat; CPU time of "
                  "this process, wall in brackets):", "",
                  "| series | extract | write | write pre-#17 | file | file pre-#17 | read vb | read vb pre-#17 |",
                  "|---|---|---|---|---|---|---|---|"]
            for s in ex["sizes"]:
                L.append(f"| {s['series']} | {s['extract_cpu_s'] * 1000:.0f} ms ({s['extract_s'] * 1000:.0f}) | "
                         f"{s['save_cpu_s'] * 1000:.0f} ms ({s['save_s'] * 1000:.0f}) | {s['save_pre17_cpu_s'] * 1000:.0f} ms "
                         f"({s['save_pre17_s'] * 1000:.0f}) | {s['file_mb']:.2f} MB | {s['file_pre17_mb']:.2f} MB | "
                         f"{s['read_vb_cpu_s'] * 1000:.0f} ms | {s['read_vb_pre17_cpu_s'] * 1000:.0f} ms |")
            L += ["", "Since issue #17 the volume file stores `vb`/`ivd` as Zstandard-compressed `.npy` members "
                  "(level 1) in an uncompressed zip instead of zip-deflating every member; the float16 conversion goes "
                  f"through torch. Raw float16 volumes are {s0['raw_volume_mb']:.1f} MB per scan. Pre-#17 files still "
                  "load ([extraction.md](extraction.md)).", ""]
        else:
            L += ["", f"Writing the compressed `.npz` takes {s0['save_s'] / s0['extract_s']:.1f}× the extraction itself "
                  f"({s0['series']}); it is most of `spine-ssl extract`'s time per scan (see the scaling table).", ""]
    gl = r.get("grade_latency")
    if gl:
        L += ["### Grading latency (`benchmarks/grade_latency.py`)", "",
              f"`paper` grading network (random weights; latency does not depend on them), 6 disc volumes "
              f"112×224×9, {gl['threads']} threads, median of {r['config']['grade_repeats']} runs after a warm-up; "
              f"{gl['gflop_per_disc']:.1f} GFLOP per disc. Reference: {r['config'].get('matmul_n', 2048)}² fp32 "
              f"matmul {gl['matmul_gflops']:.1f} GFLOP/s in the same process.", "",
              f"- torch, no TTA: {gl['torch_6disc_s']:.2f} s = {gl['torch_gflops']:.1f} GFLOP/s "
              f"({gl['torch_fraction_of_matmul']:.0%} of matmul)" + (f", {gl['default_norm']} norm (the default)"
                                                                     if gl.get("default_norm") else "")]
        if "torch_lrn_6disc_s" in gl:
            L.append(f"- torch, no TTA, the paper recipe's LRN network: {gl['torch_lrn_6disc_s']:.2f} s = "
                     f"{gl['torch_lrn_gflops']:.1f} GFLOP/s ({gl['torch_lrn_fraction_of_matmul']:.0%} of matmul)")
        if "torch_6disc_1t_cpu_s" in gl:
            L.append(f"- per core (1 thread, CPU time; 1-thread matmul {gl['matmul_cpu_gflops_1t']:.1f} GFLOP/s): default "
                     f"{gl['torch_6disc_1t_cpu_s']:.2f} s ({gl['torch_1t_fraction_of_matmul']:.0%}), LRN "
                     f"{gl['torch_lrn_6disc_1t_cpu_s']:.2f} s ({gl['torch_lrn_1t_fraction_of_matmul']:.0%}); on 2 idle "
                     f"cores the latency is between half of that (perfect scaling: {gl['torch_6disc_1t_cpu_s'] / 2:.2f} s / "
                     f"{gl['torch_lrn_6disc_1t_cpu_s'] / 2:.2f} s) and the 1-thread time")
        if "torch_6disc_tta_s" in gl:
            L.append(f"- torch, TTA ({gl['tta_views']} views, one run): {gl['torch_6disc_tta_s']:.1f} s")
        if "onnxruntime_6disc_s" in gl:
            L.append(f"- ONNX Runtime, no TTA: {gl['onnxruntime_6disc_s']:.2f} s = {gl['onnxruntime_gflops']:.1f} "
                     f"GFLOP/s (max |Δp| vs torch {gl['onnx_max_abs_prob_diff']:.1e}; faster: {gl['faster']})")
        L += ["", "See [grading.md](grading.md) for the grading model.", ""]
    tr = r.get("training")
    if tr:
        L += ["### Input pipeline and training step (CPU)", "",
              f"On the scaling run's cohort ({tr['cohort_vb_volumes']} VB volumes, {tr['cohort_subjects']} subjects), "
              f"`small` preset, {tr['batch_pairs']} pairs per batch, {tr['threads']} torch threads, "
              f"{tr['repeats']} interleaved repeats of: fp32 matmul reference; model only "
              f"(`pretrain_bench.model_only`: Siamese forward + backward + SGD on in-memory tensors, "
              f"{tr['steps_per_repeat']} step(s) after a warm-up step); input pipeline "
              f"(`pretrain_bench.input_pipeline`: volume cache → pair sampler → DataLoader with "
              f"{tr['loader_workers']} worker → MONAI augmentation, no model).", "",
              f"- model only: {tr['small_step_s']:.2f} s/step = {tr['small_model_pairs_per_s']:.2f} pairs/s, "
              f"{tr['small_model_gflops_per_s']:.1f} GFLOP/s ({tr['small_fraction_of_matmul']:.0%} of the "
              f"{tr['matmul_gflops_median']:.0f} GFLOP/s matmul)",
              f"- input pipeline: {tr['input_pairs_per_s']:.1f} pairs/s; ratio input ÷ model "
              f"{tr['input_vs_model']:.1f}× (per repeat: "
              + ", ".join(f"{q:.1f}" for q in tr["input_vs_model_per_repeat"]) + ")"]
        if "small_1t_cpu_s" in tr:
            L.append(f"- per core, 1 thread, CPU time (1-thread matmul {tr['matmul_cpu_gflops_1t_median']:.1f} GFLOP/s): "
                     f"default (batch norm) {tr['small_1t_cpu_s']:.2f} s/step = {tr['small_1t_fraction_of_matmul']:.0%} of "
                     f"matmul; paper recipe's LRN {tr['small_lrn_1t_cpu_s']:.2f} s ({tr['small_lrn_1t_fraction_of_matmul']:.0%}); "
                     f"conv_impl fold2d {tr['small_fold2d_1t_cpu_s']:.2f} s ({tr['small_fold2d_1t_fraction_of_matmul']:.0%})")
        if "small_passive_step_s" in tr:
            L.append(f"- {tr['threads']} threads with OMP_WAIT_POLICY=PASSIVE (a fresh process; OpenMP threads sleep "
                     f"instead of spinning while they wait): {tr['small_passive_step_s']:.2f} s/step vs "
                     f"{tr['small_step_s']:.2f} s with the default policy")
        cpu2 = [m["cpu_s"] for m in tr.get("model_only", []) if m.get("cpu_s")]
        if cpu2 and "small_1t_cpu_s" in tr:  # issue #17: what else is in the multi-thread step
            c2, c1 = statistics.median(cpu2), tr["small_1t_cpu_s"]
            L.append(f"- CPU time of the same `small` step: {c2:.2f} CPU-s at {tr['threads']} threads vs {c1:.2f} at "
                     f"one ({c2 / c1:.1f}×); the model-only step has no data loading, augmentation or "
                     "diagnostics, so "
                     + ("the extra CPU time is the threads waiting (OpenMP threads spin at each of the step's "
                        "many short parallel operations while the partner thread is descheduled by other load); "
                        "the per-core share above is what the step achieves when it has the cores"
                        if c2 > 1.25 * c1 else "the threads cost little CPU time beyond the work itself"))
        if "device_pairs_per_s" in tr:
            L.append(f"- device-resident pipeline (`device_cache.DevicePairLoader`, volumes in one float16 tensor, no "
                     f"DataLoader) + augmentation: {tr['device_pairs_per_s']:.1f} pairs/s = "
                     f"{tr['device_vs_dataloader']:.2f}× the DataLoader pipeline")
        if "paper_step_s" in tr:
            L.append(f"- `paper` preset on this CPU, {tr['paper_batch_pairs']} pair(s) per step (median of 2): "
                     f"{tr['paper_step_s']:.1f} s/step, {tr['paper_model_gflops_per_s']:.1f} GFLOP/s "
                     f"({tr['paper_fraction_of_matmul']:.0%} of matmul)")
        L += ["", "Model-FLOP utilisation needs a GPU (see below); on this CPU the matmul fraction is its "
              "analogue. FLOPs are counted from the network (`models.count_macs`, ×2 per MAC, ×3 for "
              "forward + backward, ×2 volumes per pair). Pretraining itself: [pretraining.md](pretraining.md).", ""]
    sc = r.get("scaling")
    if sc:
        L += ["### Index / extract scaling (`benchmarks/scaling.py`)", "",
              f"{sc['source_series']} synthetic series (`tiny` preset: 11–13 slices of 224–256²) copied through "
              f"pydicom with fresh PatientID and Study/Series/SOP/FrameOfReference UIDs per copy (a subject's "
              f"visits stay one subject), truth levels per copy; `spine-ssl index` then `spine-ssl extract "
              f"--levels truth:… --workers {sc['workers']}` run in one process after a warm-up (no interpreter "
              "start-up in the figures). CPU time includes the extraction workers.", "",
              "| scans | repeats | index wall | index CPU | extract wall | extract CPU | extract wall / scan | "
              "extract CPU / scan |", "|---|---|---|---|---|---|---|---|"]
        for s in sc["sizes"]:
            L.append(f"| {s['scans']} | {s['repeats']} | {s['index_wall_median_s']:.2f} s | {s['index_cpu_median_s']:.2f} s"
                     f" | {s['extract_wall_median_s']:.1f} s | {s['extract_cpu_median_s']:.1f} s | "
                     f"{s['extract_wall_per_scan_s']:.3f} s | {s['extract_cpu_per_scan_s']:.3f} s |")
        L += ["", "Growth exponent = least-squares slope of log(time) on log(scans) (1.0 = linear): "
              f"index {sc['index_wall_exponent']:.2f} wall / {sc['index_cpu_exponent']:.2f} CPU, "
              f"extract {sc['extract_wall_exponent']:.2f} wall / {sc['extract_cpu_exponent']:.2f} CPU"
              + (f"; between the two largest sizes index {sc['index_cpu_exponent_upper']:.2f}, extract "
                 f"{sc['extract_cpu_exponent_upper']:.2f} (CPU)" if "index_cpu_exponent_upper" in sc else "")
              + ". The target is judged on CPU time, which the other load on this shared machine does not "
              "change; wall time is shown beside it.", ""]
    L += ["## GPU", ""]
    gpus = [g for g in r.get("gpu", []) if not g.get("other") and not g.get("variants") and not g.get("impls")]
    impls = [g for g in r.get("gpu", []) if g.get("impls")]
    L += gpu_impls_markdown(impls)
    others = [g["file"] for g in r.get("gpu", []) if g.get("other")]
    if not gpus:
        L += ["No GPU results yet: `benchmarks/results/gpu/` holds no JSON. On a CUDA machine run "
              "`benchmarks/gpu_check.sh OUT` (or `benchmarks/pretrain_bench.py C --gpu-only --json "
              "benchmarks/results/gpu/pretrain_bench_gpu.json`), commit the JSON and re-run this command.", ""]
    for g in gpus:
        d = g.get("data")
        if d is None:
            L += [f"- {g['file']}: unreadable ({g['error']})", ""]
            continue
        gm = d.get("machine", {})
        name = gm.get("gpu") or (d.get("model_only_paper_cuda") or {}).get("gpu") or "unknown GPU"
        L += [f"### {name} — `{g['file']}` (file date {g['date']})", "",
              f"Measured on another machine ({gm.get('cpu', '?')}, {gm.get('cores', '?')} cores, torch "
              f"{gm.get('torch', '?')}) by `benchmarks/pretrain_bench.py --gpu-only`; not comparable with "
              "the CPU figures above.", "",
              "| quantity | paper | small |", "|---|---|---|"]
        p, s = d.get("model_only_paper_cuda") or {}, d.get("model_only_small_cuda") or {}

        def cell(x, k, fmt):
            return _f(x.get(k), fmt) if x else "n/a"

        L.append(f"| batch (pairs) | {cell(p, 'batch_pairs', '{:d}')} | {cell(s, 'batch_pairs', '{:d}')} |")
        L.append(f"| training step (bf16 autocast) | {cell(p, 'step_s', '{:.4f} s')} | {cell(s, 'step_s', '{:.4f} s')} |")
        L.append(f"| model-only pairs/s | {cell(p, 'pairs_per_s', '{:.0f}')} | {cell(s, 'pairs_per_s', '{:.0f}')} |")
        L.append(f"| model TFLOP/s | {_f(p.get('model_gflops_per_s') and p['model_gflops_per_s'] / 1e3, '{:.1f}')} | "
                 f"{_f(s.get('model_gflops_per_s') and s['model_gflops_per_s'] / 1e3, '{:.1f}')} |")
        L.append(f"| MFU (of {_f(p.get('peak_bf16_tflops'), '{:.0f}')} TFLOP/s dense bf16 peak) | "
                 f"{_f(p.get('mfu'), '{:.1%}')} | |")
        if p.get("measured_bf16_matmul_tflops"):
            L.append(f"| fraction of measured bf16 matmul ({p['measured_bf16_matmul_tflops']:.0f} TFLOP/s) | "
                     f"{_f(p.get('fraction_of_measured_matmul'), '{:.1%}')} | |")
        for k in ("paper", "small"):
            ip = d.get(f"input_pipeline_{k}_cuda")
            if ip:
                L.append(f"| input pipeline pairs/s ({k}; {ip.get('workers')} workers, GPU augmentation) | "
                         + (f"{ip['pairs_per_s']:.0f} | |" if k == "paper" else f"| {ip['pairs_per_s']:.0f} |"))
        q = [d.get("input_vs_model_paper_cuda"), d.get("input_vs_model_small_cuda")]
        if any(v is not None for v in q):
            L.append(f"| input ÷ model (target ≥ 0.9×) | {_f(q[0], '{:.2f}×')} | {_f(q[1], '{:.2f}×')} |")
        L.append("")
    for g in r.get("gpu", []):
        if not g.get("variants"):
            continue
        d = g["data"]
        peak = next((x.get("data", {}).get("model_only_paper_cuda", {}).get("peak_bf16_tflops")
                     for x in gpus if x.get("data")), None) or 989.0
        L += [f"### {d.get('gpu', 'GPU')} — `paper` training step by variant (`{g['file']}`, "
              "`benchmarks/gpu_variants.py`)", "",
              "32 pairs, SGD step, FLOPs counted from the network. `baseline` = channels-last 3D, the "
              "training default before this measurement; contiguous NCDHW is the default now.", "",
              f"| variant | step | pairs/s | model TFLOP/s | MFU (of {peak:.0f}) |", "|---|---|---|---|---|"]
        for k, v in d.items():
            if isinstance(v, dict) and "step_s" in v:
                L.append(f"| {k} | {v['step_s'] * 1000:.0f} ms | {v['pairs_per_s']:.0f} | "
                         f"{v['model_gflops_per_s'] / 1e3:.1f} | {v['model_gflops_per_s'] / 1e3 / peak:.1%} |")
            elif isinstance(v, dict) and "error" in v:
                L.append(f"| {k} | failed: {v['error']} | | | |")
        L.append("")
    if others:
        L += ["Other files in that folder (the rest of `benchmarks/gpu_check.sh`'s output; not summarised "
              "here): " + ", ".join(f"`{o}`" for o in others) + ".", ""]
    L += ["## Reproduce", "", "```", r["command"], "```", "",
          f"The JSON behind this page: `{r.get('json', 'benchmarks/results/bench_cpu.json')}`. Quick version (about 5 min, "
          "fewer repeats, 10/100 scans): `make bench-quick`.", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 5 minutes: fewer repeats, no TTA, 10/100 scans")
    ap.add_argument("--sizes", help="scaling cohort sizes (default 10,100,1000; quick 10,100)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_cpu.json"))
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--gpu-dir", default=str(ROOT / "benchmarks" / "results" / "gpu"),
                    help="folder of GPU result JSON files (pretrain_bench.py --gpu-only)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite --out from a saved run's JSON")
    ap.add_argument("--part", choices=["training"], help=argparse.SUPPRESS)
    ap.add_argument("--cohort", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--paper", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from SpineSSLLib.atomic import write_json, write_text

    if args.part == "training":
        write_json(args.json, training_part(args.cohort, args.repeats, args.steps, args.paper, args.threads))
        return 0

    if args.render:
        r = json.loads(Path(args.render).read_text())
        r["gpu"] = gpu_results(args.gpu_dir)
        rows = build_rows(r)
        print(table(rows))
        write_text(args.out, markdown(r, rows))
        return 0

    import machine

    cfg = dict(QUICK if args.quick else FULL)
    if args.sizes:
        cfg["sizes"] = args.sizes
    mode = "quick" if args.quick else "full"
    cmd = ".venv/bin/python benchmarks/run_all.py" + (" --quick" if args.quick else "") + \
        (f" --sizes {args.sizes}" if args.sizes else "")
    alias = None if args.sizes else "make bench-quick" if args.quick else "make bench"
    started = dt.datetime.now(dt.timezone.utc)
    r = {"mode": mode, "command": cmd, "make": alias, "config": cfg,
         "started": started.strftime("%Y-%m-%d %H:%M"), "load_start": loadavg(), "errors": [],
         "json": _rel(args.json)}
    t_start = time.perf_counter()
    r["machine"] = machine.describe()
    try:
        r["machine"]["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        pass
    try:
        r["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                     capture_output=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        r["commit"] = None
    log(f"SpineSSL benchmarks ({mode}); load average {r['load_start']}; {r['machine']['cpu']}")

    with tempfile.TemporaryDirectory(prefix="spinessl-bench-") as tmp:
        tmp = Path(tmp)
        B = "benchmarks/"
        parts = [
            ("extract_speed", [B + "extract_speed.py", "--repeats", str(cfg["extract_repeats"])], 600),
            ("grade_latency", [B + "grade_latency.py", "--threads", str(args.threads), "--repeats",
                               str(cfg["grade_repeats"])] + ([] if cfg["tta"] else ["--skip-tta"]), 900),
            ("scaling", [B + "scaling.py", "--sizes", cfg["sizes"], "--repeats", str(cfg["scaling_repeats"]),
                         "--workers", str(cfg["scaling_workers"]), "--keep", str(tmp / "scaling")], 3600),
        ]
        for name, argv, timeout in parts:
            js = tmp / f"{name}.json"
            res, err, wall = run_part(name, argv + ["--json", str(js)], js, timeout)
            r[name] = res
            if res is not None:
                res["wall_s"] = round(wall, 1)
            if err:
                r["errors"].append(err)
                log(err)
        # training part on the largest scaling cohort of at most 100 scans
        sizes = sorted(int(s) for s in cfg["sizes"].split(","))
        small = [n for n in sizes if n <= 100] or sizes[:1]
        coh = tmp / "scaling" / f"C_{small[-1]}"
        if (coh / "volumes.csv").is_file():
            js = tmp / "training.json"
            argv = [B + "run_all.py", "--part", "training", "--cohort", str(coh), "--repeats",
                    str(cfg["train_repeats"]), "--steps", str(cfg["train_steps"]), "--threads", str(args.threads),
                    "--json", str(js)] + (["--paper"] if cfg["paper_cpu_step"] else [])
            res, err, wall = run_part("training", argv, js, 1800)
            r["training"] = res
            if err:
                r["errors"].append(err)
                log(err)
        else:
            r["errors"].append("training: no extracted cohort from the scaling run")
    r["gpu"] = gpu_results(args.gpu_dir)
    r["load_end"] = loadavg()
    r["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    r["total_minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    rows = build_rows(r)
    r["rows"] = rows
    print()
    print(table(rows))
    missed = [x for x in rows if x["met"] is False]
    write_json(args.json, {k: v for k, v in r.items() if k != "gpu"} | {"gpu_files": [g["file"] for g in r["gpu"]]})
    print(f"\ntargets missed: {len(missed)}" + "".join(f"\n  - {x['quantity']}: {x['measured']} (target {x['target']})"
                                                     for x in missed))
    write_text(args.out, markdown(r, rows))
    log(f"wrote {_rel(args.out)} and {_rel(args.json)} "
        f"({r['total_minutes']:.1f} min; load average at end {r['load_end']})")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
