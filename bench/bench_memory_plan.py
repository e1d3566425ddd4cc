"""Print the memory plan of every paper-scale stage on 8, 4 and 1 x 80 GB (docs/memory_plan.md).

    python bench/bench_memory_plan.py                 # the summary table (Markdown)
    python bench/bench_memory_plan.py --detail        # also every stage's rows on 8 x 80 GB
    python bench/bench_memory_plan.py --scale small   # the small scale: every stage on its one GPU (24 GB),
                                                      # the open judge included (--judges api: without it)
    python bench/bench_memory_plan.py --host          # host memory per node of every paper stage against
                                                      # what the stage table asks SLURM for (mem_mb)

Inputs: params.yaml at `scale: paper` (micro-batches, sequence lengths, gradient_checkpointing where
a section sets it), LLaMA-7B's architecture (`base_model.model.pretrained`, a known hub id). The
plan imports no torch; the script also times one `check_stage` call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from afarm import memory_plan as mp  # noqa: E402
from afarm.config import load_params  # noqa: E402


def host_table(params: dict) -> str:
    """Markdown: every paper stage of the DAG, its processes, the host memory the plan gives its node
    (afarm.memory_plan.host_ram) and the memory the stage table asks SLURM for (mem_mb)."""
    from afarm import dag, launch

    params = {**params, "scale": "paper"}
    arch = mp.stage_arch(params)
    rows = ["| stage module | processes | host GB (plan) | SLURM mem_mb (stage table) | fits |", "|---|---:|---:|---:|---|"]
    seen = set()
    for stage in dag.STAGES:
        if stage.module not in mp.HOST_COPIES or stage.module in seen:
            continue
        seen.add(stage.module)
        n, asked = launch.processes(stage.module, params), stage.resources("paper").mem_mb * 1e6
        need = mp.host_ram(stage.module, arch, n)
        rows.append(f"| {stage.module} | {n} | {need / mp.GB:.0f} | {asked / 1e6:,.0f} | {'yes' if need <= asked else '**no**'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--memory_gb", type=float, default=80.0)
    parser.add_argument("--detail", action="store_true")
    parser.add_argument("--scale", choices=["paper", "small"], default="paper")
    parser.add_argument("--judges", choices=["local", "api"], default="local")
    parser.add_argument("--host", action="store_true", help="host memory per node against the stage table's mem_mb")
    args = parser.parse_args()
    params = load_params(args.params)
    if args.host:
        print(f"host memory per node, paper scale; {mp.PROCESS_HOST_BYTES / mp.GB:.0f} GB per process assumed; GB = 1e9 bytes\n")
        print(host_table(params))
        return
    if args.scale == "small":
        plans = mp.scale_plans(params, "small", args.judges)
        arch = plans[0].arch
        print(f"small scale, judges: {args.judges}; base model {arch.num_params() / 1e9:.3f}B parameters; one device each; GB = 1e9 bytes\n")
        print(mp.markdown_table(plans))
        print(f"\nsmallest device for every stage: {mp.smallest_device_gb(plans):.1f} GB")
        if args.detail:
            for p in plans:
                print("\n" + p.markdown())
        return
    params["scale"] = "paper"
    arch = mp.stage_arch(params)
    plans = mp.paper_plans(params, memory_gb=args.memory_gb)
    start = time.perf_counter()
    mp.check_stage("ppo", params, devices=8, memory_gb=args.memory_gb)
    elapsed = time.perf_counter() - start
    print(f"LLaMA-7B: {arch.num_params() / 1e9:.3f}B parameters (LM), {arch.num_params('scalar') / 1e9:.3f}B (scalar head); "
          f"activations: checkpointing off / on; GB = 1e9 bytes per device\n")
    print(mp.markdown_table(plans))
    print(f"\none check_stage call: {elapsed * 1e3:.2f} ms")
    if args.detail:
        for p in plans:
            if p.devices == 8:
                print("\n" + p.markdown())


if __name__ == "__main__":
    main()
