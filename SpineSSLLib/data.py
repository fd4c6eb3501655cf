"""Data for longitudinal pretraining: the VB volume table, subject splits, the pair sampler,
the volume cache / pair dataset, and the paper's augmentations (MONAI, on the training device).

Pairs (paper §2.2, Fig. 3): a *positive* is the same vertebral level of the same subject at two
different time points; a *negative* is the same level of two different subjects.  S1 only meets
S1.  Negatives are drawn so that they look like positives in every acquisition respect: each
negative keeps one scan of a positive pair and replaces the other by a scan of another subject
with the same acquisition signature (time-point index, field strength, nearest follow-up
interval).  In the paper every positive pairs a 1.0 T baseline with a 1.5 T follow-up; a sampler
that drew negatives from arbitrary scans would let "different scanners" predict "same subject".

Memory is O(scans): the sampler keeps per-(subject, level) lists and builds one epoch's pairs
(O(positives)) at a time; new negatives are drawn every epoch (``set_epoch``).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import LEVEL_NAMES
from .atomic import atomic_path, write_json
from .errors import ConfigError, ManifestError
from .transforms import AugmentConfig, VolumeAugment  # noqa: F401 - AugmentConfig re-exported

VB_SHAPE = (9, 224, 224)
SPLITS_SCHEMA = "spinessl.splits/1"
SPLIT_NAMES = ("train", "val", "test")


# --------------------------------------------------------------------------- the volume table

@dataclass(frozen=True)
class VolumeRow:
    """One vertebral-body volume (a VB row of volumes.csv)."""

    volume_id: str
    scan_key: str
    subject_key: str
    family: str
    timepoint: int
    interval_days: float      # NaN when unknown
    field_strength: float     # NaN when unknown
    level: str
    file: str
    index: int
    aux: tuple = ()           # optional metadata labels, ((name, class index or -1), ...)

    @property
    def level_index(self) -> int:
        return LEVEL_NAMES.index(self.level)


def _float(s) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return math.nan
    return v


AUX_COLUMNS = ("sex", "age_bin", "weight_bin")


def read_vb_table(cohort_dir, aux_heads: dict | None = None) -> list[VolumeRow]:
    """VB rows of ``<cohort_dir>/volumes.csv`` (the extraction contract).  With ``aux_heads``
    (name -> classes), the named metadata columns are read as integer class labels (-1 when
    empty); a requested column that is absent raises ``ManifestError``."""
    path = Path(cohort_dir) / "volumes.csv"
    if not path.is_file():
        raise ManifestError("no volumes.csv (run `spine-ssl extract` first)", path)
    aux_heads = aux_heads or {}
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"volume_id", "scan_key", "subject_key", "timepoint", "level", "kind", "file", "index"}
        have = set(reader.fieldnames or [])
        missing = need - have
        if missing:
            raise ManifestError(f"missing columns {', '.join(sorted(missing))}", path)
        absent = [k for k in aux_heads if k not in have]
        if absent:
            raise ManifestError(f"auxiliary head column(s) {', '.join(absent)} not in the table", path)
        for n, r in enumerate(reader, start=2):
            if (r["kind"] or "").strip().upper() != "VB":
                continue
            if r["level"] not in LEVEL_NAMES:
                raise ManifestError(f"line {n}: unknown level {r['level']!r}", path)
            try:
                tp, idx = int(r["timepoint"]), int(r["index"])
            except ValueError:
                raise ManifestError(f"line {n}: timepoint/index not integers", path) from None
            aux = []
            for k, ncls in aux_heads.items():
                v = (r.get(k) or "").strip()
                try:
                    c = int(float(v)) if v else -1
                except ValueError:
                    raise ManifestError(f"line {n}: column {k} is not a class index ({v!r})", path) from None
                if c >= int(ncls):
                    raise ManifestError(f"line {n}: {k} class {c} >= {ncls}", path)
                aux.append((k, c))
            rows.append(VolumeRow(r["volume_id"], r["scan_key"], r["subject_key"],
                                  (r.get("family") or "").strip() or r["subject_key"], tp,
                                  _float(r.get("interval_days")), _float(r.get("field_strength")),
                                  r["level"], r["file"], idx, tuple(aux)))
    if not rows:
        raise ManifestError("no vertebral-body (VB) volumes in the table", path)
    return rows


# --------------------------------------------------------------------------- splits

@dataclass
class Splits:
    seed: int
    fractions: tuple
    subjects: dict           # split name -> sorted subject keys

    def split_of(self) -> dict[str, str]:
        return {s: name for name, subs in self.subjects.items() for s in subs}

    def to_dict(self) -> dict:
        return {"schema": SPLITS_SCHEMA, "seed": self.seed, "fractions": list(self.fractions),
                "counts": {k: len(v) for k, v in self.subjects.items()}, "subjects": self.subjects}


def make_splits(rows: Sequence[VolumeRow], seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> Splits:
    """Split subjects 80:10:10 (``fractions``), families (twins) kept in one split, deterministic
    from ``seed``.  Families with follow-up scans and those without are split separately, so the
    longitudinal subjects (the only source of positives) are also 80:10:10 (paper: 339:42:42)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    fam_subjects: dict[str, set] = defaultdict(set)
    times: dict[str, set] = defaultdict(set)
    for r in rows:
        fam_subjects[r.family].add(r.subject_key)
        times[r.subject_key].add(r.timepoint)
    out = {k: [] for k in SPLIT_NAMES}
    rng = np.random.default_rng(seed)
    for longitudinal in (True, False):
        fams = sorted(f for f, subs in fam_subjects.items()
                      if any(len(times[s]) > 1 for s in subs) == longitudinal)
        fams = [fams[i] for i in rng.permutation(len(fams))]
        total = sum(len(fam_subjects[f]) for f in fams)
        target = [fractions[0] * total, fractions[1] * total, fractions[2] * total]
        got = [0, 0, 0]
        for f in fams:
            # the split furthest below its target takes the family (largest deficit first)
            need = [target[i] - got[i] for i in range(3)]
            i = int(np.argmax(need))
            out[SPLIT_NAMES[i]].extend(fam_subjects[f])
            got[i] += len(fam_subjects[f])
    return Splits(seed, tuple(fractions), {k: sorted(v) for k, v in out.items()})


def write_splits(path, splits: Splits) -> None:
    write_json(path, splits.to_dict())


def read_splits(path) -> Splits:
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError("splits file not found", p) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ManifestError("splits file is not valid JSON", p) from None
    if not isinstance(d, dict) or d.get("schema") != SPLITS_SCHEMA or not isinstance(d.get("subjects"), dict):
        raise ManifestError(f"not a SpineSSL splits file (schema {SPLITS_SCHEMA})", p)
    subs = {k: list(d["subjects"].get(k, [])) for k in SPLIT_NAMES}
    seen: dict[str, str] = {}
    for k, v in subs.items():
        for s in v:
            if s in seen:
                raise ManifestError(f"subject {s} is in both {seen[s]} and {k}", p)
            seen[s] = k
    return Splits(int(d.get("seed", 0)), tuple(d.get("fractions", (0.8, 0.1, 0.1))), subs)


# --------------------------------------------------------------------------- pairs

@dataclass
class PairConfig:
    neg_per_pos: float = 1.0
    """negatives per positive (1 = the paper's balanced pairs; 0.5 = two positives per negative)"""
    balance_levels: bool = True
    """upsample positives of under-represented levels to the most frequent level's count"""
    match_acquisition: bool = True
    """negatives copy the positives' baseline/follow-up composition (keep True; False exists to
    demonstrate the shortcut it removes)"""
    interval_bin_days: float = 365.25
    """follow-up intervals are matched within bins of this width (uniform sampling inside a bin
    keeps the negatives' interval distribution equal to the positives')"""
    self_pairs: float = 0.0
    """extra positives per longitudinal positive made of one volume with itself (the two views
    differ by augmentation: SimCLR's instance positives), drawn from every VB of the split — also
    from subjects scanned once, so they join the level loss and the batch's negatives"""

    def __post_init__(self):
        if self.neg_per_pos < 0 or self.self_pairs < 0:
            raise ConfigError("neg_per_pos and self_pairs must be >= 0")
        if self.interval_bin_days <= 0:
            raise ConfigError("interval_bin_days must be positive")


def _sig(r: VolumeRow, bin_days: float | None) -> tuple:
    """Acquisition signature: level, time-point index, field strength, interval bin."""
    fs = None if math.isnan(r.field_strength) else round(r.field_strength, 2)
    iv = None if (bin_days is None or math.isnan(r.interval_days)) else int(r.interval_days // bin_days)
    return (r.level, r.timepoint, fs, iv)


class PairSampler:
    """Yields ``(index_a, index_b, y)`` keys into ``rows`` (y = 1 positive, 0 negative) for one
    split.  Deterministic from ``(seed, epoch)``; new negatives each epoch via ``set_epoch``.
    Under torchrun each rank gets a disjoint ``rank::world`` share (padded to equal length)."""

    def __init__(self, rows: Sequence[VolumeRow], config: PairConfig | None = None, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True):
        self.rows, self.config, self.seed = list(rows), config or PairConfig(), int(seed)
        self.rank, self.world, self.shuffle = rank, world, shuffle
        by_sl: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(self.rows):
            by_sl[(r.subject_key, r.level)].append(i)
        self.positives: list[tuple[int, int]] = []
        for idxs in by_sl.values():
            idxs = sorted(idxs, key=lambda i: (self.rows[i].timepoint, self.rows[i].volume_id))
            for p in range(len(idxs)):
                for q in range(p + 1, len(idxs)):
                    a, b = self.rows[idxs[p]], self.rows[idxs[q]]
                    if a.timepoint != b.timepoint:
                        self.positives.append((idxs[p], idxs[q]))
        # candidates for negatives, by acquisition signature (fine: with interval bin; coarse:
        # without) and by level alone (last resort)
        bin_days = self.config.interval_bin_days
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(self.rows):
            groups[("fine",) + _sig(r, bin_days)].append(i)
            groups[("coarse",) + _sig(r, None)].append(i)
            groups[("level", r.level)].append(i)
        self._groups = {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
        self.epoch = 0
        self._pairs: list[tuple[int, int, int]] | None = None

    # -- negatives
    def _draw(self, pool: np.ndarray, exclude: set, rng: np.random.Generator) -> int | None:
        for _ in range(8):                       # rejection sampling: pools are mostly other subjects
            i = int(pool[rng.integers(len(pool))])
            if self.rows[i].subject_key not in exclude:
                return i
        cand = [int(i) for i in pool if self.rows[i].subject_key not in exclude]
        return cand[rng.integers(len(cand))] if cand else None

    def _replacement(self, keep: int, replace: int, rng: np.random.Generator) -> int | None:
        """A scan of another subject, same level, drawn uniformly among those with the replaced
        scan's acquisition signature (coarser signatures only when that is empty)."""
        r_keep, r_rep = self.rows[keep], self.rows[replace]
        excl = {r_keep.subject_key, r_rep.subject_key}
        bin_days = self.config.interval_bin_days
        for key in (("fine",) + _sig(r_rep, bin_days), ("coarse",) + _sig(r_rep, None), ("level", r_rep.level)):
            pool = self._groups.get(key)
            if pool is not None and len(pool):
                x = self._draw(pool, excl, rng)
                if x is not None:
                    return x
        return None

    def _naive_negative(self, a: int, rng) -> int | None:
        return self._draw(self._groups[("level", self.rows[a].level)], {self.rows[a].subject_key}, rng)

    def epoch_pairs(self, epoch: int) -> list[tuple[int, int, int]]:
        """All pairs of ``epoch`` (every rank), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        pos = list(self.positives)
        if self.config.balance_levels and pos:
            by_level: dict[str, list] = defaultdict(list)
            for p in pos:
                by_level[self.rows[p[0]].level].append(p)
            top = max(len(v) for v in by_level.values())
            pos = []
            for lvl in sorted(by_level):
                v = by_level[lvl]
                extra = [v[j] for j in rng.integers(len(v), size=top - len(v))] if top > len(v) else []
                pos.extend(v + extra)
        pairs = [(a, b, 1) for a, b in pos]
        n_neg = int(round(self.config.neg_per_pos * len(pos)))
        if n_neg:
            src = np.concatenate([rng.permutation(len(pos)) for _ in range(math.ceil(n_neg / len(pos)))])[:n_neg]
            for j in src:
                a, b = pos[j]
                if self.config.match_acquisition:
                    if rng.random() < 0.5:
                        x = self._replacement(a, b, rng)
                        pair = (a, x, 0) if x is not None else None
                    else:
                        x = self._replacement(b, a, rng)
                        pair = (x, b, 0) if x is not None else None
                else:
                    x = self._naive_negative(a, rng)
                    pair = (a, x, 0) if x is not None else None
                if pair is not None:
                    pairs.append(pair)
        n_self = int(round(self.config.self_pairs * len(pos)))
        if n_self and self.rows:
            pairs.extend((int(i), int(i), 1) for i in rng.integers(len(self.rows), size=n_self))
        if self.shuffle:
            pairs = [pairs[i] for i in rng.permutation(len(pairs))]
        return pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._pairs = None

    def _rank_pairs(self) -> list[tuple[int, int, int]]:
        if self._pairs is None:
            pairs = self.epoch_pairs(self.epoch)
            if self.world > 1 and pairs:
                pad = (-len(pairs)) % self.world
                pairs = pairs + pairs[:pad]
                pairs = pairs[self.rank::self.world]
            self._pairs = pairs
        return self._pairs

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self._rank_pairs())

    def __len__(self) -> int:
        return len(self._rank_pairs())


# --------------------------------------------------------------------------- volume cache

class VolumeCache:
    """Decoded VB volumes, at the network's input size, as one memory-mapped ``.npy`` per scan
    (``(7, 9, h, w)`` float16) in ``cache_dir`` — built once (the volume files are compressed and
    full-size), then shared by all loader workers through the OS page cache."""

    def __init__(self, cohort_dir, rows: Sequence[VolumeRow], hw: tuple[int, int] = (224, 224),
                 cache_dir=None, progress: bool = True):
        self.cohort_dir = Path(cohort_dir)
        self.hw = tuple(int(v) for v in hw)
        self.cache_dir = Path(cache_dir) if cache_dir else self.cohort_dir / "cache" / f"vb_{self.hw[0]}x{self.hw[1]}"
        self.files = sorted({r.file for r in rows})
        self._mm: dict[str, np.ndarray] = {}
        self.build(progress)

    def _cache_path(self, file: str) -> Path:
        return self.cache_dir / (Path(file).name.replace(".npz", "") + ".npy")

    def build(self, progress: bool = True) -> None:
        from .progress import track

        todo = []
        for f in self.files:
            src, dst = self.cohort_dir / f, self._cache_path(f)
            if not src.is_file():
                raise ManifestError("volume file listed in volumes.csv is missing", src)
            if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
                todo.append(f)
        items = track(todo, desc="caching volumes", unit="scan") if progress and todo else todo
        for f in items:
            self._convert(self.cohort_dir / f, self._cache_path(f))

    def _convert(self, src: Path, dst: Path) -> None:
        from .extract.files import read_arrays

        vb = read_arrays(src, ["vb"])["vb"]   # the one volume-file reader (either storage format)
        if vb.ndim != 4 or tuple(vb.shape[1:]) != VB_SHAPE:
            raise ManifestError(f"vb array has shape {vb.shape}, expected (7, {', '.join(map(str, VB_SHAPE))})", src)
        if not np.isfinite(vb).all():
            raise ManifestError("vb array holds NaN/Inf", src)
        if self.hw != VB_SHAPE[1:]:
            import torch
            import torch.nn.functional as F

            with torch.no_grad():
                t = F.adaptive_avg_pool3d(torch.from_numpy(vb.astype(np.float32)), (VB_SHAPE[0], *self.hw))
            vb = t.numpy()
        with atomic_path(dst, suffix=".npy") as tmp:
            np.save(tmp, vb.astype(np.float16), allow_pickle=False)

    def raw(self, row: VolumeRow) -> np.ndarray:
        """``(9, h, w)`` float16 of a volume: a read-only view of the memory-mapped cache file."""
        mm = self._mm.get(row.file)
        if mm is None:
            mm = np.load(self._cache_path(row.file), mmap_mode="r", allow_pickle=False)
            self._mm[row.file] = mm
        if not 0 <= row.index < mm.shape[0]:
            raise ManifestError(f"index {row.index} outside the vb array", self.cohort_dir / row.file)
        return mm[row.index]

    def volume(self, row: VolumeRow) -> np.ndarray:
        """``(9, h, w)`` float32 copy of a volume."""
        return np.asarray(self.raw(row), dtype=np.float32)

    def __getstate__(self):  # workers re-open their own memory maps
        d = dict(self.__dict__)
        d["_mm"] = {}
        return d


class PairDataset:
    """``dataset[(i, j, y)]`` -> dict ``a``, ``b`` (1, 9, h, w) float32, ``y`` float, ``level``
    (class index), ``subject_a/_b`` (subject indices within the split, for NT-Xent's masking),
    ``aux_<name>_a/_b`` when the rows carry metadata labels."""

    def __init__(self, rows: Sequence[VolumeRow], cache: VolumeCache):
        self.rows, self.cache = list(rows), cache
        subjects = sorted({r.subject_key for r in self.rows})
        self._subject = {s: n for n, s in enumerate(subjects)}

    def __getitem__(self, key):
        import torch

        i, j, y = key
        ra, rb = self.rows[i], self.rows[j]
        out = {"a": torch.from_numpy(self.cache.volume(ra))[None],
               "b": torch.from_numpy(self.cache.volume(rb))[None],
               "y": torch.tensor(float(y)), "level": torch.tensor(ra.level_index),
               "subject_a": torch.tensor(self._subject[ra.subject_key]),
               "subject_b": torch.tensor(self._subject[rb.subject_key])}
        for (name, ca), (_, cb) in zip(ra.aux, rb.aux):
            out[f"aux_{name}_a"] = torch.tensor(ca)
            out[f"aux_{name}_b"] = torch.tensor(cb)
        return out


class VolumeDataset:
    """Single volumes (for embeddings): ``dataset[i]`` -> (1, 9, h, w) float32."""

    def __init__(self, rows: Sequence[VolumeRow], cache: VolumeCache):
        self.rows, self.cache = list(rows), cache

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.cache.volume(self.rows[i]))[None]


# --------------------------------------------------------------------------- augmentation

class PairAugment:
    """Batch transform for ``PairDataset`` batches: ``transforms.VolumeAugment.augment_pairs`` on
    ``batch["a"]``, ``batch["b"]`` (VB volumes; translations in 224x224 pixels)."""

    def __init__(self, config: AugmentConfig, hw: tuple[int, int]):
        self.config = config
        self.volume = VolumeAugment(config, hw, VB_SHAPE[1:])

    def __call__(self, batch: dict) -> dict:
        if not self.config.enabled:
            return batch
        batch = dict(batch)
        batch["a"], batch["b"] = self.volume.augment_pairs(batch["a"], batch["b"])
        return batch


# --------------------------------------------------------------------------- convenience

def level_counts(rows: Sequence[VolumeRow]) -> list[int]:
    c = [0] * len(LEVEL_NAMES)
    for r in rows:
        c[r.level_index] += 1
    return c


def rows_in(rows: Sequence[VolumeRow], subjects) -> list[VolumeRow]:
    subjects = set(subjects)
    return [r for r in rows if r.subject_key in subjects]
