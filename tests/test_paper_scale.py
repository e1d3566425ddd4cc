"""The paper scale is validated without GPUs: its params build every config, and a Snakemake
dry run plans the whole DAG with GPU resources on the training stages."""

from __future__ import annotations

import re

import pytest
import yaml

from afarm import dag
from pipeline_helpers import copy_repo, sh


@pytest.fixture(scope="module")
def paper_workspace(repo, shared, tmp_path_factory):
    work = tmp_path_factory.mktemp("paper") / "repo"
    copy_repo(repo, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["scale"] = "paper"
    params["paths"]["shared_data"] = str(shared)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def _commands(out: str) -> dict[str, str]:
    """Rule name -> shell command, from a `snakemake -n -p` listing."""
    commands = {}
    for block in re.split(r"^(?=(?:local)?rule )", out, flags=re.M):
        rule, shell = re.match(r"rule (\w[\w-]*):", block), re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if rule and shell and shell.group(1).strip() != "None":  # rule all runs nothing
            commands[rule.group(1)] = shell.group(1).strip()
    return commands


def test_snakemake_dry_run_plans_every_stage_at_paper_scale(paper_workspace):
    out = sh("snakemake -n -p --cores 4", paper_workspace)
    planned = {m.group(1) for m in re.finditer(r"^rule (\w[\w-]*):", out, flags=re.M)} - {"all"}
    assert planned == {s.name for s in dag.STAGES}
    total = re.search(r"^total\s+(\d+)", out, flags=re.M)
    assert total and int(total.group(1)) == len(dag.STAGES) + 1  # + rule all
    commands = _commands(out)
    # unpinned threads: the launcher hands the rule's CPUs on (16 asked, 4 granted by --cores 4);
    # no overrides: the stages read params.yaml, as under dvc repro
    assert commands["sft"].startswith("python -m afarm.stages --threads 4 --tee logs/sft.log sft ")
    assert commands["annotate_sim_sft"].startswith("python -m afarm.stages --threads 1 --tee logs/annotate_sim_sft.log annotate ")
    assert not any("--params" in c for c in commands.values())


def test_paper_params_resolve_to_the_papers_values(paper_workspace):
    from afarm.config import load_params, section

    params = load_params(paper_workspace / "params.yaml")
    assert section(params, "base_model")["model"]["pretrained"] == "huggyllama/llama-7b"
    assert section(params, "data")["source"] == "hub"
    assert section(params, "preference_data")["annotators"]["sim"] == "alpaca_farm_pool"
    assert section(params, "annotate")["annotators"] == {"sim": "alpaca_farm_greedy_gpt4", "human": "alpaca_farm_greedy_gpt4"}
    assert section(params, "preference_data")["source"]["human"] == "hub"  # the paper's 10k human pairs
    assert section(params, "dpo")["beta"] == 0.1  # upstream examples/scripts/dpo.sh
    assert section(params, "ppo")["kl_coef"]["sim"] == 0.0067  # upstream rlhf_ppo.sh
    assert section(params, "best_of_n")["n"] == 16  # upstream README best-of-n
    generate = section(params, "generate")  # paper Sec. 4.1; upstream rl/rl_trainer.py RLTrainer.evaluate
    assert (generate["temperature"], generate["top_p"], generate["max_new_tokens"], generate["do_sample"]) == (0.7, 0.9, 300, True)
    by_name = {s.name: s for s in dag.STAGES}
    assert all(by_name[n].resources("paper").gpus >= 1 for n in ("sft", "ppo_sim", "dpo_sim", "reward_model_sim"))


def test_snakemake_config_overrides_reach_the_rules_and_the_stage_commands(paper_workspace):
    """`--config scale=tiny` in a paper-scale workspace: tiny resources in the rules, and every stage
    command reads the merged params file (which says tiny), so the two cannot disagree."""
    out = sh("snakemake -n -p --cores 4 --config scale=tiny 'ppo={kl_coef: {sim: 0.05}}'", paper_workspace)
    commands = _commands(out)
    assert set(commands) == {s.name for s in dag.STAGES}
    files = {m.group(1) for c in commands.values() for m in [re.search(r" --params (\S+)$", c)] if m}
    assert len(files) == 1 and all(re.search(r" --params \S+$", c) for c in commands.values())
    merged = yaml.safe_load((paper_workspace / files.pop()).read_text())
    assert merged["scale"] == "tiny" and merged["ppo"]["kl_coef"] == {"sim": 0.05, "human": 0.02}
    assert commands["sft"].startswith("python -m afarm.stages --threads 1 --tee logs/sft.log sft ")  # tiny pins 1 thread and asks for 1 CPU
    # a key params.yaml does not have stops before any job starts, with one line naming it
    from pipeline_helpers import run

    bad = run("snakemake -n --cores 1 --config 'ppo={kl_coeff: {sim: 0.05}}'", paper_workspace, check=False)
    assert bad.returncode != 0
    assert "field 'ppo.kl_coeff': no such key in params.yaml (did you mean 'ppo.kl_coef'?)" in bad.stdout + bad.stderr
