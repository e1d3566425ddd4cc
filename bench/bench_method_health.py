"""Do the pair-trained methods pass their held-out checks for every training seed, not just the DAG's?

The tiny DAG trains each method once (seed 0) and its `method_health_<set>` stage checks it on held-out
pairs (``data/health/<set>.json``: SFT samples on the validation prompts, labelled by the world's training
labeller). This bench retrains the reward model, DPO, FeedME and reward conditioning of one world with
``--seeds`` other training seeds (the seed of the data order, of the held-out split inside each method and
of new weights), from the run's SFT model and preference set with the params.yaml recipe, and applies the
same checks (``afarm.metrics.health``): gain over the starting point > k standard errors on the held-out
pairs. PPO, Quark and expert iteration are left out (minutes each per seed on the tiny scale).

Run from a workspace where the tiny DAG has run (models/, data/preferences/, data/health/):

    PYTHONPATH=src python bench/bench_method_health.py --preference_set sim --seeds 1 2 3 [--methods dpo]

One thread per training, as the DAG; prints one JSON line per (method, seed) and a summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from afarm.config import load_params, stage_config
from afarm.data.preferences import read_preferences
from afarm.methods.dpo import DPOConfig, train_dpo
from afarm.methods.feedme import FeedMEConfig, train_feedme
from afarm.methods.health import response_logps
from afarm.methods.reward_conditioning import RewardConditioningConfig, train_reward_conditioning
from afarm.methods.reward_model import RewardModelConfig, score, train_reward_model
from afarm.metrics import health
from afarm.models.lm import load_model
from afarm.models.prompts import format_prompt
from afarm.stages.method_health import MethodHealthConfig

METHODS = ("reward_model", "dpo", "feedme", "reward_conditioning")


def held_out(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) of the held-out pairs, oriented by their (noisy) training-style label."""
    pairs = json.loads(path.read_text())
    prompts = [format_prompt(p["instruction"], p["input"]) for p in pairs]
    chosen = [p["output_1"] if p["preference"] == 1 else p["output_2"] for p in pairs]
    rejected = [p["output_2"] if p["preference"] == 1 else p["output_1"] for p in pairs]
    return prompts, chosen, rejected


def with_seed(cfg, seed: int):
    cfg = copy.deepcopy(cfg)
    target = cfg.train if hasattr(cfg, "train") else cfg
    target.seed = seed
    target.show_progress = False
    if hasattr(cfg, "seed") and hasattr(cfg, "train"):
        cfg.seed = seed
    return cfg


def check(method: str, seed: int, params: dict, prefs: list[dict], pairs, sft: str, hcfg: MethodHealthConfig) -> dict:
    prompts, chosen, rejected = pairs
    torch.manual_seed(seed)
    start = time.perf_counter()

    def lp(model, tok, texts, prefix=""):
        return response_logps(model, tok, [prefix + p for p in prompts], texts, hcfg.max_length, hcfg.batch_size, 1)[0]

    if method == "reward_model":
        cfg = with_seed(stage_config(params, "reward_model", RewardModelConfig), seed)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(sft)
        model, _ = train_reward_model(sft, tok, prefs, cfg)
        margins = (score(model, tok, prompts, chosen, hcfg.batch_size) - score(model, tok, prompts, rejected, hcfg.batch_size)).tolist()
    else:
        ref, tok = load_model(sft, dtype="float32")
        model, mtok = load_model(sft, dtype="float32")
        if method == "dpo":
            train_dpo(model, load_model(sft)[0], mtok, prefs, with_seed(stage_config(params, "dpo", DPOConfig), seed))
        elif method == "feedme":
            train_feedme(model, mtok, prefs, with_seed(stage_config(params, "feedme", FeedMEConfig), seed))
        if method in ("dpo", "feedme"):
            margins = health.implicit_margins(lp(model, mtok, chosen), lp(model, mtok, rejected), lp(ref, tok, chosen), lp(ref, tok, rejected))
        else:
            cfg = with_seed(stage_config(params, "reward_conditioning", RewardConditioningConfig), seed)
            train_reward_conditioning(model, mtok, prefs, cfg)
            good, bad = cfg.positive_token, cfg.negative_token
            margins = health.implicit_margins(lp(model, mtok, chosen, good), lp(model, mtok, rejected, good),
                                              lp(model, mtok, chosen, bad), lp(model, mtok, rejected, bad))
    acc = health.pair_accuracy(margins)
    gain = health.shifted(acc, 0.5)
    return {"method": method, "seed": seed, "accuracy": acc.value, "se": acc.se, "n": acc.n, "z": gain.value / gain.se if gain.se else None,
            "passed": health.passes(gain, hcfg.k), "seconds": round(time.perf_counter() - start, 1)}


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
    hcfg = stage_config(params, "method_health", MethodHealthConfig)
    prefs = read_preferences(root / "data" / "preferences" / f"{args.preference_set}.json")
    pairs = held_out(root / "data" / "health" / f"{args.preference_set}.json")
    torch.set_num_threads(1)
    results = []
    for method in args.methods:
        for seed in args.seeds:
            results.append(check(method, seed, params, prefs, pairs, str(root / "models" / "sft"), hcfg))
            print(json.dumps(results[-1]), flush=True)
    failed = [f"{r['method']} seed {r['seed']}" for r in results if not r["passed"]]
    print(json.dumps({"preference_set": args.preference_set, "n_runs": len(results), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
