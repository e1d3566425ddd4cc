"""Stage `best_of_n`: for each evaluation instruction, the best of n SFT samples under a reward model.

Inference-time only. Writes ``model_outputs.json`` (instruction, output, generator, dataset),
like the `generate` stage, so the output goes through the same annotate / leaderboard path.
Samples and scores on this process's GPU (else the CPU); in several processes the ranks share
the batches (``afarm.methods.best_of_n``) and rank 0 writes.
"""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.data.eval_set import load_eval_set, model_outputs
from afarm.io import write_json
from afarm.metrics.health import mean_chars
from afarm.methods.best_of_n import BestOfNConfig, best_of_samples, load_for_scoring
from afarm.methods.sft_samples import read_samples
from afarm.models.prompts import format_prompt
from afarm.stages._cli import parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "best_of_n", BestOfNConfig)
    eval_set = load_eval_set(args.eval_set)
    samples = read_samples(args.samples, cfg.n, rows=eval_set, what="best_of_n.n")
    reward_model, reward_tokenizer = load_for_scoring(args.reward_model, cfg)
    prompts = [format_prompt(r["instruction"]) for r in eval_set]
    best = best_of_samples(reward_model, reward_tokenizer, prompts, [r["samples"] for r in samples],
                           [r["finished"] for r in samples], cfg)
    if not distributed.is_main():
        return
    write_json(args.out, model_outputs(eval_set, best["outputs"], args.generator))
    chosen = [rewards[i] for rewards, i in zip(best["rewards"], best["indices"])]
    mean_all = sum(map(sum, best["rewards"])) / (len(prompts) * cfg.n)
    write_json(args.metrics, {
        "n": cfg.n,
        "num_prompts": len(prompts),
        "mean_reward_best": sum(chosen) / len(chosen),
        "mean_reward_all_samples": mean_all,
        "mean_reward_first_sample": sum(r[0] for r in best["rewards"]) / len(prompts),
        "mean_chars_best": mean_chars(best["outputs"]),
        "mean_chars_all_samples": mean_chars([s for per in best["samples"] for s in per]),
    })


def arguments():
    p = parser(__doc__)
    p.add_argument("--samples", required=True, help="n SFT samples per instruction (upstream's decoder), data/sft_samples/eval_set.json")
    p.add_argument("--reward_model", required=True, help="reward model folder")
    p.add_argument("--eval_set", required=True)
    p.add_argument("--out", required=True, help="model_outputs.json to write")
    p.add_argument("--metrics", required=True)
    p.add_argument("--generator", required=True, help="name of this row in the leaderboard, e.g. best_of_n_sim")
    return p


if __name__ == "__main__":
    run(main, arguments())
