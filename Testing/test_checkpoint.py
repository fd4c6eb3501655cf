"""Checkpoints: safetensors + JSON round trip, optimizer/RNG state, corruption detection."""

import json
import random

import numpy as np
import pytest
import torch

from SpineSSLLib import checkpoint as ckpt
from SpineSSLLib.errors import CheckpointError
from SpineSSLLib.models import ModelConfig, SiameseNet, VGGMNet, load_trunk, trunk_state_dict

torch.set_num_threads(1)


def _tiny(width=0.0625, **kw):
    kw.setdefault("input_scale", 1.0)
    return VGGMNet(ModelConfig.preset("small", width=width, fc6=32, fc7=16, **kw), 7, (96, 96))


def test_round_trip_weights_and_config(tmp_path):
    torch.manual_seed(0)
    m = SiameseNet(_tiny())
    cfg = {"task": "pretrain", "model": m.net.config.to_dict(), "num_classes": 7, "in_hw": [96, 96]}
    ckpt.save_checkpoint(tmp_path / "c", m, cfg, epoch=3, metrics={"val_loss": 0.5})
    m2 = SiameseNet(_tiny())
    meta = ckpt.load_checkpoint(tmp_path / "c", m2)
    assert meta["config"] == json.loads(json.dumps(cfg)) and meta["epoch"] == 3
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(2, 1, 9, 96, 96)
    m.eval(), m2.eval()
    assert torch.equal(m.net(x)[0], m2.net(x)[0])
    # files are safetensors + JSON only
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["checkpoint.json", "model.safetensors"]


def test_optimizer_and_rng_state(tmp_path):
    torch.manual_seed(1)
    m = _tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    m(torch.randn(2, 1, 9, 96, 96))[1].sum().backward()
    opt.step()
    random.seed(5), np.random.seed(5)
    ckpt.save_checkpoint(tmp_path / "c", m, {}, epoch=0, optimizer=opt, train_state={"x": 1}, rng=True)
    expect = (torch.rand(3), np.random.rand(3), random.random())
    m2 = _tiny()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.5, momentum=0.1)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    meta = ckpt.load_checkpoint(tmp_path / "c", m2, opt2, restore_rng_state=True)
    assert meta["train_state"] == {"x": 1}
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["momentum"] == 0.9
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_truncated_and_wrong_preset_rejected(tmp_path):
    m = _tiny()
    d = ckpt.save_checkpoint(tmp_path / "c", m, {})
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        ckpt.load_checkpoint(d, _tiny())
    d2 = ckpt.save_checkpoint(tmp_path / "d", m, {})
    with pytest.raises(CheckpointError, match="another preset"):
        ckpt.load_checkpoint(d2, _tiny(width=0.125))
    with pytest.raises(CheckpointError, match="not a SpineSSL checkpoint"):
        ckpt.load_checkpoint(tmp_path / "nothing", m)
    with pytest.raises(CheckpointError, match="no training state"):
        ckpt.load_checkpoint(d2, _tiny(), torch.optim.SGD(m.parameters(), lr=1))


def test_swapped_in_weights_of_the_same_shapes_are_refused(tmp_path):
    """Another valid model.safetensors of identical shapes (a different training run) copied over
    a checkpoint's weights fails the SHA-256 check instead of loading silently."""
    torch.manual_seed(0)
    a = ckpt.save_checkpoint(tmp_path / "a", _tiny(), {})
    torch.manual_seed(1)
    b = ckpt.save_checkpoint(tmp_path / "b", _tiny(), {})
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        ckpt.load_checkpoint(a, _tiny())
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        ckpt.load_weights(a)


def test_load_never_unpickles(tmp_path):
    """A pickle dropped in place of the weights is refused, not executed."""
    import pickle

    d = ckpt.save_checkpoint(tmp_path / "c", _tiny(), {})
    (d / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    meta = json.loads((d / "checkpoint.json").read_text())
    meta["files"]["model.safetensors"] = ckpt._sha256(d / "model.safetensors")
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.load_checkpoint(d, _tiny())


def test_trunk_transfer_between_input_sizes(tmp_path):
    torch.manual_seed(2)
    vb = SiameseNet(_tiny())
    ckpt.save_checkpoint(tmp_path / "c", vb, {})
    state, _ = ckpt.load_weights(tmp_path / "c")
    ivd = VGGMNet(vb.net.config, 4, (48, 96))
    load_trunk(ivd, state)
    for k, v in trunk_state_dict(vb).items():
        assert torch.equal(v, trunk_state_dict(ivd)[k])
    with pytest.raises(CheckpointError, match="another preset"):
        load_trunk(_tiny(width=0.125), state)
