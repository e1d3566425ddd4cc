"""The stage launcher: how one stage process (or one process per device) is started.

Every engine runs a stage as ``python -m afarm.stages [--threads N] <module> --flag path ...`` (the
command in ``dvc.yaml`` and in the Snakefile's rules), so Snakemake, ``dvc repro`` and a SLURM job all start
it the same way. The launcher reads the ``launch`` section of params.yaml, sets the environment
that decides the stage's bytes, and replaces itself (``exec``) with the stage module:

* ``num_threads``: threads of the numeric libraries (OpenMP, MKL, OpenBLAS). Their sums depend
  on the thread count, so a stage gets the same count under every engine (Snakemake exports a
  rule's ``threads``; ``dvc repro`` exports nothing, which gave numpy every core). Unpinned
  (``null``, the paper scale), a stage uses the CPUs its engine granted: ``--threads N`` before
  the module (the Snakefile passes the rule's ``{threads}``, which SLURM turned into
  ``--cpus-per-task``), else ``SLURM_CPUS_PER_TASK`` (``dvc repro`` in an allocation), divided
  among the stage's processes; torch reads the count at start (``torch.get_num_threads()``).
* ``cpu_kernels``: on x86, ATen, oneDNN, MKL and OpenBLAS choose kernels by instruction set
  (AVX-512 or AVX2), and the choice changes the last bits of float results. ``avx2`` pins every
  library to its AVX2 path, which every x86 machine of the last decade has, so the bytes do not
  depend on the machine; ``native`` leaves the choice to the libraries.
* ``python_hash_seed``: ``PYTHONHASHSEED``, read by Python only at start-up.
* ``processes``: a stage whose module is in ``afarm.dag.DISTRIBUTED`` runs in that many
  processes (``torch.distributed.run``, one per device; ``per_device`` = the GPUs the stage
  table reserves at this scale). The stage process checks that it got exactly that many
  (``afarm.stages._cli``): a stage asked for N processes that finds itself alone stops.
* ``device_memory_gb``: before anything starts, the stage's memory plan (``afarm.memory_plan``:
  parameters, gradients, optimizer state, activations and KV cache per device under its
  sharding over its processes) must fit; one that does not stops with one line naming the stage
  and the numbers, instead of running out of memory an hour later.

Running a stage module directly (``python -m afarm.stages.sft``) skips this: fine for a quick
look, but only the launcher's environment is the pipeline's.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

from afarm.config import load_params, section, to_dataclass
from afarm.io import InputError

SECTION = "launch"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SLURM_CPUS = "SLURM_CPUS_PER_TASK"  # CPUs SLURM allocated to each task of the job
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
    return env


def command(module: str, argv: list[str], params: dict) -> list[str]:
    """The stage process's command line: the module itself, or torch.distributed.run over N processes."""
    n = processes(module, params)
    stage = ["-m", f"afarm.stages.{module}", *argv]
    if n == 1:
        return [sys.executable, *stage]
    # --standalone: a rendezvous on a free local port, so several stages may run on one machine at once.
    # "--": the stage's flags are not torchrun's (argparse would read the stage's --log as an
    # ambiguous abbreviation of torchrun's --log-dir / --logs-specs and stop); torchrun drops it.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", stage[0], stage[1], "--", *stage[2:]]


def check_memory(module: str, params: dict):
    """The stage's memory plan on its devices (None when ``device_memory_gb`` is unset or the stage
    holds no model); raises ``afarm.memory_plan.PlanError`` when it does not fit."""
    cfg = launch_config(params)
    if cfg.device_memory_gb is None:
        return None
    from afarm import memory_plan

    return memory_plan.check_stage(module, params, devices=processes(module, params), memory_gb=cfg.device_memory_gb)


def params_path(argv: list[str]) -> str:
    """The ``--params`` value among a stage's flags (every stage takes it; default params.yaml)."""
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--params="):
            return arg.split("=", 1)[1]
    return "params.yaml"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from afarm.dag import STAGES

    modules = sorted({s.module for s in STAGES})
    granted = None
    if argv[:1] == ["--threads"]:
        if len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) < 1:
            print(f"error: --threads takes a positive integer, got {argv[1] if len(argv) > 1 else 'nothing'!r}", file=sys.stderr)
            sys.exit(2)
        granted, argv = int(argv[1]), argv[2:]
    if not argv or argv[0] not in modules:
        got = repr(argv[0]) if argv else "nothing"
        print(f"usage: python -m afarm.stages [--threads N] <stage module> [flags]; got {got}; stage modules: {', '.join(modules)}", file=sys.stderr)
        sys.exit(2)
    module, rest = argv[0], argv[1:]
    try:
        params = load_params(params_path(rest))
        cmd, env = command(module, rest, params), environment(params, module=module, granted=granted)
        check_memory(module, params)
    except InputError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
