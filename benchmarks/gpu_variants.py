"""Paper-preset Siamese training step on a CUDA GPU under variants (cuDNN autotuning, LRN off,
torch.compile, fp32/TF32), plus the kernels that take the time — to find where MFU goes.

  python benchmarks/gpu_variants.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    import torch

    from benchmarks.pretrain_bench import model_only
    from SpineSSLLib.models import ModelConfig

    gpu = torch.device("cuda")
    paper = ModelConfig.preset("paper")
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    def conv1_fp32(net):
        conv = net.trunk.conv1
        plain = conv.forward

        def fwd(x):
            with torch.autocast("cuda", enabled=False):
                return plain(x.float())
        conv.forward = fwd

    # (name, model config, cudnn.benchmark, autocast dtype (None = fp32/TF32), torch.compile,
    #  channels-last, patch).  "baseline" = channels-last 3D, the training default until this
    #  benchmark showed contiguous NCDHW is 1.9x faster; contiguous is the default now.
    variants = [
        ("baseline_bf16", paper, False, torch.bfloat16, False, True, None),
        ("cudnn_benchmark_bf16", paper, True, torch.bfloat16, False, True, None),
        ("bf16_contiguous", paper, True, torch.bfloat16, False, False, None),
        ("bf16_conv1_fp32", paper, True, torch.bfloat16, False, True, conv1_fp32),
        ("bf16_contiguous_conv1_fp32", paper, True, torch.bfloat16, False, False, conv1_fp32),
        ("cudnn_benchmark_bf16_no_lrn", ModelConfig.preset("paper", norm="none"), True, torch.bfloat16, False, True, None),
        ("cudnn_benchmark_tf32", paper, True, None, False, True, None),
        ("tf32_contiguous", paper, True, None, False, False, None),
        ("cudnn_benchmark_bf16_compile", paper, True, torch.bfloat16, True, True, None),
    ]
    for name, cfg, bench, dtype, comp, cl, patch in variants:
        torch.backends.cudnn.benchmark = bench
        torch.backends.cuda.matmul.allow_tf32 = dtype is None
        torch.backends.cudnn.allow_tf32 = True
        try:
            r = model_only(cfg, gpu, 32, args.steps, dtype, compile=comp, channels_last=cl, patch=patch)
            res[name] = {k: r[k] for k in ("step_s", "pairs_per_s", "model_gflops_per_s")}
        except Exception as e:  # a variant that fails is reported, the others still run
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(name, res[name], flush=True)
    torch.backends.cudnn.benchmark = True
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model_only(paper, gpu, 32, 3, torch.bfloat16, channels_last=False, patch=conv1_fp32)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        res["top_kernels"] = table
        print(table)
    except Exception as e:
        res["top_kernels"] = f"profiler failed: {e}"
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
