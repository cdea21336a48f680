"""Process groups, devices, sharded loaders and cross-rank reductions for the Trainer.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the process group
is initialised with NCCL on GPUs and gloo on CPUs; without it everything degrades to a single
process and these helpers are no-ops. Batch sizes are per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detprune.data.collate import collate_detection
from detprune.errors import DetpruneError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``"cuda"`` becomes this process's GPU (``cuda:LOCAL_RANK``); ``None`` picks CUDA if present."""
    if isinstance(name, torch.device):
        return name
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DetpruneError(f"device '{name}' asked for, but no CUDA device is visible to torch")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DetpruneError(f"unknown device {name!r}: {exc}") from exc


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes; returns whether this run is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for convenience)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects; for predictions, not tensors in bulk)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(*modules: torch.nn.Module | None, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BN running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step of an
    epoch every rank holds statistics updated by its own shard only. Syncing them before
    evaluation and saving makes all ranks evaluate, and rank 0 save, one and the same model.
    """
    if not is_distributed():
        return
    for module in modules:
        if module is not None:
            for buf in module.buffers():
                dist.broadcast(buf, src=src)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes indices r, r+W, r+2W, ...; no padding, no duplicates.

    ``DistributedSampler`` pads the last shard with repeated samples, which would count some
    images twice in top-1 or mAP; this one does not, so metrics over ranks are exact.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank_: int | None = None):
        self.n = len(dataset)  # type: ignore[arg-type]
        self.world = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    collate_fn: Callable | None = None,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader sharded over ranks.

    Training shuffles with ``DistributedSampler`` even in one process: its order depends on
    ``seed + epoch`` only (the Trainer calls ``set_epoch``), so a resumed run sees the same batches
    as an uninterrupted one. Detection datasets (``dataset.task == "detection"``) get
    ``collate_detection`` unless a collate is given. Incomplete last batches are dropped in training (BatchNorm cannot
    train on a single sample); evaluation sees every sample exactly once (:class:`ShardSampler`).
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DetpruneError("the dataset is empty")
    if collate_fn is None and getattr(dataset, "task", None) == "detection":
        collate_fn = collate_detection
    if train:
        sampler: Sampler[int] = DistributedSampler(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False
        )
        drop_last = len(sampler) >= batch_size  # type: ignore[arg-type]
    else:
        sampler, drop_last = ShardSampler(dataset), False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )
