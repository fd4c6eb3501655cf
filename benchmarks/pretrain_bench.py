"""Pretraining benchmark (issue #5): the `small` preset on a synthetic cohort on this machine.

Measures, in one run:
- model-only throughput: Siamese forward + backward + SGD step on in-memory tensors (pairs/s),
  and the CPU's fp32 matmul rate as a reference (model GFLOP/s as a fraction of it);
- input-pipeline throughput: cached volumes -> pair sampler -> DataLoader -> augmentation, no
  model (pairs/s); the ratio tells whether the data keeps the model fed;
- a short pretraining (`--epochs`) of the `small` preset: wall time, then on the *test* split
  the pair ROC AUC and VB-level accuracy (`eval-pairs`);
- on a CUDA GPU also the `paper` preset: step time, pairs/s and model-FLOP utilisation (MFU)
  against the GPU's dense bf16 peak (`--peak-tflops`, default by GPU name).

Usage:
  .venv/bin/python benchmarks/pretrain_bench.py COHORT [--out DIR] [--epochs 4] [--threads 2]
  (COHORT = an extracted cohort: `spine-ssl synth --subjects 64 S && spine-ssl index S/dicom --out C
   && spine-ssl extract C --levels truth:S/truth`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0}


def model_only(preset_cfg, device, batch: int, steps: int, dtype=None, compile: bool = False,
               channels_last: bool = False, patch=None) -> dict:
    import contextlib

    import torch

    from SpineSSLLib import models as M
    from SpineSSLLib.losses import LossConfig, pretrain_loss

    torch.manual_seed(0)
    net = M.VGGMNet(preset_cfg, 7).to(device)
    if device.type == "cuda" and channels_last:
        M.to_channels_last(net)
    if patch is not None:
        patch(net)
    model = M.SiameseNet(net).train()
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)
    hw = preset_cfg.net_hw((224, 224))
    fmt = torch.channels_last_3d if device.type == "cuda" and channels_last else torch.contiguous_format
    a = torch.randn(batch, 1, 9, *hw, device=device).contiguous(memory_format=fmt)
    b = torch.randn(batch, 1, 9, *hw, device=device).contiguous(memory_format=fmt)
    y = (torch.arange(batch, device=device) % 2).float()
    lev = torch.arange(batch, device=device) % 7
    cfg = LossConfig()

    def step():
        amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with amp:
            ea, eb, la, lb = fwd(a, b)
            loss = pretrain_loss(ea, eb, la, lb, y, lev, cfg)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    cpu = (time.process_time() - c0) / steps           # CPU time of all this process's threads
    macs = M.count_macs(net)
    flops_per_step = 3 * 2 * macs * 2 * batch          # fwd + 2x bwd, 2 volumes per pair
    return {"preset": preset_cfg.preset, "norm": preset_cfg.norm, "conv_impl": preset_cfg.conv_impl,
            "threads": torch.get_num_threads(), "batch_pairs": batch, "step_s": dt, "cpu_s": cpu,
            "pairs_per_s": batch / dt, "model_gflops_per_s": flops_per_step / dt / 1e9,
            "model_gflops_per_cpu_s": flops_per_step / cpu / 1e9 if cpu > 0 else None,
            "gflops_per_volume_fwd": 2 * macs / 1e9}


def _drain(loader, aug, net_hw, device, max_batches: int, to_device: bool) -> tuple[int, float]:
    """Pairs taken from ``loader`` (moved to ``device`` when ``to_device``, augmented by ``aug`` when
    given) in at most ``max_batches`` batches, and the seconds it took (augmentation warmed up first:
    MONAI imports and first-call set-up are not throughput)."""
    import torch

    if aug is not None:
        x = torch.zeros(1, 1, 9, *net_hw, device=device)
        aug({"a": x, "b": x})
    n, t0 = 0, time.perf_counter()
    for i, bt in enumerate(loader):
        if to_device:
            bt = {k: v.to(device, non_blocking=True) for k, v in bt.items()}
        if aug is not None:
            with torch.no_grad():
                bt = aug(bt)
        n += bt["a"].shape[0]
        if i + 1 >= max_batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def input_pipeline(cohort, rows, net_hw, batch: int, workers: int, max_batches: int, augment: bool,
                   device=None) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from SpineSSLLib import data as D

    cache = D.VolumeCache(cohort, rows, net_hw, progress=False)
    sampler = D.PairSampler(rows, D.PairConfig(), seed=0)
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    loader = DataLoader(D.PairDataset(rows, cache), sampler=sampler, batch_size=batch, num_workers=workers,
                        persistent_workers=False, pin_memory=cuda)
    n, dt = _drain(loader, D.PairAugment(D.AugmentConfig(), net_hw) if augment else None, net_hw, device,
                   max_batches, to_device=cuda)
    return {"pairs": n, "seconds": dt, "pairs_per_s": n / dt, "workers": workers, "augment": augment,
            "device": device.type, "net_hw": list(net_hw)}


def device_pipeline(cohort, rows, net_hw, batch: int, max_batches: int, augment: bool, device=None) -> dict:
    """The device-resident pipeline (``device_cache``: decoded float16 volumes in one tensor on the
    device, pairs gathered there, no DataLoader) + augmentation: pairs/s (build time apart)."""
    import torch

    from SpineSSLLib import data as D
    from SpineSSLLib.device_cache import DevicePairLoader, DeviceVolumes

    device = device or torch.device("cpu")
    cache = D.VolumeCache(cohort, rows, net_hw, progress=False)
    t0 = time.perf_counter()
    vols = DeviceVolumes(cache, rows, device)
    build = time.perf_counter() - t0
    loader = DevicePairLoader(rows, vols, D.PairSampler(rows, D.PairConfig(), seed=0), batch)
    n, dt = _drain(loader, D.PairAugment(D.AugmentConfig(), net_hw) if augment else None, net_hw, device,
                   max_batches, to_device=False)
    return {"pairs": n, "seconds": dt, "pairs_per_s": n / dt, "build_s": build, "where": vols.where,
            "gb": vols.nbytes / 1e9, "augment": augment, "device": device.type, "net_hw": list(net_hw)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort")
    ap.add_argument("--out", default="bench-pretrain")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2, help="higher than the paper's 1e-5: few epochs here")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, help="GPU dense bf16 peak for MFU (default by name)")
    ap.add_argument("--json", help="write the results here (default OUT/pretrain_bench.json)")
    ap.add_argument("--gpu-only", action="store_true",
                    help="CUDA rows only: paper/small model-only step time, pairs/s, MFU, and the input "
                         "pipeline feeding the GPU (no CPU training run)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import machine
    from SpineSSLLib import data as D
    from SpineSSLLib import progress
    from SpineSSLLib.pretrain import load_config, run_pretraining
    from SpineSSLLib.models import ModelConfig, describe

    progress.set_enabled(False)
    out = Path(args.out)
    res = {"machine": machine.describe(), "cpu_matmul_gflops": machine.matmul_gflops()}
    res["presets"] = {p: {k: describe(ModelConfig.preset(p), 7, hw) for k, hw in (("VB", (224, 224)), ("IVD", (112, 224)))}
                      for p in ("paper", "small")}
    rows = D.read_vb_table(args.cohort)
    small = ModelConfig.preset("small")
    cpu = torch.device("cpu")
    if args.gpu_only:
        return _gpu_rows(args, res, rows, small)
    res["model_only_small_cpu"] = model_only(small, cpu, args.batch, args.steps)
    res["model_only_small_cpu"]["fraction_of_matmul"] = res["model_only_small_cpu"]["model_gflops_per_s"] / res["cpu_matmul_gflops"]
    nb = max(3, 96 // args.batch)
    res["input_pipeline"] = [input_pipeline(args.cohort, rows, small.net_hw((224, 224)), args.batch, w, nb, aug)
                             for w, aug in ((0, False), (0, True), (args.workers, True))]
    res["input_vs_model"] = res["input_pipeline"][-1]["pairs_per_s"] / res["model_only_small_cpu"]["pairs_per_s"]

    cfg = load_config(overrides={"model.preset": "small", "train.lr": args.lr, "train.max_epochs": args.epochs,
                                 "train.batch_size": args.batch, "train.num_workers": args.workers,
                                 "train.device": "cpu", "train.patience": 100})
    t0 = time.perf_counter()
    summary = run_pretraining(args.cohort, out / "run", cfg, progress=False)
    res["pretrain"] = {"seconds": time.perf_counter() - t0, **summary, "lr": args.lr, "batch_pairs": args.batch}
    # test-split evaluation through the CLI, exactly as a user runs it
    from SpineSSLLib.cli import main as cli

    rc = cli(["-q", "eval-pairs", str(out / "run"), str(args.cohort), "--out", str(out / "eval_test"), "--split", "test"])
    rep = json.loads((out / "eval_test" / "report.json").read_text()) if rc == 0 else {}
    res["test"] = {k: rep.get(k) for k in ("auc", "level_accuracy", "n_subjects", "n_volumes", "n_positive_pairs",
                                           "n_negative_pairs")}

    if torch.cuda.is_available():
        _cuda_model_rows(args, res, small)

    from SpineSSLLib.atomic import write_json

    write_json(args.json or out / "pretrain_bench.json", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("presets",)}, indent=2, default=str))
    return 0


def _cuda_model_rows(args, res, small) -> None:
    import torch

    from SpineSSLLib.models import ModelConfig

    gpu = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    r = model_only(ModelConfig.preset("paper"), gpu, 32, 10, torch.bfloat16)
    r["gpu"] = name
    r["mfu"] = r["model_gflops_per_s"] / 1e3 / peak if peak else None
    r["peak_bf16_tflops"] = peak
    from benchmarks import machine

    measured = machine.matmul_gflops(8192, 10, "cuda", torch.bfloat16) / 1e3
    r["measured_bf16_matmul_tflops"] = measured
    r["fraction_of_measured_matmul"] = r["model_gflops_per_s"] / 1e3 / measured
    res["model_only_paper_cuda"] = r
    res["model_only_small_cuda"] = model_only(small, gpu, 32, 10, torch.bfloat16)


def _gpu_rows(args, res, rows, small) -> int:
    """The GPU half: model-only rows, then the input pipeline (workers, pinned memory, augmentation
    on the GPU) at each preset's input size, and its ratio to the model's pairs/s."""
    import torch

    from SpineSSLLib.atomic import write_json
    from SpineSSLLib.models import ModelConfig

    if not torch.cuda.is_available():
        print("--gpu-only: no CUDA device", file=sys.stderr)
        return 2
    _cuda_model_rows(args, res, small)
    gpu = torch.device("cuda")
    for name, cfg in (("paper", ModelConfig.preset("paper")), ("small", small)):
        pipe = input_pipeline(args.cohort, rows, cfg.net_hw((224, 224)), 32, args.workers, 12, True, gpu)
        res[f"input_pipeline_{name}_cuda"] = pipe
        res[f"input_vs_model_{name}_cuda"] = pipe["pairs_per_s"] / res[f"model_only_{name}_cuda"]["pairs_per_s"]
    write_json(args.json or Path(args.out) / "pretrain_bench_gpu.json", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("presets",)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
