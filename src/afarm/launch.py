"""The ``launch`` section of params.yaml: how each stage process starts, as plain values.

Read by the stage launcher (``afarm.stages._launch``, which replaces itself with the stage under this
environment), by the Snakefile (the CPUs a rule asks for), by the memory plan (how many processes a
stage shares its models over, and whether gradients accumulate unsharded) and by the benches, so that
every engine and every check sees the same numbers. See ``afarm.stages._launch`` for what each key
changes in a stage's bytes.

* ``no_sync_accumulation``: under FSDP a trainer reduce-scatters gradients after every micro-batch
  (each rank keeps only its shard of the accumulated gradient), as torchtitan and torchtune do. With
  ``true`` the reduction waits for a step's last micro-batch, which saves the reductions of the others
  but keeps every trained model's whole, unsharded fp32 gradient on every rank meanwhile (measured:
  ``tests/test_memory_measured.py``); the memory plan counts it, and a stage it does not fit refuses
  to start. The launcher passes it to the stage processes as ``AFARM_NO_SYNC_ACCUMULATION``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from afarm.config import section, to_dataclass
from afarm.io import InputError

SECTION = "launch"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SLURM_CPUS = "SLURM_CPUS_PER_TASK"  # CPUs SLURM allocated to each task of the job
NO_SYNC_VARIABLE = "AFARM_NO_SYNC_ACCUMULATION"  # read by afarm.distributed.accumulate
# Environment that pins each x86 numeric library to its AVX2 kernels: ATen's dispatch, MKL's
# conditional numerical reproducibility (bitwise-equal results on any AVX2 processor), oneDNN's
# highest instruction set, and OpenBLAS's kernel family (Haswell = AVX2).
KERNEL_VARIABLES = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "native": {},
}


@dataclass
class LaunchConfig:
    # Our choices for reproducible bytes (see the module docstring); params.yaml sets them per scale.
    num_threads: int | None = 1  # numeric-library threads per process; None: the libraries' default
    cpu_kernels: str = "avx2"  # "avx2" | "native"
    python_hash_seed: int = 0
    processes: int | str = 1  # processes of a distributed stage: an integer, or "per_device"
    backend: str = "gloo"  # torch.distributed backend: "gloo" (CPU) or "nccl" (GPUs)
    timeout_s: int = 120  # a collective that waits longer fails (a hung rank stops the stage)
    # Memory of one device in GB: when set, the stage's memory plan (afarm.memory_plan) must fit on
    # its devices before anything starts; None skips the check (CPU runs).
    device_memory_gb: float | None = None
    # FSDP gradient reduction: false = after every micro-batch (sharded accumulation; torchtitan,
    # torchtune); true = after a step's last micro-batch only (whole fp32 gradients held meanwhile).
    no_sync_accumulation: bool = False


def launch_config(params: dict) -> LaunchConfig:
    values = section(params, SECTION) if SECTION in params else {}  # a params file without it: the defaults
    cfg = to_dataclass(LaunchConfig, values, params.get("_path", "params.yaml"), prefix=f"{SECTION}.")
    where = params.get("_path", "params.yaml")
    if cfg.cpu_kernels not in KERNEL_VARIABLES:
        raise InputError(where, f"expected one of {sorted(KERNEL_VARIABLES)}, got {cfg.cpu_kernels!r}", field=f"{SECTION}.cpu_kernels")
    if cfg.backend not in ("gloo", "nccl"):
        raise InputError(where, f"expected 'gloo' or 'nccl', got {cfg.backend!r}", field=f"{SECTION}.backend")
    if not (cfg.processes == "per_device" or (isinstance(cfg.processes, int) and cfg.processes >= 1)):
        raise InputError(where, f"expected a positive integer or 'per_device', got {cfg.processes!r}", field=f"{SECTION}.processes")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise InputError(where, f"expected a positive integer or null, got {cfg.num_threads!r}", field=f"{SECTION}.num_threads")
    return cfg


def processes(module: str, params: dict) -> int:
    """How many processes stage module ``module`` runs in under ``params``."""
    from afarm.dag import DISTRIBUTED, STAGES

    if module not in DISTRIBUTED:
        return 1
    cfg = launch_config(params)
    if isinstance(cfg.processes, int):
        return cfg.processes
    gpus = {s.resources(params["scale"]).gpus for s in STAGES if s.module == module}
    return max(1, max(gpus, default=1))


def threads(module: str | None, params: dict, granted: int | None) -> int | None:
    """Numeric-library threads of each stage process. ``launch.num_threads`` when params pin it (tiny:
    the bytes depend on it); otherwise the CPUs the engine ``granted`` the stage, shared among its
    processes; None (nothing pinned or granted): the libraries' default."""
    cfg = launch_config(params)
    if cfg.num_threads is not None:
        return cfg.num_threads
    if granted is None:
        return None
    return max(1, granted // (processes(module, params) if module else 1))


def cpus(module: str, params: dict, reserved: int) -> int:
    """CPUs a stage asks its engine for (Snakemake's rule ``threads``, SLURM's ``--cpus-per-task``): what
    the pinned thread count uses over the stage's processes, else the stage table's ``reserved``."""
    cfg = launch_config(params)
    return cfg.num_threads * processes(module, params) if cfg.num_threads is not None else reserved


def environment(params: dict, base: dict[str, str] | None = None, machine: str | None = None,
                module: str | None = None, granted: int | None = None) -> dict[str, str]:
    """The environment a stage process gets: ``base`` (default: this process's) plus the pins.
    ``granted``: CPUs the engine gave the stage (the launcher's ``--threads``); without it,
    ``SLURM_CPUS_PER_TASK`` of ``base`` when set (``dvc repro`` inside a SLURM allocation)."""
    cfg = launch_config(params)
    env = dict(os.environ if base is None else base)
    env["PYTHONHASHSEED"] = str(cfg.python_hash_seed)
    if granted is None and env.get(SLURM_CPUS, "").isdigit() and int(env[SLURM_CPUS]) > 0:
        granted = int(env[SLURM_CPUS])
    n = threads(module, params, granted)
    if n is not None:
        env.update({name: str(n) for name in THREAD_VARIABLES})
    if (machine or platform.machine()).lower() in ("x86_64", "amd64"):
        env.update(KERNEL_VARIABLES[cfg.cpu_kernels])
    env[NO_SYNC_VARIABLE] = "1" if cfg.no_sync_accumulation else "0"
    return env
