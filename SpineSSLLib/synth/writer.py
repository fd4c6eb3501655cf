"""Writing a generated cohort: the output-folder checks, the hidden partial folder that is renamed
into place at the end (an error, Ctrl-C or SIGTERM removes it), families written in worker
processes with a progress bar, and the per-series pieces every generator writes the same way
(series stored in reverse slice order, the truth levels, the cohort summary).

Output code only: no anatomy, rendering or scanner model lives here, so any generator may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from .. import DISC_NAMES
from ..errors import ConfigError, InputError

TRUTH_SCHEMA = "spinessl.synth.truth/1"
LAYOUT = {"dicom": "dicom/<subject_id>/<visit>/", "truth": "truth/<SeriesInstanceUID>.json",
          "labelmap": "truth/<SeriesInstanceUID>_labels.nii.gz"}


def check_output(out_dir: Path, overwrite: bool) -> None:
    """``InputError`` (naming the folder) unless ``out_dir`` can be created or replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError("output folder is not empty (use --overwrite to replace it)", out_dir)
    probe = out_dir.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError("cannot create the output folder here: not a folder", probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError("folder is not writable", probe)


@contextlib.contextmanager
def sigterm_as_exit():
    """Turn SIGTERM into SystemExit while generating, so the partial folder is removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def write_cohort(out_dir, overwrite: bool, workers, generate) -> dict:
    """Run ``generate(tmp) -> summary`` into a hidden ``.OUT.partial-*`` folder beside ``out_dir``
    and rename it into place (replacing ``out_dir`` when ``overwrite``); on any failure,
    Ctrl-C or SIGTERM the partial folder is removed and ``out_dir`` is left as it was."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).absolute()
    check_output(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with sigterm_as_exit():
            summary = generate(tmp)
            _move_into_place(tmp, out_dir)
            return summary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def run_families(job, jobs: list, workers: int, n_subjects: int, desc: str) -> list[dict]:
    """``job(args) -> rows`` for every family job, in order, in ``workers`` processes; the rows
    (one per subject) concatenated.  The output does not depend on ``workers``."""
    from .. import progress

    subjects = []
    with progress.Progress(n_subjects, desc=desc, unit="subject") as bar:
        pool = None
        if workers == 1:
            it = map(job, jobs)
        else:
            import multiprocessing as mp

            # forkserver, not fork: forking a process that already runs torch/BLAS threads (pytest
            # workers, the Slicer subprocess) can deadlock the children.
            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers)
            it = pool.imap(job, jobs)
        try:
            for rows in it:
                subjects.extend(rows)
                bar.update(len(rows))
            if pool is not None:
                pool.close()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return subjects


def stored_reversed(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The series stored in reverse slice order: instance 1 is the last slice along the normal."""
    K = array.shape[0]
    aff = affine.copy()
    aff[:3, 3] = aff[:3, :3] @ [0, 0, K - 1] + aff[:3, 3]
    aff[:3, 2] = -aff[:3, 2]
    return array[::-1], aff


def truth_levels(levels: dict, source: str) -> dict:
    """The truth JSON's ``levels`` (``LevelSet.to_dict()``) from a renderer's per-level dict
    (centroid, corners, slice_range, mid_slice)."""
    from ..levels import Level, LevelSet

    return LevelSet({n: Level(n, d["centroid"], d["corners"], d["slice_range"], d["mid_slice"])
                     for n, d in levels.items()}, source=source).to_dict()


def cohort_summary(subjects: list[dict], extra: dict | None = None) -> dict:
    """Counts of a cohort from its subject rows (``scans``: per scan ``grades``, ``field_strength``);
    ``extra`` entries follow ``field_strength``."""
    hist, fs = Counter(), Counter()
    per_level = {d: Counter() for d in DISC_NAMES}
    n_scans = 0
    for s in subjects:
        for sc in s["scans"]:
            n_scans += 1
            fs[f"{sc['field_strength']:.1f}T"] += 1
            for d, g in zip(DISC_NAMES, sc["grades"]):
                key = "ungraded" if g is None else str(g)
                hist[key] += 1
                per_level[d][key] += 1
    fams = Counter(s["family_id"] for s in subjects)
    return {
        "subjects": len(subjects), "scans": n_scans,
        "with_followup": sum(1 for s in subjects if s["n_visits"] > 1),
        "three_visits": sum(1 for s in subjects if s["n_visits"] > 2),
        "twin_pairs": sum(1 for v in fams.values() if v == 2), "families": len(fams),
        "graded_subjects": sum(1 for s in subjects if s["graded"]),
        "field_strength": dict(sorted(fs.items())), **(extra or {}),
        "grade_histogram": {k: hist[k] for k in ("1", "2", "3", "4", "ungraded")},
        "grade_histogram_per_disc": {d: {k: c[k] for k in ("1", "2", "3", "4", "ungraded")} for d, c in per_level.items()},
    }
