"""The reduced tiny DAG through the SLURM profile, on a real one-node SLURM cluster.

``scripts/slurm_local.sh`` installs Debian's slurm-wlm + munge if ``sbatch`` is missing
(apt-get, about 15 s), writes a one-node slurm.conf and starts munged, slurmctld and slurmd
without systemd; the test stops them in a ``finally``. Then, in a copy of the reduced run,
``snakemake --profile workflow/profiles/slurm --forceall results/annotations/sim/sft.json`` reruns
the spine of the DAG (data, base model, SFT, generation, annotation: five stages) as SLURM jobs
(the command of docs/cluster.md, with a target to keep CI short) and the test checks that:

* every stage became one SLURM job (job ids in Snakemake's log) that slurmctld's job
  completion log records as COMPLETED, with the CPUs and memory of the stage table;
* the outputs are byte-identical to the local run (the executor does not change results);
* a following ``snakemake -n`` has nothing to do.

Skipped when AFARM_SKIP_SLURM=1, when not root, or when SLURM is missing and apt-get is not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from afarm.dag import STAGES
from pipeline_helpers import built_workspace, clone_workspace, run, sh

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"


def _slurm_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.environ.get("AFARM_SKIP_SLURM") == "1":
        pytest.skip("AFARM_SKIP_SLURM=1")
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (daemons, munge key)")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm (test extras)")
    if shutil.which("sbatch") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("sbatch not found and apt-get unavailable to install slurm-wlm")
        result = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"could not install slurm-wlm with apt-get: {result.stderr.strip()[-300:]}")
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "written by scripts/slurm_local.sh" not in conf.read_text(errors="replace"):
        pytest.skip("/etc/slurm/slurm.conf belongs to a real cluster; not starting a test cluster here")
    state = _slurm_dir(tmp_path_factory)
    env = {**os.environ, "AFARM_SLURM_DIR": str(state)}
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", "--purge"], capture_output=True, text=True, timeout=60, env=env)


def _jobcomp(state: Path) -> dict[str, dict[str, str]]:
    """slurmctld's job completion log: job id -> its fields."""
    jobs = {}
    path = state / "jobcomp.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        jobs[fields["JobId"]] = fields
    return jobs


def test_reduced_dag_runs_as_slurm_jobs(repo, shared, tmp_path, tmp_path_factory, slurm_cluster):
    built = built_workspace(repo, shared, tmp_path_factory)
    work = clone_workspace(built, tmp_path / "work")
    target = "results/annotations/sim/sft.json"
    spine = {"data", "base_model", "sft", "generate_sft", "annotate_sim_sft"}
    result = run(f"snakemake --profile workflow/profiles/slurm --forceall {target}", work, timeout=1200)
    log = result.stdout + result.stderr

    # rule -> SLURM job id, from "Job 3 has been submitted with SLURM jobid 7 (log: .../rule_sft/7.log)"
    submitted = dict(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/(\d+)\.log\)", log))
    submitted = {rule: job for rule, job in re.findall(r"rule_(\w+)/(\d+)\.log", log)} if not submitted else submitted
    stages = {s.name: s for s in STAGES}
    assert set(submitted) == spine, log[-3000:]
    completed = _jobcomp(slurm_cluster)
    scale = yaml.safe_load((work / "params.yaml").read_text())["scale"]
    for rule, job_id in submitted.items():
        job = completed.get(job_id)
        assert job is not None, f"SLURM has no record of job {job_id} ({rule}): {completed}"
        res = stages[rule].resources(scale)
        got = {k: job.get(k) for k in ("JobId", "JobState", "ProcCnt", "Tres", "TimeLimit")}
        want = {"JobId": job_id, "JobState": "COMPLETED", "ProcCnt": str(res.cpus),  # --cpus-per-task
                "Tres": f"cpu={res.cpus},mem={res.mem_mb}M,node=1,billing={res.cpus}",  # --mem
                "TimeLimit": str(res.runtime)}  # -t, minutes
        assert got == want, f"{rule}: {got} != {want}; all jobs: {completed}"

    for name in ("data/splits/sft.json", "results/outputs/sft.json", "models/sft/model.safetensors", target):
        assert (work / name).read_bytes() == (built / name).read_bytes(), name
    assert "Nothing to be done" in sh(f"snakemake --cores 2 -n {target}", work)
