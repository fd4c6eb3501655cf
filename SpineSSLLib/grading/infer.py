"""Grading for users: test-time augmentation (SpineNet V1 style), class probabilities, one
scan -> per-disc grades (the grades document)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np


from .model import IVD_HW



@dataclass
class TTAConfig:
    """Views averaged at inference: in-plane shifts (rows, columns in pixels), neighbouring
    9-slice windows (slice offsets) and the slice-order flip.  ``TTAConfig.none()`` = one view."""

    shifts: tuple[tuple[int, int], ...] = ((0, 0), (-16, 0), (16, 0), (0, -16), (0, 16))
    slice_offsets: tuple[int, ...] = (-1, 0, 1)
    flip: bool = True

    @classmethod
    def none(cls) -> "TTAConfig":
        return cls(shifts=((0, 0),), slice_offsets=(0,), flip=False)

    @property
    def n_views(self) -> int:
        return len(self.shifts) * len(self.slice_offsets) * (2 if self.flip else 1)


def shift_zero(x, offsets: Sequence[int], dims: Sequence[int]):
    """Translate tensor ``x`` by integer ``offsets`` along ``dims``, filling with zeros (as the
    extraction pads missing slices and the training augmentation pads shifted borders)."""
    import torch

    out = x
    for off, d in zip(offsets, dims):
        off = int(off)
        if off == 0:
            continue
        n = out.shape[d]
        z = torch.zeros_like(out.narrow(d, 0, min(abs(off), n)))
        if abs(off) >= n:
            out = torch.zeros_like(out)
        elif off > 0:
            out = torch.cat([z, out.narrow(d, 0, n - off)], dim=d)
        else:
            out = torch.cat([out.narrow(d, -off, n + off), z], dim=d)
    return out


def tta_views(x, cfg: TTAConfig):
    """Yield the augmented views of a batch ``x`` of shape (N, 9, H, W) (slices first)."""
    import torch

    for dz in cfg.slice_offsets:
        for dy, dx in cfg.shifts:
            v = shift_zero(x, (dz, dy, dx), (1, 2, 3))
            yield v
            if cfg.flip:
                yield torch.flip(v, dims=(1,))


def predict_proba(model, volumes, tta: TTAConfig | None = None, batch_size: int = 32, device=None) -> np.ndarray:
    """Class probabilities (N, C) for volumes (N, 9, H, W) (numpy or tensor), averaged over the
    TTA views (softmax of each view, then the mean).  Shifts are given in 112×224 pixels and
    scaled to the input's size."""
    import torch

    tta = tta or TTAConfig.none()
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    x_all = torch.as_tensor(volumes)
    scale = x_all.shape[-2] / IVD_HW[0]
    cfg = TTAConfig(shifts=tuple((round(a * scale), round(b * scale)) for a, b in tta.shifts),
                    slice_offsets=tta.slice_offsets, flip=tta.flip)
    out = []
    with torch.inference_mode():
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i:i + batch_size].to(device=device, dtype=torch.float32)
            acc = None
            for v in tta_views(x, cfg):
                p = torch.softmax(model(v.unsqueeze(1))[1].float(), dim=1)
                acc = p if acc is None else acc + p
            out.append((acc / cfg.n_views).cpu().numpy())
    n_cls = getattr(model, "num_classes", 0)
    return np.concatenate(out) if out else np.zeros((0, n_cls), dtype=np.float32)



GRADES_SCHEMA = "spinessl.grades/1"


@dataclass
class GradingModel:
    """A loaded grading model: the network, its class names and where it came from."""

    model: object
    class_names: list[str]
    meta: dict

    @property
    def mode(self) -> str:
        return (self.meta.get("config") or {}).get("mode", "")


def load_grading_model(path: str | os.PathLike, device: str = "auto") -> GradingModel:
    """Load a grading checkpoint (a folder, or a ``grade-train`` output folder holding ``best/``)."""
    from .. import checkpoint as ckpt
    from ..device import select_device
    from ..errors import CheckpointError
    from ..models import ModelConfig, VGGMNet

    d = ckpt.resolve(path, "grading")
    meta = ckpt.read_meta(d)
    c = meta.get("config") or {}
    if c.get("task") != "grade" or not c.get("class_names"):
        raise CheckpointError(f"not a grading model (task {c.get('task')!r}); train one with `spine-ssl grade-train`", d)
    model = VGGMNet(ModelConfig.from_dict(c["model"]), int(c["num_classes"]), tuple(c.get("in_hw", IVD_HW)))
    ckpt.load_checkpoint(d, model)
    model.to(select_device(device)).eval()
    return GradingModel(model, list(c["class_names"]), meta)


def grade_volumes(gm: GradingModel, ivd: np.ndarray, present: np.ndarray, discs: Sequence[str],
                  affines: np.ndarray | None = None, tta: TTAConfig | None = None) -> dict:
    """Grade the present discs of one scan (``ivd`` (6, 9, 112, 224)); returns the grades document
    (schema ``spinessl.grades/1``): per disc level, present, grade, class probabilities and the
    disc centre in LPS mm when ``affines`` (volume voxel -> LPS) are given."""
    tta = tta or TTAConfig()
    present = np.asarray(present, dtype=bool)
    idx = np.flatnonzero(present)
    probs = predict_proba(gm.model, np.asarray(ivd, dtype=np.float32)[idx], tta) if idx.size else np.zeros((0, len(gm.class_names)))
    out = []
    row_of = {int(i): r for r, i in enumerate(idx)}
    for i, name in enumerate(discs):
        entry = {"level": str(name), "present": bool(present[i])}
        if present[i]:
            p = probs[row_of[i]]
            entry["grade"] = gm.class_names[int(np.argmax(p))]
            entry["probabilities"] = {c: round(float(v), 6) for c, v in zip(gm.class_names, p)}
        else:
            entry["grade"] = None
            entry["probabilities"] = None
        if affines is not None and present[i]:
            k, h, w = np.asarray(ivd).shape[1:]
            centre = np.asarray(affines[i]) @ np.array([(w - 1) / 2, (h - 1) / 2, (k - 1) / 2, 1.0])
            entry["centre_lps"] = [round(float(v), 3) for v in centre[:3]]
        out.append(entry)
    files = gm.meta.get("files", {})
    return {"schema": GRADES_SCHEMA,
            "model": {"mode": gm.mode, "class_names": gm.class_names,
                      "preset": (gm.meta.get("config") or {}).get("model", {}).get("preset"),
                      "weights_sha256": files.get("model.safetensors")},
            "tta": {"shifts": [list(s) for s in tta.shifts], "slice_offsets": list(tta.slice_offsets),
                    "flip": tta.flip, "n_views": tta.n_views},
            "discs": out}


def grades_csv_rows(doc: dict) -> list[dict]:
    """The grades document as CSV rows: level, present, grade, p_<class>..., centre (LPS mm)."""
    names = doc["model"]["class_names"]
    rows = []
    for d in doc["discs"]:
        r = {"level": d["level"], "present": int(d["present"]), "grade": d["grade"] or ""}
        for c in names:
            r[f"p_{c}"] = "" if not d["probabilities"] else d["probabilities"][c]
        c = d.get("centre_lps") or ["", "", ""]
        r.update(centre_l_mm=c[0], centre_p_mm=c[1], centre_s_mm=c[2])
        rows.append(r)
    return rows


def grade_scan(gm: GradingModel, scan, levels, tta: TTAConfig | None = None, extract_config=None) -> dict:
    """Extract the disc volumes of ``scan`` at ``levels`` (``extract.extract_scan``) and grade them."""
    from ..extract import extract_scan

    sv = extract_scan(scan, levels, extract_config)
    doc = grade_volumes(gm, sv.ivd, sv.ivd_present, sv.discs, sv.ivd_affine, tta)
    doc["issues"] = list(sv.issues)  # extract_scan already carries the level set's issues
    return doc
