"""Pair evaluation of a pretrained Siamese network (paper §4.1, Fig. 6).

fc7 embeddings of every VB volume of a split; all positive pairs and sampled, acquisition-matched
negatives (``data.PairSampler``); the L2 distance as the different-subject score and its ROC AUC
(paper: 94.6 %); level accuracy from fc8 with its confusion matrix (paper: 97.8 %); PNGs of the
distance histogram and ROC; a JSON report and a CSV of pair distances (pseudonymous keys only).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import LEVEL_NAMES
from .atomic import atomic_path, write_csv, write_json

PAPER = {"auc": 0.946, "level_accuracy": 0.978}
REIDENTIFICATION_NOTE = (
    "Re-identification risk: this network tells whether two vertebral bodies belong to the same person "
    "(the pair ROC AUC above measures how well), across years and scanners. Treat its weights and any "
    "stored embeddings of a cohort as personal data: it can match a de-identified MRI to its owner "
    "(docs/privacy.md).")


@torch.no_grad()
def embed(model, dataset, device: torch.device, batch_size: int = 32, dtype: torch.dtype | None = None,
          num_workers: int = 0, progress: bool = True, normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (N, D), logits (N, classes))`` of a ``data.VolumeDataset`` in eval mode.  The
    embedding is the one the pair loss was trained on: a ``SiameseNet``'s projection of fc7 (fc7
    itself without a projection head; fc7 for a bare ``VGGMNet``), L2-normalised with
    ``normalize``."""
    from torch.utils.data import DataLoader

    from .models import SiameseNet, unwrap
    from .progress import Progress

    siamese = model.module if hasattr(model, "module") and isinstance(model.module, SiameseNet) else model
    net = unwrap(model)
    forward = siamese.pair_embedding if isinstance(siamese, SiameseNet) else net
    (siamese if isinstance(siamese, SiameseNet) else net).to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    embs, logits = [], []
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with Progress(len(loader) if progress else None, "embedding", unit="batch") as bar:
        for x in loader:
            with amp:
                e, z = forward(x.to(device, non_blocking=True))
            e = torch.nn.functional.normalize(e.float(), dim=1) if normalize else e
            embs.append(e.float().cpu())
            logits.append(z.float().cpu())
            if progress:
                bar.update(1)
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros((0, net.num_classes), np.float32)
    return torch.cat(embs).numpy(), torch.cat(logits).numpy()


def pair_distances(emb: np.ndarray, pairs: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """L2 distances and labels (1 = same subject) of ``(i, j, y)`` pairs."""
    if not pairs:
        return np.zeros(0), np.zeros(0, int)
    p = np.asarray(pairs, dtype=np.int64)
    d = np.linalg.norm(emb[p[:, 0]].astype(np.float64) - emb[p[:, 1]].astype(np.float64), axis=1)
    return d, p[:, 2]


def save_histogram_png(path, d: np.ndarray, y: np.ndarray, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    bins = np.linspace(0, max(float(d.max()) if len(d) else 1.0, 1e-6), 40)
    ax.hist(d[y == 1], bins=bins, alpha=0.6, color="tab:blue", label=f"same subject (n={int((y == 1).sum())})")
    ax.hist(d[y == 0], bins=bins, alpha=0.6, color="tab:red", label=f"different subjects (n={int((y == 0).sum())})")
    ax.set_xlabel("L2 distance between fc7 embeddings")
    ax.set_ylabel("VB pairs")
    ax.legend(fontsize=8)
    ax.set_title(title or "VB pair distances", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_roc_png(path, d: np.ndarray, y: np.ndarray, auc: float) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .metrics import roc_curve

    fpr, tpr = roc_curve(-d, y)
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("same / different subject from distance", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def raw_pixel_auc(rows, cache, pairs, factor: int = 4) -> float | None:
    """Same/different AUC of the plain pixel distance on the same pairs: L2 between volumes
    z-scored per volume and block-averaged ``factor`` x ``factor`` in-plane (what the network
    sees, without any learning).  None without both kinds of pair."""
    from . import metrics

    if not pairs:
        return None
    used = sorted({i for i, _, _ in pairs} | {j for _, j, _ in pairs})
    flat = {}
    for i in used:
        v = torch.from_numpy(cache.volume(rows[i]))[None]
        v = torch.nn.functional.avg_pool3d(v[None], (1, factor, factor))[0].flatten().double()
        flat[i] = (v - v.mean()) / v.std().clamp_min(1e-8)
    d = np.array([float((flat[i] - flat[j]).norm()) for i, j, _ in pairs])
    auc = metrics.roc_auc(-d, np.array([y for _, _, y in pairs]))
    return None if math.isnan(auc) else float(auc)


@dataclass
class PairEval:
    auc: float
    level_accuracy: float
    n_pos: int
    n_neg: int
    report: dict


def evaluate_pairs(model, rows, cache, pairs, device: torch.device, out_dir=None, *, batch_size: int = 32,
                   dtype=None, extra: dict | None = None, progress: bool = True, normalize: bool = False,
                   baselines: dict | None = None) -> PairEval:
    """Embed ``rows`` (a split's VB volumes), score ``pairs`` and, with ``out_dir``, write
    ``report.json``, ``pairs.csv``, ``distance_histogram.png``, ``roc.png``,
    ``level_confusion.png``."""
    from . import metrics
    from .data import VolumeDataset

    emb, logits = embed(model, VolumeDataset(rows, cache), device, batch_size, dtype, progress=progress,
                        normalize=normalize)
    d, y = pair_distances(emb, pairs)
    auc = metrics.roc_auc(-d, y) if len(d) else float("nan")
    truth = np.array([r.level_index for r in rows], dtype=np.int64)
    pred = logits.argmax(1) if len(logits) else np.zeros(0, np.int64)
    rep = metrics.classification_report(truth, pred, class_names=list(LEVEL_NAMES))
    level_acc = float(rep.accuracy) if len(truth) else float("nan")

    def stats(v):
        return {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
                "median": float(np.median(v)) if len(v) else None}

    report = {
        "schema": "spinessl.eval_pairs/1",
        "n_volumes": len(rows), "n_subjects": len({r.subject_key for r in rows}),
        "n_positive_pairs": int((y == 1).sum()), "n_negative_pairs": int((y == 0).sum()),
        "auc": None if math.isnan(auc) else float(auc),
        "level_accuracy": None if math.isnan(level_acc) else level_acc,
        "level": rep.to_dict(),
        "distance_positive": stats(d[y == 1]), "distance_negative": stats(d[y == 0]),
        "paper": PAPER,
        "reidentification_note": REIDENTIFICATION_NOTE,
    }
    if baselines:  # e.g. the raw-pixel AUC on the same pairs, reported beside the network's
        report["baselines"] = baselines
    if extra:
        report.update(extra)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "pairs.csv", [{"volume_a": rows[i].volume_id, "volume_b": rows[j].volume_id,
                                       "level": rows[i].level, "same_subject": int(t), "distance": f"{dd:.6g}"}
                                      for (i, j, t), dd in zip(pairs, d)],
                  ["volume_a", "volume_b", "level", "same_subject", "distance"])
        if len(d):
            save_histogram_png(out / "distance_histogram.png", d, y,
                               f"VB pair distances (AUC {auc:.3f})" if not math.isnan(auc) else "")
            if not math.isnan(auc):
                save_roc_png(out / "roc.png", d, y, auc)
        if len(truth):
            metrics.save_confusion_png(out / "level_confusion.png", rep.confusion, list(LEVEL_NAMES),
                                       title=f"VB level accuracy {level_acc:.3f} (n={len(truth)})")
        write_json(out / "report.json", report)
    return PairEval(auc, level_acc, int((y == 1).sum()), int((y == 0).sum()), report)
