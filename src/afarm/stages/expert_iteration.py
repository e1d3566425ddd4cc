"""Stage `expert_iteration`: best-of-n of the SFT model on the unlabeled split, then SFT on those outputs."""

from __future__ import annotations

from dataclasses import dataclass

from afarm import distributed
from afarm.config import stage_config
from afarm.io import read_records, write_json
from afarm.methods.expert_iteration import ExpertIterationConfig, expert_iteration
from afarm.methods.reward_model import load_reward_model
from afarm.models.lm import load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.stages._cli import check_training, parser, run


@dataclass
class ExpertIterationStageConfig(ExpertIterationConfig):
    limit: int | None = None  # first N unlabeled instructions only; None = the whole split (paper: 20k)


def main(args, params) -> None:
    cfg = stage_config(params, "expert_iteration", ExpertIterationStageConfig)
    check_training(params, "expert_iteration.train", cfg.train)
    rows = read_records(args.unlabeled, required=("instruction", "input"), nonempty=("instruction",),
                        types={"instruction": str, "input": str})[: cfg.limit]
    policy, tokenizer = load_model(args.sft, dtype="float32")  # the trained weights are fp32 masters
    reward_model, reward_tokenizer = load_reward_model(args.reward_model)
    # paper scale: sample and score on this process's GPU (CPU otherwise)
    policy, reward_model = policy.to(distributed.device()), reward_model.to(distributed.device())
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    _, best, stats = expert_iteration(policy, tokenizer, reward_model, reward_tokenizer, prompts, cfg)
    save_model(policy, tokenizer, args.out)  # gathered, written by rank 0
    if not distributed.is_main():
        return
    write_json(args.data, [
        {"instruction": r["instruction"], "input": r["input"], "output": out, "reward": rewards[i], "index": i}
        for r, out, rewards, i in zip(rows, best["outputs"], best["rewards"], best["indices"])
    ])
    chosen = [rewards[i] for rewards, i in zip(best["rewards"], best["indices"])]
    write_json(args.metrics, {
        "n": cfg.best_of_n.n,
        "num_instructions": len(rows),
        "mean_reward_best": sum(chosen) / len(chosen),
        "mean_reward_all_samples": sum(map(sum, best["rewards"])) / (len(rows) * cfg.best_of_n.n),
        "num_steps": stats["num_steps"],
        "train_loss_first": stats["losses"][0],
        "train_loss_last": stats["losses"][-1],
    })


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder: the sampler and the starting point")
    p.add_argument("--reward_model", required=True, help="reward model folder")
    p.add_argument("--unlabeled", required=True, help="the unlabeled split")
    p.add_argument("--out", required=True, help="model folder to write, models/expert_iteration_<set>")
    p.add_argument("--data", required=True, help="the selected best-of-n outputs (JSON)")
    p.add_argument("--metrics", required=True)
    return p


if __name__ == "__main__":
    run(main, arguments())
