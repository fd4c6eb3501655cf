"""Standard SSL evaluation of a trunk: k-NN and linear probes of frozen features (as lightly and
solo-learn report them), for VB level and disc grade.

Features are the trunk's pool5 output flattened (what fc6 reads), of a pretraining checkpoint and,
for reference, of the same network with random weights and of the raw (block-averaged) pixels.
Probes are fitted on the training subjects and scored on held-out subjects:

- VB level: the pretraining split (train -> test), accuracy over the 7 levels;
- disc grade: the grading split (``grading.make_grading_splits``: test subjects outside
  pretraining), average class accuracy (balanced accuracy).

k-NN: cosine distance, k = 20 (majority vote); linear: standardised features, multinomial logistic
regression with class-balanced weights (scikit-learn).  It costs seconds and says whether
pretraining helped before any fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import LEVEL_NAMES
from .errors import ConfigError

FEATURES = ("pretrained", "random init", "raw pixels")


@dataclass
class ProbeConfig:
    k: int = 20
    c: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"


def trunk_features(net, volumes, batch_size: int = 64, device=None) -> np.ndarray:
    """Flattened pool5 features of ``volumes`` (N, 9, H, W) (full size or the network's size)."""
    import torch

    device = device or next(net.parameters()).device
    was = net.training
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(volumes), batch_size):
            x = torch.as_tensor(np.asarray(volumes[i:i + batch_size], dtype=np.float32), device=device).unsqueeze(1)
            out.append(net.trunk(net.prepare_input(x)).flatten(1).float().cpu().numpy())
    net.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pixel_features(volumes, factor: int = 4) -> np.ndarray:
    """Raw pixels block-averaged ``factor`` x ``factor`` in-plane, flattened."""
    v = np.asarray(volumes, dtype=np.float32)
    n, k, h, w = v.shape
    v = v[:, :, :h - h % factor, :w - w % factor].reshape(n, k, h // factor, factor, w // factor, factor)
    return v.mean(axis=(3, 5)).reshape(n, -1)


def knn_score(xtr, ytr, xte, yte, k: int = 20) -> float:
    """Balanced accuracy of a cosine k-NN majority vote."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(ytr)), metric="cosine").fit(xtr, ytr)
    return float(balanced_accuracy_score(yte, clf.predict(xte)))


def linear_score(xtr, ytr, xte, yte, c: float = 1.0, seed: int = 0) -> float:
    """Balanced accuracy of a class-balanced logistic regression on standardised features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000,
                                                             random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return float(balanced_accuracy_score(yte, clf.predict(xte)))


def _task_rows(name, feats: dict, ytr, yte, tr, te, cfg: ProbeConfig) -> list[dict]:
    rows = []
    for fname, x in feats.items():
        rows.append({"task": name, "features": fname, "n_train": int(len(tr)), "n_test": int(len(te)),
                     "knn": knn_score(x[tr], ytr, x[te], yte, cfg.k),
                     "linear": linear_score(x[tr], ytr, x[te], yte, cfg.c, cfg.seed)})
    return rows


def probe_checkpoint(checkpoint, cohort, out=None, *, splits_path=None, config: ProbeConfig | None = None,
                     progress: bool = False) -> dict:
    """k-NN and linear probes of a pretraining checkpoint's frozen trunk (see the module
    docstring); writes ``probe.json`` and ``probe.md`` to ``out`` when given."""
    import torch

    from . import data as D
    from . import grading
    from .atomic import write_json, write_text
    from .device import select_device
    from .models import VGGMNet, unwrap
    from .pretrain import load_pretrained

    cfg = config or ProbeConfig()
    dev = select_device(cfg.device)
    pm = load_pretrained(checkpoint, str(dev))
    net = unwrap(pm.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        rand = VGGMNet(net.config, net.num_classes, net.in_hw).to(dev).eval()
    sp_path = Path(splits_path) if splits_path else pm.path.parent / pm.config.get("splits", "splits.json")
    if not sp_path.is_file():
        raise ConfigError(f"splits file not found: {sp_path} (pass --splits)")
    split_of = D.read_splits(sp_path).split_of()
    result = {"schema": "spinessl.probe/1", "checkpoint_epoch": pm.meta.get("epoch"), "rows": []}

    # VB level: pretraining train -> test subjects
    rows = [r for r in D.read_vb_table(cohort) if split_of.get(r.subject_key) in ("train", "test")]
    cache = D.VolumeCache(cohort, rows, net.net_hw, progress=progress)
    vols = np.stack([cache.volume(r) for r in rows]) if rows else np.zeros((0, 9, *net.net_hw), np.float32)
    y = np.array([r.level_index for r in rows])
    tr = np.array([i for i, r in enumerate(rows) if split_of[r.subject_key] == "train"], dtype=int)
    te = np.array([i for i, r in enumerate(rows) if split_of[r.subject_key] == "test"], dtype=int)
    if len(tr) and len(te):
        feats = {"pretrained": trunk_features(net, vols, cfg.batch_size, dev),
                 "random init": trunk_features(rand, vols, cfg.batch_size, dev), "raw pixels": pixel_features(vols)}
        result["rows"] += _task_rows("VB level", feats, y[tr], y[te], tr, te, cfg)

    # disc grade: grading splits (test subjects outside pretraining)
    records = [r for r in grading.read_ivd_table(cohort) if r.grade]
    if records:
        gs = grading.make_grading_splits(records, split_of, seed=cfg.seed)
        names = grading.class_names_from(records)
        part = {s: "train" for s in gs.train + gs.val} | {s: "test" for s in gs.test}
        recs = [r for r in records if r.subject_key in part]
        if recs:
            ivd = grading.downscale(grading.load_ivd_arrays(cohort, recs), net.config.net_hw(grading.IVD_HW))
            g = np.array([names.index(r.grade) for r in recs])
            tr = np.array([i for i, r in enumerate(recs) if part[r.subject_key] == "train"], dtype=int)
            te = np.array([i for i, r in enumerate(recs) if part[r.subject_key] == "test"], dtype=int)
            if len(tr) and len(te):
                feats = {"pretrained": trunk_features(net, ivd, cfg.batch_size, dev),
                         "random init": trunk_features(rand, ivd, cfg.batch_size, dev),
                         "raw pixels": pixel_features(ivd)}
                result["rows"] += _task_rows("disc grade", feats, g[tr], g[te], tr, te, cfg)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "probe.json", result)
        write_text(out / "probe.md", probe_markdown(result))
    return result


def probe_markdown(result: dict) -> str:
    lines = ["| task | features | k-NN | linear | train / test |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['task']} | {r['features']} | {r['knn']:.3f} | {r['linear']:.3f} | "
                     f"{r['n_train']} / {r['n_test']} |")
    chance = f"chance: VB level {1 / len(LEVEL_NAMES):.3f}; disc grade 1 / number of grades (balanced accuracy)"
    return "\n".join(["# Frozen-trunk probes (balanced accuracy on held-out subjects)", "", *lines, "", chance, ""])
