"""`snakemake --config` / `--configfile` overrides: merged over params.yaml into one file that the
rules and every stage read (``--params``), never silently ignored."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from afarm.config import apply_overrides, load_params, section, write_params
from afarm.io import InputError
from pipeline_helpers import make_workspace, sh


def _params(tmp_path, repo) -> dict:
    path = tmp_path / "params.yaml"
    path.write_text((repo / "params.yaml").read_text())
    return load_params(path)


def test_overrides_merge_key_by_key_and_read_command_line_text_as_yaml(tmp_path, repo):
    params = _params(tmp_path, repo)
    # as `snakemake --config scale=paper 'ppo={kl_coef: {sim: 0.05}, max_steps: {tiny: 3}}'` hands them over
    merged = apply_overrides(params, {"scale": "paper", "ppo": {"kl_coef": {"sim": "0.05"}, "max_steps": {"tiny": "3"}}}, "cli")
    assert merged["scale"] == "paper"
    assert merged["ppo"]["kl_coef"] == {"sim": 0.05, "human": 0.02}  # the other world keeps params.yaml's value
    assert merged["ppo"]["max_steps"] == {**params["ppo"]["max_steps"], "tiny": 3}  # only the tiny side of a per-scale value
    assert merged["ppo"]["max_steps"]["paper"] is None
    assert merged["ppo"]["learning_rate"] == params["ppo"]["learning_rate"]
    assert params["ppo"]["kl_coef"]["sim"] == 0.0067  # the loaded params are not modified
    # a plain value replaces a per-scale one at both scales; text stays text where params.yaml has text
    merged = apply_overrides(params, {"sft": {"train": {"learning_rate": 0.01}}, "leaderboard": {"reference": "1"}}, "cli")
    assert merged["sft"]["train"]["learning_rate"] == 0.01 and merged["leaderboard"]["reference"] == "1"
    # new keys only inside an empty mapping (paper-scale API models for the tiny scale)
    merged = apply_overrides(params, {"published_outputs": {"api_models": {"tiny": {"gpt4": "gpt-4-0314"}}}}, "cli")
    assert section({**merged, "scale": "tiny"}, "published_outputs")["api_models"] == {"gpt4": "gpt-4-0314"}


def test_an_override_of_a_key_params_yaml_does_not_have_stops_with_a_did_you_mean(tmp_path, repo):
    params = _params(tmp_path, repo)
    with pytest.raises(InputError, match=r"snakemake --config.*ppo\.kl_coeff.*did you mean 'ppo\.kl_coef'"):
        apply_overrides(params, {"ppo": {"kl_coeff": {"sim": 1}}}, "snakemake --config")


def test_merged_params_are_written_once_under_a_name_of_their_content(tmp_path, repo):
    params = _params(tmp_path, repo)
    merged = apply_overrides(params, {"data": {"seed": 3}}, "cli")
    first, again = write_params(merged, tmp_path / "merged"), write_params(merged, tmp_path / "merged")
    assert first == again and re.fullmatch(r"params-[0-9a-f]{12}\.yaml", first.name)
    assert write_params(apply_overrides(params, {"data": {"seed": 4}}, "cli"), tmp_path / "merged") != first
    reloaded = load_params(first)
    assert section(reloaded, "data")["seed"] == 3 and section(reloaded, "ppo") == section(params, "ppo")


def test_a_snakemake_config_override_reaches_the_stage(repo, shared, tmp_path):
    """The data stage run by Snakemake with `--config` (eval set size) and `--configfile` (SFT split
    size): its outputs have the overridden sizes, and the rule passed the merged file to the stage."""
    work = make_workspace(repo, shared, tmp_path / "repo", tmp_path / "cache")
    (work / "more.yaml").write_text(yaml.safe_dump({"data": {"sizes": {"tiny": {"sft": 10}}}}))
    out = sh("snakemake data -p --cores 1 --configfile more.yaml --config 'data={eval_limit: 5}'", work)
    merged = re.search(r"--params (\.snakemake/afarm/params-[0-9a-f]{12}\.yaml)", out)
    assert merged, out[-3000:]
    assert section(load_params(work / merged.group(1)), "data")["sizes"] == {"sft": 10, "preference": 16, "unlabeled": 128, "validation": 16}
    assert len(json.loads((work / "data" / "eval_set.json").read_text())) == 5
    assert len(json.loads((work / "data" / "splits" / "sft.json").read_text())) == 10
