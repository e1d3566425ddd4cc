"""Training loop for causal LMs: supervised fine-tuning and (tiny scale) pretraining.

Examples are ``(prompt, response)`` pairs. A sequence is ``BOS prompt response EOS``: the
prompt and the response are tokenized separately and concatenated, so the prompt's tokens
are exactly those that generation later sees. With ``response_only`` (SFT, as upstream
AlpacaFarm) the loss is on the response and EOS tokens only; otherwise (our tiny base-model
pretraining) on every token after BOS. Padding never carries loss.

The loop is plain PyTorch; ``afarm.distributed`` shards the model over the stage's processes
(FSDP2; one process at fp32: the model as is) and gives each rank its share of every
optimizer step's micro-batches. ``batch_size`` is the global batch (examples per optimizer
step) and ``micro_batch_size`` the examples per forward pass on one device, so the same params
give the same steps, in the same order, for any number of processes. Like upstream's HF
Trainer, the loss of a micro-batch is the mean over its label tokens, and an optimizer step
averages its micro-batches. Deterministic on CPU: the data order comes from ``seed`` alone and
the model has no dropout, so the same inputs give the same weights, bit for bit, for a fixed
``num_threads``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from afarm import distributed
from afarm.checkpoint import Checkpoints
from afarm.models.lm import torch_threads

IGNORE_INDEX = -100  # label value the loss ignores (torch cross_entropy default, as upstream constants.py)


@dataclass
class TrainConfig:
    # Defaults are AlpacaFarm's SFT recipe, tatsu-lab/alpaca_farm examples/scripts/sft.sh,
    # unless a comment says otherwise; params.yaml overrides them at the tiny scale.
    learning_rate: float = 2e-5  # sft.sh --learning_rate 2e-5
    num_epochs: float = 3.0  # sft.sh --num_train_epochs 3 (fractions allowed)
    max_steps: int | None = None  # if set, overrides num_epochs (HF TrainingArguments semantics)
    # Global batch (examples per optimizer step) = micro_batch_size x accumulation steps x devices;
    # the accumulation steps follow (afarm.distributed.micro_batches).
    batch_size: int = 128  # sft.sh: --per_device_train_batch_size 1 x --gradient_accumulation_steps 16 x 8 GPUs
    micro_batch_size: int = 1  # sft.sh --per_device_train_batch_size 1 (examples per forward pass and device)
    warmup_ratio: float = 0.03  # sft.sh --warmup_ratio 0.03
    weight_decay: float = 0.0  # sft.sh --weight_decay 0.0
    lr_scheduler: str = "cosine"  # sft.sh --lr_scheduler_type cosine; any transformers.get_scheduler name
    max_grad_norm: float = 1.0  # HF TrainingArguments default, which sft.sh does not override
    adam_betas: tuple[float, float] = (0.9, 0.999)  # HF TrainingArguments default (optim adamw_torch)
    adam_eps: float = 1e-8  # HF TrainingArguments default
    max_length: int = 512  # sft.sh --model_max_length 512 (longer sequences are truncated)
    # Put examples of similar length in a micro-batch (within windows of 64 micro-batches): less padding.
    group_by_length: bool = False  # HF TrainingArguments default; our tiny scale sets True for speed
    seed: int = 42  # sft.sh --seed 42
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default (one per core)
    # "fp32" | "bf16_mixed" (fp32 master weights, bf16 forward/backward, fp32 gradient reduction; see
    # afarm.distributed.prepare_model). Paper: bf16_mixed, as sft.sh --bf16 True under FSDP.
    precision: str = "fp32"
    gradient_checkpointing: bool = False  # HF TrainingArguments default; upstream sft.sh does not enable it
    show_progress: bool = True  # tqdm bar
    checkpoint_every: int = 0  # our addition: a resumable checkpoint every this many optimizer steps (afarm.checkpoint; 0: none)


# ---------------------------------------------------------------- data


def tokenize_example(tokenizer, prompt: str, response: str, max_length: int, response_only: bool, eos: bool = True) -> dict:
    """``input_ids`` = BOS + prompt + response + EOS (truncated to max_length), and its ``labels``.

    ``eos=False`` leaves EOS out: for a sampled response that did not finish (cut off at the generation
    cap), so that training on it does not teach the model to stop mid-answer."""
    prompt_ids = tokenizer(prompt)["input_ids"]  # the tokenizer adds BOS
    if not prompt_ids or prompt_ids[0] != tokenizer.bos_token_id:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    input_ids = (prompt_ids + response_ids)[:max_length]
    if response_only:
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    else:
        labels = [IGNORE_INDEX] + input_ids[1:]  # BOS is never predicted
    return {"input_ids": input_ids, "labels": labels}


def collate(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples into a batch; pad positions get label -100 and mask 0."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_examples(tokenizer, examples, cfg: TrainConfig, response_only: bool) -> tuple[list[dict], int]:
    """Tokenize all examples, ``(prompt, response)`` or ``(prompt, response, eos)`` (``tokenize_example``);
    drop those with no label token left after truncation. Returns (data, dropped)."""
    data = [tokenize_example(tokenizer, ex[0], ex[1], cfg.max_length, response_only, *ex[2:]) for ex in examples]
    kept = [d for d in data if sum(label != IGNORE_INDEX for label in d["labels"][1:]) > 0]
    return kept, len(data) - len(kept)


def training_order(lengths: Sequence[int], num_examples: int, cfg: TrainConfig) -> list[int]:
    """Indices of the examples in training order, epoch after epoch, ``num_examples`` in all.

    Each epoch is a fresh permutation drawn from ``cfg.seed`` and the epoch number. With
    ``group_by_length`` each window of 64 micro-batches is sorted by length (longest first),
    and the micro-batches inside the window are shuffled again, so padding is small but
    the order stays random.
    """
    n, order, epoch = len(lengths), [], 0
    while len(order) < num_examples:
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        if cfg.group_by_length:
            size = cfg.micro_batch_size
            window = 64 * size
            grouped = []
            for start in range(0, n, window):
                chunk = sorted(perm[start : start + window], key=lambda i: -lengths[i])
                batches = [chunk[k : k + size] for k in range(0, len(chunk), size)]
                for b in torch.randperm(len(batches), generator=gen).tolist():
                    grouped.extend(batches[b])
            perm = grouped
        order.extend(perm)
        epoch += 1
    return order[:num_examples]


# ---------------------------------------------------------------- training


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # no decay on norms / biases
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps)


def train_causal_lm(model, tokenizer, examples: Sequence[tuple], cfg: TrainConfig, response_only: bool,
                    checkpoints: Checkpoints | None = None) -> dict:
    """Train ``model`` in place on (prompt, response) pairs, or (prompt, response, eos) triples (``eos``
    False: a response cut off at the generation cap, trained without EOS); return training statistics.

    Returns a dict with ``losses``, ``learning_rates`` and ``grad_norms`` (total, before clipping;
    one per optimizer step), ``num_steps``,
    ``num_examples``, ``dropped_examples`` (no label token left after truncation),
    ``num_tokens`` (label tokens seen), ``seconds``.
    """
    with torch_threads(cfg.num_threads):
        return _train(model, tokenizer, examples, cfg, response_only, checkpoints)


def optimizer_steps(order: Sequence[int], cfg) -> list[list[list[int]]]:
    """``order`` cut into micro-batches of ``cfg.micro_batch_size`` and those into optimizer steps of
    ``cfg.batch_size`` examples (the last step may be short). Independent of the process count."""
    micro = [list(order[k : k + cfg.micro_batch_size]) for k in range(0, len(order), cfg.micro_batch_size)]
    per_step = cfg.batch_size // cfg.micro_batch_size
    return [micro[k : k + per_step] for k in range(0, len(micro), per_step)]


def _train(model, tokenizer, examples, cfg: TrainConfig, response_only: bool, checkpoints: Checkpoints | None) -> dict:
    torch.manual_seed(cfg.seed)
    distributed.micro_batches(cfg.batch_size, cfg.micro_batch_size)  # the global batch must divide
    data, dropped = tokenize_examples(tokenizer, examples, cfg, response_only)
    if not data:
        raise ValueError("no training example has a label token (all empty or truncated away)")

    if cfg.max_steps is not None:
        total_examples = cfg.max_steps * cfg.batch_size
    else:
        total_examples = max(1, math.floor(cfg.num_epochs * len(data)))
    steps = optimizer_steps(training_order([len(d["input_ids"]) for d in data], total_examples, cfg), cfg)
    num_steps = cfg.max_steps or len(steps)

    model = distributed.prepare_model(model, train=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    optimizer = _optimizer(model, cfg)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * num_steps),  # as HF TrainingArguments.get_warmup_steps
        num_training_steps=num_steps,
    )
    model.train()
    device = distributed.device()

    losses, learning_rates, grad_norms, num_tokens, start = [], [], [], 0, time.perf_counter()
    restored = checkpoints.restore({"model": model}, optimizer) if checkpoints is not None else None
    if restored is not None:
        _, rest = restored
        scheduler.load_state_dict(rest["scheduler"])
        losses, learning_rates, grad_norms, num_tokens = rest["losses"], rest["learning_rates"], rest["grad_norms"], rest["num_tokens"]
    bar = tqdm(steps[len(losses):num_steps], desc="train", initial=len(losses), total=num_steps,
               disable=not (cfg.show_progress and distributed.is_main()))
    for step in bar:
        share = distributed.step_share(step)  # this rank's micro-batches, each with its loss divisor
        step_loss = 0.0
        for k, (rows, divisor) in enumerate(share):
            batch = {key: value.to(device) for key, value in collate([data[i] for i in rows], tokenizer.pad_token_id).items()}
            with distributed.accumulate(model, sync=k == len(share) - 1):
                loss = model(**batch).loss  # mean over this micro-batch's label tokens
                (loss / divisor).backward()
            step_loss += loss.detach().float() / divisor
        num_tokens += sum(label != IGNORE_INDEX for rows in step for i in rows for label in data[i]["labels"][1:])
        learning_rates.append(scheduler.get_last_lr()[0])
        grad_norms.append(distributed.optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm))
        losses.append(distributed.mean_across_ranks(float(step_loss)))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if checkpoints is not None and checkpoints.due(len(losses), num_steps):
            checkpoints.save(len(losses), {"model": model}, optimizer, {"scheduler": scheduler.state_dict(), "losses": losses,
                                                                     "learning_rates": learning_rates, "grad_norms": grad_norms, "num_tokens": num_tokens})

    model.eval()  # trained in place
    return {
        "losses": losses,
        "learning_rates": learning_rates,
        "grad_norms": grad_norms,
        "num_steps": len(losses),
        "num_examples": len(data),
        "dropped_examples": dropped,
        "num_tokens": num_tokens,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate_loss(model, tokenizer, examples: Sequence[tuple[str, str]], cfg: TrainConfig, response_only: bool) -> dict:
    """Mean cross-entropy per label token over all examples (token-weighted), and its count.

    Returns ``{"loss": float, "num_tokens": int, "perplexity": float}``.
    """
    with torch_threads(cfg.num_threads):
        return _evaluate_loss(model, tokenizer, examples, cfg, response_only)


def _evaluate_loss(model, tokenizer, examples, cfg: TrainConfig, response_only: bool) -> dict:
    data, _ = tokenize_examples(tokenizer, examples, cfg, response_only)
    data.sort(key=lambda d: len(d["input_ids"]))  # little padding; the result does not depend on order
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    size = max(cfg.micro_batch_size, 8)
    for start in range(0, len(data), size):
        batch = collate(data[start : start + size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        targets = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "num_tokens": count, "perplexity": math.exp(min(loss, 50.0))}
