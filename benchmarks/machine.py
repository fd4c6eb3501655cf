"""The machine a benchmark ran on, and its reference fp32 matrix-product speed."""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    import torch

    d = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu", dtype=None, clock: str = "wall") -> float:
    """Median GFLOP/s of an n x n matrix product (fp32 by default: the CPU's practical peak for our
    work; on a GPU pass ``dtype=torch.bfloat16`` and a large ``n`` for the tensor-core rate).
    ``clock="cpu"``: per second of this process's CPU time (all its threads) instead of wall time —
    on a machine shared with other work, the rate the cores deliver while this process runs."""
    import torch

    if clock == "cpu":
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        ts = []
        for _ in range(repeats):
            c = time.process_time()
            a @ b
            ts.append(time.process_time() - c)
        ts.sort()
        return 2 * n**3 / max(ts[len(ts) // 2], 1e-9) / 1e9

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e9
