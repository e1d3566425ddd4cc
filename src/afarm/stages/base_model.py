"""Stage `base_model`: the pretrained model every method starts from.

paper: load LLaMA-7B (``base_model.model.pretrained``) and save it as is.
tiny: no pretrained weights are reachable offline, so train a byte-level BPE tokenizer and
a small Llama-style model from scratch on the unlabeled split (loss on all tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from afarm.config import stage_config
from afarm.curves import curve_columns, write_curve
from afarm.data.instructions import read_examples
from afarm.io import write_json
from afarm.models.lm import ModelConfig, build_model, num_parameters, save_model
from afarm.models.train import TrainConfig, evaluate_loss, train_causal_lm
from afarm.stages._cli import model_card, parser, run

log = logging.getLogger("afarm.stages.base_model")


@dataclass
class BaseModelConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def main(args, params) -> None:
    cfg = stage_config(params, "base_model", BaseModelConfig)
    train, validation = read_examples(args.unlabeled), read_examples(args.validation)
    if cfg.model.pretrained:
        from transformers import AutoTokenizer

        from afarm.models.hub import pretrained_kwargs

        name, revision = pretrained_kwargs(cfg.model.pretrained)
        tokenizer = AutoTokenizer.from_pretrained(name, **revision)
        if tokenizer.pad_token is None:  # LLaMA ships none; upstream alpaca_farm adds "[PAD]"
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model = build_model(cfg.model, tokenizer)
        # the commit the hub resolved (None for a local folder): what to pin as `<hub id>@<commit>`
        stats: dict = {"trained": False, "pretrained_commit": getattr(model.config, "_commit_hash", None)}
        curve: dict = {"loss": []}  # nothing trained: the header alone
    else:
        from afarm.models.tokenizer import train_tokenizer

        tokenizer = train_tokenizer((p + " " + r for p, r in train), vocab_size=cfg.model.vocab_size)
        model = build_model(cfg.model, tokenizer)
        log.info("training a %.2fM-parameter model from scratch on %d texts", num_parameters(model) / 1e6, len(train))
        stats = train_causal_lm(model, tokenizer, train, cfg.train, response_only=False)
        curve = curve_columns(stats)
        stats = {"trained": True, "final_train_loss": stats["losses"][-1], "num_steps": len(stats["losses"])}
    val = evaluate_loss(model, tokenizer, validation, cfg.train, response_only=True)
    data = [] if cfg.model.pretrained else [args.unlabeled]
    save_model(model, tokenizer, args.out, model_card(params, "base_model", cfg.model.pretrained, data, base_model=cfg))
    if args.log:
        write_curve(args.log, curve)
    write_json(args.metrics, {"num_parameters": num_parameters(model), **stats, "validation_response_loss": val["loss"]})


def arguments():
    p = parser(__doc__)
    p.add_argument("--unlabeled", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--metrics", required=True)
    p.add_argument("--log", default=None, help="CSV of per-step training statistics (the training curve, afarm.curves)")
    return p


if __name__ == "__main__":
    run(main, arguments())
