"""The stage launcher: how one stage process (or one process per device) is started.

Every engine runs a stage as ``python -m afarm.stages [--threads N] <module> --flag path ...`` (the
command in ``dvc.yaml`` and in the Snakefile's rules), so Snakemake, ``dvc repro`` and a SLURM job all start
it the same way. The launcher reads the ``launch`` section of params.yaml (``afarm.launch``), sets the environment
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
* ``no_sync_accumulation``: whether FSDP reduces gradients after every micro-batch (the default) or
  after a step's last one only (``afarm.launch``); the memory plan counts what the choice holds.

Running a stage module directly (``python -m afarm.stages.sft``) skips this: fine for a quick
look, but only the launcher's environment is the pipeline's.
"""

from __future__ import annotations

import os
import sys

from afarm.config import load_params
from afarm.io import InputError
from afarm.launch import environment, launch_config, processes


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
