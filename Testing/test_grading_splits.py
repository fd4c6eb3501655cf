"""Grading split rules (the paper's §4.2) and the TTA view generator."""


import numpy as np
import pytest

from SpineSSLLib import grading
from SpineSSLLib.grading import IVDRecord


def _cohort(n_subjects=92, seed=0):
    """Records for a cohort: some subjects with follow-ups, twin families, some ungraded."""
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_subjects):
        subj = f"s{s:03d}"
        fam = f"f{s // 2:03d}" if s < 20 else f"f{s:03d}"  # first 20 subjects: 10 twin pairs
        n_scans = 1 if rng.random() < 0.55 else int(rng.integers(2, 4))
        graded = s % 10 != 9  # every 10th subject ungraded
        for t in range(n_scans):
            for lvl in range(6):
                recs.append(IVDRecord(f"{subj}_{t}_{lvl}", f"{subj}_{t}", subj, fam, f"d{lvl}",
                                      str(int(rng.integers(1, 5))) if graded and lvl > 0 else "",
                                      f"volumes/{subj}_{t}.npz", lvl, t))
    return recs


def test_scaled_counts_follow_paper_proportions():
    assert grading.scaled_counts(920) == (670, 50, 200)
    tr, va, te = grading.scaled_counts(92)
    assert (tr, va, te) == (67, 5, 20)
    assert grading.scaled_train_sizes(670) == [240, 361, 670]
    assert grading.scaled_train_sizes(67) == [24, 36, 67]


def test_split_rules():
    recs = _cohort()
    pre = {f"s{s:03d}": ("train" if s % 3 == 0 else "val" if s % 3 == 1 else "test") for s in range(92)}
    sp = grading.make_grading_splits(recs, pre, seed=3)
    scans, graded, fam = {}, set(), {}
    for r in recs:
        scans.setdefault(r.subject_key, set()).add(r.scan_key)
        fam[r.subject_key] = r.family
        if r.grade:
            graded.add(r.subject_key)
    all_split = sp.train + sp.val + sp.test
    # graded subjects only, each exactly once
    assert sorted(all_split) == sorted(graded)
    assert len(set(all_split)) == len(all_split)
    # test: single scan, never in pretraining train/val
    assert sp.test
    for s in sp.test:
        assert len(scans[s]) == 1
        assert pre[s] not in ("train", "val")
    # families never straddle splits
    where = sp.split_of()
    for a in all_split:
        for b in all_split:
            if fam[a] == fam[b]:
                assert where[a] == where[b]
    # deterministic, seed-dependent, independent of record order
    assert grading.make_grading_splits(list(reversed(recs)), pre, seed=3).to_dict() == sp.to_dict()
    assert grading.make_grading_splits(recs, pre, seed=4).test != sp.test


def test_split_sizes_without_pretraining_conflicts_and_shortfall_note():
    recs = _cohort(seed=1)
    sp = grading.make_grading_splits(recs, {}, seed=0)
    n = len(sp.train) + len(sp.val) + len(sp.test)
    _, n_val, n_test = grading.scaled_counts(n)
    assert len(sp.val) <= n_val and len(sp.val) >= n_val - 1  # a twin pair may not fit exactly
    assert len(sp.test) >= n_test - 1 and not sp.notes
    # everyone was in pretraining train: no test subject can qualify -> empty test and a note
    pre = {r.subject_key: "train" for r in recs}
    sp2 = grading.make_grading_splits(recs, pre, seed=0)
    assert sp2.test == [] and sp2.notes


def test_nested_subsets_are_nested():
    sp = grading.make_grading_splits(_cohort(), {}, seed=0)
    sizes = grading.scaled_train_sizes(len(sp.train))
    subs = grading.nested_train_subsets(sp, sizes)
    for a, b in zip(sizes[:-1], sizes[1:]):
        assert set(subs[a]) < set(subs[b])
    assert set(subs[sizes[-1]]) == set(sp.train)


def test_read_pretrain_splits_uses_pretraining_file(tmp_path):
    from SpineSSLLib.data import Splits, write_splits

    p = tmp_path / "splits.json"
    write_splits(p, Splits(0, (0.8, 0.1, 0.1), {"train": ["a", "b"], "val": ["c"], "test": ["d"]}))
    assert grading.read_pretrain_splits(p) == {"a": "train", "b": "train", "c": "val", "d": "test"}


def test_read_pretrain_splits_rejects_garbage(tmp_path):
    from SpineSSLLib.errors import ManifestError

    p = tmp_path / "s.json"
    p.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="s.json"):
        grading.read_pretrain_splits(p)
    with pytest.raises(ManifestError, match="not found"):
        grading.read_pretrain_splits(tmp_path / "missing.json")


def test_tta_views():
    import torch

    x = torch.arange(2 * 9 * 4 * 6, dtype=torch.float32).reshape(2, 9, 4, 6) + 1
    cfg = grading.TTAConfig(shifts=((0, 0), (1, 0), (0, -2)), slice_offsets=(-1, 0, 1), flip=True)
    views = list(grading.tta_views(x, cfg))
    assert len(views) == cfg.n_views == 18
    assert grading.TTAConfig.none().n_views == 1
    assert torch.equal(list(grading.tta_views(x, grading.TTAConfig.none()))[0], x)
    # slice offset +1: slice k of the view is slice k-1 of the input, first slice zero
    v = grading.shift_zero(x, (1,), (1,))
    assert torch.equal(v[:, 1:], x[:, :-1]) and torch.all(v[:, 0] == 0)
    # column shift -2: column c of the view is column c+2, last two columns zero
    v = grading.shift_zero(x, (-2,), (3,))
    assert torch.equal(v[..., :-2], x[..., 2:]) and torch.all(v[..., -2:] == 0)
    # flip reverses the slice order
    assert torch.equal(views[1], torch.flip(views[0], dims=(1,)))
