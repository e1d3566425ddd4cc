"""Stage `sft`: supervised fine-tuning of the base model on the sft split (loss on responses only).

Data size: ``--sft`` takes one or more split files, concatenated in the order given, and
``--max_examples N`` (optional) keeps the first N examples. The paper's two SFT rows are two
entries of the stage table: "SFT 10k" on the sft split, and "SFT 52k" (all of Alpaca's instructions)
on all four splits (tiny: 1000 vs 5200, the same ratio). ``--section`` names the params section of the
recipe: ``sft``, or ``sft_52k`` (the same recipe but for the tiny scale's epochs, params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.instructions import read_examples
from afarm.io import write_json
from afarm.models.lm import load_model, save_model
from afarm.models.train import TrainConfig, evaluate_loss, train_causal_lm
from afarm.stages._cli import check_training, checkpoints, model_card, parser, run


SECTIONS = ("sft", "sft_52k")


@dataclass
class SFTConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


def main(args, params) -> None:
    cfg = stage_config(params, args.section, SFTConfig)
    check_training(params, f"{args.section}.train", cfg.train)
    validation = read_examples(args.validation)  # the data first: a bad file fails before any model loads
    train = [example for path in args.sft for example in read_examples(path)][: args.max_examples]
    model, tokenizer = load_model(args.base_model, dtype="float32", rank0_only=True)  # the trained weights are fp32 masters
    model = distributed.prepare_model(model, train=True, precision=cfg.train.precision, gradient_checkpointing=cfg.train.gradient_checkpointing)
    before = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    saved = checkpoints(params, "sft", args, cfg, [args.base_model, *args.sft, args.validation], cfg.train.checkpoint_every)
    stats = train_causal_lm(model, tokenizer, train, cfg.train, response_only=True, checkpoints=saved)
    after = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    save_model(model, tokenizer, args.out, model_card(params, "sft", args.base_model, args.sft, **{args.section: cfg}))  # gathered, written by rank 0
    saved.finish()
    if not distributed.is_main():
        return
    if args.log:
        write_curve(args.log, curve_columns(stats))
    write_json(
        args.metrics,
        {
            "num_examples": len(train),
            "num_steps": len(stats["losses"]),
            "final_train_loss": stats["losses"][-1],
            "validation_loss_before": before["loss"],
            "validation_loss_after": after["loss"],
            "validation_in_training": args.validation in args.sft,  # SFT 52k trains on every split
        },
    )


def arguments():
    p = parser(__doc__)
    p.add_argument("--base_model", required=True)
    p.add_argument("--sft", required=True, nargs="+", help="the sft split (or several splits, concatenated)")
    p.add_argument("--section", default="sft", choices=SECTIONS, help="params section of the recipe (default: sft)")
    p.add_argument("--max_examples", type=int, default=None, help="train on the first N examples only (default: all)")
    p.add_argument("--validation", required=True)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
