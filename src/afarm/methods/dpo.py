"""Direct Preference Optimization (DPO; Rafailov et al. 2023, arXiv 2305.18290), as AlpacaFarm runs it.

Start from the SFT model; keep a frozen copy of it as the reference. For a preference pair
(prompt x, chosen y_w, rejected y_l) let

    r_w = beta * (log pi(y_w | x) - log pi_ref(y_w | x))      (implicit reward of the chosen output)
    r_l = beta * (log pi(y_l | x) - log pi_ref(y_l | x))      (implicit reward of the rejected output)
    loss = -log sigmoid(r_w - r_l)                            (mean over the pairs of a micro-batch)

where log pi(y | x) is the sum of the response tokens' log-probabilities (prompt tokens masked,
EOS included, exactly the tokens SFT trains on). This is the objective of upstream
tatsu-lab/alpaca_farm ``src/alpaca_farm/rl/dpo_trainer.py``; its recipe is
``examples/scripts/dpo.sh`` (see ``DPOConfig``).

What we log, per optimizer step and on a held-out slice of the pairs: the implicit reward
margin ``r_w - r_l`` (0 at the start, since the policy equals the reference) and the
preference accuracy, the share of pairs with ``r_w > r_l`` (strictly; 0 at the start).

Efficiency: as upstream, the chosen and the rejected sequences go through the model as two
batches, each padded only to its own longest sequence (one concatenated batch would pad the
shorter side to the longer); the reference passes run without autograd; and the LM head
projects only the positions that predict response tokens (see ``sequence_logps``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from afarm import distributed
from afarm.data.preferences import chosen_rejected
from afarm.models.lm import torch_threads
from afarm.models.prompts import format_prompt
from afarm.models.train import IGNORE_INDEX, TrainConfig, _optimizer, collate, optimizer_steps, tokenize_example, training_order


def _dpo_train_defaults() -> TrainConfig:
    # Upstream examples/scripts/dpo.sh, unless noted: lr 1e-6, 2 epochs, per-device batch 1 x
    # accumulation 8 x 8 GPUs = 64 pairs a step, warmup 0.03, cosine, no weight decay, max length 512,
    # seed 42, bf16 under FSDP. Other TrainConfig fields keep the HF TrainingArguments defaults, as upstream.
    return TrainConfig(
        learning_rate=1e-6,  # dpo.sh --learning_rate 1e-6
        num_epochs=2.0,  # dpo.sh --num_train_epochs 2
        batch_size=64,  # global, pairs: dpo.sh --per_device_train_batch_size 1 x --gradient_accumulation_steps 8 x 8 GPUs
        micro_batch_size=1,  # dpo.sh --per_device_train_batch_size 1 (pairs)
        warmup_ratio=0.03,  # dpo.sh --warmup_ratio 0.03
        weight_decay=0.0,  # dpo.sh --weight_decay 0.0
        lr_scheduler="cosine",  # dpo.sh --lr_scheduler_type cosine
        max_length=512,  # dpo.sh --model_max_length 512
        seed=42,  # dpo.sh --seed 42
        precision="fp32",  # paper scale: bf16_mixed (dpo.sh --bf16 True under FSDP), set in params.yaml
    )


@dataclass
class DPOConfig:
    beta: float = 0.1  # dpo.sh --beta 0.1 (= examples/dpo.py TrainingArguments.beta default 1e-1)
    # Pairs held out (seeded) to measure implicit-reward accuracy before and after training.
    eval_size: int = 500  # examples/dpo.py DataArguments.eval_size 500 (split off the training pairs)
    train: TrainConfig = field(default_factory=_dpo_train_defaults)


# ---------------------------------------------------------------- pairs


def preference_pairs(preferences: Sequence[dict]) -> tuple[list[tuple[str, str, str]], int]:
    """(prompt, chosen, rejected) of every pair, in the AlpacaFarm prompt format, and the number of
    exact ties (1.5) dropped. AlpacaFarm's training labels are binary; a soft one counts for its side."""
    pairs = []
    for record in preferences:
        outputs = chosen_rejected(record)
        if outputs is not None:
            pairs.append((format_prompt(record["instruction"], record.get("input", "")), *outputs))
    return pairs, len(preferences) - len(pairs)


# ---------------------------------------------------------------- math


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss over the pairs, and each pair's implicit rewards (chosen, rejected; detached)."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token | previous tokens) over the label tokens (labels != -100) of each row.

    ``batch`` is what ``afarm.models.train.collate`` returns: ``input_ids``, ``attention_mask``,
    ``labels`` (prompt and padding positions are -100, so only response tokens and EOS count).
    The LM head runs only from the first position that predicts a label token in any row
    (``logits_to_keep``), so the shared prompt part costs no vocabulary projection.
    """
    labels = batch["labels"][:, 1:]  # the token at t + 1 is predicted by the logits at t
    mask = labels != IGNORE_INDEX
    first = int(mask.int().argmax(-1).min())  # earliest predicting position over the rows
    keep = labels.size(1) - first + 1  # positions first .. T-1 (the last one predicts nothing)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits, labels, mask = logits[:, :-1].float(), labels[:, first:], mask[:, first:]
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


# ---------------------------------------------------------------- data


def tokenize_pairs(tokenizer, pairs, max_length: int) -> tuple[list[tuple[dict, dict]], int]:
    """Tokenize (prompt, chosen, rejected) as two SFT sequences; drop pairs where truncation left
    either response without a label token. Returns (data, dropped)."""
    data, dropped = [], 0
    for prompt, chosen, rejected in pairs:
        w = tokenize_example(tokenizer, prompt, chosen, max_length, response_only=True)
        l = tokenize_example(tokenizer, prompt, rejected, max_length, response_only=True)  # noqa: E741
        if any(all(t == IGNORE_INDEX for t in d["labels"]) for d in (w, l)):
            dropped += 1
            continue
        data.append((w, l))
    return data, dropped


def collate_pairs(items: Sequence[tuple[dict, dict]], pad_token_id: int) -> dict[str, dict[str, torch.Tensor]]:
    """Two padded batches, ``chosen`` and ``rejected`` (row i of each is pair i), each as narrow as its own
    longest sequence (as upstream, which also runs the two sides separately)."""
    return {"chosen": collate([w for w, _ in items], pad_token_id), "rejected": collate([l for _, l in items], pad_token_id)}


def split_eval(n: int, eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, eval) split of indices 0..n-1; eval gets ``eval_size`` (at most n // 2)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(eval_size, n // 2)
    return sorted(perm[k:]), sorted(perm[:k])


def _pair_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_logps(model, batch["chosen"]), sequence_logps(model, batch["rejected"])


@torch.no_grad()
def evaluate_pairs(policy, reference, tokenizer, data: Sequence[tuple[dict, dict]], cfg: DPOConfig) -> dict:
    """Mean loss, implicit reward margin and preference accuracy of the policy on tokenized pairs."""
    if not data:
        return {"loss": None, "reward_margin": None, "accuracy": None, "num_pairs": 0}
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    margins, losses = [], []
    size = max(cfg.train.micro_batch_size, 8)
    for start in range(0, len(data), size):
        batch = {side: {k: v.to(device) for k, v in b.items()} for side, b in collate_pairs(data[start : start + size], tokenizer.pad_token_id).items()}
        loss, chosen, rejected = dpo_loss(*_pair_logps(policy, batch), *_pair_logps(reference, batch), cfg.beta)
        margins.append(chosen - rejected)
        losses.append(loss * len(chosen))
    policy.train(was_training)
    margin = torch.cat(margins)
    return {
        "loss": float(sum(losses) / len(margin)),
        "reward_margin": float(margin.mean()),
        "accuracy": float((margin > 0).float().mean()),
        "num_pairs": len(margin),
    }


# ---------------------------------------------------------------- training


def train_dpo(policy, reference, tokenizer, preferences: Sequence[dict], cfg: DPOConfig) -> dict:
    """Train ``policy`` in place with DPO against the frozen ``reference``; return statistics.

    ``preferences`` are records of the preference format (instruction, input, output_1, output_2,
    preference). Returns per-step lists ``losses``, ``reward_margins``, ``accuracies``,
    ``chosen_rewards``, ``rejected_rewards``, ``learning_rates``, ``grad_norms`` (total, before clipping), and ``eval_before`` /
    ``eval_after`` (see ``evaluate_pairs``) on the held-out pairs, plus counts and ``seconds``.
    """
    with torch_threads(cfg.train.num_threads):
        return _train_dpo(policy, reference, tokenizer, preferences, cfg)


def _train_dpo(policy, reference, tokenizer, preferences, cfg: DPOConfig) -> dict:
    tc = cfg.train
    torch.manual_seed(tc.seed)
    distributed.micro_batches(tc.batch_size, tc.micro_batch_size)  # the global batch must divide
    pairs, ties = preference_pairs(preferences)
    data, dropped = tokenize_pairs(tokenizer, pairs, tc.max_length)
    if not data:
        raise ValueError("no usable preference pair (all ties, empty or truncated away)")
    train_ids, eval_ids = split_eval(len(data), cfg.eval_size, tc.seed)
    train_data, eval_data = [data[i] for i in train_ids], [data[i] for i in eval_ids]

    if tc.max_steps is not None:
        total = tc.max_steps * tc.batch_size
    else:
        total = max(1, math.floor(tc.num_epochs * len(train_data)))
    lengths = [max(len(w["input_ids"]), len(l["input_ids"])) for w, l in train_data]
    steps = optimizer_steps(training_order(lengths, total, tc), tc)
    num_steps = tc.max_steps or len(steps)

    policy = distributed.prepare_model(policy, train=True, precision=tc.precision, gradient_checkpointing=tc.gradient_checkpointing)
    reference = distributed.prepare_model(reference, train=False, precision=tc.precision)
    optimizer = _optimizer(policy, tc)
    scheduler = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * num_steps), num_training_steps=num_steps)
    eval_before = evaluate_pairs(policy, reference, tokenizer, eval_data, cfg)
    policy.train()
    device = distributed.device()

    log = {k: [] for k in ("losses", "reward_margins", "accuracies", "chosen_rewards", "rejected_rewards", "learning_rates", "grad_norms")}
    start = time.perf_counter()
    bar = tqdm(steps[:num_steps], desc="dpo", disable=not (tc.show_progress and distributed.is_main()))
    for step_rows in bar:
        share = distributed.step_share(step_rows)  # this rank's micro-batches, each with its loss divisor
        step = torch.zeros(5)  # loss, margin, accuracy, chosen reward, rejected reward (micro-batch means)
        for k, (rows, divisor) in enumerate(share):
            batch = collate_pairs([train_data[i] for i in rows], tokenizer.pad_token_id)
            batch = {side: {key: value.to(device) for key, value in b.items()} for side, b in batch.items()}
            with torch.no_grad():
                ref_chosen, ref_rejected = _pair_logps(reference, batch)
            with distributed.accumulate(policy, sync=k == len(share) - 1):
                loss, chosen, rejected = dpo_loss(*_pair_logps(policy, batch), ref_chosen, ref_rejected, cfg.beta)
                (loss / divisor).backward()
            margin = chosen - rejected
            values = [loss.detach(), margin.mean(), (margin > 0).float().mean(), chosen.mean(), rejected.mean()]
            step += torch.stack([v.float().cpu() for v in values]) / divisor
        log["learning_rates"].append(scheduler.get_last_lr()[0])
        log["grad_norms"].append(distributed.optimizer_step(policy, optimizer, scheduler, tc.max_grad_norm))
        step = distributed.mean_across_ranks(step.tolist())
        for key, value in zip(("losses", "reward_margins", "accuracies", "chosen_rewards", "rejected_rewards"), step):
            log[key].append(value)
        bar.set_postfix(loss=f"{step[0]:.3f}", margin=f"{step[1]:.3f}", acc=f"{step[2]:.2f}")
    seconds = time.perf_counter() - start

    eval_after = evaluate_pairs(policy, reference, tokenizer, eval_data, cfg)
    policy.eval()
    return {
        **log,
        "num_steps": len(log["losses"]),
        "num_pairs": len(train_data),
        "num_eval_pairs": len(eval_data),
        "dropped_ties": ties,
        "dropped_truncated": dropped,
        "eval_before": eval_before,
        "eval_after": eval_after,
        "seconds": seconds,
    }
