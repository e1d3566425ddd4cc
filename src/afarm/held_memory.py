"""Bytes a process really holds, in the memory plan's terms: measured, to check ``afarm.memory_plan``.

The memory plan (``afarm.memory_plan``) is arithmetic over params. This module counts what a rank of
a training stage actually keeps, at the points where the plan's terms can be told apart:

* ``trained_parameters`` / ``frozen_parameters``: the storage behind every parameter of the models
  that ``afarm.distributed.prepare_model`` prepared (an FSDP shard is counted with its padding: FSDP2
  pads a weight's first dimension to a multiple of the ranks and keeps the padded shard);
  ``gathered_parameters``: what FSDP holds all-gathered at that moment (e.g. a root module that a
  forward without autograd left unsharded);
* ``gradients``: the storage behind the ``.grad`` of every trained parameter (FSDP's reduce-scatter
  output, padded, shared by a group's shards; counted once per storage);
* ``unsharded_gradients``: FSDP's whole-gradient accumulators of a no-sync micro-batch (the
  ``unsharded_accumulated_grad`` of each FSDP parameter under mixed precision, the unsharded
  parameter's ``.grad`` in fp32);
* ``optimizer_state``: the optimizer's tensors (AdamW's ``exp_avg`` and ``exp_avg_sq``, unpadded
  local shards) and ``optimizer_steps``, its per-parameter ``step`` scalars.

Nothing is counted unless ``AFARM_MEMORY_PROBE`` names a folder: then ``afarm.distributed`` calls
:func:`record` after every micro-batch's backward (phase ``micro_batch``, with whether its gradients
were reduced) and before the optimizer clears the gradients (phase ``optimizer_step``), and each rank
appends one JSON line per call to ``<folder>/held.rank<r>.jsonl``. ``tests/test_memory_measured.py``
compares the lines of 2-process runs of every trainer with the plan of the same small model.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import torch

ENV = "AFARM_MEMORY_PROBE"
_prepared: list[tuple[weakref.ref, bool]] = []  # (model, trained) as prepare_model returned them


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def register(model, trained: bool) -> None:
    """Remember a prepared model (weakly) so that :func:`record` counts its parameters."""
    if enabled():
        _prepared[:] = [(ref, t) for ref, t in _prepared if ref() is not None and ref() is not model]
        _prepared.append((weakref.ref(model), trained))


def _storage_bytes(tensors, seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (DTensors by their local shard), not yet in ``seen``."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = getattr(t, "_local_tensor", t)  # a DTensor's shard on this rank
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _fsdp_params(model):
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            yield from (group.fsdp_params if group is not None else ())


def unsharded_gradient_bytes(model) -> int:
    """Bytes of FSDP's whole-gradient accumulators that ``model`` holds now (0 for an unsharded model)."""
    seen: set[int] = set()
    total = 0
    for fp in _fsdp_params(model):
        total += _storage_bytes([fp.unsharded_accumulated_grad], seen)
        unsharded = getattr(fp, "_unsharded_param", None)
        total += _storage_bytes([getattr(unsharded, "grad", None)], seen)
    return total


def held(optimizer=None) -> dict[str, int]:
    """This rank's bytes now, by the plan's terms (see the module docstring)."""
    seen: set[int] = set()
    out = {"trained_parameters": 0, "frozen_parameters": 0, "gathered_parameters": 0, "gradients": 0,
           "unsharded_gradients": 0, "optimizer_state": 0, "optimizer_steps": 0}
    models = [(ref(), trained) for ref, trained in _prepared if ref() is not None]
    for model, trained in models:
        fsdp = list(_fsdp_params(model))
        key = "trained_parameters" if trained else "frozen_parameters"
        if fsdp:  # the padded shards, and whatever FSDP holds gathered now (a root left unsharded after a forward)
            out[key] += _storage_bytes([fp._sharded_param_data for fp in fsdp], seen)
            out["gathered_parameters"] += _storage_bytes([t for fp in fsdp for t in fp.all_gather_outputs], seen)
        else:
            out[key] += _storage_bytes(model.parameters(), seen)
    for model, trained in models:
        if trained:
            out["gradients"] += _storage_bytes([p.grad for p in model.parameters()], seen)
            out["unsharded_gradients"] += unsharded_gradient_bytes(model)
    if optimizer is not None:
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    out["optimizer_steps" if key == "step" else "optimizer_state"] += _storage_bytes([value], seen)
    return out


def record(phase: str, optimizer=None, **extra) -> None:
    """Append this rank's :func:`held` bytes at ``phase`` to ``$AFARM_MEMORY_PROBE/held.rank<r>.jsonl`` (when set)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    line = {"phase": phase, "rank": rank, "world_size": world, **extra, **held(optimizer)}
    with open(Path(folder) / f"held.rank{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
