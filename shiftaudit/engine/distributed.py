"""``torchrun`` support: shard the images over processes, merge the metric accumulators, identical reports.

Every accumulator keeps per-image values keyed by image id (concatenated on merge, then sorted by id) or integer
sums (added), so merging the shards of any split gives exactly the single-process state. Images are dealt out by
index (image i to rank i mod world), which needs no communication and balances the shards. Tar-shard data goes by
shard instead (shard s to rank s mod world), so that each process opens only its own shard files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, cast

import numpy as np
import torch
import torch.distributed as torch_dist

from shiftaudit.data import make_loader
from shiftaudit.errors import UsageError, first_line
from shiftaudit.metrics.base import Metric, reduce_states

if TYPE_CHECKING:
    from shiftaudit.data.dataset import AuditDataset
    from shiftaudit.data.loader import AuditLoader


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    device: torch.device


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """False only on the non-zero ranks of a ``torchrun`` launch: they neither print nor write files."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def setup(device: torch.device) -> DistContext | None:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA); None for a single process."""
    if env_world_size() <= 1 or not torch_dist.is_available():
        return None
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cast("int | None", device.index) is None:  # torch's stub says int; torch.device("cuda").index is None
            device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            torch_dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            first = first_line(exc)
            raise UsageError(f"Cannot join the torchrun process group: {first}.") from None
    return DistContext(torch_dist.get_rank(), torch_dist.get_world_size(), device)


def shard_indices(n: int, rank: int, world: int, shards: np.ndarray | None = None) -> np.ndarray:
    """The dataset positions one process audits: rank, rank + world, ... (deterministic, no communication).

    ``shards``: the tar shard of each position; then whole shards are dealt out, shard s to rank s mod world.
    """
    if shards is None:
        return np.arange(rank, n, world, dtype=np.int64)
    return np.flatnonzero(np.asarray(shards, dtype=np.int64) % world == rank).astype(np.int64)


def rank_indices(dataset: AuditDataset, rank: int, world: int) -> np.ndarray:
    """This process's positions of ``dataset``: by shard where the data is tar shards, else by index."""
    shard_ids = getattr(dataset, "shard_ids", None)
    return shard_indices(len(dataset), rank, world, shard_ids() if callable(shard_ids) else None)


def shard_loader(
    dataset: AuditDataset, ctx: DistContext, *, batch_size: int, num_workers: int | None, pin_memory: bool
) -> AuditLoader:
    """The engine's usual loader, reading only this process's shard; image ids stay dataset positions."""
    indices = rank_indices(dataset, ctx.rank, ctx.world).tolist()
    return make_loader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, indices=indices)


class _Shard(TypedDict):
    """What each process contributes to the merge (sent with ``all_gather_object``)."""

    states: list[dict[str, np.ndarray]]
    counts: tuple[int, int, int]
    flags: np.ndarray | None
    seen: np.ndarray | None


def merge(
    ctx: DistContext, metrics: list[Metric], dataset: AuditDataset, images: int, nonfinite: int, rows: int
) -> tuple[int, int, int]:
    """Gather every process's accumulator states and counts; every process ends with the merged state."""
    mine: _Shard = {
        "states": [m.state_dict() for m in metrics],
        "counts": (images, nonfinite, rows),
        "flags": getattr(dataset, "_flags", None),
        "seen": getattr(dataset, "_seen", None),
    }
    slots: list[_Shard | None] = [None] * ctx.world
    torch_dist.all_gather_object(slots, mine)
    gathered = cast("list[_Shard]", slots)  # all_gather_object filled every slot
    for i, m in enumerate(metrics):  # each state by its declared reduction, in rank order
        m.load_state_dict(reduce_states(m.reductions(), [g["states"][i] for g in gathered]))
    if mine["flags"] is not None:  # decode flags (unreadable, converted ...) feed the data notes
        dataset._flags = np.bitwise_or.reduce([np.asarray(g["flags"]) for g in gathered])
        dataset._seen = np.logical_or.reduce([np.asarray(g["seen"]) for g in gathered])
    totals = np.sum([g["counts"] for g in gathered], axis=0)
    return int(totals[0]), int(totals[1]), int(totals[2])


def finish() -> None:
    """Leave the process group (the CLI calls this once the report is written)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
