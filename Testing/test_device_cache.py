"""The device-side pair pipeline (issue #17): DevicePairLoader yields exactly the batches of
DataLoader(PairDataset) on the same sampler, with the volumes held as one float16 tensor."""

import csv

import numpy as np
import pytest
import torch

from pretrain_helpers import cohort_rows, write_cohort

from SpineSSLLib import data as D
from SpineSSLLib.device_cache import DevicePairLoader, DeviceVolumes, fits_on_device, volume_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dc")
    rng = np.random.default_rng(4)   # blocky volumes (distinct per row): quick to compress
    write_cohort(root, cohort_rows(6, frac_long=0.67, three_visit_every=3),
                 make_volume=lambda r: np.kron(rng.random((9, 7, 7)), np.ones((1, 32, 32))))
    with open(root / "volumes.csv", newline="") as f:  # a metadata label for an aux head
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["sex"] = "" if i % 5 == 0 else str(int(r["subject_key"][1:]) % 2)
    with open(root / "volumes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_device_pair_loader_equals_the_dataloader(cohort, tmp_path):
    rows = D.read_vb_table(cohort, {"sex": 2})
    cache = D.VolumeCache(cohort, rows, (112, 112), cache_dir=tmp_path / "cache", progress=False)
    vols = DeviceVolumes(cache, rows, "cpu", chunk=7)   # several staging chunks
    assert vols.where == "device" and vols.data.dtype == torch.float16 and vols.nbytes == volume_bytes(rows, (112, 112))
    assert fits_on_device(10**15, torch.device("cpu"))
    sampler = D.PairSampler(rows, D.PairConfig(neg_per_pos=2), seed=5)
    ref = torch.utils.data.DataLoader(D.PairDataset(rows, cache), sampler=sampler, batch_size=5)
    ours = DevicePairLoader(rows, vols, sampler, 5)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        a, b = list(ref), list(ours)
        assert len(b) == len(ours) == len(ref) and len(b) > 2
        for x, y in zip(a, b):
            assert set(x) == set(y) and {"aux_sex_a", "aux_sex_b"} <= set(y)
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (epoch, k)
    with pytest.raises(ValueError, match="same rows"):
        DevicePairLoader(rows[1:], vols, sampler, 5)


def test_device_volumes_hold_the_cached_float16(cohort, tmp_path):
    rows = D.read_vb_table(cohort)
    cache = D.VolumeCache(cohort, rows, (224, 224), cache_dir=tmp_path / "cache", progress=False)
    vols = DeviceVolumes(cache, rows, "cpu")
    idx = torch.tensor([3, 0, 3])
    got = vols.gather(idx)
    assert got.shape == (3, 1, 9, 224, 224) and got.dtype == torch.float32
    for k, i in enumerate(idx.tolist()):
        np.testing.assert_array_equal(got[k, 0].numpy(), cache.volume(rows[i]))


def test_pretraining_with_the_device_loader_equals_the_dataloader(cohort, tmp_path):
    """`loader: device` trains exactly like `loader: workers` (same batches, same random stream:
    augmentation incl. appearance, dropout), so switching it on a GPU changes speed, not results."""
    import csv as _csv

    from SpineSSLLib.pretrain import load_config, run_pretraining

    logs = {}
    for loader in ("workers", "device"):
        cfg = load_config(overrides={"model": {"width": 0.0625, "fc6": 32, "fc7": 16, "input_scale": 0.25},
                                     "train": {"max_epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu"},
                                     "split_fractions": [0.67, 0.33, 0.0], "loader": loader})
        assert cfg.augment.noise > 0 and cfg.model.dropout > 0   # the default recipe's random parts are on
        run_pretraining(cohort, tmp_path / loader, cfg, cache_dir=tmp_path / "cache", progress=False,
                        evaluate_val=False)
        with open(tmp_path / loader / "log.csv", newline="") as f:
            logs[loader] = [(r["train_loss"], r["val_loss"]) for r in _csv.DictReader(f)]
    assert len(logs["device"]) == 2 and logs["device"] == logs["workers"]


def test_pretraining_loader_is_checked():
    from SpineSSLLib.errors import ConfigError
    from SpineSSLLib.pretrain import load_config

    with pytest.raises(ConfigError, match="loader must be one of auto, workers, device"):
        load_config(overrides={"loader": "gpu"})
