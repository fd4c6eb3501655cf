"""Finding labelled scans for training and evaluating the detector.

A *case* is one sagittal series (a DICOM series, or a NIfTI/NRRD/MHA image) plus, when
available, its levels from any supported source, looked up in a levels folder by the
series' SeriesInstanceUID (or the image file's stem):

- ``<key>.json``         synthetic truth (``spinessl.synth.truth/1``) or a saved ``LevelSet``;
- ``<key>.mrk.json``     Slicer markups (points 'L4', 'L4-AS', ...);
- ``<key>_labels.nii.gz`` (or .nrrd/.mha) a label map, read with ``label_mapping``.

For a synthetic cohort (``spine-ssl synth OUT``) the levels folder is ``OUT/truth``.  Cases are
grouped by subject (truth ``subject_id``; otherwise the DICOM PatientID, kept in memory only)
so that splits keep every scan of a subject on one side.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, LevelsError, SpineSSLError
from ..io import IMAGE_SUFFIXES, Scan, is_image_file

LABELMAP_SUFFIXES = ("_labels.nii.gz", "_labels.nii", "_labels.nrrd", "_labels.mha")


@dataclass
class CaseRef:
    key: str  # SeriesInstanceUID, or the image file stem
    image: list[str] | str  # DICOM file list, or an image path
    group: str  # subject grouping key (in memory only; never written raw)
    levels_file: str | None = None
    levels_kind: str | None = None  # truth | levelset | markups | labelmap

    @property
    def where(self) -> str:
        return os.path.dirname(self.image[0]) if isinstance(self.image, list) else self.image


@dataclass
class Case:
    ref: CaseRef
    scan: Scan
    levels: object  # LevelSet or None


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def find_level_file(levels_dir, key: str) -> tuple[str | None, str | None]:
    if levels_dir is None:
        return None, None
    d = Path(levels_dir)
    p = d / f"{key}.mrk.json"
    if p.is_file():
        return str(p), "markups"
    p = d / f"{key}.json"
    if p.is_file():
        try:
            with open(p, encoding="utf-8") as f:
                schema = json.load(f).get("schema", "")
        except (OSError, ValueError, AttributeError) as e:
            raise LevelsError(f"not valid JSON ({type(e).__name__})", p) from e
        return str(p), ("truth" if str(schema).startswith("spinessl.synth.truth") else "levelset")
    for s in LABELMAP_SUFFIXES:
        p = d / f"{key}{s}"
        if p.is_file():
            return str(p), "labelmap"
    return None, None


def discover(root, levels_dir=None, errors: list | None = None) -> list[CaseRef]:
    """Every series / image under ``root`` (the levels folder itself is skipped), sorted by key.

    A DICOM file whose header cannot be read raises ``DicomError``, unless ``errors`` is given:
    then ``(file, error)`` is appended to it and the file is left out (batch commands go on)."""
    from ..io import iter_files, read_header

    root = Path(root)
    if not root.exists():
        raise InputError("folder not found", root)
    skip = Path(levels_dir).resolve() if levels_dir is not None else None
    series: dict[str, list] = {}
    images = []
    files = [root.as_posix()] if root.is_file() else iter_files(root)
    for f in files:
        if skip is not None and Path(f).resolve().is_relative_to(skip):
            continue
        if is_image_file(f):
            if not any(f.endswith(s) for s in LABELMAP_SUFFIXES):
                images.append(f)
            continue
        try:
            h = read_header(f)
        except SpineSSLError as e:
            if errors is None:
                raise
            errors.append((f, e))
            continue
        if h is not None:
            series.setdefault(h.series_uid, []).append(h)
    refs = []
    for uid, hs in series.items():
        lf, kind = find_level_file(levels_dir, uid)
        refs.append(CaseRef(uid, [h.path for h in hs], hs[0].patient_id or uid, lf, kind))
    for f in images:
        key = _stem(f)
        lf, kind = find_level_file(levels_dir, key)
        refs.append(CaseRef(key, f, key, lf, kind))
    if lf_groups := _truth_groups(refs):
        for r in refs:
            r.group = lf_groups.get(r.key, r.group)
    return sorted(refs, key=lambda r: r.key)


def _truth_groups(refs: list[CaseRef]) -> dict[str, str]:
    out = {}
    for r in refs:
        if r.levels_kind == "truth":
            with open(r.levels_file, encoding="utf-8") as f:
                sid = json.load(f).get("subject_id")
            if sid is not None:
                out[r.key] = f"subject:{sid}"
    return out


def load_scan(ref: CaseRef) -> Scan:
    from ..io import read_dicom_series, read_scan

    if isinstance(ref.image, list):
        return read_dicom_series(ref.image)
    return read_scan(ref.image)


def load_levels(ref: CaseRef, scan: Scan, label_mapping: dict | None = None):
    from .. import levels as L

    if ref.levels_file is None:
        return None
    if ref.levels_kind == "truth":
        return L.from_truth_json(ref.levels_file)
    if ref.levels_kind == "markups":
        return L.from_markups(ref.levels_file)
    if ref.levels_kind == "labelmap":
        if label_mapping is None:
            raise LevelsError("a label map needs --label-mapping (e.g. 'spider' or a mapping file)",
                              ref.levels_file)
        return L.from_labelmap(ref.levels_file, scan, label_mapping)
    try:
        with open(ref.levels_file, encoding="utf-8") as f:
            return L.LevelSet.from_dict(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LevelsError(f"not a levels file ({type(e).__name__})", ref.levels_file) from e


def load_case(ref: CaseRef, label_mapping: dict | None = None) -> Case:
    scan = load_scan(ref)
    return Case(ref, scan, load_levels(ref, scan, label_mapping))


def split_groups(refs: list[CaseRef], val_fraction: float, test_fraction: float, seed: int
                 ) -> dict[str, list[CaseRef]]:
    """Deterministic subject-level split into train / val / test (each subject on one side).
    The order depends only on hashed group keys and the seed, not on file order."""
    groups = sorted({r.group for r in refs},
                    key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n = len(groups)
    n_test = int(round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = int(round(val_fraction * n)) if val_fraction > 0 else 0
    if test_fraction > 0 and n >= 3:
        n_test = max(n_test, 1)
    if val_fraction > 0 and n >= 3:
        n_val = max(n_val, 1)
    if n_test + n_val >= n:
        raise SpineSSLError(f"too few subjects ({n}) for a train/val/test split")
    test, val = set(groups[:n_test]), set(groups[n_test:n_test + n_val])
    out = {"train": [], "val": [], "test": []}
    for r in refs:
        out["test" if r.group in test else "val" if r.group in val else "train"].append(r)
    return out
