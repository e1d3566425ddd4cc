"""Stage `ppo`: RLHF with PPO on the unlabeled split's prompts (upstream examples/rlhf_ppo.py).

The policy and the frozen reference start from the SFT model, the value model from the reward
model; the trained policy is saved as an ordinary model folder (evaluated by the `generate`
stage). Per-step statistics go to a CSV log and a PNG of the reward / KL / entropy curves.

``ppo.kl_coef`` in params.yaml is a number or a mapping from preference set to number (upstream
README: 0.0067 with simulated, 0.02 with human preferences); ``--preference_set`` picks the entry.

Under the launcher with ``launch.processes`` > 1 every process runs this: the four models are
sharded over the ranks (``afarm.distributed.prepare_model``; policy and value trained, reference
and reward model frozen, in ``ppo.precision``), and rank 0 alone writes the outputs.
"""

from __future__ import annotations

from typing import Callable

import torch

from afarm import distributed
from afarm.config import section, stage_config
from afarm.curves import log_columns, write_curve
from afarm.data.instructions import read_examples
from afarm.io import InputError, atomic_write, write_json
from afarm.methods.ppo import PPOConfig, ValueModel, check_ppo_batches, train_ppo
from afarm.models.lm import load_model, save_model
from afarm.stages._cli import checkpoints, model_card, parser, run

CURVES = ("score", "kl", "entropy")  # what the plot shows, one panel each


def kl_coef_for(params: dict, name: str, preference_set: str | None) -> float:
    """``<name>.kl_coef``: a number, or ``{preference_set: number}``."""
    value = section(params, name).get("kl_coef")
    where = params.get("_path", "params.yaml")
    if isinstance(value, dict):
        if preference_set not in value:
            raise InputError(where, f"no entry for preference set {preference_set!r} (have {sorted(value)})", field=f"{name}.kl_coef")
        value = value[preference_set]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(where, f"expected a number, got {value!r}", field=f"{name}.kl_coef")
    return value


def reward_function(model, tokenizer, batch_size: int):
    """(prompts, responses) -> scores with the frozen (prepared) reward ``model``."""
    from afarm.methods.reward_model import score

    return lambda prompts, responses: score(model, tokenizer, prompts, responses, batch_size)


def check_distributed(params: dict, name: str, cfg, check: Callable) -> None:
    """Bad ``<name>.precision`` or global batches that do not split over this stage's processes
    (``check(cfg, world)`` raises ValueError naming the keys) are bad params: ``InputError``."""
    where = params.get("_path", "params.yaml")
    if cfg.precision not in distributed.PRECISIONS:
        raise InputError(where, f"expected one of {list(distributed.PRECISIONS)}, got {cfg.precision!r}", field=f"{name}.precision")
    try:
        check(cfg, distributed.world_size())
    except ValueError as err:
        raise InputError(where, str(err)) from err


def preparer(cfg) -> Callable:
    """``prepare(model, train)``: ``afarm.distributed.prepare_model`` with the section's precision
    and gradient checkpointing (for the trained models)."""

    def prepare(model, train: bool):
        return distributed.prepare_model(model, train=train, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing and train)

    return prepare


def frozen_dtype(cfg) -> str:
    """The dtype to load a frozen model in: bf16 under ``bf16_mixed`` (its storage), else fp32."""
    return "bfloat16" if cfg.precision == "bf16_mixed" else "float32"


def write_curves(path: str, log: list[dict], keys: tuple[str, ...], title: str) -> None:
    """One panel per statistic against the step, as a PNG (no timestamps in the file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    steps = [r["step"] for r in log]
    for ax, key in zip(axes, keys):
        ax.plot(steps, [r[key] for r in log], marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def summary(result: dict) -> dict:
    first, last = result["log"][0], result["log"][-1]
    return {
        "num_steps": result["num_steps"],
        "num_prompts": result["num_prompts"],
        "dropped_prompts": result["dropped_prompts"],
        **{f"initial_{k}": first[k] for k in CURVES if k in first},
        **{f"final_{k}": last[k] for k in CURVES if k in last},
    }


def main(args, params) -> None:
    from afarm.methods.reward_model import load_reward_model

    cfg = stage_config(params, "ppo", PPOConfig, drop=("kl_coef",))
    kl_coef = kl_coef_for(params, "ppo", args.preference_set)
    if kl_coef is not None:
        cfg.kl_coef = float(kl_coef)
    check_distributed(params, "ppo", cfg, check_ppo_batches)
    prompts = [prompt for prompt, _ in read_examples(args.unlabeled)]
    prepare = preparer(cfg)
    # One model at a time is loaded whole by rank 0 (fp32 for the trained ones: their master weights;
    # the other ranks build it on the meta device) and then sharded, each rank receiving its shards
    # from rank 0; the value model is a copy of the reward model, taken before that is frozen, and
    # trained whole (backbone and head), as upstream's actor-critic (rl/ppo_trainer.py, init_value_with_reward).
    reward_model, reward_tokenizer = load_reward_model(args.reward_model, rank0_only=True)
    value_model = prepare(ValueModel.from_reward_model(reward_model, cfg.init_value_head).float(), True)
    reward_fn = reward_function(prepare(reward_model, False), reward_tokenizer, cfg.rollout_micro_batch_size)
    policy, tokenizer = load_model(args.sft, dtype="float32", rank0_only=True)
    policy = prepare(policy, True)
    ref_policy = prepare(load_model(args.sft, dtype=frozen_dtype(cfg), rank0_only=True)[0], False)
    torch.manual_seed(cfg.seed)
    saved = checkpoints(params, "ppo", args, cfg, [args.sft, args.reward_model, args.unlabeled], cfg.checkpoint_every)
    result = train_ppo(policy, ref_policy, value_model, reward_fn, tokenizer, prompts, cfg, saved)
    card = model_card(params, "ppo", args.sft, [args.unlabeled], models={"reward model": args.reward_model}, ppo=cfg)
    save_model(policy, tokenizer, args.out, card)  # gathered, written by rank 0
    saved.finish()
    if not distributed.is_main():
        return
    log = [{k: v for k, v in r.items() if k != "example_response"} for r in result["log"]]
    if args.log:
        write_curve(args.log, log_columns(log))
    write_curves(args.plot, log, CURVES, f"PPO ({args.preference_set or 'reward model'})")
    write_json(args.metrics, {**summary(result), "kl_coef": cfg.kl_coef, "example_response": result["log"][-1]["example_response"]})


def arguments():
    p = parser(__doc__)
    p.add_argument("--sft", required=True, help="SFT model folder (policy and reference)")
    p.add_argument("--reward_model", required=True, help="reward model folder (scores; initialises the value model)")
    p.add_argument("--unlabeled", required=True, help="the unlabeled split (prompts)")
    p.add_argument("--out", required=True, help="model folder to write (the policy)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--plot", required=True, help="PNG of reward / KL / entropy per step")
    p.add_argument("--log", default=None, help="CSV of per-step statistics (the training curve, afarm.curves)")
    p.add_argument("--preference_set", default=None, help="sim | human: picks ppo.kl_coef when it is per set")
    return p


if __name__ == "__main__":
    run(main, arguments())
