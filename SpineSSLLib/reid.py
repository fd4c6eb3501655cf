"""Re-identification audit (``spine-ssl reid-audit``): how often a later scan is matched to the
right person by its vertebrae.

Closed-set identification across visits, the way an attacker with a reference archive would
use a network: the *gallery* holds each subject's earliest scan (every subject of the split,
also those with a single scan, as distractors), the *probes* are all later scans of the
subjects.  Each probe's vertebral bodies are compared with every gallery subject's:

- per level: L2 distance between the two scans' features at that level;
- whole spine: the mean over the levels both scans have of the per-level distance divided by
  that level's median distance (so every level weighs the same).

The gallery subjects are ranked by distance; reported are the top-1 and top-5 identification
rates, the mean reciprocal rank (MRR) and the cumulative match characteristic (CMC: rate
within rank k), with chance (k/M for a gallery of M) and a *shuffled-identity control*: the
same distances with the gallery's identities permuted (mean of ``shuffles`` permutations),
which must score at chance — a check that nothing but identity drives the figures.

Feature sets (each on the same split): ``checkpoint`` (pair-space embeddings of a pretrained
network, via ``evaluate.embed``), ``raw_pixels`` (VB volumes block-averaged to 9 x 28 x 28),
``hand_features`` (VB width in mm, height/width and depth/width from intensity edges, mean and
standard deviation of the central box; z-scored per level) and, on a synthetic cohort with its
truth folder, ``fingerprint`` (the generator's hidden per-vertebra identity parameters: what is
identifiable by construction).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import LEVEL_NAMES

SCHEMA = "spinessl.reid_audit/1"
METHOD_TITLES = {"checkpoint": "pretrained network (embedding)", "raw_pixels": "raw pixels (9x28x28)",
                 "hand_features": "hand features (5 per VB)", "fingerprint": "synthetic fingerprint (truth)"}


@dataclass
class ReidConfig:
    split: str = "all"  # all | train | val | test (needs a splits file)
    baselines: tuple = ("raw_pixels", "hand_features")
    shuffles: int = 200  # permutations of the gallery identities for the control
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"


@dataclass
class ReidResult:
    report: dict
    features: dict = field(default_factory=dict)  # method -> {level -> (scan keys, array)}


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------

def _widths(cohort: Path) -> dict[str, float]:
    with open(cohort / "volumes.csv", newline="", encoding="utf-8") as f:
        return {r["volume_id"]: float(r.get("width_mm") or "nan") for r in csv.DictReader(f)}


def _cache_arrays(cohort: Path, rows, hw, progress: bool) -> np.ndarray:
    from .data import VolumeCache

    cache = VolumeCache(cohort, rows, hw, progress=progress)
    return np.stack([cache.volume(r) for r in rows]) if rows else np.zeros((0, 9, *hw), np.float32)


def raw_pixel_features(cohort, rows, progress: bool = False) -> np.ndarray:
    """VB volumes at 9 x 28 x 28 (the volume cache's area averaging), flattened."""
    a = _cache_arrays(Path(cohort), rows, (28, 28), progress)
    return a.reshape(len(rows), -1).astype(np.float64)


def hand_features(cohort, rows, progress: bool = False) -> np.ndarray:
    """Five hand features per VB volume: width (mm, from the manifest), height/width and
    depth/width (between the strongest intensity edges of the central column/row profiles of the
    middle 3 slices; the volume spans a fixed multiple of the VB width), mean and standard
    deviation of the central box (middle 3 slices, middle 30 % of rows and columns)."""
    cohort = Path(cohort)
    widths = _widths(cohort)
    out = np.zeros((len(rows), 5))
    for i0 in range(0, len(rows), 64):  # bounded memory: 64 full-size volumes at a time
        part = rows[i0:i0 + 64]
        v = _cache_arrays(cohort, part, (224, 224), progress and i0 == 0)
        n, k, h, w = v.shape
        mid = slice(k // 2 - 1, k // 2 + 2)
        rs, cs = slice(int(h * 0.35), int(h * 0.65)), slice(int(w * 0.35), int(w * 0.65))
        box = v[:, mid, rs, cs]
        col_prof = v[:, mid, :, cs].mean(axis=(1, 3))  # (n, h): superior -> inferior
        row_prof = v[:, mid, rs, :].mean(axis=(1, 2))  # (n, w): anterior -> posterior

        def extent(p):
            g = np.abs(np.diff(p, axis=1))
            c = p.shape[1] // 2
            lo = np.argmax(g[:, 4:c - 1], axis=1) + 4
            hi = np.argmax(g[:, c:p.shape[1] - 4], axis=1) + c
            return (hi - lo) / p.shape[1]

        out[i0:i0 + n] = np.stack([[widths.get(r.volume_id, np.nan) for r in part], extent(col_prof),
                                   extent(row_prof), box.mean(axis=(1, 2, 3)), box.std(axis=(1, 2, 3))], axis=1)
    return out


def fingerprint_features(cohort, rows, truth_dir) -> np.ndarray:
    """The synthetic generator's hidden identity vector of each VB (truth JSON ``fingerprint``),
    matched to the scans by their salted series key."""
    from .errors import ManifestError
    from .privacy import load_or_create_salt, salted_key
    from .synth.anatomy import fingerprint_vector

    salt = load_or_create_salt(cohort)
    by_key = {}
    for p in sorted(Path(truth_dir).glob("*.json")):
        try:
            t = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(t, dict) and "fingerprint" in t and "series_instance_uid" in t:
            by_key[salted_key(salt, "series:" + t["series_instance_uid"])] = t["fingerprint"]
    missing = sorted({r.scan_key for r in rows} - set(by_key))
    if missing:
        raise ManifestError(f"no truth JSON with a fingerprint for {len(missing)} scan(s) (e.g. {missing[0]}): "
                            "--truth must be the synthetic cohort's truth folder", truth_dir)
    return np.stack([fingerprint_vector(by_key[r.scan_key], r.level) for r in rows])


def load_network(checkpoint, device: str = "cpu"):
    """A pretraining checkpoint (``pretrain.load_pretrained``): (PretrainedModel, folder, meta)."""
    from .pretrain import load_pretrained

    pm = load_pretrained(checkpoint, device)
    return pm, pm.path, pm.meta


def network_features(pm, cohort, rows, device, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Embeddings in the space the pretraining's pair loss shaped (L2-normalised when it was)."""
    from .data import VolumeCache, VolumeDataset
    from .evaluate import embed
    from .models import unwrap

    cache = VolumeCache(cohort, rows, unwrap(pm.model).net_hw, progress=progress)
    emb, _ = embed(pm.model, VolumeDataset(rows, cache), device, batch_size, progress=progress,
                   normalize=pm.normalize)
    return emb.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Gallery (earliest scan per subject) and probes (later scans) of a set of VB rows."""

    subjects: list[str]  # gallery order
    gallery_scan: dict[str, str]  # subject -> scan_key
    probes: list[tuple[str, str]]  # (scan_key, true subject)


def gallery_split(rows) -> Split:
    scans: dict[str, dict[str, tuple]] = {}
    for r in rows:
        iv = r.interval_days if not math.isnan(r.interval_days) else float(r.timepoint) * 1e6
        scans.setdefault(r.subject_key, {})[r.scan_key] = (r.timepoint, iv, r.scan_key)
    subjects = sorted(scans)
    gallery, probes = {}, []
    for s in subjects:
        order = sorted(scans[s].values())
        gallery[s] = order[0][2]
        probes += [(k, s) for _, _, k in order[1:]]
    return Split(subjects, gallery, probes)


def _ranks(dist: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of the true gallery column in each row; a tie shares the mean position."""
    d_true = dist[np.arange(len(dist)), truth][:, None]
    finite = np.isfinite(dist)
    better = ((dist < d_true) & finite).sum(1)
    ties = ((dist == d_true) & finite).sum(1) - 1
    return 1 + better + ties / 2.0


def _scores(ranks: np.ndarray, m: int) -> dict:
    if len(ranks) == 0:
        return {"n_probes": 0, "top1": None, "top5": None, "mrr": None, "cmc": []}
    cmc = [float((ranks <= k).mean()) for k in range(1, m + 1)]
    return {"n_probes": int(len(ranks)), "top1": float((ranks <= 1).mean()), "top5": float((ranks <= 5).mean()),
            "mrr": float((1.0 / ranks).mean()), "cmc": cmc}


def chance(m: int) -> dict:
    return {"top1": 1.0 / m, "top5": min(5, m) / m, "mrr": float(sum(1.0 / k for k in range(1, m + 1)) / m)}


def identify(features: dict[str, np.ndarray], scan_of: list[str], level_of: list[str], split: Split,
             shuffles: int = 200, seed: int = 0, zscore: bool = False) -> dict:
    """Identification scores of one feature set (rows of ``features`` match ``scan_of``/``level_of``)."""
    X = np.asarray(features, dtype=np.float64)
    m = len(split.subjects)
    col = {s: i for i, s in enumerate(split.subjects)}
    at = {(k, lv): i for i, (k, lv) in enumerate(zip(scan_of, level_of))}
    probes = split.probes
    truth = np.array([col[s] for _, s in probes], dtype=np.int64)
    per_level, dists = {}, {}
    for lv in LEVEL_NAMES:
        D = np.full((len(probes), m), np.inf)
        idx = [i for i in range(len(X)) if level_of[i] == lv]
        if not idx:
            continue
        Z = X.copy()
        if zscore:
            mu, sd = X[idx].mean(0), X[idx].std(0)
            Z = (X - mu) / np.where(sd > 1e-12, sd, 1.0)
            Z = np.nan_to_num(Z)
        g_rows = [at.get((split.gallery_scan[s], lv)) for s in split.subjects]
        g_ok = np.array([g is not None for g in g_rows])
        G = np.stack([Z[g] if g is not None else np.zeros(Z.shape[1]) for g in g_rows])
        for pi, (k, _) in enumerate(probes):
            i = at.get((k, lv))
            if i is not None:
                D[pi] = np.where(g_ok, np.linalg.norm(G - Z[i], axis=1), np.inf)
        dists[lv] = D
        use = np.isfinite(D[np.arange(len(probes)), truth])
        per_level[lv] = _scores(_ranks(D[use], truth[use]), m) if use.any() else _scores(np.zeros(0), m)
    # whole spine: mean over shared levels of distance / level median
    num, cnt = np.zeros((len(probes), m)), np.zeros((len(probes), m))
    for D in dists.values():
        ok = np.isfinite(D)
        med = float(np.median(D[ok])) if ok.any() else 1.0
        num += np.where(ok, D / (med if med > 0 else 1.0), 0.0)
        cnt += ok
    W = np.where(cnt > 0, num / np.maximum(cnt, 1), np.inf)
    use = np.isfinite(W[np.arange(len(probes)), truth])
    whole = _scores(_ranks(W[use], truth[use]), m)
    rng = np.random.default_rng(seed)
    sh = []
    for _ in range(shuffles if use.any() else 0):
        perm = rng.permutation(m)  # gallery column j now carries the identity of subject perm[j]
        inv = np.argsort(perm)
        sh.append(_scores(_ranks(W[use], inv[truth[use]]), m))
    shuffled = {k: float(np.mean([s[k] for s in sh])) if sh else None for k in ("top1", "top5", "mrr")}
    shuffled["n_permutations"] = len(sh)
    return {"whole_spine": whole, "per_level": per_level, "shuffled": shuffled}


# --------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------

def risk_statement(name: str, s: dict, m: int) -> str:
    top1, n = s["top1"], s["n_probes"]
    if not n:
        return "No subject of this split has a later scan: nothing could be measured."
    hits = int(round(top1 * n))
    if hits == n:
        matched = f"all {n} later scans are matched"
    elif hits:
        matched = f"1 in {n / hits:.1f} later scans ({hits} of {n}, {100 * top1:.0f} %) is matched"
    else:
        matched = f"none of the {n} later scans is matched"
    return (f"With {name}, {matched} to the right "
            f"person among a gallery of {m} people; the right person is within the 5 closest for "
            f"{100 * s['top5']:.0f} % (chance: 1 in {m}, and {100 * min(5, m) / m:.0f} % for the 5 closest). "
            f"Identification gets harder as the gallery grows: these figures hold for {m} people, not for "
            "a hospital archive, but any rate well above chance means the features carry identity.")


def run_audit(cohort, out_dir=None, checkpoint=None, config: ReidConfig | None = None, splits_file=None,
              truth_dir=None, progress: bool = False) -> ReidResult:
    """The re-identification audit of a cohort's VB volumes (see the module docstring)."""

    from . import data as D
    from .errors import ConfigError, ManifestError

    cfg = config or ReidConfig()
    cohort = Path(cohort)
    rows = D.read_vb_table(cohort)
    net = meta = ckpt_path = None
    if checkpoint is not None:
        net, ckpt_path, meta = load_network(checkpoint)
    if cfg.split != "all":
        sp = Path(splits_file) if splits_file else None
        if sp is None and ckpt_path is not None:
            sp = ckpt_path.parent / ((meta.get("config") or {}).get("splits") or "splits.json")
        if sp is None or not sp.is_file():
            raise ManifestError(f"splits file for --split {cfg.split} not found (pass --splits)", sp or cohort)
        rows = D.rows_in(rows, D.read_splits(sp).subjects[cfg.split])
    if not rows:
        raise ConfigError(f"no VB volumes of the cohort are in the {cfg.split} split")
    split = gallery_split(rows)
    if not split.probes:
        raise ConfigError(f"no subject of the {cfg.split} split has a later scan: nothing to identify")
    # the rows used: every VB of gallery and probe scans
    used = set(split.gallery_scan.values()) | {k for k, _ in split.probes}
    rows = [r for r in rows if r.scan_key in used]
    scan_of, level_of = [r.scan_key for r in rows], [r.level for r in rows]
    methods: dict[str, tuple[np.ndarray, bool]] = {}
    if net is not None:
        from .device import select_device

        dev = select_device(cfg.device)
        net.model.to(dev)
        methods["checkpoint"] = (network_features(net, cohort, rows, dev, cfg.batch_size, progress), False)
    for b in cfg.baselines:
        if b == "raw_pixels":
            methods[b] = (raw_pixel_features(cohort, rows, progress), False)
        elif b == "hand_features":
            methods[b] = (hand_features(cohort, rows, progress), True)
        else:
            raise ConfigError(f"unknown baseline {b!r} (raw_pixels, hand_features)")
    if truth_dir is not None:
        methods["fingerprint"] = (fingerprint_features(cohort, rows, truth_dir), True)
    m = len(split.subjects)
    results = {name: identify(X, scan_of, level_of, split, cfg.shuffles, cfg.seed, zscore=z)
               for name, (X, z) in methods.items()}
    lead = "checkpoint" if "checkpoint" in results else max(results, key=lambda k: results[k]["whole_spine"]["top1"] or 0)
    subjects_fu = len({s for _, s in split.probes})
    report = {
        "schema": SCHEMA, "split": cfg.split, "gallery_size": m, "n_probes": len(split.probes),
        "n_subjects_with_later_scans": subjects_fu, "n_vb_volumes": len(rows),
        "chance": chance(m), "methods": results,
        "checkpoint": {"epoch": meta.get("epoch"), "metrics": meta.get("metrics")} if meta else None,
        "risk_statement": risk_statement("this model" if lead == "checkpoint" else METHOD_TITLES.get(lead, lead),
                                         results[lead]["whole_spine"], m),
        "risk_statement_method": lead,
        "protocol": "gallery = each subject's earliest scan (all subjects of the split); probes = later scans; "
                    "whole spine = mean over shared levels of the per-level L2 distance / that level's median; "
                    f"shuffled = gallery identities permuted ({cfg.shuffles} permutations)",
    }
    if out_dir is not None:
        write_report(out_dir, report)
    return ReidResult(report, {k: v[0] for k, v in methods.items()})


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_report(out_dir, report: dict) -> None:
    from .atomic import atomic_path, write_json, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "reid_report.json", report)
    m, ch = report["gallery_size"], report["chance"]
    L = ["# Re-identification audit", "",
         f"Split `{report['split']}`: gallery of **{m} people** (each one's earliest scan), "
         f"{report['n_probes']} later scans of {report['n_subjects_with_later_scans']} people as probes.", "",
         f"> {report['risk_statement']}", "",
         "| features | top-1 | top-5 | MRR | shuffled identities: top-1 / MRR |", "|---|---:|---:|---:|---:|"]
    for name, r in report["methods"].items():
        w, s = r["whole_spine"], r["shuffled"]
        L.append(f"| {METHOD_TITLES.get(name, name)} | {_pct(w['top1'])} | {_pct(w['top5'])} | {_f3(w['mrr'])} | "
                 f"{_pct(s['top1'])} / {_f3(s['mrr'])} |")
    L.append(f"| chance | {_pct(ch['top1'])} | {_pct(ch['top5'])} | {ch['mrr']:.3f} | |")
    L += ["", "Top-1 per level (whole spine above):", "",
          "| features | " + " | ".join(LEVEL_NAMES) + " |", "|---|" + "---:|" * len(LEVEL_NAMES)]
    for name, r in report["methods"].items():
        L.append(f"| {METHOD_TITLES.get(name, name)} | " +
                 " | ".join(_pct(r["per_level"].get(lv, {}).get("top1")) for lv in LEVEL_NAMES) + " |")
    L += ["", "![CMC curve](cmc.png)", "", f"Protocol: {report['protocol']}.", "",
          "Treat a network (and any stored embeddings) that scores well above chance here as personal data "
          "(docs/privacy.md)."]
    write_text(out / "reid_report.md", "\n".join(L) + "\n")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    ks = np.arange(1, m + 1)
    styles = [("-", 2.6), ("--", 2.0), ("-.", 1.6), (":", 1.4)]  # curves at 100 % stay visible
    for n, (name, r) in enumerate(report["methods"].items()):
        if r["whole_spine"]["cmc"]:
            ls, lw = styles[n % len(styles)]
            ax.step(ks, r["whole_spine"]["cmc"], where="post", ls=ls, lw=lw, label=METHOD_TITLES.get(name, name))
    ax.plot(ks, ks / m, color="0.5", ls="--", lw=0.9, label="chance")
    ax.set_xlabel(f"rank (gallery of {m} people)")
    ax.set_ylabel("later scans matched within rank")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(1, max(m, 2))
    ax.set_title("Cumulative match characteristic, whole spine", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(out / "cmc.png", suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
