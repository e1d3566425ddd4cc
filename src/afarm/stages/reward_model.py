"""Stage `reward_model`: the SFT model plus a scalar head, trained on one preference set (Bradley-Terry)."""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.preferences import read_preferences
from afarm.io import write_json
from afarm.methods.reward_model import RewardModelConfig, save_reward_model, train_reward_model
from afarm.stages._cli import check_training, model_card, parser, run

log = logging.getLogger("afarm.stages.reward_model")


def curve(values: list[float], bins: int = 20) -> list[float]:
    """``values`` averaged over at most ``bins`` consecutive equal-count chunks (a readable loss curve)."""
    bins = min(bins, len(values))
    edges = [round(i * len(values) / bins) for i in range(bins + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def main(args, params) -> None:
    cfg = stage_config(params, "reward_model", RewardModelConfig)
    check_training(params, "reward_model", cfg)
    preferences = read_preferences(args.preferences)
    tokenizer = AutoTokenizer.from_pretrained(args.sft)
    model, stats = train_reward_model(args.sft, tokenizer, preferences, cfg)
    card = model_card(params, "reward_model", args.sft, [args.preferences], generates=False, reward_model=cfg)
    save_reward_model(model, tokenizer, args.out, card)  # gathered, written by rank 0
    if not distributed.is_main():
        return
    if args.log:
        write_curve(args.log, curve_columns(stats))
    losses, tenth = stats["losses"], max(1, len(stats["losses"]) // 10)
    log.info("%d steps in %.0f s; held-out accuracy %s", stats["num_steps"], stats["seconds"], stats["eval_after"])
    write_json(args.metrics, {
        "num_train_pairs": stats["num_train_pairs"],
        "ties_dropped": stats["ties_dropped"],
        "num_steps": stats["num_steps"],
        "train_loss_first_10pct": sum(losses[:tenth]) / tenth,
        "train_loss_last_10pct": sum(losses[-tenth:]) / tenth,
        "train_accuracy_last_10pct": sum(stats["accuracies"][-tenth:]) / tenth,
        "train_loss_curve": curve(losses),
        "held_out_pairs": stats["eval_after"]["num_pairs"] if stats["eval_after"] else 0,
        "held_out_accuracy_before": stats["eval_before"]["accuracy"] if stats["eval_before"] else None,
        "held_out_accuracy": stats["eval_after"]["accuracy"] if stats["eval_after"] else None,
        "held_out_loss": stats["eval_after"]["loss"] if stats["eval_after"] else None,
    })


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder (initialises the reward model)")
    p.add_argument("--preferences", required=True, help="data/preferences/<set>.json")
    p.add_argument("--out", required=True, help="reward model folder to write")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
