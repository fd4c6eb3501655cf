"""Calibration measurements of a synthetic cohort: can the paper's experiment fail or succeed?

Read back from the written DICOM (SimpleITK) and the truth JSON only, so the figures describe
what a user of the cohort sees:

- identity: ground-truth-centred VB crops (64 x 64 mm at 1 mm, 3 slices around the GT mid
  slice, axis-aligned with the image like a detector's box, centre jittered by
  ``crop_jitter_mm``) of baseline vs follow-up scans.  Positive pairs: the same subject's
  baseline and follow-up at the same level; negative pairs: baseline of one subject vs a
  follow-up of another subject (other family) at the same level, so both kinds of pair cross
  the same scanners (see docs/synthetic-cohort.md, "What a pair sampler must do").  AUC of
  raw-pixel L2 distance, of the difference of crop means, and of the L2 distance between
  z-scored hidden fingerprint vectors.
- grading: per disc, nucleus/VB intensity ratio (mean of a 12 x 4 mm box at the GT disc centre
  over the median of the two neighbouring VB centre boxes) and disc/VB height ratio (from the GT
  corners); a multinomial logistic regression trained on the discs of half the families,
  average class accuracy (balanced accuracy) on the other half, against the rater's grades.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import LEVEL_NAMES
from .anatomy import fingerprint_vector

CROP_MM, CROP_PX, CROP_SLICES = 64.0, 64, 3


def _read_series(folder: Path):
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    names = r.GetGDCMSeriesFileNames(str(folder))
    r.SetFileNames(names)
    img = r.Execute()
    return img, sitk.GetArrayFromImage(img).astype(np.float32)


def _index_of(img, lps) -> np.ndarray:
    return np.array(img.TransformPhysicalPointToContinuousIndex([float(v) for v in lps]))  # (i, j, k)


def _crop(img, arr, centre_lps, rng, jitter_mm) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    c = _index_of(img, centre_lps)
    sp = np.array(img.GetSpacing())
    c[:2] += rng.normal(0, jitter_mm, 2) / sp[:2]
    t = (np.arange(CROP_PX) - (CROP_PX - 1) / 2) * (CROP_MM / CROP_PX)
    jj, ii = np.meshgrid(c[1] + t / sp[1], c[0] + t / sp[0], indexing="ij")
    k0 = int(round(c[2]))
    out = []
    for dk in range(-(CROP_SLICES // 2), CROP_SLICES // 2 + 1):
        kk = np.full_like(ii, np.clip(k0 + dk, 0, arr.shape[0] - 1))
        out.append(map_coordinates(arr, [kk, jj, ii], order=1, mode="nearest"))
    return np.stack(out)


def _box_mean(img, arr, centre_lps, half_ap_mm, half_si_mm, stat=np.mean) -> float:
    c = _index_of(img, centre_lps)
    sp = np.array(img.GetSpacing())
    k = int(np.clip(round(c[2]), 0, arr.shape[0] - 1))
    i0, i1 = int(round(c[0] - half_ap_mm / sp[0])), int(round(c[0] + half_ap_mm / sp[0])) + 1
    j0, j1 = int(round(c[1] - half_si_mm / sp[1])), int(round(c[1] + half_si_mm / sp[1])) + 1
    patch = arr[k, max(j0, 0):max(j1, 1), max(i0, 0):max(i1, 1)]
    return float(stat(patch))


def load_scans(root) -> list[dict]:
    root = Path(root)
    return [json.loads(p.read_text()) for p in sorted((root / "truth").glob("*.json"))]


def measure(root, jitter_mm: float | None = None, seed: int = 0, max_neg_per_pos: int = 3) -> dict:
    """All calibration figures of the cohort in ``root`` (see module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    root = Path(root)
    cohort = json.loads((root / "cohort.json").read_text())
    if jitter_mm is None:
        jitter_mm = float(cohort["config"].get("crop_jitter_mm", 2.5))
    rng = np.random.default_rng(seed)
    truths = load_scans(root)
    crops, fps, disc_rows = {}, {}, []
    for t in truths:
        img, arr = _read_series(root / t["dicom_dir"])
        levels = {l["name"]: l for l in t["levels"]["levels"]}
        key = (t["subject_id"], t["visit"])
        for name in LEVEL_NAMES:
            crops[key + (name,)] = _crop(img, arr, levels[name]["centroid_lps"], rng, jitter_mm)
            fps[key + (name,)] = fingerprint_vector(t["fingerprint"], name)
        vb_med = {n: _box_mean(img, arr, levels[n]["centroid_lps"], 8.0, 6.0, np.median) for n in LEVEL_NAMES}
        vb_h = {n: np.mean([np.linalg.norm(np.subtract(levels[n]["corners_lps"][0], levels[n]["corners_lps"][3])),
                            np.linalg.norm(np.subtract(levels[n]["corners_lps"][1], levels[n]["corners_lps"][2]))])
                for n in LEVEL_NAMES}
        for i, d in enumerate(t["discs"]):
            if d["grade"] is None:
                continue
            up, lo = LEVEL_NAMES[i], LEVEL_NAMES[i + 1]
            cu, cl = levels[up]["corners_lps"], levels[lo]["corners_lps"]
            disc_h = np.mean([np.linalg.norm(np.subtract(cu[3], cl[0])), np.linalg.norm(np.subtract(cu[2], cl[1]))])
            nuc = _box_mean(img, arr, d["centroid_lps"], 6.0, 2.0)
            ref = 0.5 * (vb_med[up] + vb_med[lo])
            disc_rows.append((t["family_id"], d["grade"], nuc / max(ref, 1e-6), disc_h / vb_h[up]))
    fam_of = {t["subject_id"]: t["family_id"] for t in truths}
    fu = {}
    for t in truths:
        if t["visit"] > 0:
            fu.setdefault(t["subject_id"], []).append(t["visit"])
    subjects = sorted(fu)
    pos, neg = [], []
    for s in subjects:
        others = [o for o in subjects if fam_of[o] != fam_of[s]]
        for name in LEVEL_NAMES:
            pos.append(((s, 0, name), (s, fu[s][0], name)))
            for o in rng.permutation(others)[:max_neg_per_pos]:
                neg.append(((s, 0, name), (str(o), fu[str(o)][0], name)))
    fp_all = np.stack(list(fps.values()))
    mu, sd = fp_all.mean(0), fp_all.std(0) + 1e-9

    def auc(dist):
        y = [1] * len(pos) + [0] * len(neg)
        score = [-dist(a, b) for a, b in pos + neg]
        return float(roc_auc_score(y, score))

    res = {
        "scans": len(truths), "subjects_with_followup": len(subjects), "pairs_same": len(pos), "pairs_different": len(neg),
        "crop_jitter_mm": jitter_mm,
        "auc_raw_l2": auc(lambda a, b: float(np.linalg.norm(crops[a] - crops[b]))),
        "auc_mean_intensity": auc(lambda a, b: abs(float(crops[a].mean() - crops[b].mean()))),
        "auc_median_normalised_l2": auc(lambda a, b: float(np.linalg.norm(
            crops[a] / np.median(crops[a]) - crops[b] / np.median(crops[b])))),
        "auc_fingerprint": auc(lambda a, b: float(np.linalg.norm((fps[a] - fps[b]) / sd))),
    }
    fams = sorted({r[0] for r in disc_rows})
    test_f = set(np.random.default_rng(seed + 1).permutation(fams)[: len(fams) // 2].tolist())
    X = np.array([[r[2], r[3]] for r in disc_rows])
    y = np.array([r[1] for r in disc_rows])
    te = np.array([r[0] in test_f for r in disc_rows])
    clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(X[~te], y[~te])
    res["grading_discs_train"], res["grading_discs_test"] = int((~te).sum()), int(te.sum())
    res["grading_lr_balanced_accuracy"] = float(balanced_accuracy_score(y[te], clf.predict(X[te])))
    res["grade_counts"] = {str(g): int((y == g).sum()) for g in (1, 2, 3, 4)}
    return res


TARGETS = {"auc_raw_l2": ("<=", 0.70), "auc_mean_intensity": ("<=", 0.65), "auc_fingerprint": (">=", 0.95),
           "grading_lr_balanced_accuracy": ("<=", 0.70)}


def check(res: dict) -> dict[str, bool]:
    return {k: (res[k] <= v if op == "<=" else res[k] >= v) for k, (op, v) in TARGETS.items()}
