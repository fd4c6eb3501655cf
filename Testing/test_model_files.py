"""Model files are never unpickled: a planted malicious pickle is refused and never executes."""

import hashlib
import json
import pickle

import pytest
import torch

from SpineSSLLib import checkpoint
from SpineSSLLib.errors import CheckpointError


class _Payload:
    """Unpickling this object creates the file named in ``target`` (what an attacker would do)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)


def test_planted_pickle_checkpoint_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _plant(ckpt / "model.pt", marker)
    # sanity: this really is a live payload (unpickling it would create the marker)
    with pytest.raises(CheckpointError, match="not a SpineSSL checkpoint"):
        checkpoint.load_weights(ckpt)
    with pytest.raises(CheckpointError):
        checkpoint.load_checkpoint(ckpt, torch.nn.Linear(2, 2))
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_with_forged_metadata_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _plant(ckpt / "model.safetensors", marker)
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    (ckpt / "checkpoint.json").write_text(json.dumps({
        "schema": checkpoint.SCHEMA, "config": {}, "files": {"model.safetensors": digest}}))
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint.load_weights(ckpt)
    assert not marker.exists()


def test_torch_save_zip_pickle_is_refused(tmp_path):
    """A torch.save()'d file (zip + pickle) in place of the weights is refused, not loaded."""
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": _Payload(str(marker))}, ckpt / "model.safetensors")
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    (ckpt / "checkpoint.json").write_text(json.dumps({
        "schema": checkpoint.SCHEMA, "config": {}, "files": {"model.safetensors": digest}}))
    with pytest.raises(CheckpointError):
        checkpoint.load_weights(ckpt)
    assert not marker.exists()


def test_the_payload_is_live(tmp_path):
    """Guard against a test that cannot fail: plain pickle.load really would create the marker."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "x.pkl", marker)
    with open(tmp_path / "x.pkl", "rb") as f:
        obj = pickle.load(f)
    obj["state_dict"].close()
    assert marker.exists()
