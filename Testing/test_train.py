"""The shared training loop: plateau schedule, overfitting a tiny task, exact resume."""

import csv
import json

import pytest
import torch

from SpineSSLLib import progress
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from SpineSSLLib import train as T
from SpineSSLLib.errors import CheckpointError, ConfigError
from SpineSSLLib.models import ModelConfig, VGGMNet

torch.set_num_threads(1)
progress.set_enabled(False)


def test_plateau_schedule_lowers_then_stops():
    cfg = T.TrainConfig(patience=2, max_lr_drops=1)
    p = T.Plateau()
    seq = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.9]
    out = [p.step(v, e, cfg) for e, v in enumerate(seq)]
    assert out[:2] == [(True, False), (True, False)]
    assert out[2] == (False, False) and out[3] == (False, True)      # 2 bad epochs -> lr drop
    assert out[4] == (True, False)                                    # the drop helped
    assert out[5] == (False, False) and out[6] == (False, False) and p.stop  # last drop stopped helping
    assert p.best == 0.8 and p.best_epoch == 4 and p.drops == 1


def test_config_validation():
    with pytest.raises(ConfigError):
        T.TrainConfig(amp="fp8")
    with pytest.raises(ConfigError, match="unknown training config keys"):
        T.TrainConfig.from_dict({"lrr": 1})
    assert T.amp_dtype(T.TrainConfig(), torch.device("cpu")) is None


def _task(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 9, 96, 96, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :, :, :48] += 0.5   # learnable but not trivial
    return TensorDataset(x, y)


def _model(dropout=0.3):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", width=0.0625, fc6=32, fc7=16, input_scale=1.0, dropout=dropout)
    return VGGMNet(cfg, 2, (96, 96))


def _loss(model, batch, train):
    x, y = batch
    _, logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}


def test_tiny_run_overfits(tmp_path):
    ds = _task()
    loader = T.make_loader(ds, 4, shuffle=True)
    cfg = T.TrainConfig(lr=0.1, max_epochs=40, patience=100, batch_size=4, device="cpu")
    res = T.fit(_model(dropout=0.0), _loss, loader, loader, cfg, tmp_path, checkpoint_config={"task": "test"})
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 40 and res.stop_reason == "max_epochs"
    assert float(rows[-1]["val_acc"]) == 1.0
    assert float(rows[-1]["val_loss"]) < 0.1 * float(rows[0]["val_loss"])
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "fit.json").read_text())["device"] == "cpu"


def test_resume_equals_uninterrupted(tmp_path):
    ds = _task(seed=1)
    kw = dict(lr=0.01, batch_size=4, patience=1, max_lr_drops=5, device="cpu")   # exercise lr drops too
    a = _model()
    T.fit(a, _loss, T.make_loader(ds, 4, shuffle=True), T.make_loader(ds, 4, shuffle=False),
          T.TrainConfig(max_epochs=4, **kw), tmp_path / "a", checkpoint_config={})
    b = _model()
    T.fit(b, _loss, T.make_loader(ds, 4, shuffle=True), T.make_loader(ds, 4, shuffle=False),
          T.TrainConfig(max_epochs=2, **kw), tmp_path / "b", checkpoint_config={})
    torch.manual_seed(12345)  # a fresh process would have other RNG state: resume must restore it
    b2 = _model()
    T.fit(b2, _loss, T.make_loader(ds, 4, shuffle=True), T.make_loader(ds, 4, shuffle=False),
          T.TrainConfig(max_epochs=4, **kw), tmp_path / "b", checkpoint_config={}, resume=True)
    for (k, p), q in zip(a.state_dict().items(), b2.state_dict().values()):
        assert torch.equal(p, q), k
    la = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    lb = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]
    assert [r["lr"] for r in la] == [r["lr"] for r in lb]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    ds = _task(n=4)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        T.fit(_model(), _loss, T.make_loader(ds, 4, shuffle=True), None, T.TrainConfig(max_epochs=1, device="cpu"),
              tmp_path, checkpoint_config={}, resume=True)
