"""Small cohorts in the extraction contract (volumes.csv + volumes/<scan>.npz) for the
pretraining tests: subjects with a 1.0 T baseline, some with 1.5 T follow-ups ~10 years later."""

import csv
import math

import numpy as np

from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib.data import VolumeRow

FIELDS = ["volume_id", "scan_key", "subject_key", "family", "timepoint", "interval_days", "field_strength",
          "level", "kind", "grade", "file", "index"]


def cohort_rows(n_subjects=100, frac_long=0.45, seed=0, three_visit_every=7, twins_every=5):
    """VolumeRows of a synthetic cohort (no files).  Subject i has a baseline (1.0 T); longitudinal
    subjects have a 1.5 T follow-up 8-12 years later (every ``three_visit_every``-th a second one);
    every ``twins_every``-th pair of consecutive subjects shares a family."""
    rng = np.random.default_rng(seed)
    rows = []
    n_long = int(round(frac_long * n_subjects))
    for s in range(n_subjects):
        subj = f"S{s:04d}"
        fam = f"F{s // 2:04d}" if (s // 2) % twins_every == 0 else subj
        visits = [(0, 0.0, 1.0)]
        if s < n_long:
            iv = float(rng.uniform(8, 12) * 365.25)
            visits.append((1, iv, 1.5))
            if s % three_visit_every == 0:
                visits.append((2, iv + float(rng.uniform(1, 2) * 365.25), 1.5))
        for tp, iv, fs in visits:
            scan = f"{subj}_{tp}"
            for li, lvl in enumerate(LEVEL_NAMES):
                rows.append(VolumeRow(f"{scan}_{lvl}", scan, subj, fam, tp, iv, fs, lvl,
                                      f"volumes/{scan}.npz", li))
    return rows


def write_cohort(root, rows, make_volume=None, seed=0):
    """Write volumes.csv (VB rows + matching IVD rows) and one npz per scan in the contract format.
    ``make_volume(row) -> (9, 224, 224)`` array; default: random."""
    rng = np.random.default_rng(seed)
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    by_scan = {}
    for r in rows:
        by_scan.setdefault(r.scan_key, []).append(r)
    out = []
    for scan, rs in by_scan.items():
        vb = np.zeros((7, 9, 224, 224), np.float16)
        present = np.zeros(7, bool)
        for r in rs:
            vol = make_volume(r) if make_volume else rng.random((9, 224, 224))
            vb[r.index] = vol
            present[r.index] = True
        np.savez_compressed(root / rs[0].file, vb=vb, vb_present=present,
                            vb_affine=np.tile(np.eye(4), (7, 1, 1)),
                            ivd=np.zeros((6, 9, 112, 224), np.float16), ivd_present=np.zeros(6, bool),
                            ivd_affine=np.tile(np.eye(4), (6, 1, 1)), levels=np.array(LEVEL_NAMES))
        for r in rs:
            out.append({"volume_id": r.volume_id, "scan_key": r.scan_key, "subject_key": r.subject_key,
                        "family": r.family, "timepoint": r.timepoint,
                        "interval_days": "" if math.isnan(r.interval_days) else r.interval_days,
                        "field_strength": "" if math.isnan(r.field_strength) else r.field_strength,
                        "level": r.level, "kind": "VB", "grade": "", "file": r.file, "index": r.index})
        out.append({"volume_id": f"{scan}_IVD0", "scan_key": scan, "subject_key": rs[0].subject_key,
                    "family": rs[0].family, "timepoint": rs[0].timepoint, "interval_days": "",
                    "field_strength": "", "level": "L4-L5", "kind": "IVD", "grade": "2",
                    "file": rs[0].file, "index": 4})
    with open(root / "volumes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(out)
    return root
