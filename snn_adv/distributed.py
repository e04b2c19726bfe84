"""Sharded training and evaluation with ``torchrun`` (``torch.distributed``): gloo on CPU, nccl on GPU.

Run any entry point under ``torchrun --nproc_per_node N``; without torchrun every helper degrades to one process.

Evaluation is sharded by whole batches: batch ``b`` (a fixed slice of the test set) goes to rank ``b mod N`` and is
evaluated with its global start index, from which the engine derives its random streams (Poisson draws, random
starts), so each batch is computed exactly as it would be on one process, and the merged per-sample results equal
the one-process result for any ``N``.

Training wraps the model in ``DistributedDataParallel`` and feeds each rank a :class:`DistributedSampler` shard:
with per-rank batch ``B/N`` the averaged gradient is that of one process taking batch ``B``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .progress import progress as progress_bar
from .validation import check_positive_int

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import CleanMemo, EvaluationResult

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "dist_info",
    "shard_batches",
    "sharded_evaluate",
    "wrap_ddp",
    "distributed_loader",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: Optional[str] = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``...).

    Backend: ``nccl`` when CUDA is available, else ``gloo``; each GPU rank uses device ``LOCAL_RANK``.
    Without torchrun (no ``WORLD_SIZE``) nothing is initialised and this returns rank 0 of 1.
    """
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist_info()


def dist_info() -> DistInfo:
    """Rank, world size and this rank's device (rank 0 of 1 outside torchrun)."""
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        on_gpu = dist.get_backend() == "nccl"
    else:
        rank, world, on_gpu = 0, 1, torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return DistInfo(rank, world, device)


def shutdown_distributed() -> None:
    """Leave the process group. Every rank waits at a barrier first: a gloo rank that destroys the group while
    another still finishes its last collective aborts ("terminate called without an active exception"), which
    happened here under load."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> list:
    """The ``(batch_index, start, stop)`` slices of ``range(n)`` that rank ``rank`` evaluates (``b mod N == rank``)."""
    batch_size = check_positive_int("batch_size", batch_size)
    world_size = check_positive_int("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"argument 'rank' = {rank!r}: must lie in [0, {world_size - 1}]")
    starts = range(0, n, batch_size)
    return [(b, s, min(s + batch_size, n)) for b, s in enumerate(starts) if b % world_size == rank]


def sharded_evaluate(
    targets: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Any = None,
    source: Optional[nn.Module] = None,
    *,
    seed: int,
    scoring_seeds: Sequence[int],
    batch_size: int,
    desc: str = "evaluate",
    progress: bool = True,
    clean_memo: Optional["CleanMemo"] = None,
) -> Dict[str, "EvaluationResult"]:
    """:func:`snn_adv.evaluation.evaluate` of ``targets`` on ``(images, labels)``, its batches spread over the ranks.

    Each rank evaluates its batches (:func:`shard_batches`) with their global ``start_index``, so every batch draws
    the random streams it would draw in one process; the per-sample results of all ranks are gathered and merged
    (:meth:`~snn_adv.evaluation.EvaluationResult.merge`), and every rank returns the one-process result.
    ``clean_memo``: see :func:`~snn_adv.evaluation.evaluate` (each rank's memo holds its own batches).
    """
    from .evaluation import EvaluationResult, evaluate

    info = dist_info()
    if len(images) != len(labels):
        raise ValueError(f"arguments 'images' and 'labels' must have the same length, got {len(images)} and {len(labels)}")
    for model in [source, *targets.values()]:
        if model is not None:
            model.to(info.device)
    shard = shard_batches(len(images), batch_size, info.rank, info.world_size)
    parts: List[Dict[str, Any]] = []
    for _, start, stop in progress_bar(shard, desc, unit="batch", enabled=None if progress and info.is_main else False):
        results = evaluate(dict(targets), (images[start:stop], labels[start:stop]), attack, source, seed=seed,
                           scoring_seeds=scoring_seeds, batch_size=batch_size, start_index=start, device=info.device,
                           progress=False, clean_memo=clean_memo)
        parts.append({name: result.to_dict() for name, result in results.items()})
    if info.world_size > 1:
        gathered: List[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, parts)  # per-sample 0/1 lists: exact
        parts = [part for rank_parts in gathered for part in rank_parts]
    return {name: EvaluationResult.merge([EvaluationResult.from_dict(part[name]) for part in parts]) for name in targets}


def wrap_ddp(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` on this rank's device under torchrun; the model itself otherwise."""
    info = dist_info()
    model = model.to(info.device)
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def distributed_loader(
    dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False
) -> Tuple[DataLoader, DistributedSampler]:
    """A loader of this rank's shard, batch ``batch_size // world_size`` (global batch ``batch_size``).

    The order is :class:`DistributedSampler`'s seeded permutation for any world size (one process included), so
    the union of the ranks' ``i``-th batches is one process's ``i``-th batch. Call ``sampler.set_epoch(e)`` each epoch.
    """
    info = dist_info()
    batch_size = check_positive_int("batch_size", batch_size)
    if batch_size % info.world_size:
        raise ValueError(f"argument 'batch_size' = {batch_size}: must be a multiple of the world size {info.world_size}")
    sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size // info.world_size, sampler=sampler, drop_last=drop_last), sampler
