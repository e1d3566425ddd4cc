"""Processes of one distributed stage: setup, sharded training, gathered save, and loud checks.

A stage that trains or generates on several devices runs one process per device, started by
``torch.distributed.run`` (the stage launcher does that; ``afarm.stages._launch``). Each process
calls :func:`init_process_group` once with the number of processes it was promised; from then
on the library asks this module who it is (:func:`rank`, :func:`world_size`, :func:`device`).
With one process nothing is initialised and every function answers for a single process, so
the tiny scale runs exactly the code it always ran.

The backend is ``nccl`` on GPUs and ``gloo`` on CPUs: the tests run the same sharded code as a
GPU node, in two CPU processes on gloo. Every collective has a timeout (``timeout_s``): a rank
that hangs makes the others fail instead of waiting forever.

Training (plain PyTorch, as torchtune): :func:`prepare_model` shards a Hugging Face model with
FSDP2 (``fully_shard`` on each decoder layer, then on the root), so each of N ranks holds 1/N of
every weight, its gradient and its AdamW state. ``precision="bf16_mixed"`` keeps those shards in
fp32 (the masters) and runs forward and backward in bf16, reducing gradients in fp32. A training
loop then uses :func:`micro_batches` (accumulation steps of a global batch), :func:`step_share`
(this rank's micro-batches of a step), :func:`accumulate` (one micro-batch's backward; its gradients
are reduce-scattered at once, so a rank holds only its shard of the accumulated gradient),
:func:`optimizer_step` (clip, step, schedule, zero) and :func:`mean_across_ranks` (logged
values); :func:`save_model` gathers the weights and writes an ordinary Hugging Face folder.
With one process and fp32 every one of these is the plain single-process operation.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from afarm import held_memory

PRECISIONS = ("fp32", "bf16_mixed")  # training precision (params key ``precision``)


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
    _mesh.cache_clear()  # the mesh belonged to that group


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


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``tensor`` as rank ``src`` holds it, on every rank (same shape and dtype everywhere; in place)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- training


def micro_batches(global_batch: int, micro_batch: int, key: str = "batch_size") -> int:
    """Accumulation steps per optimizer step: ``global_batch / (micro_batch * world_size())``.

    The global batch (examples per optimizer step) is a hyperparameter of the recipe; the
    micro-batch is what fits on one device. ``key`` names the params key in the error.
    """
    per_pass = micro_batch * world_size()
    if global_batch < 1 or micro_batch < 1 or global_batch % per_pass:
        raise DistributedError(
            f"{key} {global_batch} is not a multiple of micro_batch_size {micro_batch} x {world_size()} processes; "
            f"set {key} to a multiple of {per_pass} (or change micro_batch_size / launch.processes)"
        )
    return global_batch // per_pass


def step_share(step: Sequence) -> list[tuple[object, float]]:
    """This rank's micro-batches of one optimizer step, each with the divisor of its loss.

    Rank r takes micro-batches r, r + world, ... of ``step`` (the step's micro-batches in
    global order), so the global batch and its order do not depend on the process count. A
    micro-batch's mean loss is divided by ``len(step) / world``: gradients are averaged over
    the ranks afterwards, so each micro-batch weighs ``1 / len(step)`` in the step, exactly as
    with one process (``loss / len(step)``). A rank with fewer micro-batches than the others (a
    short last step) gets repeats of ``step[0]`` with divisor ``inf`` (weight 0): every rank
    must run the same number of forward passes, since each pass gathers the sharded weights.
    """
    w, r = world_size(), rank()
    divisor = len(step) / w
    mine = [(batch, divisor) for batch in step[r::w]]
    return mine + [(step[0], math.inf)] * (math.ceil(len(step) / w) - len(mine))


def _decoder_layers(model) -> Sequence[torch.nn.Module]:
    layers = getattr(getattr(model, "base_model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise DistributedError(f"cannot shard {type(model).__name__}: no decoder layers at model.base_model.layers")
    return layers


def _ensure_process_group() -> None:
    """A one-process group (in-memory store, no port) so FSDP also gives one device mixed precision."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def prepare_model(model, *, train: bool, precision: str = "fp32", gradient_checkpointing: bool = False):
    """The model to train (``train=True``) or to run frozen, on this process's device.

    One process with fp32: the model itself (the tiny scale's bytes). Otherwise FSDP2: each
    decoder layer, then the root, is ``fully_shard``-ed over all ranks. Trained models need
    fp32 parameters, which stay the fp32 masters; with ``bf16_mixed`` forward and backward run
    in bf16 and gradients are reduced in fp32. A frozen model is stored in bf16 under
    ``bf16_mixed`` (it needs no masters), and is sharded only when there are several ranks.
    Raises ``DistributedError`` if a weight ends up unsharded while several ranks exist.
    Preparing a model twice returns it as it is (its parameters resharded: call it again right
    before building the optimizer).

    Loading once: with several ranks, a model that only rank 0 read from its checkpoint and that the
    others built on the meta device (``afarm.models.lm.load_model(..., rank0_only=True)``) is sharded
    on every rank, then each rank receives its shards of rank 0's weights (and rank 0's buffers, e.g.
    the rotary frequencies, which no checkpoint holds): no rank but 0 ever holds a whole weight.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if is_sharded(model):  # prepared already (a stage prepares, evaluates, then trains)
        _reshard(model)
        held_memory.register(model, train)
        return model
    if train and gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not train:
        model.requires_grad_(False)
        model.eval()
        if precision == "bf16_mixed":
            model.to(torch.bfloat16)
    if world_size() == 1 and (precision == "fp32" or not train):
        model = model.to(device())
        held_memory.register(model, train)
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if train and any(p.dtype != torch.float32 for p in model.parameters()):
        raise DistributedError("a model trained with FSDP needs float32 parameters (the fp32 masters); load it with dtype float32")
    _ensure_process_group()
    meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    from_rank0 = world_size() > 1 and any(all_gather_objects(meta))  # a collective: every rank prepares the same models
    if from_rank0 and is_main() and meta:
        raise DistributedError("rank 0 must load the weights of a model the other ranks built on the meta device")
    weights = model.state_dict() if from_rank0 and is_main() else {}  # rank 0's whole weights, sent after sharding
    mesh = _mesh(device().type)
    kwargs = {"mesh": mesh}
    if train and precision == "bf16_mixed":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if not train:  # FSDP keeps the root gathered after a forward, for a backward a frozen model never runs
        model.register_forward_hook(lambda module, args, output: module.reshard())
    if from_rank0:
        _receive_from_rank0(model, weights)
    _check_sharded(model)
    held_memory.register(model, train)
    return model


@functools.lru_cache(maxsize=None)
def _mesh(device_type: str):
    """One device mesh over all ranks for every model of the stage (a mesh per model would create a
    communicator each: four in PPO)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size(),))


def _receive_from_rank0(model, weights: dict) -> None:
    """Fill every rank's shards from rank 0's whole ``weights`` (the others pass ``{}``), and its buffers."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not is_main():
        model.to_empty(device=device())  # storage for the shards (and buffers) of a model built on the meta device
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():  # non-persistent buffers (rotary inv_freq) are in no state dict
        dist.broadcast(buffer, src=0)


def _reshard(model) -> None:
    """Register the sharded parameters again. A forward pass without autograd (evaluation) leaves the
    root's parameters gathered; an optimizer built then would hold those copies, not the shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _check_sharded(model) -> None:
    """Every parameter is a DTensor shard; with N > 1 ranks each holds 1/N of every weight's rows."""
    from torch.distributed.tensor import DTensor

    n = world_size()
    for name, p in model.named_parameters():
        if not isinstance(p, DTensor):
            raise DistributedError(f"parameter {name} is not sharded after fully_shard")
        if n > 1 and p.shape[0] >= n and p.to_local().numel() >= p.numel():
            raise DistributedError(f"parameter {name} is held whole on rank {rank()} of {n}: sharding did not happen")


NO_SYNC_VARIABLE = "AFARM_NO_SYNC_ACCUMULATION"  # afarm.launch sets it from params launch.no_sync_accumulation


def no_sync_accumulation() -> bool:
    """Whether FSDP defers the gradient reduction to a step's last micro-batch (``launch.no_sync_accumulation``)."""
    return os.environ.get(NO_SYNC_VARIABLE, "0") == "1"


@contextlib.contextmanager
def accumulate(model, sync: bool) -> Iterator[None]:
    """Run one micro-batch's forward and backward; ``sync``: it is the step's last micro-batch.

    Under FSDP every micro-batch's gradients are reduce-scattered at once, added to this rank's
    sharded gradient: a rank never holds more than its shard of the accumulated gradient (and the
    gradients of the layer being reduced). With ``launch.no_sync_accumulation`` the reduction waits
    for the last micro-batch (``sync``), which saves the other reductions but keeps each trained
    model's whole fp32 gradient on every rank until then (FSDP2's ``set_requires_gradient_sync``);
    the memory plan counts that, and a stage it does not fit does not start. The sums differ from
    a single process's only in float rounding, either way.
    """
    deferred = is_sharded(model) and not sync and no_sync_accumulation()
    if deferred:
        model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        if deferred:
            model.set_requires_gradient_sync(True)
    held_memory.record("micro_batch", reduced=not deferred)


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float | None) -> float:
    """Clip the gradients to total norm ``max_grad_norm`` (0 or None: no clipping), step the
    optimizer and the schedule (``scheduler`` None: the caller steps it at its own pace, as PPO once
    per PPO step), clear the gradients; return the total gradient norm (before
    clipping; over all shards)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not is_sharded(model):
        if max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # DTensor: sum over the shards
        if max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, norm)
    optimizer.step()
    held_memory.record("optimizer_step", optimizer)
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def mean_across_ranks(value):
    """The mean over the ranks of ``value``, a float or a list of floats (itself with one process)."""
    if world_size() == 1:
        return value
    values = [value] if isinstance(value, (int, float)) else list(value)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    means = [float(v) / world_size() for v in t.tolist()]
    return means[0] if isinstance(value, (int, float)) else means


def full_state_dict(model) -> dict | None:
    """The whole (unsharded) state dict on CPU on rank 0, None on the others."""
    if not is_sharded(model):
        return model.state_dict() if is_main() else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    # A tied weight (e.g. lm_head = embed_tokens) is gathered once per name; let the names share one
    # tensor again, as in an unsharded model's state dict, so save_pretrained writes it once.
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first and name in state:
            state[name] = state[first[id(p)]]
        first.setdefault(id(p), name)
    return state


def save_model(model, tokenizer, path, extra_files: dict[str, str] | None = None, generation_config=None) -> None:
    """Write the gathered model and its tokenizer as an ordinary Hugging Face folder (rank 0,
    atomically), plus ``extra_files`` (name -> text) and ``generation_config`` (a transformers
    ``GenerationConfig``, replacing the model's own); then every rank waits for it. Stages save
    through ``afarm.models.lm.save_model``, which describes the folder and calls this."""
    from afarm.io import atomic_dir

    state = full_state_dict(model)
    if is_main():
        with atomic_dir(path) as tmp:
            if is_sharded(model):
                model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            else:
                model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if generation_config is not None:
                generation_config.save_pretrained(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
    barrier()

# ---------------------------------------------------------------- data-parallel inference (generation, reward scoring)
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
