"""Expert iteration: best-of-n on the unlabeled instructions, then SFT on the selected outputs.

As upstream AlpacaFarm (README "Expert Iteration"): ``examples/best_of_n.py --task run_best_of_n``
with the SFT model as decoder and the reward model as scorer on the ``unlabeled`` split
(n = 16), then ``examples/scripts/expiter.sh``: supervised fine-tuning from the SFT
checkpoint on those best outputs, with the SFT recipe (loss on the response only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from afarm import distributed
from afarm.methods.best_of_n import BestOfNConfig, best_of_n
from afarm.models.train import TrainConfig, train_causal_lm


@dataclass
class ExpertIterationConfig:
    best_of_n: BestOfNConfig = field(default_factory=BestOfNConfig)  # upstream README: n 16, temperature 1.0
    # SFT on the selected outputs: TrainConfig's defaults are upstream sft.sh, and expiter.sh uses
    # the same values (lr 2e-5, 3 epochs, batch 1 x accumulation 16 x 8 GPUs, warmup 0.03, cosine,
    # no weight decay, max length 512, seed 42, bf16).
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class ExpertIterationStageConfig(ExpertIterationConfig):
    limit: int | None = None  # first N unlabeled instructions only; None = the whole split (paper: 20k)


def select_expert_data(prompts: Sequence[str], best: dict) -> list[tuple]:
    """(prompt, best output, finished) training triples from a ``best_of_n`` result. Empty outputs are
    kept: SFT then learns to answer with EOS only when the reward model prefers that. An output cut off
    at the generation cap (``finished`` False) is trained without EOS, so that the policy does not learn
    to stop mid-answer (our choice; at tiny scale, with a 64-token cap, about half of the selected outputs
    are cut off, and with EOS after them the trained policy's samples came out shorter than SFT's and no
    better by the reward model)."""
    return list(zip(prompts, best["outputs"], best["finished"], strict=True))


def expert_iteration(policy, tokenizer, reward_model, reward_tokenizer, prompts: Sequence[str], cfg: ExpertIterationConfig) -> tuple[list[tuple[str, str]], dict, dict]:
    """Select best-of-n outputs of ``policy`` on ``prompts``, then fine-tune ``policy`` on them in place.

    Returns (the selected (prompt, output) pairs, the ``best_of_n`` result, the training stats).
    """
    best = best_of_n(policy, tokenizer, reward_model, reward_tokenizer, prompts, cfg.best_of_n)
    best = distributed.broadcast_object(best)  # several processes train on rank 0's selection
    data, stats = train_on_best(policy, tokenizer, prompts, best, cfg)
    return data, best, stats


def train_on_best(policy, tokenizer, prompts: Sequence[str], best: dict, cfg: ExpertIterationConfig) -> tuple[list[tuple[str, str]], dict]:
    """The training half of ``expert_iteration``: fine-tune ``policy`` in place on a ``best_of_n`` result
    (sampled by ``policy`` or by a copy of it, e.g. in bf16). Returns (the training pairs, the stats)."""
    data = select_expert_data(prompts, best)
    return data, train_causal_lm(policy, tokenizer, data, cfg.train, response_only=True)
