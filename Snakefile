# One rule per entry of the stage table in src/afarm/dag.py: no second list of stages.
# Run:  snakemake --cores all            (params.yaml `scale` picks tiny, small or paper)
#       snakemake --profile workflow/profiles/slurm   (on a cluster)
# Overrides: `snakemake --config scale=paper`, `--config 'ppo={kl_coef: {sim: 0.01}}'` or
# `--configfile my.yaml` (same layout as params.yaml) are merged over params.yaml into one file,
# .snakemake/afarm/params-<hash>.yaml, which every rule passes to its stage (`--params`): the rules
# (scale, resources, rerun triggers) and the stages read the same values. Without overrides the
# stages read params.yaml. An override naming a key params.yaml does not have stops here.
# Each job's output also goes to logs/<stage>.log (the launcher's --tee: the terminal still shows it); every
# rule names one conda environment, workflow/envs/afarm.yaml (written from requirements/lock-cpu.txt by
# scripts/lock.py), used with `--software-deployment-method conda`. `snakemake --lint` reports nothing.
import json
import os
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("8")  # pyproject.toml: snakemake>=8

from afarm.config import apply_overrides, load_params, section, write_params
from afarm.dag import LAUNCHER, STAGES, final_targets, is_directory, report_items, stage_params
from afarm.io import InputError
from afarm.stages._cli import check_params
from afarm.launch import cpus

PARAMS = load_params("params.yaml")
PARAMS_FILE = None  # None: the stages read params.yaml
if config:
    try:
        merged = apply_overrides(PARAMS, config, where="snakemake --config/--configfile")
    except InputError as err:
        raise ValueError(" ".join(str(err).split())) from None
    header = f"# params.yaml with snakemake --config/--configfile overrides {json.dumps(config, sort_keys=True)}\n"
    PARAMS_FILE = str(write_params(merged, ".snakemake/afarm", header))
    PARAMS = load_params(PARAMS_FILE)
check_params(PARAMS)  # unknown sections / paths keys fail here, before any job starts
SCALE = PARAMS["scale"]
SHARED = PARAMS["paths"]["shared_data"]
ENV = "workflow/envs/afarm.yaml"
REPORT = report_items()  # outputs in `snakemake --report report.html`, with their captions (workflow/report/)
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    # the conda environment holds afarm's requirements, not afarm: its jobs import it from this checkout
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (os.path.abspath("src"), os.environ.get("PYTHONPATH")) if p))


report: "workflow/report/workflow.rst"


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
            [report(p, **REPORT[p]) if p in REPORT else directory(p) if is_directory(p) else p for p in stage.outs.values()],
            list(stage.metrics.values()),
            [report(p, **REPORT[p]) if p in REPORT else p for p in stage.plots.values()],
        params:
            # Rerun when the resolved params of this scale change (Snakemake's params trigger).
            resolved=json.dumps({s: section(PARAMS, s) for s in stage_params(stage)}, sort_keys=True),
            # Bound now: a `shell:` expression would be evaluated late, after the loop has moved on.
            args=stage.arguments(SHARED, PARAMS_FILE),
        # stdout + stderr of the job (not a DVC output; .gitignore); the terminal shows them too
        log:
            f"logs/{stage.name}.log",
        conda:
            ENV
        # params that pin the thread count (tiny: 1) ask for what they use; unpinned (paper), the
        # stage table's CPUs, which the launcher's --threads hands on to the stage
        threads: cpus(stage.module, PARAMS, res.cpus)
        resources:
            mem_mb=res.mem_mb,
            gpu=res.gpus,
            runtime=res.runtime,
        shell:
            f"{LAUNCHER} --threads {{threads}} --tee {{log}} {{params.args}}"


# Preflight (`afarm check`, src/afarm/annotators/preflight.py): before the first job starts, every judge the
# active params name must answer (retired API models refused, the others asked of their server; local judges'
# files checked). Not a stage, so the stage table, dvc.yaml and dvc.lock do not change; under `dvc repro`, run
# `afarm check` first (README "Judges that still answer"). Not run by dry runs (-n) or --touch.
onstart:
    if not workflow.touch:
        from afarm.annotators.preflight import run_check

        if run_check(PARAMS) != 0:
            print("afarm check failed: no stage was started (fix the lines above, then rerun; `afarm check --params "
                  f"{PARAMS['_path']}` repeats the check)", file=sys.stderr)
            raise SystemExit(1)
