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
    cfg = T.TrainConfig(patience=2, max_lr_drops=1, schedule="plateau")
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
    cfg = T.TrainConfig(lr=0.01, max_epochs=40, patience=100, batch_size=4, device="cpu")
    res = T.fit(_model(dropout=0.0), _loss, loader, loader, cfg, tmp_path, checkpoint_config={"task": "test"})
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 40 and res.stop_reason == "max_epochs"
    assert float(rows[-1]["val_acc"]) == 1.0
    assert float(rows[-1]["val_loss"]) < 0.1 * float(rows[0]["val_loss"])
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "fit.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize("schedule", [dict(optimizer="sgd", schedule="plateau", lr=0.01),
                                      dict(optimizer="adamw", schedule="cosine", lr=1e-3, warmup_epochs=1.5)])
def test_resume_equals_uninterrupted(tmp_path, schedule):
    """SGD + plateau drops, and AdamW + warm-up/cosine (a schedule computed from the step count)."""
    ds = _task(seed=1)
    kw = dict(batch_size=4, patience=1, max_lr_drops=5, device="cpu", **schedule)   # exercise lr drops too
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


# ----------------------------------------------------------------------------- Siamese pretraining

def _fingerprint_volume(row):
    """Subject-specific blocky pattern (stable over visits) + level offset + visit noise."""
    import zlib

    import numpy as np

    g = np.random.default_rng(int(row.subject_key[1:]) + 1)
    base = np.kron(g.random((9, 7, 7)), np.ones((1, 32, 32)))
    noise = np.random.default_rng(zlib.crc32(row.volume_id.encode())).normal(0, 0.05, base.shape)
    return (0.6 * base + 0.5 * (row.level_index % 2) + noise).astype(np.float32)


def _siamese_cohort(root, n_subjects=4, levels=("L1", "L2"), frac_long=1.0):
    from pretrain_helpers import cohort_rows, write_cohort

    rows = [r for r in cohort_rows(n_subjects, frac_long=frac_long, three_visit_every=10**9) if r.level in levels]
    write_cohort(root, rows, _fingerprint_volume)
    return rows


def test_tiny_siamese_run_overfits(tmp_path):
    """Contrastive + level loss on a 4-subject cohort: after training, train-pair distances
    separate same from different subjects perfectly and the levels are all right."""
    from SpineSSLLib import data as D
    from SpineSSLLib import evaluate as E
    from SpineSSLLib.pretrain import load_config, run_pretraining
    from SpineSSLLib.models import SiameseNet, VGGMNet
    from SpineSSLLib import checkpoint as ckpt

    _siamese_cohort(tmp_path / "c")
    rows = D.read_vb_table(tmp_path / "c")
    D.write_splits(tmp_path / "splits.json", D.Splits(0, (1, 0, 0), {"train": sorted({r.subject_key for r in rows}),
                                                                   "val": [], "test": []}))
    cfg = load_config(overrides={"model": {"preset": "small", "width": 0.0625, "fc6": 32, "fc7": 16,
                                           "input_scale": 0.25, "dropout": 0.0, "norm": "lrn", "init": "fan_out"},
                                 "train": {"lr": 0.01, "max_epochs": 40, "batch_size": 8, "num_workers": 0,
                                           "device": "cpu", "patience": 100, "optimizer": "sgd",
                                           "schedule": "plateau", "weight_decay": 5e-4, "grad_clip": 0.0},
                                 "loss": {"objective": "contrastive", "margin": 1.0, "normalize": False,
                                          "projection": 0},
                                 "pairs": {"self_pairs": 0.0}, "augment": {"enabled": False}})
    s = run_pretraining(tmp_path / "c", tmp_path / "o", cfg, splits_path=tmp_path / "splits.json", progress=False)
    assert s["epochs"] == 40 and s["positive_pairs"]["train"] == 12   # subject 0 has 3 visits
    model_cfg = cfg.model
    model = SiameseNet(VGGMNet(model_cfg, 7))
    ckpt.load_checkpoint(tmp_path / "o" / "last", model)
    cache = D.VolumeCache(tmp_path / "c", rows, model_cfg.net_hw((224, 224)), progress=False)
    pairs = D.PairSampler(rows, D.PairConfig(neg_per_pos=3, balance_levels=False), seed=7).epoch_pairs(0)
    ev = E.evaluate_pairs(model, rows, cache, pairs, torch.device("cpu"), tmp_path / "ev", progress=False)
    log = list(csv.DictReader(open(tmp_path / "o" / "log.csv")))
    assert float(log[-1]["train_loss"]) < 0.5 * float(log[0]["train_loss"])
    assert float(log[-1]["train_contrastive"]) < 0.05 * float(log[0]["train_contrastive"])
    assert ev.auc > 0.95 and ev.level_accuracy >= 0.75, (ev.auc, ev.level_accuracy)   # 2 levels: chance 0.5
    for f in ("report.json", "pairs.csv", "distance_histogram.png", "roc.png", "level_confusion.png"):
        assert (tmp_path / "ev" / f).is_file()


def test_pretrain_and_eval_pairs_cli(tmp_path, capsys):
    from SpineSSLLib.cli import main

    _siamese_cohort(tmp_path / "c", n_subjects=10, frac_long=0.8)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"model": {"preset": "small", "width": 0.0625, "fc6": 32, "fc7": 16,
                                          "input_scale": 0.25}, "split_fractions": [0.6, 0.2, 0.2]}))
    args = ["-q", "pretrain", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--config", str(conf),
            "--batch-size", "8", "--workers", "0", "--lr", "0.01"]
    assert main(args + ["--epochs", "1"]) == 0
    out = tmp_path / "o"
    splits = json.loads((out / "splits.json").read_text())
    assert sum(splits["counts"].values()) == 10 and splits["schema"] == "spinessl.splits/1"
    meta = json.loads((out / "last" / "checkpoint.json").read_text())
    assert meta["config"]["task"] == "pretrain" and meta["config"]["model"]["width"] == 0.0625
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert len(list(csv.DictReader(open(out / "log.csv")))) == 2
    capsys.readouterr()
    assert main(["-q", "eval-pairs", str(out), str(tmp_path / "c"), "--out", str(tmp_path / "e"), "--split", "all"]) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "level accuracy" in printed
    rep = json.loads((tmp_path / "e" / "report.json").read_text())
    assert rep["n_positive_pairs"] == 20 and rep["n_negative_pairs"] == 20 and 0 <= rep["auc"] <= 1
    # no raw identifiers: only pseudonymous keys from volumes.csv in the outputs
    assert set(rep) >= {"auc", "level_accuracy", "level", "distance_positive", "distance_negative"}


def test_pretrain_rejects_cohort_without_followups(tmp_path, capsys):
    from SpineSSLLib.cli import main

    _siamese_cohort(tmp_path / "c", n_subjects=3, frac_long=0.0)
    rc = main(["-q", "pretrain", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--preset", "small",
               "--epochs", "1", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no positive pairs" in err[0]


def _ddp_worker(rank, world, port, root):
    import os

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch.distributed as dist

    from SpineSSLLib import progress as P

    torch.set_num_threads(1)
    P.set_enabled(False)
    ds = _task(n=8, seed=3)
    loader = T.make_loader(ds, 2, shuffle=True)          # DistributedSampler: 4 samples per rank
    model = _model()
    T.fit(model, _loss, loader, None, T.TrainConfig(lr=0.01, max_epochs=2, device="cpu"), root / "out",
          checkpoint_config={"task": "ddp"})
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun-style DDP on CPU (gloo): ranks end with identical weights, only rank 0 writes."""
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    params = {k for k, _ in _model().named_parameters()}
    assert all(torch.equal(a[k], b[k]) for k in params)   # gradients were averaged across ranks
    # batch-norm statistics: rank 0's are broadcast at every forward (SyncBatchNorm on CUDA); after
    # the last step each rank holds its own, and only rank 0's are saved
    rows = list(csv.DictReader(open(tmp_path / "out" / "log.csv")))
    assert len(rows) == 2
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["world_size"] == 2
    untrained = _model().state_dict()
    assert any(not torch.equal(untrained[k], a[k]) for k in a)
