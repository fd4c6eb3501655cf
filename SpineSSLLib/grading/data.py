"""The grading table (graded IVD volumes of volumes.csv), the paper's subject splits and
nested training subsets, and loading the disc volumes."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, ManifestError
from ..extract.files import read_arrays

# The paper's grading split: 920 graded subjects -> 670 train / 50 validation / 200 test.
PAPER_SPLIT = (670, 50, 200)
# The paper's learning-curve sizes (subjects in the training set), nested subsets of the 670.
PAPER_TRAIN_SIZES = (240, 361, 670)

IVD_SHAPE = (9, 112, 224)



@dataclass(frozen=True)
class IVDRecord:
    """One disc volume of one scan (a row of volumes.csv with kind IVD)."""

    volume_id: str
    scan_key: str
    subject_key: str
    family: str
    level: str
    grade: str  # "" when ungraded
    file: str  # relative to the cohort folder
    index: int
    timepoint: int = 0


def read_ivd_table(cohort_dir: str | os.PathLike) -> list[IVDRecord]:
    """All IVD rows of ``<cohort_dir>/volumes.csv`` (graded or not)."""
    path = Path(cohort_dir) / "volumes.csv"
    if not path.is_file():
        raise ManifestError("no volumes.csv (run `spine-ssl extract` first)", path)
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"volume_id", "scan_key", "subject_key", "level", "kind", "grade", "file", "index"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"missing columns {sorted(missing)}", path)
        for row in reader:
            if row["kind"].upper() != "IVD":
                continue
            try:
                idx = int(row["index"])
                tp = int(row.get("timepoint") or 0)
            except ValueError:
                raise ManifestError(f"bad index/timepoint in row {row['volume_id']!r}", path) from None
            g = (row.get("grade") or "").strip()
            if g.endswith(".0"):
                g = g[:-2]
            out.append(IVDRecord(row["volume_id"], row["scan_key"], row["subject_key"],
                                 (row.get("family") or "").strip() or row["subject_key"], row["level"], g,
                                 row["file"], idx, tp))
    return out


def class_names_from(records: Iterable[IVDRecord]) -> list[str]:
    """Grade classes present in the data, sorted numerically when they are numbers."""
    grades = {r.grade for r in records if r.grade}
    if not grades:
        raise ManifestError("no graded discs in the cohort")

    def key(g):
        try:
            return (0, float(g), g)
        except ValueError:
            return (1, 0.0, g)

    return sorted(grades, key=key)



def read_pretrain_splits(path: str | os.PathLike) -> dict[str, str]:
    """Subject key -> pretraining split ("train"/"val"/"test"), from the pretraining splits file
    (``data.read_splits``: schema ``spinessl.splits/1``)."""
    from ..data import read_splits

    return read_splits(path).split_of()


@dataclass
class GradingSplits:
    """Subjects of the grading experiment; ``train_order`` gives the nested-subset order."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema": "spinessl.grading.splits/1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "GradingSplits":
        return cls(list(d["train"]), list(d["val"]), list(d["test"]), int(d.get("seed", 0)), list(d.get("notes", [])))

    def split_of(self) -> dict[str, str]:
        return {s: k for k in ("train", "val", "test") for s in getattr(self, k)}


def scaled_counts(n: int, proportions: Sequence[int] = PAPER_SPLIT) -> tuple[int, int, int]:
    """Train/val/test counts for ``n`` subjects in the paper's 670/50/200 proportions
    (at least one subject in val and test when n >= 3)."""
    tot = sum(proportions)
    val = max(1, round(n * proportions[1] / tot)) if n >= 3 else 0
    test = max(1, round(n * proportions[2] / tot)) if n >= 3 else 0
    return n - val - test, val, test


def _perm(items: Sequence[str], seed: int, salt: str) -> list[str]:
    """Deterministic shuffle independent of the order ``items`` arrive in."""
    def k(x):
        return hashlib.sha256(f"{seed}:{salt}:{x}".encode()).hexdigest()

    return sorted(items, key=k)


def make_grading_splits(records: Sequence[IVDRecord], pretrain_split: dict[str, str] | None = None,
                        seed: int = 0, proportions: Sequence[int] = PAPER_SPLIT) -> GradingSplits:
    """Split graded subjects into train / validation / test, the paper's way.

    - only subjects with at least one graded disc take part;
    - families (twins) are kept in one split;
    - a test subject has a single scan and is not in the pretraining train or validation split
      (so the pretrained network has never seen it); a family goes to test only if all its
      graded members qualify;
    - sizes follow ``proportions`` (670/50/200 of 920) scaled to the cohort; when too few
      subjects qualify for test, test is smaller and a note says so.
    """
    pretrain_split = pretrain_split or {}
    scans: dict[str, set[str]] = defaultdict(set)
    graded: set[str] = set()
    family: dict[str, str] = {}
    for r in records:
        scans[r.subject_key].add(r.scan_key)
        family[r.subject_key] = r.family
        if r.grade:
            graded.add(r.subject_key)
    fam_members: dict[str, list[str]] = defaultdict(list)
    for s in sorted(graded):
        fam_members[family[s]].append(s)
    n = len(graded)
    n_train, n_val, n_test = scaled_counts(n, proportions)

    def eligible(f):
        return all(len(scans[s]) == 1 and pretrain_split.get(s) not in ("train", "val") for s in fam_members[f])

    fams = _perm(list(fam_members), seed, "grading")
    test, notes = [], []
    for f in fams:
        if len(test) >= n_test:
            break
        if eligible(f) and len(test) + len(fam_members[f]) <= n_test:
            test.extend(fam_members[f])
    if len(test) < n_test:
        notes.append(f"only {len(test)} of {n_test} wanted test subjects have a single scan and are "
                     "outside pretraining train/val")
    rest = [f for f in fams if not set(fam_members[f]) & set(test)]
    val = []
    for f in rest:
        if len(val) >= n_val:
            break
        if len(val) + len(fam_members[f]) <= n_val:
            val.extend(fam_members[f])
    train = [s for f in rest for s in fam_members[f] if s not in val]
    return GradingSplits(train=train, val=val, test=test, seed=seed, notes=notes)


def nested_train_subsets(splits: GradingSplits, sizes: Sequence[int]) -> dict[int, list[str]]:
    """Nested training subsets (each the prefix of one fixed order of ``splits.train``)."""
    out = {}
    for s in sizes:
        if s < 1 or s > len(splits.train):
            raise ConfigError(f"training-set size {s} outside 1..{len(splits.train)}")
        out[int(s)] = list(splits.train[:s])
    return out


def scaled_train_sizes(n_train: int, paper_sizes: Sequence[int] = PAPER_TRAIN_SIZES) -> list[int]:
    """The paper's 240/361/670 training subjects scaled to ``n_train`` (distinct, ascending)."""
    top = paper_sizes[-1]
    out = sorted({max(2, min(n_train, round(n_train * s / top))) for s in paper_sizes})
    return out



def load_ivd_arrays(cohort_dir: str | os.PathLike, records: Sequence[IVDRecord]) -> np.ndarray:
    """Stack the IVD volumes of ``records`` into one float16 array (N, 9, 112, 224)."""
    cohort_dir = Path(cohort_dir)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_file[r.file].append(i)
    out = np.zeros((len(records), *IVD_SHAPE), dtype=np.float16)
    for fname, idxs in by_file.items():
        path = cohort_dir / fname
        ivd = read_arrays(path, ["ivd"])["ivd"]   # the one volume-file reader (either storage format)
        if ivd.ndim != 4 or tuple(ivd.shape[1:]) != IVD_SHAPE:
            raise ManifestError(f"ivd array has shape {ivd.shape}, expected (6, {IVD_SHAPE})", path)
        for i in idxs:
            j = records[i].index
            if not 0 <= j < ivd.shape[0]:
                raise ManifestError(f"index {j} outside the ivd array", path)
            out[i] = ivd[j]
    return out



class IVDDataset:
    """In-memory (volume, label) pairs: volumes float16 (N, 9, 112, 224), labels int64 (N,).

    Items are ``(x, y)`` with ``x`` float32 ``(1, 9, H, W)``."""

    def __init__(self, volumes: np.ndarray, labels: np.ndarray):
        import torch

        self.x = torch.from_numpy(np.ascontiguousarray(volumes))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i):
        return self.x[i].float().unsqueeze(0), self.y[i]


def downscale(volumes: np.ndarray, net_hw: tuple[int, int], batch: int = 64) -> np.ndarray:
    """Area-downscale (N, 9, 112, 224) volumes to the network's working size exactly as
    ``VGGMNet.prepare_input`` does, so caches hold what the convolutions see (float16)."""
    import torch
    import torch.nn.functional as F

    if tuple(volumes.shape[-2:]) == tuple(net_hw):
        return volumes
    out = np.empty((volumes.shape[0], volumes.shape[1], *net_hw), dtype=np.float16)
    for i in range(0, volumes.shape[0], batch):
        x = torch.from_numpy(volumes[i:i + batch].astype(np.float32)).unsqueeze(1)
        out[i:i + batch] = F.adaptive_avg_pool3d(x, (volumes.shape[1], *net_hw)).squeeze(1).numpy()
    return out


def _subset(records: Sequence[IVDRecord], subjects: Iterable[str]) -> list[IVDRecord]:
    keep = set(subjects)
    return [r for r in records if r.subject_key in keep and r.grade]
