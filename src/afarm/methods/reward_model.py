"""Reward model: the SFT model with a scalar head, trained on pairwise preferences (Bradley-Terry).

Model: ``AutoModelForSequenceClassification`` with ``num_labels=1`` initialised from the SFT
checkpoint (as upstream AlpacaFarm, whose reward model is the SFT backbone plus a linear head:
src/alpaca_farm/models/reward_model.py). The head is new and seeded; HF's Llama head has no
bias, which the pairwise loss could not train anyway (it cancels in r_chosen - r_rejected).

Text: ``BOS prompt response EOS``, tokenized exactly as SFT training does
(``afarm.models.train.tokenize_example``), with prompt = ``format_prompt(instruction, input)``.
The reward is the head's value at the last non-pad token (the EOS), so it does not depend on
the padding side: padding positions hold the pad id and nothing else does, and position ids
count real tokens only. (Upstream pads on the left and reads the last position; its
``end_sequence_with_eos`` flag defaults to False, we always end with EOS, which is also how a
policy's sampled response ends.)

Loss (Bradley-Terry): ``mean(-log sigmoid(r_chosen - r_rejected))``, which is upstream's
``binary_cross_entropy_with_logits(r_1 - r_0, choice)`` (reward_modeling_trainer.py) written
for binary labels. Accuracy on a seeded held-out part of the preference set is logged before
and after training (upstream reward_modeling.py splits ``eval_size = 500`` pairs off).

The loop mirrors ``afarm.models.train``: plain PyTorch + ``afarm.distributed`` (FSDP2 sharding
and bf16 mixed precision at paper scale; one process at fp32 trains the model as is), AdamW
with HF Trainer defaults, warmup + cosine schedule, a global batch of pairs split into
micro-batches (accumulated, and shared between the processes), gradient clipping, a seeded
data order; same inputs, same weights on CPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, get_scheduler

from afarm import distributed
from afarm.data.preferences import chosen_rejected
from afarm.models.lm import check_model_folder, on_meta, save_model, torch_threads
from afarm.models.prompts import format_prompt
from afarm.models.train import optimizer_steps, tokenize_example, training_order


@dataclass
class RewardModelConfig:
    # Defaults are upstream AlpacaFarm's reward-model recipe, examples/scripts/reward_modeling.sh
    # (8 GPUs) and examples/reward_modeling.py, unless a comment says otherwise.
    learning_rate: float = 3e-6  # reward_modeling.sh --learning_rate 3e-6
    num_epochs: float = 1.0  # reward_modeling.sh --num_train_epochs 1
    max_steps: int | None = None  # if set, overrides num_epochs (HF TrainingArguments semantics)
    # Global batch (pairs per optimizer step) = micro_batch_size x accumulation steps x devices.
    batch_size: int = 16  # reward_modeling.sh: --per_device_train_batch_size 1 x --gradient_accumulation_steps 2 x 8 GPUs
    micro_batch_size: int = 1  # reward_modeling.sh --per_device_train_batch_size 1 (pairs per forward pass and device)
    warmup_ratio: float = 0.03  # reward_modeling.sh --warmup_ratio 0.03
    weight_decay: float = 0.0  # reward_modeling.sh --weight_decay 0.0
    lr_scheduler: str = "cosine"  # reward_modeling.sh --lr_scheduler_type cosine
    max_grad_norm: float = 1.0  # HF TrainingArguments default (not overridden upstream)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # HF TrainingArguments default (optim adamw_torch)
    adam_eps: float = 1e-8  # HF TrainingArguments default
    max_length: int = 512  # reward_modeling.sh --model_max_length 512 (longer sequences are truncated)
    group_by_length: bool = False  # HF default; our tiny scale sets True (less padding)
    eval_size: int = 500  # upstream reward_modeling.py DataArguments.eval_size (held-out pairs)
    eval_batch_size: int = 4  # reward_modeling.sh --per_device_eval_batch_size 4 (pairs)
    seed: int = 42  # reward_modeling.sh --seed 42 (data order, held-out split, head init)
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    precision: str = "fp32"  # "fp32" | "bf16_mixed"; paper: bf16_mixed (reward_modeling.sh --bf16 True under FSDP)
    gradient_checkpointing: bool = False  # HF TrainingArguments default; reward_modeling.sh does not enable it
    show_progress: bool = True  # tqdm bar


# ---------------------------------------------------------------- math (pure functions)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(r_chosen - r_rejected)``."""
    return -F.logsigmoid(chosen_rewards.float() - rejected_rewards.float()).mean()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask 1) token of each row, for left or right padding."""
    positions = torch.arange(attention_mask.size(-1), device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row (pads get 0): padding does not shift positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------- model


def init_reward_model(sft_path_or_model, tokenizer, seed: int, rank0_only: bool = False) -> PreTrainedModel:
    """A sequence classifier (one label) with the SFT model's backbone and a fresh seeded head.
    ``rank0_only`` (a folder, sharded next): as ``afarm.models.lm.load_model``, only rank 0 reads it."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("the reward model needs a pad token distinct from EOS (upstream adds '[PAD]' to LLaMA)")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if isinstance(sft_path_or_model, (str, os.PathLike)) and rank0_only and not distributed.is_main():
            check_model_folder(sft_path_or_model)
            model = on_meta(AutoModelForSequenceClassification, str(sft_path_or_model), "float32", {}, num_labels=1)
        elif isinstance(sft_path_or_model, (str, os.PathLike)):
            check_model_folder(sft_path_or_model)
            # float32: the weights it trains are the fp32 masters (also under bf16 mixed precision)
            model = AutoModelForSequenceClassification.from_pretrained(sft_path_or_model, num_labels=1, dtype=torch.float32)
        else:  # an in-memory causal LM: same architecture, its weights, a new head
            values = {k: v for k, v in sft_path_or_model.config.to_dict().items() if k not in ("id2label", "label2id")}
            config = sft_path_or_model.config.__class__.from_dict({**values, "num_labels": 1})
            model = AutoModelForSequenceClassification.from_config(config, dtype=sft_path_or_model.dtype)
            missing, _ = model.load_state_dict(sft_path_or_model.state_dict(), strict=False)
            if any(not key.startswith("score.") for key in missing):
                raise ValueError(f"backbone weights missing from the SFT model: {missing[:3]}")
    finally:
        torch.random.set_rng_state(state)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def encode(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of ``BOS prompt response EOS`` (as SFT training), truncated; no id equals the pad id."""
    ids = tokenize_example(tokenizer, prompt, response, max_length, response_only=False)["input_ids"]
    pad, unk = tokenizer.pad_token_id, tokenizer.unk_token_id
    return [unk if (t == pad and unk is not None) else t for t in ids]  # a literal pad token in the text


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a batch padded on ``side`` with ``pad_token_id``."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One reward per row: the head's value at the last non-pad token.

    HF's sequence classifier pools at the rightmost token that is not the pad id; since pads
    are exactly the mask-0 positions (``encode``/``pad_batch``), that is ``last_token_index``.
    Calling the model itself (not its parts) keeps FSDP's hooks (gather, mixed precision).
    """
    # Right padding leaves real tokens at positions 0, 1, ...; only left padding needs explicit positions
    # (passing them always would also cost HF's fast path for unpadded batches).
    left_padded = bool((attention_mask[:, 0] == 0).any())
    positions = position_ids(attention_mask) if left_padded else None
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    return out.logits.squeeze(-1).float()


# ---------------------------------------------------------------- data


def preference_pairs(tokenizer, preferences: Sequence[dict], max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(chosen ids, rejected ids) of every non-tie record, and the number of ties dropped."""
    pairs, ties = [], 0
    for rec in preferences:
        cr = chosen_rejected(rec)
        if cr is None:
            ties += 1
            continue
        prompt = format_prompt(rec["instruction"], rec.get("input", ""))
        pairs.append((encode(tokenizer, prompt, cr[0], max_length), encode(tokenizer, prompt, cr[1], max_length)))
    return pairs, ties


def split_held_out(n: int, eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded permutation, ``eval_size`` held out."""
    if eval_size >= n:
        raise ValueError(f"eval_size {eval_size} leaves no training pair out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[eval_size:]), sorted(perm[:eval_size])


def _pair_batch(pairs: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen sequences first, then rejected: one forward pass for both halves."""
    return pad_batch([c for c, _ in pairs] + [r for _, r in pairs], pad_token_id)


# ---------------------------------------------------------------- training


def train_reward_model(sft_path_or_model, tokenizer, preferences: list[dict], cfg: RewardModelConfig) -> tuple[PreTrainedModel, dict]:
    """Train a reward model on ``preferences`` (records of ``afarm.data.preferences``); return (model, stats).

    ``stats``: per-step ``losses``, ``accuracies`` (train micro-batch pair accuracy averaged per
    step), ``learning_rates`` and ``grad_norms`` (total, before clipping); ``eval_before`` / ``eval_after`` (held-out ``accuracy``,
    ``loss``, ``num_pairs``; None when ``eval_size`` is 0); ``num_train_pairs``,
    ``ties_dropped``, ``num_steps``, ``seconds``.
    """
    with torch_threads(cfg.num_threads):
        model = init_reward_model(sft_path_or_model, tokenizer, cfg.seed, rank0_only=True)
        model = distributed.prepare_model(model, train=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
        pairs, ties = preference_pairs(tokenizer, preferences, cfg.max_length)
        train_idx, eval_idx = split_held_out(len(pairs), cfg.eval_size, cfg.seed)
        train, held_out = [pairs[i] for i in train_idx], [pairs[i] for i in eval_idx]
        before = evaluate_pairs(model, tokenizer, held_out, cfg) if held_out else None
        stats = _train(model, tokenizer, train, cfg)
        after = evaluate_pairs(model, tokenizer, held_out, cfg) if held_out else None
    return model, {**stats, "eval_before": before, "eval_after": after, "num_train_pairs": len(train), "ties_dropped": ties}


def _optimizer(model, cfg: RewardModelConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # no decay on norms / biases
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters (HF Trainer's default optim "adamw_torch_fused"); same update rule
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)


def _train(model, tokenizer, pairs, cfg: RewardModelConfig) -> dict:
    torch.manual_seed(cfg.seed)
    distributed.micro_batches(cfg.batch_size, cfg.micro_batch_size)  # the global batch must divide
    total = cfg.max_steps * cfg.batch_size if cfg.max_steps is not None else max(1, math.floor(cfg.num_epochs * len(pairs)))
    steps = optimizer_steps(training_order([len(c) + len(r) for c, r in pairs], total, cfg), cfg)
    num_steps = cfg.max_steps or len(steps)

    model = distributed.prepare_model(model, train=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    optimizer = _optimizer(model, cfg)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * num_steps),
                              num_training_steps=num_steps)
    model.train()
    device = distributed.device()

    losses, accuracies, learning_rates, grad_norms, start = [], [], [], [], time.perf_counter()
    bar = tqdm(steps[:num_steps], desc="reward model", disable=not (cfg.show_progress and distributed.is_main()))
    for step in bar:
        share = distributed.step_share(step)  # this rank's micro-batches, each with its loss divisor
        step_loss = step_acc = 0.0
        for k, (rows, divisor) in enumerate(share):
            chunk = [pairs[i] for i in rows]
            input_ids, attention_mask = _pair_batch(chunk, tokenizer.pad_token_id)
            with distributed.accumulate(model, sync=k == len(share) - 1):
                rewards = sequence_rewards(model, input_ids.to(device), attention_mask.to(device))
                chosen, rejected = rewards[: len(chunk)], rewards[len(chunk) :]
                loss = bradley_terry_loss(chosen, rejected)
                (loss / divisor).backward()
            step_loss += loss.detach() / divisor
            step_acc += (chosen > rejected).float().mean().detach() / divisor
        learning_rates.append(scheduler.get_last_lr()[0])
        grad_norms.append(distributed.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm))
        step_loss, step_acc = distributed.mean_across_ranks([float(step_loss), float(step_acc)])
        losses.append(step_loss)
        accuracies.append(step_acc)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{accuracies[-1]:.2f}")
    model.eval()
    return {"losses": losses, "accuracies": accuracies, "learning_rates": learning_rates, "grad_norms": grad_norms, "num_steps": len(losses),
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate_pairs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], cfg: RewardModelConfig) -> dict:
    """Held-out ``accuracy`` (share of pairs with r_chosen > r_rejected) and mean Bradley-Terry ``loss``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    for start in range(0, len(pairs), cfg.eval_batch_size):
        chunk = pairs[start : start + cfg.eval_batch_size]
        input_ids, attention_mask = _pair_batch(chunk, tokenizer.pad_token_id)
        rewards = sequence_rewards(model, input_ids.to(device), attention_mask.to(device))
        chosen, rejected = rewards[: len(chunk)], rewards[len(chunk) :]
        correct += int((chosen > rejected).sum())
        loss_sum += bradley_terry_loss(chosen, rejected).item() * len(chunk)
    model.train(was_training)
    return {"accuracy": correct / len(pairs), "loss": loss_sum / len(pairs), "num_pairs": len(pairs)}


# ---------------------------------------------------------------- save, load, score


def save_reward_model(model: PreTrainedModel, tokenizer, path: str | os.PathLike, card=None) -> None:
    """Write model (safetensors), tokenizer and ``card`` to folder ``path`` atomically with
    ``afarm.models.lm.save_model`` (a sharded model is gathered and written by rank 0)."""
    save_model(model, tokenizer, path, card)


def load_reward_model(path: str | os.PathLike, rank0_only: bool = False) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) from a folder written by ``save_reward_model``; the model is in eval mode.
    ``rank0_only``: as ``afarm.models.lm.load_model`` (for a model that is sharded next)."""
    check_model_folder(path)
    if rank0_only and not distributed.is_main():
        model = on_meta(AutoModelForSequenceClassification, str(path), None, {})
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int) -> torch.Tensor:
    """Rewards of (formatted prompt, response) pairs: a float32 tensor, one value per pair, input order.

    Sequences are batched by length (longest first) for little padding; the batches depend only
    on the inputs, so the same inputs give the same values. Truncated to the model's maximum length.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    max_length = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    ids = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty(len(ids), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = pad_batch([ids[i] for i in rows], tokenizer.pad_token_id)
        out[rows] = sequence_rewards(model, input_ids.to(device), attention_mask.to(device)).cpu()
    model.train(was_training)
    return out
