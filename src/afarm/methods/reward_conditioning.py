"""Binary reward conditioning (AlpacaFarm paper, Sec. 5 and App. A.1).

Every preference pair (x, y_w, y_l) gives two supervised examples: the concatenation [x, y_w]
with a positive control token in front of it and [x, y_l] with a negative control token, so
the training set is twice the number of pairs. At test time the model is conditioned on the
positive token. The loss is on the response only, as in SFT, and the recipe is upstream's SFT
recipe (``examples/scripts/sft.sh``; upstream ships no separate script for this method).

The control tokens are added to the tokenizer as special tokens (one id each; the embedding
matrix grows if needed, new rows seeded), and the prompt becomes ``<token> + prompt``, right
after BOS. The trained model folder records the positive token in its chat template
(``afarm.models.lm.save_model`` with the card's ``prompt_prefix``), which the generic ``generate``
stage renders every prompt with, so generation needs no method-specific code.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from afarm.methods.dpo import preference_pairs
from afarm.models.card import ModelCard
from afarm.models.lm import save_model
from afarm.models.train import TrainConfig, train_causal_lm


@dataclass
class RewardConditioningConfig:
    # The paper names no token strings; these are our choice (new special tokens).
    positive_token: str = "<|good|>"
    negative_token: str = "<|bad|>"
    seed: int = 0  # seeds the initialisation of new embedding rows (our choice)
    # Defaults of TrainConfig = upstream examples/scripts/sft.sh (supervised fine-tuning).
    train: TrainConfig = field(default_factory=TrainConfig)


def conditioned_examples(preferences: Sequence[dict], cfg: RewardConditioningConfig) -> tuple[list[tuple[str, str]], int]:
    """Two (prompt, response) examples per non-tied pair: positive token + chosen, negative token + rejected."""
    pairs, ties = preference_pairs(preferences)
    examples = []
    for prompt, chosen, rejected in pairs:
        examples.append((cfg.positive_token + prompt, chosen))
        examples.append((cfg.negative_token + prompt, rejected))
    return examples, ties


def add_control_tokens(model, tokenizer, cfg: RewardConditioningConfig) -> None:
    """Add both control tokens to the tokenizer (as special tokens) and make room in the embeddings."""
    tokenizer.add_tokens([cfg.positive_token, cfg.negative_token], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def train_reward_conditioning(model, tokenizer, preferences: Sequence[dict], cfg: RewardConditioningConfig) -> dict:
    """Add the control tokens, then fine-tune ``model`` in place on the conditioned examples."""
    examples, ties = conditioned_examples(preferences, cfg)
    if not examples:
        raise ValueError("no preference pair with a preferred output (all ties)")
    add_control_tokens(model, tokenizer, cfg)
    stats = train_causal_lm(model, tokenizer, examples, cfg.train, response_only=True)
    return {**stats, "dropped_ties": ties}


def save_conditioned_model(model, tokenizer, path: str | os.PathLike, cfg: RewardConditioningConfig, card: ModelCard | None = None) -> None:
    """Write the model folder ``path`` with the positive token as its control token (in the chat template)."""
    card = card or ModelCard(method="reward_conditioning")
    save_model(model, tokenizer, path, dataclasses.replace(card, prompt_prefix=cfg.positive_token))
