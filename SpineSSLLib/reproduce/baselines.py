"""Naive baselines on the same splits: hand-feature logistic regression for grading, raw-pixel
identity AUC."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .runner import Reproduction



def disc_hand_features(ivd: np.ndarray) -> np.ndarray:
    """Two hand features per disc volume (N, 9, 112, 224), volumes normalised so the adjacent
    vertebral bodies' median is 0.5 and scaled to the vertebral-body width:

    - nucleus / VB intensity ratio: mean of the central box (middle 3 slices, rows 48-64,
      middle 40 % of columns) divided by 0.5;
    - disc height / VB width: rows of the central column profile (middle 3 slices, middle 40 %
      of columns) between the two strongest intensity edges above and below the centre row,
      divided by the 224-pixel volume width that spans a fixed multiple of the VB width.
    """
    v = ivd.astype(np.float32)
    n, k, h, w = v.shape
    mid = slice(k // 2 - 1, k // 2 + 2)
    cols = slice(int(w * 0.3), int(w * 0.7))
    nucleus = v[:, mid, h // 2 - 8:h // 2 + 8, cols].mean(axis=(1, 2, 3)) / 0.5
    prof = v[:, mid, :, cols].mean(axis=(1, 3))  # (N, h)
    grad = np.abs(np.diff(prof, axis=1))  # edge between row r and r+1
    c = h // 2
    upper = np.argmax(grad[:, 4:c - 1], axis=1) + 4
    lower = np.argmax(grad[:, c:h - 4], axis=1) + c
    height = (lower - upper).astype(np.float32) / w
    return np.stack([nucleus, height], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, balanced: bool = True, c: float = 1.0):
    """Multinomial logistic regression on standardised features with class-balanced weights (a
    scikit-learn pipeline).  Returns ``predict(x) -> class indices``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced" if balanced else None,
                                                             max_iter=2000))
    clf.fit(x, y)
    return clf.predict


def identity_pixel_auc(work: Path, subjects: set[str] | None, seed: int = 0, max_pairs: int = 2000,
                       factor: int = 4) -> dict:
    """Same/different-subject AUC of the raw-pixel L2 distance between VB volumes (score = -d).

    Positives: the same level of one subject at two time points; negatives: the same level of
    two different subjects, one from a baseline and one from a follow-up scan (the positives'
    composition).  ``subjects`` restricts to a split (the pretraining test split); volumes are
    block-averaged by ``factor`` in-plane to bound memory."""
    from ..extract.files import read_arrays
    from ..metrics import roc_auc

    rows = []
    with open(work / "volumes.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"].upper() == "VB" and (subjects is None or r["subject_key"] in subjects):
                rows.append(r)
    by_level: dict[str, list[dict]] = {}
    for r in rows:
        by_level.setdefault(r["level"], []).append(r)
    rng = np.random.default_rng(seed)
    cache: dict[tuple[str, int], np.ndarray] = {}

    def vol(r) -> np.ndarray:
        key = (r["file"], int(r["index"]))
        if key not in cache:
            a = read_arrays(work / r["file"], ["vb"])["vb"][int(r["index"])].astype(np.float32)
            k, h, w = a.shape
            cache[key] = a[:, :h - h % factor, :w - w % factor].reshape(k, h // factor, factor, w // factor,
                                                                        factor).mean(axis=(2, 4)).ravel()
        return cache[key]

    pos, neg = [], []
    for level, rs in by_level.items():
        subj: dict[str, list[dict]] = {}
        for r in rs:
            subj.setdefault(r["subject_key"], []).append(r)
        base = [r for r in rs if int(r.get("timepoint") or 0) == 0]
        follow = [r for r in rs if int(r.get("timepoint") or 0) > 0]
        for s, lst in subj.items():
            lst = sorted(lst, key=lambda r: int(r.get("timepoint") or 0))
            for a in lst:
                for b in lst:
                    if int(a.get("timepoint") or 0) == 0 and int(b.get("timepoint") or 0) > 0:
                        pos.append((a, b))
        if base and follow:
            for _ in range(len([p for p in pos if p[0]["level"] == level]) * 3):
                a, b = base[rng.integers(len(base))], follow[rng.integers(len(follow))]
                if a["subject_key"] != b["subject_key"]:
                    neg.append((a, b))
    if not pos or not neg:
        return {"auc": None, "n_pos": len(pos), "n_neg": len(neg)}
    rng.shuffle(pos)
    rng.shuffle(neg)
    pos, neg = pos[:max_pairs], neg[:max_pairs]
    d = [float(np.linalg.norm(vol(a) - vol(b))) for a, b in pos + neg]
    lab = [1] * len(pos) + [0] * len(neg)
    return {"auc": roc_auc(-np.asarray(d), lab), "n_pos": len(pos), "n_neg": len(neg)}


def run_baselines(rep: Reproduction, splits, cache: dict | None = None) -> dict:
    """Hand-feature logistic regression per training-set size (same splits and subsets as the
    networks) and the raw-pixel identity AUC on the pretraining test split."""
    from .. import grading
    from ..metrics import classification_report

    records = grading.read_ivd_table(rep.work)
    class_names = grading.class_names_from(records)
    idx = {c: i for i, c in enumerate(class_names)}
    graded = [r for r in records if r.grade]
    by_subject: dict[str, list] = {}
    for r in graded:
        by_subject.setdefault(r.subject_key, []).append(r)
    test = [r for s in splits.test for r in by_subject.get(s, [])]
    out: dict = {"class_names": class_names, "grading_logreg": {}}
    if test:
        feats_test = disc_hand_features(grading.load_ivd_arrays(rep.work, test))
        y_test = np.array([idx[r.grade] for r in test])
        sizes = rep.sizes(splits)
        subsets = grading.nested_train_subsets(splits, sizes)
        train_all = [r for s in splits.train for r in by_subject.get(s, [])]
        feats_all = disc_hand_features(grading.load_ivd_arrays(rep.work, train_all))
        pos = {r.volume_id: i for i, r in enumerate(train_all)}
        for n in sizes:
            tr = [r for s in subsets[n] for r in by_subject.get(s, [])]
            x = feats_all[[pos[r.volume_id] for r in tr]]
            y = np.array([idx[r.grade] for r in tr])
            pred = fit_logistic(x, y, len(class_names))(feats_test)
            d = classification_report(y_test, pred, class_names=class_names).to_dict()
            out["grading_logreg"][str(n)] = {"average_class_accuracy": d["average_class_accuracy"],
                                             "kappa_linear": d["kappa_linear"], "n_test": d["n"]}
        # always-predict-the-majority-class reference
        maj = np.bincount(np.array([idx[r.grade] for r in train_all]), minlength=len(class_names)).argmax()
        out["majority_class_average_class_accuracy"] = classification_report(
            y_test, np.full_like(y_test, maj), class_names=class_names).to_dict()["average_class_accuracy"]
    pf = rep.pretrain_splits_file()
    pre_test = None
    if pf:
        pre = grading.read_pretrain_splits(pf)
        pre_test = {s for s, k in pre.items() if k == "test"}
    out["identity_pixel_auc"] = identity_pixel_auc(rep.work, pre_test, seed=rep.cfg.split_seed)
    out["identity_pixel_auc"]["split"] = "pretraining test" if pre_test is not None else "all subjects"
    return out
