"""Stage `generate`: a model's outputs on the evaluation instructions, as ``model_outputs.json``.

Every prompt is the model folder's chat template applied to the instruction
(``afarm.models.prompts.chat_prompt``): the Alpaca prompt, with the folder's control token in
front when it has one (reward conditioning's positive token, all-quantile Quark's ``<reward_0>``);
the outputs never contain it.

Runs on this process's GPU (else the CPU); in several processes the prompts' batches are shared
by the ranks (``afarm.models.generate``) and rank 0 writes the outputs.
"""

from __future__ import annotations

from afarm import distributed
from afarm.config import stage_config
from afarm.data.eval_set import load_eval_set, model_outputs
from afarm.io import InputError, write_json
from afarm.models.generate import GenerationConfig, generate, load_for_generation
from afarm.models.prompts import chat_prompt
from afarm.stages._cli import parser, run


def main(args, params) -> None:
    cfg = stage_config(params, "generate", GenerationConfig)
    eval_set = load_eval_set(args.eval_set)
    model, tokenizer = load_for_generation(args.model, cfg)
    try:
        prompts = [chat_prompt(tokenizer, r["instruction"]) for r in eval_set]
    except ValueError as err:  # no chat template
        raise InputError(args.model, str(err)) from None
    texts = generate(model, tokenizer, prompts, cfg)
    if distributed.is_main():
        write_json(args.out, model_outputs(eval_set, texts, args.generator))


def arguments():
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--eval_set", required=True)
    p.add_argument("--out", required=True, help="model_outputs.json to write")
    p.add_argument("--generator", required=True, help="name of this model in the leaderboard")
    return p


if __name__ == "__main__":
    run(main, arguments())
