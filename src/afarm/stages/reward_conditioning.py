"""Stage `reward_conditioning`: binary reward conditioning of the SFT model on a preference set.

The model folder it writes has the positive control token in front of its chat template, which
the ``generate`` stage renders every prompt with.
"""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.instructions import read_examples
from afarm.data.preferences import read_preferences
from afarm.io import write_json
from afarm.methods.reward_conditioning import RewardConditioningConfig, save_conditioned_model, train_reward_conditioning
from afarm.models.lm import load_model
from afarm.models.train import evaluate_loss
from afarm.stages._cli import check_training, model_card, parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "reward_conditioning", RewardConditioningConfig)
    check_training(params, "reward_conditioning.train", cfg.train)
    preferences = read_preferences(args.preferences)
    # Validation loss of the plain SFT data, conditioned on the positive token as at generation time.
    validation = [(cfg.positive_token + p, r) for p, r in read_examples(args.validation)]
    model, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)  # the trained weights are fp32 masters
    stats = train_reward_conditioning(model, tokenizer, preferences, cfg)
    after = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    card = model_card(params, "reward_conditioning", args.sft, [args.preferences], reward_conditioning=cfg)
    save_conditioned_model(model, tokenizer, args.out, cfg, card)  # gathered, written by rank 0
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
            "validation_loss_positive_token": after["loss"],
            "prompt_prefix": cfg.positive_token,
        },
    )


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder to start from")
    p.add_argument("--preferences", required=True, help="data/preferences/<S>.json")
    p.add_argument("--validation", required=True, help="the validation split (response loss, positive token)")
    p.add_argument("--out", required=True, help="model folder to write (models/reward_conditioning_<S>)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
