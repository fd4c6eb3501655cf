"""Cohort-scale runs: ``--shard I/N`` for ``index`` and ``extract`` and ``spine-ssl merge``.

A shard owns whole subjects: series go to shard ``I`` when a stable hash of their salted
subject key, modulo ``N``, is ``I`` (files whose PatientID cannot be read go by their salted
path hash).  Selection, time points and intervals are per subject, so a shard computes exactly
the rows a single run would, and merging is concatenation in the single run's order.

Layout (one cohort folder ``C`` shared by all shards, or one per shard merged later)::

    C/cohort_salt.txt                 one salt, created exclusively by whichever shard is first
    C/shards/index-I-of-N/            series.csv, sources.csv, errors.csv, index.json of shard I
    C/shards/extract-I-of-N/          volumes.csv, scans.csv, errors.csv of extraction shard I
    C/volumes/<scan_key>.npz/.json    per scan (atomic; shards never write the same scan)

``merge(C, sources)`` checks that every shard 0..N-1 is there, that all were made with one salt
(by its public fingerprint ``salt_id``) and one configuration, and writes ``C/series.csv``,
``sources.csv``, ``index.json``, ``errors.csv`` and, when extraction shards exist,
``volumes.csv`` and ``scans.csv`` — byte for byte what one unsharded run writes.  Running it
again gives the same files (idempotent).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, ManifestError

_DIR_RE = re.compile(r"^(index|extract)-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self.index}/{self.count}: need 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def dirname(self, kind: str) -> str:
        return f"{kind}-{self.index}-of-{self.count}"

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index


def shard_of(key: str, n: int) -> int:
    """Stable shard number of a (pseudonymous) key: the same on every machine and Python."""
    return int(hashlib.sha256(f"spinessl-shard\x00{key}".encode("utf-8")).hexdigest()[:12], 16) % n


def parse(spec: str | None) -> Shard | None:
    """``"I/N"`` -> Shard; ``None``/``""``/``"none"`` -> no sharding."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m:
        raise ConfigError(f"--shard expects I/N (e.g. 0/8, I counted from 0), got {spec!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def from_env(env=None) -> Shard | None:
    """The shard of a Slurm job-array task (``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN``, of ``SLURM_ARRAY_TASK_COUNT``), or None outside an array."""
    env = os.environ if env is None else env
    tid, cnt = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if not tid or not cnt:
        return None
    try:
        i = int(tid) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        n = int(cnt)
    except ValueError:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID/COUNT are not integers ({tid!r}, {cnt!r})") from None
    if not 0 <= i < n:
        raise ConfigError(f"Slurm array task {tid} is not one of {n} consecutive tasks: use --array=0-{n - 1} "
                          "or pass --shard I/N")
    return Shard(i, n)


def resolve(spec: str | None, env=None) -> Shard | None:
    """``--shard`` when given (``none`` turns sharding off), else the Slurm array's task."""
    return parse(spec) if spec is not None else from_env(env)


def shard_dir(cohort, kind: str, shard: Shard) -> Path:
    return Path(cohort) / "shards" / shard.dirname(kind)


# --------------------------------------------------------------------------------------------
# Which files belong to a shard (index)
# --------------------------------------------------------------------------------------------

@dataclass
class QuickId:
    """Identity of one DICOM file from a partial header read (in memory only)."""

    path: str
    series_uid: str
    patient_id: str
    patient_name: str = ""
    study_date: str = ""
    birth_date: str = ""


_QUICK_TAGS = ["PatientID", "PatientName", "StudyDate", "SeriesDate", "PatientBirthDate", "SeriesInstanceUID"]


def quick_ids(paths) -> list[QuickId | None]:
    """PatientID, SeriesInstanceUID and the identifying values of each file, read without pixel
    data and without the rest of the header; None for a file that is not readable DICOM."""
    import pydicom

    from . import progress

    out: list[QuickId | None] = []
    for p in progress.track(list(paths), desc="finding shard files", unit="file"):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=_QUICK_TAGS, force=True)
            uid = str(ds.get("SeriesInstanceUID", "") or "")
        except Exception:  # pydicom raises many types on non-DICOM or corrupt input
            out.append(None)
            continue
        if not uid:
            out.append(None)
            continue
        out.append(QuickId(p, uid, str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""),
                           str(ds.get("StudyDate", "") or ds.get("SeriesDate", "") or ""),
                           str(ds.get("PatientBirthDate", "") or "")))
    return out


def own_files(files: list[str], root, salt: str, shard: Shard) -> tuple[list[str], set[str]]:
    """(the files of ``shard``, identifying strings of all files for redaction).  A series goes
    with the PatientID of its first file (as in a single run), so no series is split."""
    from .privacy import file_hash, identifiers, salted_key

    ids = quick_ids(files)
    first_pid: dict[str, str] = {}
    for q in ids:
        if q is not None:
            first_pid.setdefault(q.series_uid, q.patient_id)
    own = []
    for f, q in zip(files, ids):
        if q is None:
            key = file_hash(salt, os.path.relpath(f, root))
        else:
            key = salted_key(salt, "subject:" + first_pid[q.series_uid], prefix="S", n=12)
        if shard.owns(key):
            own.append(f)
    return own, identifiers([q for q in ids if q is not None])


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------

@dataclass
class MergeSummary:
    index_shards: int = 0
    extract_shards: int = 0
    n_series: int = 0
    n_volumes: int = 0
    copied: int = 0
    written: list[str] = field(default_factory=list)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise ManifestError("missing (the shard did not finish: run it again)", path)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _gather(folders: list[Path], kind: str) -> dict[int, Path]:
    """shard index -> folder, for the one shard count present; errors for gaps and clashes."""
    found: dict[tuple[int, int], Path] = {}
    for base in folders:
        d = base / "shards"
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            m = _DIR_RE.match(sub.name)
            if not m or m.group(1) != kind or not sub.is_dir():
                continue
            key = (int(m.group(2)), int(m.group(3)))
            if key in found and found[key].resolve() != sub.resolve():
                raise ConfigError(f"{kind} shard {key[0]}/{key[1]} found twice ({found[key]} and {sub})")
            found[key] = sub
    counts = sorted({n for _, n in found})
    if not counts:
        return {}
    if len(counts) > 1:
        raise ConfigError(f"{kind} shards of different counts ({', '.join(map(str, counts))}) under "
                          f"{', '.join(str(f / 'shards') for f in folders)}: remove the stale ones")
    n = counts[0]
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise ConfigError(f"{kind} shard {missing[0]}/{n} is missing ({len(missing)} of {n} not done): run "
                          f"`spine-ssl {kind} ... --shard {missing[0]}/{n}`, then merge again")
    return {i: found[(i, n)] for i in range(n)}


def _series_order(row: dict) -> tuple:
    iv = row.get("interval_days", "")
    return row["subject_key"], int(iv) if iv != "" else 1 << 30, row["scan_key"]


def _error_order(row: dict) -> tuple:
    return row["file"], row["stage"], row["error_type"], row["message"]


def _shard_meta(p: Path, salt_id: str, done: str, salt_file, hint: str = "") -> dict:
    """A finished shard's meta JSON (``index.json``, ``shard.json``), made with the cohort's salt."""
    if not p.is_file():
        raise ManifestError("missing (the shard did not finish: run it again)", p)
    m = json.loads(p.read_text(encoding="utf-8"))
    if m.get("salt_id") != salt_id:
        raise ConfigError(f"{p}: {done} with another salt than {salt_file}; keys cannot be merged{hint}")
    return m


def _merge_index(cohort: Path, shards: dict[int, Path], salt_id: str) -> tuple[list[dict], list[dict]]:
    from . import atomic
    from .index import SERIES_COLUMNS, index_meta

    metas, series, sources, errors = [], [], [], []
    for i, d in shards.items():
        p = d / "index.json"
        m = _shard_meta(p, salt_id, "indexed", cohort / "cohort_salt.txt",
                        " (index every shard into one cohort folder, or copy its cohort_salt.txt into each "
                        "shard's folder before indexing)")
        metas.append((p, m))
        series += _read_csv(d / "series.csv")
        sources += _read_csv(d / "sources.csv")
        errors += _read_csv(d / "errors.csv")
    p0, m0 = metas[0]
    for p, m in metas[1:]:
        for k in ("schema", "root", "format", "table", "config"):
            if m.get(k) != m0.get(k):
                raise ConfigError(f"{p}: indexed with another {k} than {p0} ({m.get(k)!r} vs {m0.get(k)!r})")
    keys = [r["scan_key"] for r in series]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{cohort / 'shards'}: a series is in two index shards (shards of different "
                          "cohorts mixed?)")
    series.sort(key=_series_order)
    pos = {r["scan_key"]: n for n, r in enumerate(series)}
    sources.sort(key=lambda r: pos.get(r["scan_key"], len(pos)))  # stable: file order kept per scan
    errors.sort(key=_error_order)
    meta = index_meta(m0["root"], m0["format"], m0["table"], m0["config"],
                      sum(m["n_files"] for _, m in metas), sum(m["n_ignored"] for _, m in metas), series, errors)
    atomic.write_csv(cohort / "series.csv", series, SERIES_COLUMNS)
    atomic.write_csv(cohort / "sources.csv", sources, ["scan_key", "file_hash"])
    atomic.write_json(cohort / "index.json", meta)
    return series, errors


def _copy_volumes(src: Path, cohort: Path, keys) -> int:
    """Bring a shard folder's volume files into the cohort (skips files already there)."""
    n = 0
    if src.resolve() == cohort.resolve():
        return 0
    from . import atomic

    for k in keys:
        for ext in (".npz", ".json"):
            a, b = src / "volumes" / f"{k}{ext}", cohort / "volumes" / f"{k}{ext}"
            if a.is_file() and not (b.is_file() and b.stat().st_size == a.stat().st_size
                                    and a.read_bytes() == b.read_bytes()):
                with atomic.atomic_path(b) as tmp:
                    shutil.copyfile(a, tmp)
                n += 1
    return n


def merge(cohort, sources=()) -> MergeSummary:
    """Merge the shard manifests found under ``cohort/shards`` and ``<source>/shards`` into
    ``cohort`` (see the module docstring)."""
    from . import atomic
    from .extract.batch import write_manifests
    from .index import ERROR_COLUMNS, read_index
    from .privacy import SALT_FILE, salt_id

    cohort = Path(cohort)
    folders = [cohort] + [Path(s) for s in sources if Path(s).resolve() != cohort.resolve()]
    for f in folders:
        if not f.is_dir():
            raise ManifestError("not a folder", f)
    idx, ext = _gather(folders, "index"), _gather(folders, "extract")
    if not idx and not ext:
        raise ManifestError("no shard manifests here (shards/index-I-of-N or shards/extract-I-of-N)",
                        cohort / "shards")
    # one salt for all: the cohort's, or the first source's when the cohort has none yet
    salt_file = cohort / SALT_FILE
    if not salt_file.is_file():
        src = next((f / SALT_FILE for f in folders[1:] if (f / SALT_FILE).is_file()), None)
        if src is None:
            raise ManifestError(f"no {SALT_FILE} (the shards' salt) here or in the sources", cohort)
        cohort.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(salt_file) as tmp:
            shutil.copyfile(src, tmp)
    sid = salt_id(salt_file.read_text(encoding="utf-8").strip())
    for f in folders[1:]:
        if (f / SALT_FILE).is_file() and salt_id((f / SALT_FILE).read_text(encoding="utf-8").strip()) != sid:
            raise ConfigError(f"{f / SALT_FILE}: another salt than {salt_file}; keys cannot be merged")
    out = MergeSummary(index_shards=len(idx), extract_shards=len(ext))
    if idx:
        series, index_errors = _merge_index(cohort, idx, sid)
        out.written += ["series.csv", "sources.csv", "index.json"]
    else:
        _, series = read_index(cohort)
        p = cohort / "errors.csv"
        index_errors = [r for r in _read_csv(p) if r.get("stage") == "index"] if p.is_file() else []
    out.n_series = len(series)
    extract_errors: list[dict] = []
    if ext:
        selected = [r for r in series if r["status"] == "selected"]
        failed: dict[str, str] = {}
        conf0 = None
        for i, d in ext.items():
            p = d / "shard.json"
            m = _shard_meta(p, sid, "extracted", salt_file)
            conf = {k: v for k, v in (m.get("config") or {}).items() if k != "device"}
            if conf0 is not None and conf != conf0[1]:
                diff = next(k for k in sorted(set(conf) | set(conf0[1])) if conf.get(k) != conf0[1].get(k))
                raise ConfigError(f"{p}: extracted with another {diff} than {conf0[0]} "
                                  f"({conf.get(diff)!r} vs {conf0[1].get(diff)!r})")
            conf0 = conf0 or (p, conf)
            scans = _read_csv(d / "scans.csv")
            extract_errors += [r for r in _read_csv(d / "errors.csv") if r.get("stage") != "index"]
            failed.update({r["scan_key"]: r["error"] for r in scans if r["status"] == "failed"})
            out.copied += _copy_volumes(d.parent.parent, cohort, [r["scan_key"] for r in scans])
        extract_errors.sort(key=_error_order)
        out.n_volumes, _ = write_manifests(cohort, selected, failed, cohort)
        out.written += ["volumes.csv", "scans.csv"]
    atomic.write_csv(cohort / "errors.csv", index_errors + extract_errors, ERROR_COLUMNS)
    out.written.append("errors.csv")
    return out
