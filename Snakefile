# One rule per entry of the stage table in src/afarm/dag.py: no second list of stages.
# Run:  snakemake --cores all            (params.yaml `scale` picks tiny, small or paper)
#       snakemake --profile workflow/profiles/slurm   (on a cluster)
import json

from afarm.config import load_params, section
from afarm.dag import STAGES, final_targets, is_directory, stage_params
from afarm.stages._cli import check_params

if config:  # --config / --configfile: the stages read params.yaml, so an override would be silently ignored
    raise ValueError(
        f"snakemake --config/--configfile is not supported (got {sorted(config)}): every stage reads params.yaml; "
        "edit params.yaml, or use `dvc exp run -S key=value` for a sweep"
    )

PARAMS = load_params("params.yaml")
check_params(PARAMS)  # unknown sections / paths keys fail here, before any job starts
SCALE = PARAMS["scale"]
SHARED = PARAMS["paths"]["shared_data"]


rule all:
    input:
        final_targets(),


for stage in STAGES:
    res = stage.resources(SCALE)

    rule:
        name:
            stage.name
        input:
            stage.dep_paths(SHARED),
        output:
            [directory(p) if is_directory(p) else p for p in stage.outs.values()],
            list(stage.metrics.values()),
            list(stage.plots.values()),
        params:
            # Rerun when the resolved params of this scale change (Snakemake's params trigger).
            resolved=json.dumps({s: section(PARAMS, s) for s in stage_params(stage)}, sort_keys=True),
            # Bound now: a `shell:` expression would be evaluated late, after the loop has moved on.
            cmd=stage.command(SHARED),
        threads: res.cpus
        resources:
            mem_mb=res.mem_mb,
            gpu=res.gpus,
            runtime=res.runtime,
        shell:
            "{params.cmd}"
