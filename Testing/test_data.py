"""Splits, pair sampler invariants (incl. the acquisition shortcut), volume cache, augmentation."""

from collections import Counter

import numpy as np
import pytest
import torch

from pretrain_helpers import cohort_rows, write_cohort
from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib import data as D
from SpineSSLLib.errors import ConfigError, ManifestError

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- splits

def test_splits_by_subject_families_together_deterministic(tmp_path):
    rows = cohort_rows(200)
    s1, s2 = D.make_splits(rows, seed=3), D.make_splits(rows, seed=3)
    assert s1.subjects == s2.subjects
    assert D.make_splits(rows, seed=4).subjects != s1.subjects
    of = s1.split_of()
    assert len(of) == 200 and sum(len(v) for v in s1.subjects.values()) == 200   # disjoint, complete
    fam = {}
    for r in rows:
        fam.setdefault(r.family, set()).add(of[r.subject_key])
    assert all(len(v) == 1 for v in fam.values())                                  # twins together
    counts = {k: len(v) for k, v in s1.subjects.items()}
    assert abs(counts["train"] - 160) <= 2 and abs(counts["val"] - 20) <= 2 and abs(counts["test"] - 20) <= 2
    longi = {r.subject_key for r in rows if r.timepoint > 0}
    lc = Counter(of[s] for s in longi)
    assert abs(lc["train"] - 72) <= 2 and abs(lc["val"] - 9) <= 2 and abs(lc["test"] - 9) <= 2
    # file round trip, and the grading module reads the same file
    D.write_splits(tmp_path / "splits.json", s1)
    assert D.read_splits(tmp_path / "splits.json").subjects == s1.subjects
    from SpineSSLLib.grading import read_pretrain_splits

    assert read_pretrain_splits(tmp_path / "splits.json") == of
    with pytest.raises(ConfigError):
        D.make_splits(rows, fractions=(0.8, 0.1, 0.2))
    (tmp_path / "bad.json").write_text('{"subjects": {"train": ["a"], "test": ["a"]}, "schema": "spinessl.splits/1"}')
    with pytest.raises(ManifestError, match="both train and test"):
        D.read_splits(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- pairs

def _split_rows(n=200, seed=0):
    rows = cohort_rows(n, seed=seed)
    sp = D.make_splits(rows, seed=0)
    return {k: D.rows_in(rows, v) for k, v in sp.subjects.items()}


def test_positives_are_same_subject_level_different_times_and_complete():
    rows = cohort_rows(60)
    s = D.PairSampler(rows, D.PairConfig(neg_per_pos=1.0, balance_levels=False))
    for a, b in s.positives:
        ra, rb = rows[a], rows[b]
        assert ra.subject_key == rb.subject_key and ra.level == rb.level and ra.timepoint != rb.timepoint
    # every within-subject, within-level pair of time points: C(n_visits, 2) per level
    visits = Counter()
    for r in rows:
        if r.level == "L1":
            visits[r.subject_key] += 1
    assert len(s.positives) == 7 * sum(v * (v - 1) // 2 for v in visits.values())


def test_negatives_same_level_different_subjects_ratio_and_fresh_each_epoch():
    rows = _split_rows()["train"]
    s = D.PairSampler(rows, D.PairConfig(neg_per_pos=2.0), seed=1)
    p0 = s.epoch_pairs(0)
    pos = [p for p in p0 if p[2] == 1]
    neg = [p for p in p0 if p[2] == 0]
    assert len(neg) == 2 * len(pos)
    for a, b, _ in neg:
        assert rows[a].level == rows[b].level and rows[a].subject_key != rows[b].subject_key
    assert s.epoch_pairs(0) == p0                                   # deterministic
    neg1 = [p for p in s.epoch_pairs(1) if p[2] == 0]
    assert set(neg1) != set(neg)                                     # new negatives each epoch
    assert len(D.PairSampler(rows, D.PairConfig(neg_per_pos=0.5)).epoch_pairs(0)) == round(1.5 * len(pos))


def test_levels_balanced_even_with_missing_levels():
    rows = [r for r in cohort_rows(80) if not (r.level == "S1" and r.subject_key < "S0020")]
    s = D.PairSampler(rows, D.PairConfig(balance_levels=True))
    c = Counter(rows[a].level for a, b, y in s.epoch_pairs(0) if y == 1)
    assert set(c) == set(LEVEL_NAMES) and len(set(c.values())) == 1


def test_no_cross_split_leakage():
    parts = _split_rows()
    subj = {}
    for name, rows in parts.items():
        s = D.PairSampler(rows, D.PairConfig(), seed=0)
        subj[name] = {rows[i].subject_key for a, b, _ in s.epoch_pairs(0) for i in (a, b)}
        assert subj[name] <= {r.subject_key for r in rows}
    assert not (subj["train"] & subj["val"]) and not (subj["train"] & subj["test"]) and not (subj["val"] & subj["test"])
    assert all(subj.values())


def _acq_features(rows, pairs, bin_days=None):
    f = []
    for a, b, _ in pairs:
        ra, rb = rows[a], rows[b]
        ia, ib = ra.interval_days, rb.interval_days
        if bin_days:
            ia, ib = ia // bin_days, ib // bin_days
        f.append([ra.field_strength, rb.field_strength, ra.timepoint, rb.timepoint, ia, ib])
    return np.array(f), np.array([p[2] for p in pairs])


def _metadata_auc(rows, matched, bin_days):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score

    s = D.PairSampler(rows, D.PairConfig(neg_per_pos=1.0, match_acquisition=matched), seed=0)
    tr = [p for e in range(3) for p in s.epoch_pairs(e)]
    te = [p for e in range(10, 13) for p in s.epoch_pairs(e)]
    xtr, ytr = _acq_features(rows, tr, bin_days)
    xte, yte = _acq_features(rows, te, bin_days)
    clf = RandomForestClassifier(n_estimators=50, min_samples_leaf=20, random_state=0, n_jobs=1).fit(xtr, ytr)
    return roc_auc_score(yte, clf.predict_proba(xte)[:, 1]), te


@pytest.mark.parametrize("matched", [True, False])
def test_scanner_only_classifier(matched):
    """A classifier that sees only acquisition metadata (field strengths, time points, follow-up
    interval in years) is at chance on the sampled pairs; with naively drawn negatives it is not."""
    rows = cohort_rows(300, seed=2)
    auc, te = _metadata_auc(rows, matched, 365.25)
    if matched:
        assert abs(auc - 0.5) < 0.03, auc
        # identical composition: same (field strength, time point) pattern frequencies
        key = lambda p: (rows[p[0]].field_strength, rows[p[1]].field_strength, rows[p[0]].timepoint, rows[p[1]].timepoint)
        cp = Counter(key(p) for p in te if p[2] == 1)
        cn = Counter(key(p) for p in te if p[2] == 0)
        assert cp == cn
    else:
        assert auc > 0.8, auc


def test_exact_intervals_at_chance_for_two_visit_cohorts():
    """With one follow-up per subject even the exact intervals (days) do not separate the pairs."""
    rows = cohort_rows(300, seed=3, three_visit_every=10**9)
    auc, _ = _metadata_auc(rows, True, None)
    assert abs(auc - 0.5) < 0.03, auc


def test_rank_shares_are_disjoint_and_cover_the_epoch():
    rows = _split_rows()["train"]
    full = D.PairSampler(rows, seed=5).epoch_pairs(2)
    shares = []
    for rank in range(3):
        s = D.PairSampler(rows, seed=5, rank=rank, world=3)
        s.set_epoch(2)
        shares.append(list(s))
    assert len({len(x) for x in shares}) == 1
    merged = [p for x in shares for p in x]
    assert Counter(merged) - Counter(full + full[:(-len(full)) % 3]) == Counter()
    assert set(merged) == set(full)


# ----------------------------------------------------------------------------- cache / dataset

@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rows = [r for r in cohort_rows(3, frac_long=0.67)]
    return write_cohort(root, rows), rows


def test_cache_and_pair_dataset(small_cohort, tmp_path):
    root, rows = small_cohort
    table = D.read_vb_table(root)
    assert len(table) == len(rows) and table[0] == rows[0]
    cache = D.VolumeCache(root, table, (112, 112), cache_dir=tmp_path / "c", progress=False)
    with np.load(root / table[3].file) as z:
        full = z["vb"][table[3].index].astype(np.float32)
    got = cache.volume(table[3])
    assert got.shape == (9, 112, 112)
    expect = full.reshape(9, 112, 2, 112, 2).mean((2, 4))                 # area average of 2x2 blocks
    assert np.allclose(got, expect, atol=2e-3)
    ds = D.PairDataset(table, cache)
    s = D.PairSampler(table)
    a, b, y = next(iter(s))
    item = ds[(a, b, y)]
    assert item["a"].shape == (1, 9, 112, 112) and item["y"].item() == y and item["level"].item() == table[a].level_index
    loader = torch.utils.data.DataLoader(ds, sampler=s, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["a"].shape == (4, 1, 9, 112, 112)


def test_bad_inputs_raise_manifest_errors(small_cohort, tmp_path):
    root, rows = small_cohort
    with pytest.raises(ManifestError, match="no volumes.csv"):
        D.read_vb_table(tmp_path)
    (tmp_path / "volumes.csv").write_text("volume_id,scan_key\nx,y\n")
    with pytest.raises(ManifestError, match="missing columns"):
        D.read_vb_table(tmp_path)
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "volumes").mkdir()
    (bad / "volumes.csv").write_text((root / "volumes.csv").read_text())
    for f in {r.file for r in rows}:
        (bad / f).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ManifestError, match="cannot read volume file"):
        D.VolumeCache(bad, D.read_vb_table(bad), progress=False)
    np.savez(bad / rows[0].file, vb=np.zeros((7, 9, 100, 100), np.float16))
    with pytest.raises(ManifestError, match="vb array has shape"):
        D.VolumeCache(bad, [r for r in D.read_vb_table(bad) if r.file == rows[0].file], progress=False)


# ----------------------------------------------------------------------------- augmentation

def _pair_batch(n=4, hw=(112, 112)):
    a = torch.zeros(n, 1, 9, *hw)
    a[:, :, 1, 40:70, 30:80] = 1.0           # a block in slice 1 only
    return {"a": a, "b": a.clone(), "y": torch.ones(n), "level": torch.zeros(n, dtype=torch.long)}


def test_flip_is_coupled_within_a_pair():
    torch.manual_seed(0)
    cfg = D.AugmentConfig(rotate_deg=0, translate_x=0, translate_y=0, translate_z=0, scale=(1, 1), intensity=0)
    out = D.PairAugment(cfg, (112, 112))(_pair_batch(16))
    assert torch.allclose(out["a"], out["b"], atol=1e-5)     # the same flip for both members
    slice_of = out["a"].sum((1, 3, 4)).argmax(1)
    assert set(slice_of.tolist()) == {1, 7}                  # flipped pairs have the block in slice 7


def test_augmentation_ranges():
    torch.manual_seed(1)
    hw = (112, 112)                                             # half-size volumes: translations halve
    cfg = D.AugmentConfig(flip=False, translate_z=0)
    batch = _pair_batch(16, hw)
    out = D.PairAugment(cfg, hw)(batch)
    assert out["a"].shape == batch["a"].shape
    assert not torch.allclose(out["a"], out["b"])            # each volume its own parameters
    m = out["a"].sum((0, 1, 3, 4))
    assert m[1] > 0 and m[[0, 2, 3, 4, 5, 6, 7, 8]].abs().max() < 1e-6   # in-plane only (no z shift)
    ys, xs = torch.nonzero(batch["a"][0, 0, 1] > 0.5, as_tuple=True)
    c0 = torch.tensor([ys.float().mean(), xs.float().mean()])
    for v in out["a"][:, 0, 1]:
        ys, xs = torch.nonzero(v > 0.5, as_tuple=True)
        c = torch.tensor([ys.float().mean(), xs.float().mean()])
        # centroid moves at most translation (12 rows, 24 cols at half size) + rotation/scale of the offset
        assert abs(c[0] - c0[0]) <= 12 + 8 and abs(c[1] - c0[1]) <= 24 + 8
        assert 0.75 < v.max() < 1.25                               # intensity +-0.2
    off = D.PairAugment(D.AugmentConfig(enabled=False), hw)(batch)
    assert off["a"] is batch["a"]


def test_batched_augmentation_matrices_equal_monai_composition():
    """VolumeAugment.matrices builds the whole batch at once (issue #17): the same numbers as MONAI's
    create_translate @ create_rotate @ create_scale per volume."""
    import math

    from monai.transforms.utils import create_rotate, create_scale, create_translate

    from SpineSSLLib.transforms import VolumeAugment

    aug = VolumeAugment(D.AugmentConfig(rotate_deg=20, scale=(0.8, 1.2)), (112, 224), (112, 224))
    u = np.random.default_rng(0).random((300, 5))
    c = aug.config
    ref = []
    for p in u:
        t = ((2 * p[1] - 1) * c.translate_z, (2 * p[2] - 1) * c.translate_y, (2 * p[3] - 1) * c.translate_x)
        sc = c.scale[0] + p[4] * (c.scale[1] - c.scale[0])
        ref.append(create_translate(3, t) @ create_rotate(3, ((2 * p[0] - 1) * math.radians(20), 0.0, 0.0))
                   @ create_scale(3, (1.0, sc, sc)))
    np.testing.assert_array_equal(aug.matrices(u), np.stack(ref))
