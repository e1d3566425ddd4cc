"""Stage `quark`: Quark on the unlabeled split's prompts (upstream examples/rlhf_quark.py), then its
outputs on the evaluation set.

The trained policy needs its control token in front of every prompt (all-quantile Quark): the
saved folder records it in its chat template, as every model folder does, and this stage writes
the eval outputs itself from the trained policy (model_outputs format, decoded with the `generate`
params section), with prompts rendered by that same chat template; the `generate` stage gives the
same outputs from the folder.

Several processes (``launch.processes`` > 1): policy and reference (grown by the control tokens
first) and the reward model are sharded as in the `ppo` stage; the eval outputs come from the
sharded policy through ``afarm.models.generate``; rank 0 alone writes the outputs.
"""

from __future__ import annotations

import torch

from afarm import distributed
from afarm.config import stage_config
from afarm.curves import log_columns, write_curve
from afarm.data.eval_set import load_eval_set, model_outputs
from afarm.data.instructions import read_examples
from afarm.io import write_json
from afarm.methods.ppo import check_batches
from afarm.methods.quark import QuarkConfig, train_quark
from afarm.methods.reward_model import load_reward_model
from afarm.models.generate import GenerationConfig, generate
from afarm.models.lm import load_model, save_model
from afarm.models.prompts import chat_prompt
from afarm.stages._cli import model_card, parser, run
from afarm.stages.ppo import check_distributed, frozen_dtype, kl_coef_for, preparer, reward_function, summary, write_curves

CURVES = ("score", "train_kl", "train_entropy")


def main(args, params) -> None:
    cfg = stage_config(params, "quark", QuarkConfig, drop=("kl_coef",))
    kl_coef = kl_coef_for(params, "quark", args.preference_set)
    if kl_coef is not None:
        cfg.kl_coef = float(kl_coef)
    check_distributed(params, "quark", cfg, lambda c, world: check_batches(c, world, "quark"))
    gen_cfg = stage_config(params, "generate", GenerationConfig)
    prompts = [prompt for prompt, _ in read_examples(args.unlabeled)]
    eval_set = load_eval_set(args.eval_set)
    prepare = preparer(cfg)
    reward_model, reward_tokenizer = load_reward_model(args.reward_model, rank0_only=True)
    reward_fn = reward_function(prepare(reward_model, False), reward_tokenizer, cfg.rollout_micro_batch_size)
    policy, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)
    ref_policy, _ = load_model(args.sft, dtype=frozen_dtype(cfg), rank0_only=True)
    torch.manual_seed(cfg.seed)
    # train_quark grows both models' embeddings by the control tokens, then prepares (shards) them
    result = train_quark(policy, ref_policy, reward_fn, tokenizer, prompts, cfg, prepare=prepare)
    policy, prefix = result["policy"], result["generation_prefix"]
    card = model_card(params, "quark", args.sft, [args.unlabeled], models={"reward model": args.reward_model},
                      prompt_prefix=prefix, quark=cfg)
    save_model(policy, tokenizer, args.out, card)  # gathered, written by rank 0; gives tokenizer the chat template

    # Every rank runs the whole (sharded) policy on every prompt in step: the same prompts and seeds give
    # the same lengths on every rank, so no rank waits for a forward pass that never comes.
    prompts = [chat_prompt(tokenizer, r["instruction"]) for r in eval_set]  # prefix + Alpaca prompt
    texts = generate(policy, tokenizer, prompts, gen_cfg, data_parallel=False)
    if not distributed.is_main():
        return
    write_json(args.outputs, model_outputs(eval_set, texts, args.generator))
    log = [{k: v for k, v in r.items() if k != "example_response"} for r in result["log"]]
    if args.log:
        write_curve(args.log, log_columns(log))
    write_curves(args.plot, log, CURVES, f"Quark ({args.preference_set or 'reward model'})")
    write_json(args.metrics, {**summary(result), "kl_coef": cfg.kl_coef, "generation_prefix": prefix, "example_response": result["log"][-1]["example_response"]})


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder (policy and reference)")
    p.add_argument("--reward_model", required=True, help="reward model folder")
    p.add_argument("--unlabeled", required=True, help="the unlabeled split (prompts)")
    p.add_argument("--eval_set", required=True)
    p.add_argument("--out", required=True, help="model folder to write (the policy, with its control tokens)")
    p.add_argument("--outputs", required=True, help="model_outputs.json of the trained model on the eval set")
    p.add_argument("--metrics", required=True)
    p.add_argument("--plot", required=True, help="PNG of reward / KL / entropy per step")
    p.add_argument("--log", default=None, help="CSV of per-step statistics (the training curve, afarm.curves)")
    p.add_argument("--generator", required=True, help="name of this model in the leaderboard, e.g. quark_sim")
    p.add_argument("--preference_set", default=None, help="sim | human: picks quark.kl_coef when it is per set")
    return p


if __name__ == "__main__":
    run(main, arguments())
