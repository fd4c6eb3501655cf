"""Test data for the grading tests: a cohort folder in the extraction contract of
docs/developer.md (volumes.csv + volumes/<scan_key>.npz) with grade-dependent disc appearance."""

import csv

import numpy as np


def write_contract_cohort(root, n_subjects=16, seed=0):
    """A cohort folder in the extraction contract (volumes.csv + volumes/<scan>.npz) whose disc
    appearance depends on the grade: the nucleus darkens and the disc thins as the grade rises."""
    rng = np.random.default_rng(seed)
    (root / "volumes").mkdir(parents=True)
    rows = []
    yy, xx = np.mgrid[0:112, 0:224]
    for s in range(n_subjects):
        n_scans = 1 if s % 3 else 2
        for t in range(n_scans):
            key = f"scan{s:02d}{t}"
            ivd = np.zeros((6, 9, 112, 224), np.float16)
            grades = rng.integers(1, 5, 6)
            for d in range(6):
                g = int(grades[d])
                half_h = 22 - 3 * g
                disc = (np.abs(yy - 56) < half_h) & (np.abs(xx - 112) < 80)
                nucleus = (np.abs(yy - 56) < half_h - 3) & (np.abs(xx - 112) < 40)
                img = np.full((112, 224), 0.5, np.float32)
                img[disc] = 0.3
                img[nucleus] = 1.2 - 0.25 * g
                img += rng.normal(0, 0.05, img.shape).astype(np.float32)
                ivd[d] = img[None]
                rows.append({"volume_id": f"{key}_IVD{d}", "scan_key": key, "subject_key": f"subj{s:02d}",
                             "family": f"fam{s:02d}", "timepoint": t, "interval_days": 0, "field_strength": 1.5,
                             "level": f"d{d}", "kind": "IVD", "grade": str(g) if d else "",
                             "file": f"volumes/{key}.npz", "index": d})
            np.savez_compressed(root / "volumes" / f"{key}.npz", ivd=ivd, ivd_present=np.ones(6, bool))
    with open(root / "volumes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
