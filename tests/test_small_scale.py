"""The small scale (one GPU, Qwen2.5-0.5B) validated without a GPU: per-scale resolution with the
documented fallback, the tiny scale's resolved params unchanged, every stage's config at small with
either judge choice, one GPU per stage, every stage's memory plan on one 24 GB GPU (the local judge
included), and a Snakemake dry run that plans every stage."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from afarm import dag
from afarm import memory_plan as mp
from afarm.config import load_params, resolve, scale_sources, section, stage_config
from afarm.io import InputError

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "tiny_params_resolved.json"


def repo_params(tmp_path: Path, scale: str, judges: str = "local") -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["scale"], params["judges"] = scale, judges
    path = tmp_path / f"params-{scale}-{judges}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(path)


# ------------------------------------------------------------------ resolution rules


def test_three_scales_with_small_falling_back_to_paper():
    value = {"lr": {"tiny": 1, "small": 2, "paper": 3}, "seed": {"tiny": 0, "paper": 42}, "plain": 7, "kl": {"sim": 1, "human": 2}}
    assert resolve(value, "tiny") == {"lr": 1, "seed": 0, "plain": 7, "kl": {"sim": 1, "human": 2}}
    assert resolve(value, "small") == {"lr": 2, "seed": 42, "plain": 7, "kl": {"sim": 1, "human": 2}}
    assert resolve(value, "paper") == {"lr": 3, "seed": 42, "plain": 7, "kl": {"sim": 1, "human": 2}}
    taken: list[str] = []
    resolve(value, "small", key="sec", fallbacks=taken)
    assert taken == ["sec.seed"]  # only the key without a small entry


def test_a_missing_scale_is_an_error_naming_the_key():
    with pytest.raises(InputError, match=r"p.yaml, field 'ppo.lr': no value for scale 'paper'; this per-scale value names only \['small', 'tiny'\]"):
        resolve({"lr": {"tiny": 1, "small": 2}}, "paper", key="ppo", where="p.yaml")
    with pytest.raises(InputError, match=r"field 'ppo.lr': no value for scale 'small' \(and no 'paper' value to fall back to\)"):
        resolve({"lr": {"tiny": 1}}, "small", key="ppo")
    with pytest.raises(InputError, match=r"field 'ppo.lr\[1\]': no value for scale 'tiny'"):
        resolve({"lr": [1, {"paper": 2}]}, "tiny", key="ppo")


def test_judges_choose_local_or_api_values_and_must_be_set_where_needed(tmp_path):
    value = {"sim": {"tiny": "features_pool", "small": {"local": "local_judge", "api": "gpt4"}, "paper": "gpt4"}}
    assert resolve(value, "small", "local") == {"sim": "local_judge"}
    assert resolve(value, "small", "api") == {"sim": "gpt4"}
    assert resolve(value, "tiny") == {"sim": "features_pool"}  # tiny never reads `judges`
    with pytest.raises(InputError, match=r"field 'annotate.sim': this value depends on the top-level `judges` setting"):
        resolve(value, "small", None, key="annotate")
    path = tmp_path / "params.yaml"
    path.write_text("scale: small\njudges: maybe\n")
    with pytest.raises(InputError, match=r"field 'judges': judges must be one of \('local', 'api'\)"):
        load_params(path)


# ------------------------------------------------------------------ the tiny scale is untouched


def test_tiny_resolved_params_are_unchanged():
    """Every section resolved at tiny equals the snapshot taken before the small scale was added (the
    tiny bytes depend on these values only). A deliberate tiny change (a new stage's section, a retuned
    value) regenerates the snapshot: the dict below, ``json.dumps(resolved, indent=1, sort_keys=True)``."""
    params = load_params(REPO / "params.yaml")
    assert params["scale"] == "tiny"
    resolved = {k: section(params, k) for k in params if not k.startswith("_") and k not in ("scale", "judges")}
    assert json.loads(json.dumps(resolved)) == json.loads(SNAPSHOT.read_text())


def test_sft_52k_is_the_sft_recipe_but_for_tiny_epochs():
    """sft_52k repeats sft's recipe in its own section; only the tiny scale's epochs differ (its time)."""
    params = load_params(REPO / "params.yaml")
    sft, sft_52k = section(params, "sft")["train"], section(params, "sft_52k")["train"]
    assert (sft["num_epochs"], sft_52k["num_epochs"]) == (3, 2)
    assert {k: v for k, v in sft_52k.items() if k != "num_epochs"} == {k: v for k, v in sft.items() if k != "num_epochs"}
    for scale in ("small", "paper"):
        assert resolve(params["sft_52k"], scale, "local") == resolve(params["sft"], scale, "local")


# ------------------------------------------------------------------ the small scale's params


def stage_configs(params: dict) -> dict:
    """Every stage's config dataclass built from params (what each stage does at start)."""
    from afarm.annotators.analysis import AnalysisConfig
    from afarm.data.instructions import SplitConfig
    from afarm.methods.dpo import DPOConfig
    from afarm.methods.feedme import FeedMEConfig
    from afarm.methods.ppo import PPOConfig
    from afarm.methods.quark import QuarkConfig
    from afarm.methods.reward_conditioning import RewardConditioningConfig
    from afarm.methods.best_of_n import BestOfNConfig
    from afarm.methods.reward_model import RewardModelConfig
    from afarm.models.generate import GenerationConfig
    from afarm.report.report import ReportConfig
    from afarm import launch
    from afarm.stages._cli import check_params
    from afarm.stages.annotate import AnnotateConfig
    from afarm.stages.base_model import BaseModelConfig
    from afarm.stages.expert_iteration import ExpertIterationStageConfig
    from afarm.stages.leaderboard import LeaderboardConfig
    from afarm.stages.preference_data import PreferenceDataConfig
    from afarm.stages.published_outputs import PublishedOutputsConfig
    from afarm.stages.sft import SFTConfig
    from afarm.stages.sim_vs_human import SimVsHumanConfig

    check_params(params)
    classes = {
        "data": SplitConfig, "base_model": BaseModelConfig, "sft": SFTConfig, "sft_52k": SFTConfig, "generate": GenerationConfig,
        "preference_data": PreferenceDataConfig, "reward_model": RewardModelConfig, "best_of_n": BestOfNConfig,
        "expert_iteration": ExpertIterationStageConfig, "ppo": PPOConfig, "quark": QuarkConfig, "dpo": DPOConfig,
        "feedme": FeedMEConfig, "reward_conditioning": RewardConditioningConfig, "published_outputs": PublishedOutputsConfig,
        "annotate": AnnotateConfig, "analyze_annotators": AnalysisConfig, "leaderboard": LeaderboardConfig,
        "sim_vs_human": SimVsHumanConfig, "report": ReportConfig,
    }
    out = {name: stage_config(params, name, cls, drop=("kl_coef",) if name in ("ppo", "quark") else ()) for name, cls in classes.items()}
    out["launch"] = launch.launch_config(params)
    return out


@pytest.mark.parametrize("judges", ["local", "api"])
def test_small_params_build_every_stage_config(tmp_path, judges):
    from afarm import distributed
    from afarm.annotators.registry import find_config
    from afarm.methods.ppo import check_ppo_batches
    from afarm import launch

    params = repo_params(tmp_path, "small", judges)
    cfg = stage_configs(params)
    assert cfg["base_model"].model.pretrained == "Qwen/Qwen2.5-0.5B@060db6499f32faf8b98477b0a26969ef7d8b9987"
    assert cfg["launch"].device_memory_gb == 24 and cfg["launch"].processes == "per_device"
    # the paper's recipe and code path: fp32 masters with bf16 compute, checkpointing, the paper's learning rates
    assert cfg["sft_52k"] == cfg["sft"]  # SFT 52k: the sft recipe unchanged off the tiny scale
    for name in ("sft", "sft_52k", "feedme", "reward_conditioning", "expert_iteration", "dpo"):
        train = cfg[name].train
        assert (train.precision, train.gradient_checkpointing) == ("bf16_mixed", True), name
    assert (cfg["ppo"].precision, cfg["reward_model"].precision) == ("bf16_mixed", "bf16_mixed")
    assert cfg["sft"].train.learning_rate == 2e-5 and cfg["dpo"].train.learning_rate == 1e-6 and cfg["ppo"].learning_rate == 1e-5
    assert cfg["data"].source == "hub" and cfg["preference_data"].source["human"] == "hub"  # upstream's 10k human pairs
    # one process per stage, and every global batch splits into whole micro-batches on it
    for name in ("sft", "feedme", "reward_conditioning", "expert_iteration", "dpo"):
        assert launch.processes(name, params) == 1
        distributed.micro_batches(cfg[name].train.batch_size, cfg[name].train.micro_batch_size)
    check_ppo_batches(cfg["ppo"], 1)
    # the judges named exist as annotator configs
    judges_used = {cfg["preference_data"].annotators["sim"], *cfg["annotate"].annotators.values(), *cfg["analyze_annotators"].annotators}
    for name in judges_used:
        find_config(name)
    if judges == "local":
        assert cfg["preference_data"].annotators["sim"] == "local_judge_noisy"
        assert cfg["annotate"].annotators == {"sim": "local_judge", "human": "local_judge"}
        assert "Qwen2.5-7B-Instruct" in cfg["report"].judges_note and "evaluator of both worlds" in cfg["report"].judges_note
    else:
        assert cfg["preference_data"].annotators["sim"] == "alpaca_farm_pool"
        assert cfg["annotate"].annotators == {"sim": "alpaca_farm_greedy_gpt4", "human": "alpaca_farm_greedy_gpt4"}
    assert cfg["published_outputs"].api_models == {}  # the bundle's real baseline rows, no API calls


def test_small_takes_the_paper_value_only_where_it_names_none():
    params = load_params(REPO / "params.yaml")
    taken = scale_sources({**params, "scale": "small"})
    assert "sft.train.precision" in taken and "ppo.seed" in taken
    assert "base_model.model.pretrained" not in taken and "launch.device_memory_gb" not in taken
    assert not scale_sources({**params, "scale": "tiny"}) and not scale_sources({**params, "scale": "paper"})


# ------------------------------------------------------------------ one GPU per stage, memory plan


def test_every_gpu_stage_gets_one_gpu_at_small():
    for stage in dag.STAGES:
        res = stage.resources("small")
        uses_gpu = stage.resources("paper").gpus > 0 or stage.module in dag.JUDGE_MODULES
        assert res.gpus == (1 if uses_gpu else 0), stage.name


def test_every_small_stage_fits_one_24_gb_gpu_with_the_local_judge(tmp_path):
    params = repo_params(tmp_path, "small", "local")
    plans = {p.stage: p for p in mp.scale_plans(params)}
    assert set(plans) == set(mp.STAGE_MODELS) | {"preference_data", "annotate", "analyze_annotators"}  # + the judge-only stages
    for plan in plans.values():
        assert plan.devices == 1 and plan.memory_gb == 24 and plan.fits, plan.summary()
    # method_health is the largest as planned (an upper bound: its three models beside the judge), PPO next
    assert mp.smallest_device_gb(list(plans.values())) == pytest.approx(plans["method_health"].total_gb)
    assert sorted(plans, key=lambda k: plans[k].total_bytes)[-2] == "ppo"
    # Qwen2.5-0.5B by hand: h 896, 24 layers, MLP 4864, 14 heads, 2 KV heads (kv dim 128), q/k/v biases, tied
    layer = 2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864 + 2 * 896 + (896 + 2 * 128)
    p = 24 * layer + 151936 * 896 + 896
    assert p == 494_032_768 and plans["sft"].arch.num_params() == p
    # PPO: policy and value trained (16 bytes each; the value's scalar head and its bias replace the tied LM head:
    # + 897; the reward model's head has no bias: + 896), reference and reward model frozen in bf16, and AdamW's
    # 4-byte step for each of the policy's 24 x 12 + 2 and the value model's 24 x 12 + 4 tensors
    persistent = 16 * p + 16 * (p + 897) + 2 * p + 2 * (p + 896) + 4 * ((24 * 12 + 2) + (24 * 12 + 4))
    assert plans["ppo"].total_bytes - sum(r.bytes for r in plans["ppo"].rows if r.phase == "rollout") == persistent
    assert plans["ppo"].get("logits", "rollout") == 12 * 4 * 492 * 151936  # rollout micro-batch 4 at small
    # the judge, Qwen2.5-7B-Instruct in bf16: 7,615,616,512 parameters, 4 prompts x 2048 tokens
    judge = plans["annotate"]
    assert judge.get("judge parameters") == 2 * 7_615_616_512
    assert judge.get("logits") == 2 * 4 * 2048 * 152064
    assert plans["preference_data"].get("judge parameters") == 2 * 7_615_616_512  # the sim pool's one member
    assert "judge 4 x 2048 tokens" in judge.summary()
    # method_health: SFT, the checked model and the base or reward model in bf16, the sim labeller (the judge),
    # log-probabilities of 4 sequences x 512 tokens (method_health.batch_size, max_length at small)
    health = plans["method_health"]
    assert health.get("parameters") == 3 * 2 * p and health.get("judge parameters") == 2 * 7_615_616_512
    assert 6 * 4 * 512 * 151936 < health.get("workspace", "log-probabilities") < 7 * 4 * 512 * 151936


def test_launch_checks_the_small_plan_before_a_stage_starts(tmp_path):
    from afarm.stages import _launch

    params = repo_params(tmp_path, "small", "local")
    assert _launch.check_memory("ppo", params).fits
    params["ppo"]["rollout_micro_batch_size"]["small"] = 32  # 12 x 32 x 492 x 152k bytes of logits alone: 28.7 GB
    with pytest.raises(mp.PlanError, match=r"stage 'ppo' needs \d+\.\d GB per device, 24 GB available \(1 x 24 GB"):
        _launch.check_memory("ppo", params)
    assert _launch.check_memory("annotate", repo_params(tmp_path, "small", "api")) is None  # API judges hold no model


# ------------------------------------------------------------------ the DAG at small scale


def test_snakemake_dry_run_plans_every_stage_at_small_scale(repo, shared, tmp_path):
    from pipeline_helpers import copy_repo, sh

    work = tmp_path / "repo"
    copy_repo(repo, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["scale"] = "small"
    params["paths"]["shared_data"] = str(shared)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("snakemake -n --cores all", work)
    planned = {m.group(1) for m in re.finditer(r"^rule (\w[\w-]*):", out, flags=re.M)} - {"all"}
    assert planned == {s.name for s in dag.STAGES}
    total = re.search(r"^total\s+(\d+)", out, flags=re.M)
    assert total and int(total.group(1)) == len(dag.STAGES) + 1
