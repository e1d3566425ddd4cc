"""Do the pair-trained methods pass their held-out checks for every training seed, not just the DAG's?

The tiny DAG trains each method once (seed 0) and its `method_health_<set>` stage checks it on held-out
pairs (``data/health/<set>.json``: SFT samples on the validation prompts, labelled by the world's training
labeller). This bench retrains the reward model, DPO, FeedME and reward conditioning of one world with
``--seeds`` other training seeds (the seed of the data order, of the held-out split inside each method and
of new weights), from the run's SFT model and preference set with the params.yaml recipe, and applies the
same checks (``afarm.metrics.health``): gain over the starting point > k standard errors on the held-out
pairs, scored against their clean labels where the world has them (as the stage). Reward conditioning also
gets the stage's generation check (key ``control``): the run's reward model scores the retrained model's samples
with the good token against those with the bad one (and their mean lengths, beside the training pairs' chosen
and rejected outputs' printed first). Expert iteration retrains
its SFT step on the run's best-of-n selection (``data/expert_iteration/<set>.json``) and is checked by the
reward-model score of one sample per validation prompt over the SFT model's (training decoding, one fixed
sampling seed). PPO and Quark are left out (minutes each per seed on the tiny scale).

Run from a workspace where the tiny DAG has run (models/, data/preferences/, data/health/):

    PYTHONPATH=src python bench/bench_method_health.py --preference_set sim --seeds 1 2 3 [--methods dpo]

One thread per training, as the DAG; prints one JSON line per (method, seed) and a summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from afarm.config import load_params, stage_config
from afarm.data.labelling import PreferenceDataConfig
from afarm.data.preferences import read_preferences
from afarm.methods.dpo import DPOConfig, preference_pairs, train_dpo
from afarm.methods.expert_iteration import ExpertIterationStageConfig, train_on_best
from afarm.methods.feedme import FeedMEConfig, train_feedme
from afarm.methods.health import MethodHealthConfig, response_logps
from afarm.methods.reward_conditioning import RewardConditioningConfig, train_reward_conditioning
from afarm.methods.reward_model import RewardModelConfig, load_reward_model, score, train_reward_model
from afarm.metrics import health
from afarm.models.generate import GenerationConfig, generate_samples
from afarm.models.lm import load_model
from afarm.models.prompts import format_prompt
from afarm.launch import environment

METHODS = ("reward_model", "dpo", "feedme", "reward_conditioning", "expert_iteration")


def held_out(path: Path) -> tuple[list[str], list[str], list[str], list[int]]:
    """(prompts, outputs 1, outputs 2, labels) of the held-out pairs; the labels are the clean ones where the
    world has a clean labeller (``clean_preference``), as the stage checks them, else the training-style ones."""
    pairs = json.loads(path.read_text())
    prompts = [format_prompt(p["instruction"], p["input"]) for p in pairs]
    labels = [p["preference"] if p.get("clean_preference") is None else p["clean_preference"] for p in pairs]
    return prompts, [p["output_1"] for p in pairs], [p["output_2"] for p in pairs], labels


def with_seed(cfg, seed: int):
    cfg = copy.deepcopy(cfg)
    target = cfg.train if hasattr(cfg, "train") else cfg
    target.seed = seed
    target.show_progress = False
    if hasattr(cfg, "seed") and hasattr(cfg, "train"):
        cfg.seed = seed
    return cfg


def check_expert_iteration(seed: int, params: dict, root: Path, pset: str, hcfg: MethodHealthConfig) -> dict:
    """Retrain expert iteration's SFT step with ``seed``; RM score of its samples minus the SFT model's."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    cfg = with_seed(stage_config(params, "expert_iteration", ExpertIterationStageConfig), seed)
    selected = json.loads((root / "data" / "expert_iteration" / f"{pset}.json").read_text())
    model, tok = load_model(str(root / "models" / "sft"), dtype="float32")
    best = {"outputs": [r["output"] for r in selected], "finished": [r["finished"] for r in selected]}  # a run of this code
    train_on_best(model, tok, [format_prompt(r["instruction"], r["input"]) for r in selected], best, cfg)
    sft, sft_tok = load_model(str(root / "models" / "sft"))
    prompts = [format_prompt(r["instruction"], r["input"]) for r in json.loads((root / "data" / "splits" / "validation.json").read_text())]
    one = GenerationConfig(**{**vars(stage_config(params, "preference_data", PreferenceDataConfig).generation), "num_samples": 1, "show_progress": False})
    rm, rm_tok = load_reward_model(str(root / "models" / f"reward_model_{pset}"))
    scores = [score(rm, rm_tok, prompts, [s[0] for s in generate_samples(m, t, prompts, one)], hcfg.batch_size).tolist()
              for m, t in ((model, tok), (sft, sft_tok))]
    gain = health.paired_delta(scores[0], scores[1])
    return {"method": "expert_iteration", "seed": seed, "gain": gain.value, "se": gain.se, "n": gain.n, "z": gain.value / gain.se if gain.se else None,
            "passed": health.passes(gain, hcfg.k), "seconds": round(time.perf_counter() - start, 1)}


def check(method: str, seed: int, params: dict, prefs: list[dict], pairs, root: Path, pset: str, hcfg: MethodHealthConfig) -> dict:
    prompts, out_1, out_2, labels = pairs
    sft = str(root / "models" / "sft")
    torch.manual_seed(seed)
    start = time.perf_counter()
    extra = {}

    def lp(model, tok, texts, prefix=""):
        return response_logps(model, tok, [prefix + p for p in prompts], texts, hcfg.max_length, hcfg.batch_size, 1)[0]

    if method == "reward_model":
        cfg = with_seed(stage_config(params, "reward_model", RewardModelConfig), seed)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(sft)
        model, _ = train_reward_model(sft, tok, prefs, cfg)
        margins = (score(model, tok, prompts, out_1, hcfg.batch_size) - score(model, tok, prompts, out_2, hcfg.batch_size)).tolist()
    else:
        ref, tok = load_model(sft, dtype="float32")
        model, mtok = load_model(sft, dtype="float32")
        if method == "dpo":
            train_dpo(model, load_model(sft)[0], mtok, prefs, with_seed(stage_config(params, "dpo", DPOConfig), seed))
        elif method == "feedme":
            train_feedme(model, mtok, prefs, with_seed(stage_config(params, "feedme", FeedMEConfig), seed))
        if method in ("dpo", "feedme"):
            margins = health.implicit_margins(lp(model, mtok, out_1), lp(model, mtok, out_2), lp(ref, tok, out_1), lp(ref, tok, out_2))
        else:
            cfg = with_seed(stage_config(params, "reward_conditioning", RewardConditioningConfig), seed)
            train_reward_conditioning(model, mtok, prefs, cfg)
            good, bad = cfg.positive_token, cfg.negative_token
            margins = health.implicit_margins(lp(model, mtok, out_1, good), lp(model, mtok, out_2, good),
                                              lp(model, mtok, out_1, bad), lp(model, mtok, out_2, bad))
            extra["control"] = check_control(model, mtok, good, bad, params, root, pset, hcfg)
    acc = health.pair_accuracy(health.oriented(margins, labels), clusters=prompts)  # cluster-robust over prompts, as the stage
    gain = health.shifted(acc, 0.5)
    return {"method": method, "seed": seed, "accuracy": acc.value, "se": acc.se, "n": acc.n, "z": gain.value / gain.se if gain.se else None,
            "passed": health.passes(gain, hcfg.k), **extra, "seconds": round(time.perf_counter() - start, 1)}


def check_control(model, tok, good: str, bad: str, params: dict, root: Path, pset: str, hcfg: MethodHealthConfig) -> dict:
    """The stage's row ``reward_conditioning_control`` for a retrained model: the run's reward model scores
    ``policy_samples`` samples per validation prompt with the good token and as many with the bad one (training
    decoding, the same sampling seeds for both); their paired difference, cluster-robust over prompts."""
    rows = json.loads((root / "data" / "splits" / "validation.json").read_text())
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    many = GenerationConfig(**{**vars(stage_config(params, "preference_data", PreferenceDataConfig).generation),
                               "num_samples": hcfg.policy_samples, "show_progress": False})
    k_prompts = [p for p in prompts for _ in range(hcfg.policy_samples)]
    rm, rm_tok = load_reward_model(str(root / "models" / f"reward_model_{pset}"))
    samples = {token: [o for s in generate_samples(model, tok, [token + p for p in prompts], many) for o in s] for token in (good, bad)}
    g, b = [score(rm, rm_tok, k_prompts, samples[token], hcfg.batch_size).tolist() for token in (good, bad)]
    gain = health.paired_delta(g, b, clusters=k_prompts)
    chars = {f"{name}_chars": health.mean_chars(samples[token]) for name, token in (("good", good), ("bad", bad))}
    return {"gain": gain.value, "se": gain.se, "n": gain.n, "z": gain.value / gain.se if gain.se else None, "passed": health.passes(gain, hcfg.k),
            **chars}


def pin_like_the_stages(params: dict) -> None:
    """Run under the environment the stage launcher gives every stage (CPU kernel pins, hash seed, one thread;
    afarm.stages._launch), so that seed 0 retrains the DAG's models bit for bit: without the pins the weights
    differed from the DAG's by up to 1e-6 and the reward-conditioning generation check by 0.001. The variables
    act when torch loads, so the process starts again under them (once: then nothing differs)."""
    env = environment(params)
    if any(os.environ.get(name) != value for name, value in env.items()):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preference_set", default="sim")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--root", default=".", help="workspace where the tiny DAG ran")
    args = p.parse_args(argv)
    root = Path(args.root)
    params = load_params(root / args.params)
    pin_like_the_stages(params)
    hcfg = stage_config(params, "method_health", MethodHealthConfig)
    prefs = read_preferences(root / "data" / "preferences" / f"{args.preference_set}.json")
    pairs = held_out(root / "data" / "health" / f"{args.preference_set}.json")
    torch.set_num_threads(1)
    # what the control token should learn: the preferred outputs' length against the others' (mean characters)
    training_pairs = preference_pairs(prefs)[0]
    print(json.dumps({"training_pairs": len(training_pairs), **{f"{side}_chars": health.mean_chars([p[i] for p in training_pairs])
                                                               for i, side in ((1, "chosen"), (2, "rejected"))}}), flush=True)
    results = []
    for method in args.methods:
        for seed in args.seeds:
            if method == "expert_iteration":
                results.append(check_expert_iteration(seed, params, root, args.preference_set, hcfg))
            else:
                results.append(check(method, seed, params, prefs, pairs, root, args.preference_set, hcfg))
            print(json.dumps(results[-1]), flush=True)
    failed = [f"{r['method']} seed {r['seed']}" for r in results if not r["passed"]]
    failed += [f"reward_conditioning_control seed {r['seed']}" for r in results if "control" in r and not r["control"]["passed"]]
    print(json.dumps({"preference_set": args.preference_set, "n_runs": len(results), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
