"""Classification metrics: confusion matrix, average class accuracy, per-class recall,
linear-weighted Cohen's kappa and a confusion-matrix picture.

The paper's grading measure (Jamaludin et al. 2017, §4.2) is the *average class accuracy*: the
mean of the diagonal of the row-normalised confusion matrix (rows = true class), i.e. the
balanced accuracy.  Classes that never occur in the true labels have no row to normalise; they
are left out of the mean (and their recall is NaN) rather than counted as 0 or 1.

The numbers come from scikit-learn (``sklearn.metrics``); matplotlib is imported by
:func:`save_confusion_png` alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def _as_labels(y, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
        a = a.astype(np.int64)
    return a.astype(np.int64, copy=False)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``
    (scikit-learn's, over the labels ``0..num_classes-1``; default ``max(label) + 1``)."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    if not t.size:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return sk_confusion(t, p, labels=np.arange(num_classes)).astype(np.int64)


def normalize_rows(cm) -> np.ndarray:
    """Row-normalised confusion matrix (each true class's row sums to 1); empty rows are NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = cm / rows
    out[rows[:, 0] == 0] = np.nan
    return out


def per_class_recall(cm) -> np.ndarray:
    """Recall (sensitivity) per true class = diagonal of the row-normalised matrix; NaN if absent."""
    return np.diag(normalize_rows(cm)).copy()


def _expand(cm) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) label vectors with the confusion matrix's counts, for scikit-learn."""
    cm = np.asarray(cm, dtype=np.int64)
    i, j = np.nonzero(cm)
    n = cm[i, j]
    return np.repeat(i, n), np.repeat(j, n)


def average_class_accuracy(cm) -> float:
    """Mean recall over the classes present in the truth (= scikit-learn's balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    import warnings

    t, p = _expand(cm)
    if not t.size:
        return float("nan")
    with warnings.catch_warnings():  # predictions of classes absent from the truth are expected
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(t, p))


def accuracy(cm) -> float:
    cm = np.asarray(cm)
    n = cm.sum()
    return float(np.trace(cm) / n) if n else float("nan")


def weighted_kappa(cm, weights: str = "linear") -> float:
    """Cohen's kappa (scikit-learn) with ``linear`` or ``quadratic`` disagreement weights, or
    ``none`` (unweighted).  NaN when chance disagreement is zero (e.g. one class only)."""
    from sklearn.metrics import cohen_kappa_score

    if weights not in ("linear", "quadratic", "none", None):
        raise ValueError(f"unknown kappa weights {weights!r}")
    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.sum() == 0 or k < 2:
        return float("nan")
    t, p = _expand(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = cohen_kappa_score(t, p, labels=np.arange(k), weights=None if weights == "none" else weights)
    return float(v)


@dataclass
class ClassificationReport:
    """All grading metrics for one set of predictions."""

    confusion: np.ndarray
    class_names: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def normalized(self) -> np.ndarray:
        return normalize_rows(self.confusion)

    @property
    def recall(self) -> np.ndarray:
        return per_class_recall(self.confusion)

    @property
    def average_class_accuracy(self) -> float:
        return average_class_accuracy(self.confusion)

    @property
    def accuracy(self) -> float:
        return accuracy(self.confusion)

    @property
    def kappa_linear(self) -> float:
        return weighted_kappa(self.confusion, "linear")

    def to_dict(self) -> dict:
        def clean(x):
            return None if x is None or (isinstance(x, float) and np.isnan(x)) else x

        return {
            "n": self.n,
            "class_names": list(self.class_names),
            "average_class_accuracy": clean(self.average_class_accuracy),
            "accuracy": clean(self.accuracy),
            "kappa_linear": clean(self.kappa_linear),
            "per_class_recall": {name: clean(float(r)) for name, r in zip(self.class_names, self.recall)},
            "confusion": self.confusion.astype(int).tolist(),
        }


def classification_report(y_true, y_pred, num_classes: int | None = None,
                          class_names: Sequence[str] | None = None) -> ClassificationReport:
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    names = list(class_names) if class_names is not None else [str(c) for c in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for {cm.shape[0]} classes")
    return ClassificationReport(cm, names)


def save_confusion_png(path: str | os.PathLike, cm, class_names: Sequence[str] | None = None,
                       title: str = "", normalize: bool = True) -> None:
    """Write a confusion-matrix heat map (rows = true class) as PNG, atomically.

    Cells show the row-normalised fraction and the raw count; the title carries the average
    class accuracy unless one is given.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    cm = np.asarray(cm)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    norm = normalize_rows(cm)
    shown = np.nan_to_num(norm) if normalize else cm
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.2, 1.1 * k + 1.8), dpi=110)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, cm.max()))
    for i in range(k):
        for j in range(k):
            frac = norm[i, j]
            txt = f"{frac:.2f}\n({cm[i, j]})" if not np.isnan(frac) else f"-\n({cm[i, j]})"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if (shown[i, j] > 0.6 * (1 if normalize else cm.max())) else "black")
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if not title:
        title = f"average class accuracy {average_class_accuracy(cm):.3f} (n={int(cm.sum())})"
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive; scikit-learn,
    ties counted half).  NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of ``scores`` for binary ``labels`` (scikit-learn)."""
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, _ = sk_roc(np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64),
                         drop_intermediate=False)
    return fpr, tpr


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its 95 % confidence interval (Student t); half-width NaN for n < 2."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
