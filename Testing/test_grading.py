"""Grading model: transfer modes, training through the shared loop, evaluation outputs."""

import json

import pytest
import torch

from SpineSSLLib import checkpoint as ckpt
from SpineSSLLib import grading
from SpineSSLLib.errors import ConfigError
from SpineSSLLib.models import ModelConfig, VGGMNet, trunk_state_dict

from grading_helpers import write_contract_cohort as _write_cohort

TINY = dict(width=0.0625, fc6=32, fc7=16, input_scale=0.5)  # same network definition, tiny widths


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config():
    return ModelConfig.preset("small", **TINY)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A pretraining-style checkpoint: a VB (224x224) level classifier with non-default weights."""
    d = tmp_path_factory.mktemp("pre") / "best"
    torch.manual_seed(123)
    net = VGGMNet(tiny_config(), 7, (224, 224))
    with torch.no_grad():
        for p in net.trunk.parameters():
            p.add_(0.01)
    ckpt.save_checkpoint(d, net, {"task": "pretrain", "model": net.config.to_dict(), "num_classes": 7,
                                  "in_hw": [224, 224]}, epoch=3)
    return d


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("cohort"))


def test_modes_initialise_as_documented(pretrained_dir):
    pre = VGGMNet(tiny_config(), 7, (224, 224))
    ckpt.load_checkpoint(pretrained_dir, pre)
    pre_trunk = trunk_state_dict(pre)
    for mode in grading.MODES:
        p = pretrained_dir if mode in grading.PRETRAINED_MODES else None
        m = grading.build_grading_model(tiny_config(), 4, mode, p, seed=0)
        assert m.num_classes == 4 and m.in_hw == (112, 224)
        trunk = trunk_state_dict(m)
        same = all(torch.equal(trunk[k], pre_trunk[k]) for k in pre_trunk)
        assert same == (mode in grading.PRETRAINED_MODES), mode
        frozen = not any(q.requires_grad for q in m.trunk.parameters())
        assert frozen == (mode in grading.FROZEN_MODES), mode
        assert all(q.requires_grad for n, q in m.named_parameters() if n.startswith(("fc6", "fc7", "fc8")))
    with pytest.raises(ConfigError):
        grading.build_grading_model(tiny_config(), 4, "ssl-frozen", None)
    with pytest.raises(ConfigError):
        grading.build_grading_model(tiny_config(), 4, "scratch", pretrained_dir)
    with pytest.raises(ConfigError):
        grading.build_grading_model(tiny_config(), 4, "imagenet", None)


def test_incompatible_pretrained_checkpoint_rejected(tmp_path, pretrained_dir):
    from SpineSSLLib.errors import CheckpointError

    with pytest.raises(CheckpointError):
        grading.build_grading_model(tiny_config(), 4, "ssl-frozen", tmp_path)  # no checkpoint here
    bad = tmp_path / "bad"
    net = VGGMNet(tiny_config(), 7, (224, 224))
    ckpt.save_checkpoint(bad, net, {"task": "pretrain", "model": ModelConfig.preset("small").to_dict()})
    with pytest.raises(CheckpointError, match="shape"):   # the checkpoint's own config says small
        grading.build_grading_model(ModelConfig.from_dict(ckpt.model_config(bad)), 4, "ssl-frozen", bad)


@pytest.mark.parametrize("mode", ["ssl-frozen", "ssl-finetune", "frozen-random", "scratch"])
def test_training_respects_freezing(tmp_path, cohort, pretrained_dir, mode):
    pre = str(pretrained_dir) if mode.startswith("ssl") else None
    cfg = grading.load_config(overrides={"transfer.mode": mode, "transfer.pretrained": pre,
                                         "model": {"preset": "small", **TINY}, "train.batch_size": 16,
                                         "train.max_epochs": 1, "train.lr": 1e-2, "train.device": "cpu",
                                         "train.seed": 5, "augment.enabled": mode == "ssl-finetune"})
    start = grading.build_grading_model(cfg.resolved_model(), 4, mode, cfg.transfer.pretrained, seed=cfg.seed)
    res = grading.train_grading(cohort, tmp_path / mode, cfg)
    after, meta = ckpt.load_weights(tmp_path / mode / "last")
    before = start.state_dict()
    trunk_keys = [k for k in before if k.startswith("trunk.")]
    unchanged = all(torch.equal(after[k], before[k]) for k in trunk_keys)
    assert unchanged == (mode in grading.FROZEN_MODES), mode
    assert not torch.equal(after["fc8.weight"], before["fc8.weight"])  # the fc layers did train
    assert meta["config"]["task"] == "grade" and meta["config"]["mode"] == mode
    assert meta["config"]["class_names"] == ["1", "2", "3", "4"]
    assert res["test"]["n"] == res["n_test_discs"] > 0
    assert set(res["test"]) >= {"average_class_accuracy", "kappa_linear", "per_class_recall", "confusion"}


def test_classification_augmentation_is_per_volume():
    torch.manual_seed(0)
    from SpineSSLLib.grading.train import _augmenter
    from SpineSSLLib.transforms import AugmentConfig

    aug = _augmenter(AugmentConfig(), (56, 112))
    x = torch.rand(6, 1, 9, 56, 112)
    y = torch.arange(6)
    xa, ya = aug((x, y))
    assert xa.shape == x.shape and torch.equal(ya, y)
    assert not torch.allclose(xa, x)
    # volumes are augmented independently: identical inputs come out different
    same = x[:1].repeat(6, 1, 1, 1, 1)
    out, _ = aug((same, y))
    assert not torch.allclose(out[0], out[1])
    assert _augmenter(AugmentConfig(enabled=False), (56, 112)) is None


def test_grade_train_cli(tmp_path, cohort, pretrained_dir, capsys):
    from SpineSSLLib.cli import main
    from SpineSSLLib.data import Splits, write_splits

    # the pretraining split file found beside the checkpoint keeps its train subjects out of test
    subjects = sorted({r.subject_key for r in grading.read_ivd_table(cohort)})
    write_splits(pretrained_dir.parent / "splits.json",
                 Splits(0, (0.8, 0.1, 0.1), {"train": subjects[:8], "val": [], "test": subjects[8:]}))
    out = tmp_path / "g"
    rc = main(["-q", "grade-train", str(cohort), "--out", str(out), "--mode", "ssl-frozen", "--pretrained",
               str(pretrained_dir), "--epochs", "1", "--batch-size", "16", "--no-augment", "--device", "cpu"])
    assert rc == 0
    assert '"average_class_accuracy"' in capsys.readouterr().out
    sp = json.loads((out / "splits.json").read_text())
    assert sp["test"] and not set(sp["test"]) & set(subjects[:8])
    m = json.loads((out / "test_metrics.json").read_text())
    assert m["mode"] == "ssl-frozen" and 0 <= m["test"]["average_class_accuracy"] <= 1
    assert (out / "confusion.png").is_file() and (out / "best" / "checkpoint.json").is_file()
    # bad input: an ssl mode without weights is a one-line usage error
    assert main(["grade-train", str(cohort), "--out", str(tmp_path / "x"), "--mode", "ssl-frozen"]) == 2


def test_data_dependent_fc_init_centres_and_scales_each_unit():
    """After the init, every fc6/fc7/fc8 unit has mean 0 and s.d. 1 on the init batch, also when
    the trunk features share a large offset with a tiny spread (a pretrained trunk on discs)."""
    import numpy as np

    model = grading.build_grading_model(tiny_config(), 4, "frozen-random", seed=0)
    with torch.no_grad():
        model.trunk.conv5.bias.add_(50.0)  # pool5 features: large common offset, small spread
    rng = np.random.default_rng(0)
    vols = rng.random((24, 9, 112, 224)).astype(np.float32)
    grading.data_dependent_fc_init(model, vols, n=24)
    model.eval()
    with torch.no_grad():
        h = model.trunk(model.prepare_input(torch.as_tensor(vols).unsqueeze(1))).flatten(1)
        for name in ("fc6", "fc7", "fc8"):
            pre = getattr(model, name)(h)
            live = pre.std(0) > 1e-6
            assert live.float().mean() > 0.5
            assert torch.allclose(pre.mean(0)[live], torch.zeros(int(live.sum())), atol=2e-2)
            assert torch.allclose(pre.std(0)[live], torch.ones(int(live.sum())), atol=2e-2)
            h = torch.relu(pre) if name == "fc6" else pre
