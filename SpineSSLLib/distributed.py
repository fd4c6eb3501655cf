"""torchrun / DistributedDataParallel plumbing for the training loop: this process's rank,
process-group set-up, loaders that give each rank its share, moving batches to the device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def dist_info() -> DistInfo:
    """Rank / world size from the ``torchrun`` environment (1 process when not launched so)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup_distributed() -> DistInfo:
    info = dist_info()
    if info.enabled:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(info.local_rank)
            dist.init_process_group(backend=backend)
    return info


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors in (nested) dict/list/tuple batches to ``device`` (non-blocking from pinned
    memory); 5-D float tensors go channels-last-3d when asked."""
    if torch.is_tensor(batch):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 5 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last_3d)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def make_loader(dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, drop_last: bool = False,
                seed: int = 0, collate_fn=None, device: torch.device | None = None):
    """A DataLoader that splits the data across ranks under torchrun (DistributedSampler), with
    worker processes, pinned memory on CUDA and persistent workers."""
    from torch.utils.data import DataLoader, DistributedSampler

    info = dist_info()
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
        shuffle = False
    pin = bool(device is not None and device.type == "cuda")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, collate_fn=collate_fn, pin_memory=pin,
                      persistent_workers=num_workers > 0)


def set_epoch(loader, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
