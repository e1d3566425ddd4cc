"""Processes of one distributed stage: setup, rank, device, and loud checks.

A stage that trains or generates on several devices runs one process per device, started by
``torch.distributed.run`` (the stage launcher does that; ``afarm.stages._launch``). Each process
calls :func:`init_process_group` once with the number of processes it was promised; from then
on the library asks this module who it is (:func:`rank`, :func:`world_size`, :func:`device`).
With one process nothing is initialised and every function answers for a single process, so
the tiny scale runs exactly the code it always ran.

The backend is ``nccl`` on GPUs and ``gloo`` on CPUs: the tests run the same sharded code as a
GPU node, in two CPU processes on gloo. Every collective has a timeout (``timeout_s``): a rank
that hangs makes the others fail instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """The processes are not what the stage was asked to run in."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: its GPU under nccl (``LOCAL_RANK``), else the one GPU if there is
    one, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def init_process_group(expected: int, backend: str = "gloo", timeout_s: float = 120) -> None:
    """Join the stage's ``expected`` processes (a no-op for one). Raises ``DistributedError`` when
    the process was started alone or in a group of another size."""
    found = int(os.environ.get("WORLD_SIZE", "1"))
    if found != expected:
        how = "alone" if found == 1 else f"in {found} processes"
        raise DistributedError(
            f"this stage should run in {expected} processes but was started {how}; start stages with "
            "`python -m afarm.stages <module> ...` (the command in dvc.yaml), which launches them"
        )
    if expected == 1 or dist.is_initialized():
        return
    if backend == "nccl":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= int(os.environ.get("LOCAL_RANK", 0)):
            raise DistributedError(f"backend nccl needs a GPU for local rank {os.environ.get('LOCAL_RANK', 0)}; "
                                   "on CPUs set launch.backend: gloo")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled; for small things such as a path or an error)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- Data-parallel inference (generation, reward scoring) -------------------------------------
# Each process holds a full copy of the model and computes whole batches of one fixed list of
# batches, so every batch is exactly the batch a single process would form (same rows, same
# padding, same numerics); the results are then gathered, in input order, on every rank.


def batches_of_rank(num_batches: int, of_rank: int | None = None, world: int | None = None) -> range:
    """Indices of the batches that rank ``of_rank`` (default: this one) computes out of ``num_batches``:
    every ``world``-th batch from its rank. Strided rather than contiguous: batches sorted by length
    then spread their cost evenly over the ranks."""
    of_rank = rank() if of_rank is None else of_rank
    world = world_size() if world is None else world
    return range(of_rank, num_batches, world)


def merge_from_ranks(local: dict) -> dict:
    """The union of every rank's ``{key: result}``, on every rank (each key computed by exactly one rank)."""
    merged: dict = {}
    for part in all_gather_objects(local):
        overlap = merged.keys() & part.keys()
        if overlap:
            raise DistributedError(f"{len(overlap)} results were computed by two ranks, e.g. {next(iter(overlap))!r}")
        merged.update(part)
    return merged
