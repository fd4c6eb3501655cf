"""Pair batches built where the model runs: the decoded float16 volumes held on the training
device (or in pinned host memory when they do not fit), pairs gathered by index there — no
DataLoader workers, no per-item copies, no host-to-device transfer per batch (issue #17).

``DeviceVolumes(cache, rows, device)`` stacks every row's ``(9, h, w)`` volume from a
``data.VolumeCache`` (its memory-mapped float16 ``.npy`` files) into one float16 tensor: on a CUDA
device when it takes at most ``fraction`` of the free device memory (an H200 holds a 10,000-scan
cohort's VBs at the `paper` size: 70,000 x 0.9 MB = 63 GB), else in pinned host memory; on the
CPU in ordinary memory.  ``DevicePairLoader(rows, volumes, sampler, batch_size)`` iterates a
``data.PairSampler`` like ``DataLoader(data.PairDataset(rows, cache), sampler=sampler,
batch_size=...)`` and yields the same batches (keys, dtypes, values: tested), already on the
device; augmentation then runs there as batched ops (``train.fit``'s ``augment``,
``transforms.VolumeAugment``: one affine resampling for the whole batch).  ``train.fit`` takes it
as its ``train_loader`` (``len``, iteration, ``sampler.set_epoch``).

``benchmarks/pretrain_bench.py`` measures its pairs/s against the model's (``gpu_check.sh``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import PairSampler, VolumeCache, VolumeRow


def volume_bytes(rows: Sequence[VolumeRow], hw: tuple[int, int], depth: int = 9) -> int:
    """Bytes of ``rows``' volumes as float16 at in-plane size ``hw``."""
    return len(rows) * depth * int(hw[0]) * int(hw[1]) * 2


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.5) -> bool:
    """Whether ``nbytes`` is at most ``fraction`` of the device's free memory (always for the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class DeviceVolumes:
    """``rows``' volumes as one ``(N, 9, h, w)`` float16 tensor (row order), on ``device`` when
    they fit (``where`` = "device"), else in pinned host memory (``where`` = "pinned")."""

    def __init__(self, cache: VolumeCache, rows: Sequence[VolumeRow], device, fraction: float = 0.5,
                 chunk: int = 512):
        self.device = torch.device(device)
        self.rows = list(rows)
        h, w = cache.hw
        n = len(self.rows)
        on_device = fits_on_device(volume_bytes(self.rows, (h, w)), self.device, fraction)
        cuda = self.device.type == "cuda"
        self.where = "device" if (on_device or not cuda) else "pinned"
        store = self.device if self.where == "device" else torch.device("cpu")
        self.data = torch.empty((n, 9, h, w), dtype=torch.float16, device=store,
                                pin_memory=self.where == "pinned")
        staging = torch.empty((min(chunk, max(n, 1)), 9, h, w), dtype=torch.float16, pin_memory=cuda)
        for s in range(0, n, chunk):
            part = self.rows[s:s + chunk]
            for k, r in enumerate(part):
                staging[k].numpy()[...] = cache.raw(r)
            self.data[s:s + len(part)].copy_(staging[:len(part)], non_blocking=False)
        if cuda:
            torch.cuda.synchronize(self.device)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * 2

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 9, h, w)`` float32 on the device for row indices ``idx``."""
        if self.where == "device":
            return self.data.index_select(0, idx.to(self.data.device)).float().unsqueeze(1)
        out = torch.empty((len(idx), *self.data.shape[1:]), dtype=torch.float16, pin_memory=True)
        torch.index_select(self.data, 0, idx.cpu(), out=out)
        return out.to(self.device, non_blocking=True).float().unsqueeze(1)


class DevicePairLoader:
    """``DataLoader(PairDataset(rows, cache), sampler=sampler, batch_size=batch_size)``'s batches,
    built on the device from ``DeviceVolumes``: ``a``, ``b`` (B, 1, 9, h, w) float32, ``y``
    float32, ``level`` / ``subject_a`` / ``subject_b`` / ``aux_<name>_a|_b`` int64."""

    def __init__(self, rows: Sequence[VolumeRow], volumes: DeviceVolumes, sampler: PairSampler, batch_size: int):
        if len(rows) != len(volumes.rows) or any(r is not v for r, v in zip(rows, volumes.rows)):
            raise ValueError("DevicePairLoader: volumes must be built from the same rows (same order)")
        self.rows, self.volumes, self.sampler, self.batch_size = list(rows), volumes, sampler, int(batch_size)
        dev = volumes.device
        subjects = sorted({r.subject_key for r in self.rows})
        sid = {s: n for n, s in enumerate(subjects)}
        self._level = torch.tensor([r.level_index for r in self.rows], dtype=torch.int64, device=dev)
        self._subject = torch.tensor([sid[r.subject_key] for r in self.rows], dtype=torch.int64, device=dev)
        names = [name for name, _ in self.rows[0].aux] if self.rows else []
        self._aux = {name: torch.tensor([r.aux[k][1] for r in self.rows], dtype=torch.int64, device=dev)
                     for k, name in enumerate(names)}

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        # a DataLoader iterator draws one int64 base seed from torch's global generator; draw it
        # too, so that training's random stream (augmentation, dropout) is the same with either loader
        torch.empty((), dtype=torch.int64).random_()
        dev = self.volumes.device
        pairs = list(iter(self.sampler))
        for s in range(0, len(pairs), self.batch_size):
            chunk = torch.tensor(pairs[s:s + self.batch_size], dtype=torch.int64)
            ia, ib = chunk[:, 0].to(dev, non_blocking=True), chunk[:, 1].to(dev, non_blocking=True)
            batch = {"a": self.volumes.gather(ia), "b": self.volumes.gather(ib),
                     "y": chunk[:, 2].to(dev, dtype=torch.float32, non_blocking=True),
                     "level": self._level[ia], "subject_a": self._subject[ia], "subject_b": self._subject[ib]}
            for name, t in self._aux.items():
                batch[f"aux_{name}_a"], batch[f"aux_{name}_b"] = t[ia], t[ib]
            yield batch
