"""Stage `feedme`: binary FeedME, supervised fine-tuning of the SFT model on the preferred output of each pair."""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.instructions import read_examples
from afarm.data.preferences import read_preferences
from afarm.io import write_json
from afarm.methods.feedme import FeedMEConfig, train_feedme
from afarm.models.lm import load_model, save_model
from afarm.models.train import evaluate_loss
from afarm.stages._cli import check_training, model_card, parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "feedme", FeedMEConfig)
    check_training(params, "feedme.train", cfg.train)
    preferences = read_preferences(args.preferences)
    validation = read_examples(args.validation)
    model, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)  # the trained weights are fp32 masters
    model = distributed.prepare_model(model, train=True, precision=cfg.train.precision, gradient_checkpointing=cfg.train.gradient_checkpointing)
    before = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    stats = train_feedme(model, tokenizer, preferences, cfg)
    after = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    save_model(model, tokenizer, args.out, model_card(params, "feedme", args.sft, [args.preferences], feedme=cfg))  # gathered, written by rank 0
    if not distributed.is_main():
        return
    if args.log:
        write_curve(args.log, curve_columns(stats))
    write_json(
        args.metrics,
        {
            "num_steps": stats["num_steps"],
            "num_examples": stats["num_examples"],
            "dropped_ties": stats["dropped_ties"],
            "final_train_loss": stats["losses"][-1],
            "validation_loss_before": before["loss"],
            "validation_loss_after": after["loss"],
        },
    )


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder to start from")
    p.add_argument("--preferences", required=True, help="data/preferences/<S>.json")
    p.add_argument("--validation", required=True, help="the validation split (response loss before / after)")
    p.add_argument("--out", required=True, help="model folder to write (models/feedme_<S>)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
