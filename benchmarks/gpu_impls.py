"""Training-step speed by implementation and the input pipeline, on one GPU (issue #17).

For each variant of the Siamese training step (``conv_impl`` 3d | fold2d, eager | torch.compile |
compile with CUDA graphs, channels-last 2D, fused SGD, the paper recipe's LRN), on the `paper`
preset (32 pairs, bf16 autocast) and the `small` preset: step time, pairs/s, model TFLOP/s, MFU
(of the GPU's dense bf16 peak) — all in one process, so the ratios are same-run.  Then the input
pipeline at each preset's input size: the DataLoader with worker processes (the pre-#17 way) and
the device-resident one (``device_cache.DevicePairLoader``: decoded float16 volumes on the GPU,
pairs gathered there), both with the batched GPU augmentation, as pairs/s; and the end-to-end
step (device pipeline + augmentation + training step) against the model-only step of the same
variant: the GPU never waits when that ratio is ~1.

  python benchmarks/gpu_impls.py COHORT --json benchmarks/results/gpu/gpu_impls.json
  python benchmarks/gpu_impls.py COHORT --make-cohort 24 ...     # first write a 24-subject cohort in
                                      # the extraction contract (random volumes; no DICOM stack needed)
  python benchmarks/gpu_impls.py COHORT --device cpu --dry-run     # rehearse the flow on a CPU

The JSON is rewritten after every row, so a session cut short keeps what it measured.  Each
variant that fails is recorded with its error and the rest still run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "V100": 125.0}

# name -> (conv_impl, norm (None = the preset's default), compile mode (None = eager), channels-last, fused SGD)
VARIANTS = {  # eager first: a session cut short still has them
    "3d_eager": ("3d", None, None, False, False),
    "3d_eager_fused_sgd": ("3d", None, None, False, True),
    "fold2d_eager": ("fold2d", None, None, False, False),
    "fold2d_eager_channels_last": ("fold2d", None, None, True, False),
    "3d_eager_lrn": ("3d", "lrn", None, False, False),
    "fold2d_eager_lrn": ("fold2d", "lrn", None, False, False),
    "3d_compile": ("3d", None, "default", False, True),
    "fold2d_compile": ("fold2d", None, "default", False, True),
    "fold2d_compile_channels_last": ("fold2d", None, "default", True, True),
    "3d_compile_cudagraphs": ("3d", None, "reduce-overhead", False, True),
    "fold2d_compile_cudagraphs": ("fold2d", None, "reduce-overhead", True, True),
    "fold2d_compile_lrn": ("fold2d", "lrn", "default", True, True),
    "fold2d_max_autotune": ("fold2d", None, "max-autotune", True, True),   # last: minutes of autotuning
}
SMALL_VARIANTS = ("3d_eager", "fold2d_eager", "3d_compile_cudagraphs", "fold2d_compile_cudagraphs")


class Step:
    """One variant's Siamese training step (forward + backward + SGD) on fixed-shape batches."""

    def __init__(self, preset: str, variant: str, device, batch: int, dtype):
        import torch

        from SpineSSLLib import models as M
        from SpineSSLLib.losses import LossConfig, pretrain_loss

        impl, norm, mode, cl, fused = VARIANTS[variant]
        over = {"conv_impl": impl} if norm is None else {"conv_impl": impl, "norm": norm}
        self.cfg = M.ModelConfig.preset(preset, **over)
        torch.manual_seed(0)
        self.net = M.VGGMNet(self.cfg, 7).to(device)
        if cl:
            M.to_channels_last(self.net)
        self.model = M.SiameseNet(self.net, LossConfig().projection).to(device).train()
        fwd = self.model
        if mode is not None:
            fwd = torch.compile(self.model, mode=mode)
        kw = {"fused": True} if fused and device.type == "cuda" else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4, **kw)
        self.device, self.batch, self.dtype, self.fwd = device, batch, dtype, fwd
        self.hw = self.cfg.net_hw((224, 224))
        self.loss_cfg = LossConfig()
        self._loss = pretrain_loss
        self.flops_per_step = 3 * 2 * M.count_macs(self.net) * 2 * batch   # fwd + 2x bwd, 2 volumes per pair

    def __call__(self, b: dict) -> None:
        import torch

        amp = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with amp:
            ea, eb, la, lb = self.fwd(b["a"], b["b"])
            loss = self._loss(ea, eb, la, lb, b["y"], b["level"], self.loss_cfg, subject_a=b.get("subject_a"),
                              subject_b=b.get("subject_b"))["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def random_batch(self) -> dict:
        import torch

        n, d = self.batch, self.device
        return {"a": torch.randn(n, 1, 9, *self.hw, device=d), "b": torch.randn(n, 1, 9, *self.hw, device=d),
                "y": (torch.arange(n, device=d) % 2).float(), "level": torch.arange(n, device=d) % 7,
                "subject_a": torch.arange(n, device=d), "subject_b": torch.arange(n, device=d)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def model_row(preset, variant, device, batch, dtype, steps, warmup, peak) -> dict:
    st = Step(preset, variant, device, batch, dtype)
    b = st.random_batch()
    t0 = time.perf_counter()
    st(b)                                         # first call: compilation, autotuning, cuDNN plans
    _sync(device)
    first = time.perf_counter() - t0
    dt_ = timed(lambda: st(b), device, steps, warmup)
    tf = st.flops_per_step / dt_ / 1e12
    return {"step_s": dt_, "pairs_per_s": batch / dt_, "model_tflops": tf, "mfu": tf / peak if peak else None,
            "first_step_s": first, "batch_pairs": batch, "conv_impl": st.cfg.conv_impl, "norm": st.cfg.norm}


def pipelines(cohort, preset, device, batch, batches, workers) -> dict:
    """pairs/s of the DataLoader pipeline and the device-resident one, both with GPU augmentation."""
    import torch
    from torch.utils.data import DataLoader

    from SpineSSLLib import data as D
    from SpineSSLLib.device_cache import DevicePairLoader, DeviceVolumes
    from SpineSSLLib.models import ModelConfig

    hw = ModelConfig.preset(preset).net_hw((224, 224))
    rows = D.read_vb_table(cohort)
    cache = D.VolumeCache(cohort, rows, hw, progress=False)
    sampler = D.PairSampler(rows, D.PairConfig(), seed=0)
    aug = D.PairAugment(D.AugmentConfig(), hw)
    aug({"a": torch.zeros(2, 1, 9, *hw, device=device), "b": torch.zeros(2, 1, 9, *hw, device=device)})
    out = {"net_hw": list(hw), "batch_pairs": batch, "pairs_per_epoch": len(sampler), "volumes": len(rows)}

    def run(loader, to_dev: bool) -> float:
        n, t0 = 0, time.perf_counter()
        while n < batches * batch:
            for bt in loader:
                if to_dev:
                    bt = {k: v.to(device, non_blocking=True) for k, v in bt.items()}
                with torch.no_grad():
                    bt = aug(bt)
                n += bt["a"].shape[0]
                if n >= batches * batch:
                    break
        _sync(device)
        return n / (time.perf_counter() - t0)

    dl = DataLoader(D.PairDataset(rows, cache), sampler=sampler, batch_size=batch, num_workers=workers,
                    pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    out["dataloader_workers"] = workers
    out["dataloader_pairs_per_s"] = run(dl, True)
    t0 = time.perf_counter()
    vols = DeviceVolumes(cache, rows, device)
    out["device_cache_build_s"] = time.perf_counter() - t0
    out["device_cache_where"], out["device_cache_gb"] = vols.where, vols.nbytes / 1e9
    out["device_pairs_per_s"] = run(DevicePairLoader(rows, vols, sampler, batch), False)
    return out


def end_to_end(cohort, preset, variant, device, batch, dtype, steps) -> dict:
    """Training steps fed by the device pipeline + GPU augmentation: pairs/s (data included)."""
    import torch

    from SpineSSLLib import data as D
    from SpineSSLLib.device_cache import DevicePairLoader, DeviceVolumes

    st = Step(preset, variant, device, batch, dtype)
    rows = D.read_vb_table(cohort)
    cache = D.VolumeCache(cohort, rows, st.hw, progress=False)
    sampler = D.PairSampler(rows, D.PairConfig(), seed=0)
    loader = DevicePairLoader(rows, DeviceVolumes(cache, rows, device), sampler, batch)
    aug = D.PairAugment(D.AugmentConfig(), st.hw)

    def batches():
        while True:
            for bt in loader:
                if bt["a"].shape[0] == batch:       # fixed shapes (compiled / CUDA-graph variants)
                    yield bt

    it = batches()

    def one():
        with torch.no_grad():
            bt = aug(next(it))
        st(bt)

    one()
    dt_ = timed(one, device, steps, 2)
    return {"variant": variant, "step_s": dt_, "pairs_per_s": batch / dt_}


def make_cohort(root, subjects: int) -> None:
    """A cohort in the extraction contract (volumes.csv + volumes/*.npz, pre-#17 npz files) with
    blocky random volumes: throughput does not depend on the pixels, and it needs neither DICOM
    nor SimpleITK (Testing/pretrain_helpers.py)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "Testing"))
    from pretrain_helpers import cohort_rows, write_cohort

    rng = np.random.default_rng(0)
    write_cohort(Path(root), cohort_rows(subjects, frac_long=0.6),
                 make_volume=lambda r: np.kron(rng.random((9, 14, 14)), np.ones((1, 16, 16))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", help="an extracted cohort (volumes.csv + volumes/)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu" / "gpu_impls.json"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default by GPU name)")
    ap.add_argument("--make-cohort", type=int, metavar="SUBJECTS",
                    help="first write a cohort of this many subjects into COHORT (when it has no volumes.csv)")
    ap.add_argument("--dry-run", action="store_true",
                    help="rehearsal on any device: small preset only, 1 step, eager variants unless --variants")
    args = ap.parse_args(argv)

    import torch

    from benchmarks import machine
    from SpineSSLLib.atomic import write_json

    if args.make_cohort and not (Path(args.cohort) / "volumes.csv").is_file():
        make_cohort(args.cohort, args.make_cohort)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_impls.py: no CUDA device (use --device cpu --dry-run to rehearse)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine.cpu_model()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else \
        [v for v in VARIANTS if not args.dry_run or VARIANTS[v][2] is None]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants: {', '.join(unknown)}")
    steps, warmup = (1, 0) if args.dry_run else (args.steps, 3)
    presets = [("small", 8)] if args.dry_run else [("paper", 32), ("small", 32)]
    res = {"schema": "spinessl.bench.gpu_impls/1", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "device": name, "peak_bf16_tflops": peak, "machine": machine.describe(), "dry_run": args.dry_run,
           "dtype": str(dtype), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "variants": {}, "pipelines": {}, "end_to_end": {}, "errors": []}
    if device.type == "cuda":
        res["measured_bf16_matmul_tflops"] = machine.matmul_gflops(8192, 10, "cuda", torch.bfloat16) / 1e3
    out = Path(args.json)

    def save():
        write_json(out, res)

    def attempt(key, fn):
        try:
            return fn()
        except Exception as e:  # one failing variant must not cost the session the others
            res["errors"].append(f"{key}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            traceback.print_exc()
            return {"error": res["errors"][-1]}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset() if hasattr(torch, "_dynamo") else None

    def variant_rows(preset, batch, names):
        res["variants"].setdefault(preset, {})
        for v in names:
            if preset == "small" and not args.dry_run and v not in SMALL_VARIANTS:
                continue
            r = attempt(f"{preset}/{v}", lambda: model_row(preset, v, device, batch, dtype, steps, warmup, peak))
            res["variants"][preset][v] = r
            print(f"{preset:6s} {v:30s} {json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in r.items()})}",
                  flush=True)
            save()

    def e2e(preset, batch, v):
        ok = res["variants"].get(preset, {}).get(v, {})
        if "step_s" not in ok or v in res["end_to_end"].get(preset, {}):
            return
        e = attempt(f"end_to_end/{preset}/{v}", lambda: end_to_end(args.cohort, preset, v, device, batch, dtype, steps))
        if "pairs_per_s" in e:
            e["ratio_to_model_only"] = e["pairs_per_s"] / ok["pairs_per_s"]
        res["end_to_end"].setdefault(preset, {})[v] = e
        print(preset, "end_to_end", e, flush=True)
        save()

    eager = [v for v in variants if VARIANTS[v][2] is None]
    compiled = [v for v in variants if VARIANTS[v][2] is not None]
    for preset, batch in presets:      # phase 1: eager variants, pipelines, the default's end-to-end step
        variant_rows(preset, batch, eager)
        res["pipelines"][preset] = attempt(f"pipeline/{preset}", lambda: pipelines(
            args.cohort, preset, device, batch, 3 if args.dry_run else 40, 1 if args.dry_run else args.workers))
        print(preset, "pipelines", res["pipelines"][preset], flush=True)
        save()
        e2e(preset, batch, "3d_eager")
    for preset, batch in presets:      # phase 2: compiled variants (minutes of compilation), the best's end-to-end
        variant_rows(preset, batch, compiled)
        ok = {k: r for k, r in res["variants"][preset].items() if "step_s" in r}
        if ok:
            e2e(preset, batch, min(ok, key=lambda k: ok[k]["step_s"]))
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
