"""ONNX export of a grading model and inference with ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data import IVD_SHAPE
from .infer import GradingModel


def export_onnx(gm: GradingModel, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export the grading network (input ``volumes`` (N, 1, 9, 112, 224) float32, output
    ``probabilities`` (N, C) softmax) to ONNX, atomically."""
    import torch

    from ..atomic import atomic_path

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x)[1], dim=1)

    net = gm.model
    dev = next(net.parameters()).device
    w = Wrapped(net).to("cpu").eval()
    x = torch.zeros(1, 1, IVD_SHAPE[0], *net.in_hw)
    path = Path(path)
    import warnings

    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape checks that are constant here
        torch.onnx.export(w, (x,), str(tmp), input_names=["volumes"], output_names=["probabilities"],
                          dynamic_axes={"volumes": {0: "n"}, "probabilities": {0: "n"}}, opset_version=opset,
                          dynamo=False)
    net.to(dev)
    return path


def onnx_predict(path: str | os.PathLike, volumes: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Probabilities from an exported model with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.asarray(volumes, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, None]
    return sess.run(["probabilities"], {"volumes": x})[0]
