"""Calibration of a held-out cohort: is identity there but not in the raw pixels, and is grading
possible but not trivial?  Read back from the written DICOM (``SpineSSLLib.io``) and the truth
JSON only.

- identity: sagittal crops 64 x 64 mm at 1 mm in the patient frame (anterior->posterior,
  superior->inferior, whatever the image axes), 3 planes 4 mm apart, centred on the true VB
  centroid jittered by 2.5 mm, of a subject's baseline and first follow-up (positives) and of a
  baseline against another family's follow-up at the same level (negatives, 3 per positive).
  AUC of L2 distances: raw intensities, each crop z-scored, and z-scored hidden fingerprint
  vectors (this generator's shape, marrow and deformation parameters).
- pipeline identity (``pipeline_identity``): the same pairs on an extracted cohort's VB volumes
  (``spine-ssl extract`` output), z-scored and 4x downsampled in-plane -- what a network sees.
- grading: per visible disc, nucleus/VB intensity ratio (a 12 x 4 mm box at the disc centroid
  over the median of 16 x 12 mm boxes at the neighbouring VB centroids) and disc/VB height ratio
  (from the truth corners); multinomial logistic regression trained on half of the families,
  average class accuracy on the other half against the rater's grades.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import LEVEL_NAMES

TARGETS = {"auc_raw_l2": ("<=", 0.75), "auc_zscored_l2": ("<=", 0.80), "auc_fingerprint": (">=", 0.95),
           "grading_lr_balanced_accuracy": ("<=", 0.75)}
_POST, _INF = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
FP_KEYS = ("height", "depth", "width", "wedge", "conc_sup", "conc_inf", "conc_centre", "corner", "p_xs",
           "post_conc", "marrow")


def fingerprint_vector(fp: dict, level: str) -> np.ndarray:
    d = fp["levels"][level]
    return np.array([d[k] for k in FP_KEYS] + list(d["rbf"]), dtype=float)


def _sample(scan, centre, half_ap, half_si, step=1.0, lateral=(0.0,)):
    """Values on a patient-frame sagittal grid around ``centre`` (LPS), trilinear."""
    from scipy.ndimage import map_coordinates

    t_ap = np.arange(-half_ap, half_ap + 1e-6, step)
    t_si = np.arange(-half_si, half_si + 1e-6, step)
    out = []
    for dx in lateral:
        pts = (np.asarray(centre)[None, None] + dx * np.array([1.0, 0, 0])
               + t_si[:, None, None] * _INF + t_ap[None, :, None] * _POST)
        ijk = scan.lps_to_index(pts.reshape(-1, 3))
        v = map_coordinates(scan.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest")
        out.append(v.reshape(len(t_si), len(t_ap)))
    return np.stack(out)


def load_truths(root) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(root) / "truth").glob("*.json"))]


def _pairs(truths, rng, max_neg=3):
    fam = {t["subject_id"]: t["family_id"] for t in truths}
    lv = {(t["subject_id"], t["visit"]): {l["name"] for l in t["levels"]["levels"]} for t in truths}
    fu = sorted({t["subject_id"] for t in truths if t["visit"] == 1})
    pos, neg = [], []
    for s in fu:
        others = [o for o in fu if fam[o] != fam[s]]
        for name in LEVEL_NAMES:
            if name not in lv[(s, 0)] or name not in lv[(s, 1)]:
                continue
            pos.append(((s, 0, name), (s, 1, name)))
            cand = [o for o in rng.permutation(others) if name in lv[(str(o), 1)]]
            neg.extend(((s, 0, name), (str(o), 1, name)) for o in cand[:max_neg])
    return pos, neg


def _auc(pos, neg, dist) -> float:
    from sklearn.metrics import roc_auc_score

    y = [1] * len(pos) + [0] * len(neg)
    return float(roc_auc_score(y, [-dist(a, b) for a, b in pos + neg]))


def measure(root, seed: int = 0, jitter_mm: float = 2.5) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from ..io import read_dicom_series

    root = Path(root)
    rng = np.random.default_rng(seed)
    truths = load_truths(root)
    crops, fps, rows = {}, {}, []
    for t in truths:
        scan = read_dicom_series(root / t["dicom_dir"], max_oblique_deg=None)
        levels = {l["name"]: l for l in t["levels"]["levels"]}
        key = (t["subject_id"], t["visit"])
        for name, l in levels.items():
            c = np.asarray(l["centroid_lps"]) + np.array([0, *rng.normal(0, jitter_mm, 2)])
            crops[key + (name,)] = _sample(scan, c, 32, 32, 1.0, (-4.0, 0.0, 4.0))
            fps[key + (name,)] = fingerprint_vector(t["fingerprint"], name)
        vb_med = {n: float(np.median(_sample(scan, l["centroid_lps"], 8, 6))) for n, l in levels.items()}
        vb_h = {n: np.mean([np.linalg.norm(np.subtract(l["corners_lps"][0], l["corners_lps"][3])),
                            np.linalg.norm(np.subtract(l["corners_lps"][1], l["corners_lps"][2]))])
                for n, l in levels.items()}
        for d in t["discs"]:
            up, lo = d["name"].split("-")
            if d["grade"] is None or up not in levels or lo not in levels:
                continue
            cu, cl = levels[up]["corners_lps"], levels[lo]["corners_lps"]
            disc_h = np.mean([np.linalg.norm(np.subtract(cu[3], cl[0])), np.linalg.norm(np.subtract(cu[2], cl[1]))])
            nuc = float(_sample(scan, d["centroid_lps"], 6, 2).mean())
            ref = 0.5 * (vb_med[up] + vb_med[lo])
            rows.append((t["family_id"], d["grade"], nuc / max(ref, 1e-6), disc_h / vb_h[up]))
    pos, neg = _pairs(truths, rng)
    fp_all = np.stack(list(fps.values()))
    sd = fp_all.std(0) + 1e-9
    z = lambda a: (a - a.mean()) / (a.std() + 1e-6)
    res = {"scans": len(truths), "pairs_same": len(pos), "pairs_different": len(neg), "crop_jitter_mm": jitter_mm}
    if pos and neg:
        res["auc_raw_l2"] = _auc(pos, neg, lambda a, b: float(np.linalg.norm(crops[a] - crops[b])))
        res["auc_zscored_l2"] = _auc(pos, neg, lambda a, b: float(np.linalg.norm(z(crops[a]) - z(crops[b]))))
        res["auc_mean_intensity"] = _auc(pos, neg, lambda a, b: abs(float(crops[a].mean() - crops[b].mean())))
        res["auc_fingerprint"] = _auc(pos, neg, lambda a, b: float(np.linalg.norm((fps[a] - fps[b]) / sd)))
    fams = sorted({r[0] for r in rows})
    test_f = set(np.random.default_rng(seed + 1).permutation(fams)[: len(fams) // 2].tolist())
    X = np.array([[r[2], r[3]] for r in rows])
    y = np.array([r[1] for r in rows])
    te = np.array([r[0] in test_f for r in rows])
    if len(set(y[~te])) > 1 and te.any():
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(X[~te], y[~te])
        res["grading_discs_train"], res["grading_discs_test"] = int((~te).sum()), int(te.sum())
        res["grading_lr_balanced_accuracy"] = float(balanced_accuracy_score(y[te], clf.predict(X[te])))
    res["grade_counts"] = {str(g): int((y == g).sum()) for g in (1, 2, 3, 4)}
    return res


def pipeline_identity(extracted, seed: int = 0, max_neg: int = 3) -> dict:
    """Same/different AUC of z-scored, 4x downsampled extracted VB volumes (``spine-ssl extract``
    output folder ``extracted``): baseline vs first follow-up of a subject, negatives from other
    families at the same level."""
    import csv

    extracted = Path(extracted)
    with open(extracted / "volumes.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "VB" and r["timepoint"] in ("0", "1")]
    from ..extract.files import read_arrays

    cache: dict[str, np.ndarray] = {}
    vols = {}
    for r in rows:
        if r["file"] not in cache:
            cache[r["file"]] = read_arrays(extracted / r["file"], ["vb"])["vb"]
        v = cache[r["file"]][int(r["index"])].astype(np.float32)
        v = v[:, ::4, ::4]
        vols[(r["subject_key"], int(r["timepoint"]), r["level"])] = (v - v.mean()) / (v.std() + 1e-6)
    fam = {r["subject_key"]: r["family"] or r["subject_key"] for r in rows}
    fu = sorted({k[0] for k in vols if k[1] == 1})
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for s in fu:
        others = [o for o in fu if fam[o] != fam[s]]
        for name in LEVEL_NAMES:
            if (s, 0, name) not in vols or (s, 1, name) not in vols:
                continue
            pos.append(((s, 0, name), (s, 1, name)))
            cand = [o for o in rng.permutation(others) if (str(o), 1, name) in vols]
            neg.extend(((s, 0, name), (str(o), 1, name)) for o in cand[:max_neg])
    res = {"pairs_same": len(pos), "pairs_different": len(neg)}
    if pos and neg:
        res["auc_pipeline_zscored_l2"] = _auc(pos, neg, lambda a, b: float(np.linalg.norm(vols[a] - vols[b])))
    return res


def check(res: dict) -> dict[str, bool]:
    return {k: (res[k] <= v if op == "<=" else res[k] >= v) for k, (op, v) in TARGETS.items() if k in res}
