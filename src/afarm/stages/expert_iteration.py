"""Stage `expert_iteration`: best-of-n of the SFT model on the unlabeled split, then SFT on those outputs.

The n samples per instruction are the `sft_samples` stage's (recipe ``expert_iteration``: drawn once
for both worlds, in ``best_of_n.generation.dtype``); this stage scores them with its world's reward
model (data-parallel over the processes, ``afarm.methods.best_of_n``), then trains the SFT model on the
best ones (fp32 master weights; FSDP-sharded in several processes) and saves it gathered, from rank 0.
"""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.io import read_records, write_json
from afarm.methods.best_of_n import best_of_samples, load_for_scoring
from afarm.methods.expert_iteration import ExpertIterationStageConfig, train_on_best
from afarm.methods.sft_samples import read_samples
from afarm.models.lm import load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.stages._cli import check_training, model_card, parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "expert_iteration", ExpertIterationStageConfig)
    check_training(params, "expert_iteration.train", cfg.train)
    rows = read_records(args.unlabeled, required=("instruction", "input"), nonempty=("instruction",),
                        types={"instruction": str, "input": str})[: cfg.limit]
    samples = read_samples(args.samples, cfg.best_of_n.n, rows=rows, what="expert_iteration.best_of_n.n")
    reward_model, reward_tokenizer = load_for_scoring(args.reward_model, cfg.best_of_n)
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    best = best_of_samples(reward_model, reward_tokenizer, prompts, [r["samples"] for r in samples],
                           [r["finished"] for r in samples], cfg.best_of_n)  # data-parallel, on every rank
    del reward_model  # free the device for training
    policy, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)  # the trainee holds fp32 master weights
    _, stats = train_on_best(policy, tokenizer, prompts, best, cfg)
    card = model_card(params, "expert_iteration", args.sft, [args.unlabeled], models={"reward model": args.reward_model}, expert_iteration=cfg)
    save_model(policy, tokenizer, args.out, card)  # gathered, written by rank 0
    if not distributed.is_main():
        return
    if args.log:
        write_curve(args.log, curve_columns(stats))
    write_json(args.data, [
        {"instruction": r["instruction"], "input": r["input"], "output": out, "reward": rewards[i], "index": i, "finished": done}
        for r, out, rewards, i, done in zip(rows, best["outputs"], best["rewards"], best["indices"], best["finished"])
    ])
    chosen = [rewards[i] for rewards, i in zip(best["rewards"], best["indices"])]
    write_json(args.metrics, {
        "n": cfg.best_of_n.n,
        "num_instructions": len(rows),
        "mean_reward_best": sum(chosen) / len(chosen),
        "mean_reward_all_samples": sum(map(sum, best["rewards"])) / (len(rows) * cfg.best_of_n.n),
        "fraction_unfinished": 1 - sum(best["finished"]) / len(rows),  # cut off at the cap: trained without EOS
        "num_steps": stats["num_steps"],
        "train_loss_first": stats["losses"][0],
        "train_loss_last": stats["losses"][-1],
    })


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder: the starting point")
    p.add_argument("--reward_model", required=True, help="reward model folder")
    p.add_argument("--unlabeled", required=True, help="the unlabeled split")
    p.add_argument("--samples", required=True, help="n SFT samples per unlabeled instruction, data/sft_samples/unlabeled.json")
    p.add_argument("--out", required=True, help="model folder to write, models/expert_iteration_<set>")
    p.add_argument("--data", required=True, help="the selected best-of-n outputs (JSON)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
