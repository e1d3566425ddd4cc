"""Stage `dpo`: Direct Preference Optimization of the SFT model on a preference set (frozen SFT reference)."""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.preferences import read_preferences
from afarm.io import write_json
from afarm.methods.dpo import DPOConfig, train_dpo
from afarm.models.lm import load_model, save_model
from afarm.stages._cli import check_training, model_card, parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "dpo", DPOConfig)
    check_training(params, "dpo.train", cfg.train)
    preferences = read_preferences(args.preferences)
    policy, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)  # the trained weights are fp32 masters
    reference, _ = load_model(args.sft, rank0_only=True)  # frozen: its stored dtype (bf16 under bf16_mixed, see prepare_model)
    stats = train_dpo(policy, reference, tokenizer, preferences, cfg)
    save_model(policy, tokenizer, args.out, model_card(params, "dpo", args.sft, [args.preferences], dpo=cfg))  # gathered, written by rank 0
    if not distributed.is_main():
        return
    if args.log:
        write_curve(args.log, curve_columns(stats))
    tail = max(1, len(stats["losses"]) // 10)  # the last 10% of the steps

    def last(key: str) -> float:
        return sum(stats[key][-tail:]) / tail

    write_json(
        args.metrics,
        {
            "beta": cfg.beta,
            "num_steps": stats["num_steps"],
            "num_pairs": stats["num_pairs"],
            "num_eval_pairs": stats["num_eval_pairs"],
            "dropped_ties": stats["dropped_ties"],
            "dropped_truncated": stats["dropped_truncated"],
            "final_train_loss": last("losses"),
            "final_train_reward_margin": last("reward_margins"),
            "final_train_accuracy": last("accuracies"),
            "eval_before": stats["eval_before"],
            "eval_after": stats["eval_after"],
        },
    )


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder: the starting policy and the frozen reference")
    p.add_argument("--preferences", required=True, help="data/preferences/<S>.json")
    p.add_argument("--out", required=True, help="model folder to write (models/dpo_<S>)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
