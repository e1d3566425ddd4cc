"""Quark (Lu et al. 2022) as AlpacaFarm runs it (tatsu-lab/alpaca_farm src/alpaca_farm/rl/quark_trainer.py).

Reward quantiles become control tokens ``<reward_0>`` (best) .. ``<reward_{K-1}>`` (worst), added
to the tokenizer with new embedding rows (mean of the old rows plus seeded jitter of their
std, as upstream's ``stable_resize_token_embeddings(jitter_new_embeddings=True)``; a checkpoint
with spare rows lends them instead of shrinking, see ``grow_embeddings``). One step:

1. Rollout. Sample a response to each of ``rollout_batch_size`` prompts with ``<reward_0>``
   in front of the prompt (not at the first step: the token means nothing yet), score it with
   the reward model, and put (prompt, response, reward) into the data pool (emptied first when
   ``clear_data_pool_on_each_rollout``).
2. Quantiles. Sort the pool by reward and cut it into K equal chunks (``assign_quantiles``).
3. Train. ``num_gradient_steps_per_step`` optimizer steps of ``step_batch_size`` examples on
   the per-token loss ``-log pi(y_t) + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi)``:
   - all-quantile Quark (``train_on_best_quantile=False``): every pooled example, with its
     quantile's token in front of the prompt;
   - upstream's default (``train_on_best_quantile=True``): only the best quantile, with no token
     (filtered SFT with a KL term); the tokens are still added to the vocabulary.
   The KL and the entropy are over the original vocabulary; the reference (the frozen SFT model)
   sees the prompt without any control token.

At evaluation the model generates with ``generation_prefix(cfg)`` in front of the prompt:
``<reward_0>`` for all-quantile Quark, nothing for the best-quantile variant.

Several processes (``afarm.distributed``): as PPO (``afarm.methods.ppo``), each rank samples and
scores its share of the global rollout batch from the sharded policy, every rank gathers all of
it, so the pool, its quantiles and the shuffled step batches are those of one process, and each
step's micro-batches are dealt out over the ranks.

Deliberate differences from upstream: losses average over response tokens only (upstream averages
over positions padded to ``response_len``), and the pool keeps the sampled token ids, EOS included
(upstream keeps decoded text and re-tokenises it, which drops EOS), so the model keeps learning
to stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_scheduler

from afarm import distributed
from afarm.methods.ppo import (
    PromptStream,
    RewardFn,
    check_batches,
    entropy_from_logits,
    left_pad,
    masked_mean,
    mean_stats,
    response_logits,
    rollout_share,
    sample_responses,
    token_logprobs,
    tokenize_prompts,
)
from afarm.models.lm import torch_threads


@dataclass
class QuarkConfig:
    # Defaults are upstream's Quark recipe: examples/scripts/rlhf_quark.sh where it sets a flag, else
    # src/alpaca_farm/rl/quark_utils.py TrainingArguments, else the HF TrainingArguments default.
    num_reward_tokens: int = 4  # quark_utils.py num_reward_tokens=4 (number of quantiles)
    train_on_best_quantile: bool = True  # quark_utils.py default (rlhf_quark.sh keeps it); False: all-quantile Quark
    clear_data_pool_on_each_rollout: bool = True  # quark_utils.py default
    num_gradient_steps_per_step: int = 1  # quark_utils.py default (optimizer steps per rollout)
    kl_coef: float = 0.05  # rlhf_quark.sh default kl_coef 0.05
    entropy_coef: float = 0.0  # quark_utils.py entropy_coef=0.0
    total_epochs: float = 10.0  # rlhf_quark.sh --total_epochs 10
    max_steps: int | None = None  # our addition: stop after this many steps (None: total_epochs decides)
    rollout_batch_size: int = 512  # rlhf_quark.sh --rollout_batch_size 512
    rollout_micro_batch_size: int = 32  # rlhf_quark.sh --rollout_per_device_batch_size 32
    step_batch_size: int = 256  # rlhf_quark.sh --step_batch_size 256 (examples per optimizer step)
    step_micro_batch_size: int = 2  # rlhf_quark.sh --step_per_device_batch_size 2
    learning_rate: float = 3e-6  # rlhf_quark.sh --learning_rate 3e-6
    warmup_steps: int = 5  # rlhf_quark.sh --warmup_steps 5 (in Quark steps)
    lr_scheduler: str = "linear"  # HF TrainingArguments default; stepped once per Quark step
    weight_decay: float = 0.0  # HF TrainingArguments default
    adam_eps: float = 1e-5  # quark_utils.py adam_epsilon=1e-5
    max_grad_norm: float = 1.0  # HF TrainingArguments default
    temperature: float = 1.0  # quark_utils.py temperature=1.0 (rollouts)
    query_len: int = 192  # quark_utils.py query_len=192
    response_len: int = 300  # quark_utils.py response_len=300
    seed: int = 42  # HF TrainingArguments default seed
    rollout_seeding: str = "stream"  # "stream" | "per_chunk": as PPOConfig.rollout_seeding
    precision: str = "fp32"  # "fp32" | "bf16_mixed" (afarm.distributed.prepare_model); upstream: accelerate mixed_precision bf16
    gradient_checkpointing: bool = False  # recompute activations in backward (our choice; upstream does not)
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    show_progress: bool = True  # tqdm bar


def reward_tokens(num_quantiles: int) -> list[str]:
    """The control tokens, best quantile first (upstream names)."""
    return [f"<reward_{i}>" for i in range(num_quantiles)]


def generation_prefix(cfg: QuarkConfig) -> str:
    """Text to put in front of a prompt when generating with the trained model."""
    return "" if cfg.train_on_best_quantile else reward_tokens(cfg.num_reward_tokens)[0]


def assign_quantiles(rewards: torch.Tensor, num_quantiles: int) -> torch.Tensor:
    """Quantile index of each reward, 0 = best: sort descending (ties keep their order), cut into
    chunks of ``n // K``, the last chunk also takes the remainder (upstream DataPool.sort_and_get)."""
    n = rewards.numel()
    order = torch.sort(rewards.reshape(-1), descending=True, stable=True).indices
    rank_quantile = torch.clamp(torch.arange(n) // max(n // num_quantiles, 1), max=num_quantiles - 1)
    quantiles = torch.empty(n, dtype=torch.long)
    quantiles[order] = rank_quantile
    return quantiles


def add_reward_tokens(model, tokenizer, num_quantiles: int, seed: int) -> list[int]:
    """Add the control tokens to ``tokenizer`` and grow ``model``'s embeddings; returns their ids."""
    tokens = reward_tokens(num_quantiles)
    first_new = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    grow_embeddings(model, len(tokenizer), seed, first_new=first_new)
    return tokenizer.convert_tokens_to_ids(tokens)


@torch.no_grad()
def grow_embeddings(model, size: int, seed: int, first_new: int | None = None) -> None:
    """Give the embeddings room for ``size`` tokens and initialise rows ``first_new .. size - 1`` (the new
    tokens) as the mean of rows ``0 .. first_new - 1`` (the vocabulary they join) plus N(0, 1) times
    their std; input and output embeddings (the same tensor when tied). Seeded.

    ``first_new`` defaults to the current number of rows (the matrix holds exactly the old vocabulary).
    The matrix never shrinks: a checkpoint padded with spare rows (more rows than tokenizer entries,
    e.g. rounded up to a multiple of 64) keeps its size, and the spare rows the new tokens take are
    initialised like grown rows, because a spare row was never trained as an input (zeros or leftover
    initialisation) and would give the token an arbitrary meaning; spare rows no token uses stay as
    they are.
    """
    rows = model.get_input_embeddings().weight.size(0)
    first_new = min(rows, size) if first_new is None else first_new
    if not 0 < first_new <= min(rows, size):
        raise ValueError(f"first_new {first_new} must be in 1..{min(rows, size)} (rows {rows}, size {size})")
    if size > rows:
        model.resize_token_embeddings(size, mean_resizing=False)
    for embedding in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
        w = embedding.weight
        if w.is_meta:  # a rank that receives its shards of rank 0's grown rows (afarm.distributed.prepare_model)
            continue
        base = w[:first_new].float()
        noise = torch.randn((size - first_new, w.size(1)), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            w[first_new:size] = (base.mean(0, keepdim=True) + noise * base.std(0, keepdim=True)).to(w.dtype)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || softmax(ref_logits)) at each position, summed over the vocabulary."""
    logp, ref_logp = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def quark_loss(policy, ref_policy, batch: dict[str, torch.Tensor], cfg: QuarkConfig, vocab_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over response tokens of ``-log pi + kl_coef * KL(pi || ref) - entropy_coef * H(pi)``.

    ``batch``: ``queries``/``query_mask`` (with control token), ``ref_queries``/``ref_query_mask``
    (without), ``responses``/``response_mask``. KL and entropy use the first ``vocab_size`` logits
    (the vocabulary without control tokens), the log-likelihood the full vocabulary.
    """
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["response_mask"].float()
    logits = response_logits(policy, torch.cat([batch["queries"], batch["responses"]], 1), torch.cat([batch["query_mask"], batch["response_mask"]], 1), batch["queries"].size(1), cfg.temperature)
    with torch.no_grad():
        ref_logits = response_logits(ref_policy, torch.cat([batch["ref_queries"], batch["responses"]], 1), torch.cat([batch["ref_query_mask"], batch["response_mask"]], 1), batch["ref_queries"].size(1), cfg.temperature)
    logprobs = token_logprobs(logits, batch["responses"])
    kl = kl_to_reference(logits[..., :vocab_size], ref_logits[..., :vocab_size])
    entropy = entropy_from_logits(logits[..., :vocab_size])
    loss = masked_mean(-logprobs + cfg.kl_coef * kl - cfg.entropy_coef * entropy, mask)
    stats = {
        "loss": loss.item(),
        "nll": masked_mean(-logprobs.detach(), mask).item(),
        "train_kl": ((kl.detach() * mask).sum(1)).mean().item(),
        "train_entropy": masked_mean(entropy.detach(), mask).item(),
    }
    return loss, stats


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def training_examples(tokenizer, prompts, responses, quantiles, cfg: QuarkConfig) -> list[dict]:
    """Tokenized training examples of the pool: the query with its quantile's token, the query
    without it (for the reference), and the sampled response ids (ending with EOS if it ended)."""
    tokens = reward_tokens(cfg.num_reward_tokens)
    examples = []
    for prompt, response_ids, q in zip(prompts, responses, quantiles.tolist()):
        if (cfg.train_on_best_quantile and q != 0) or not response_ids:
            continue
        prefix = "" if cfg.train_on_best_quantile else tokens[q]
        examples.append({"query": tokenizer(prefix + prompt)["input_ids"], "ref_query": tokenizer(prompt)["input_ids"], "response": list(response_ids)})
    return examples


def collate_examples(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    queries, query_mask = left_pad([e["query"] for e in examples], pad_id)
    ref_queries, ref_query_mask = left_pad([e["ref_query"] for e in examples], pad_id)
    responses, response_mask = _right_pad([e["response"] for e in examples], pad_id)
    return {"queries": queries, "query_mask": query_mask, "ref_queries": ref_queries, "ref_query_mask": ref_query_mask, "responses": responses, "response_mask": response_mask}


@torch.no_grad()
def quark_rollout(policy, reward_fn: RewardFn, tokenizer, prompts: list[str], prefix: str, cfg: QuarkConfig, generators: Sequence[torch.Generator], synced: bool = False) -> tuple[list[list[int]], list[str], torch.Tensor]:
    """The policy's responses to ``prefix + prompt``: token ids (EOS kept), texts, and their rewards.
    Chunk ``c`` of ``rollout_micro_batch_size`` prompts samples from ``generators[c]``; ``synced``:
    a sharded policy, see ``afarm.methods.ppo.sample_responses``."""
    policy.eval()
    device = next(policy.parameters()).device
    ids_out, texts = [], []
    for c, start in enumerate(range(0, len(prompts), cfg.rollout_micro_batch_size)):
        ids = [tokenizer(prefix + p)["input_ids"] for p in prompts[start : start + cfg.rollout_micro_batch_size]]
        queries, query_mask = (t.to(device) for t in left_pad(ids, tokenizer.pad_token_id))
        responses, mask, _, _ = sample_responses(policy, queries, query_mask, cfg.response_len, cfg.temperature, tokenizer.eos_token_id, tokenizer.pad_token_id, generators[c], synced=synced)
        for r, m in zip(responses.cpu(), mask.cpu()):
            ids_out.append(r[m.bool()].tolist())
            texts.append(tokenizer.decode(ids_out[-1], skip_special_tokens=True).strip())
    rewards = reward_fn(list(prompts), texts).detach().float().cpu().reshape(-1)
    return ids_out, texts, rewards


def gather_rollouts(ids: list[list[int]], texts: list[str], rewards: torch.Tensor) -> tuple[list[list[int]], list[str], torch.Tensor]:
    """Every rank's rollouts in rank order (= the global order) on every rank; one process: as they are."""
    if distributed.world_size() == 1:
        return ids, texts, rewards
    parts = distributed.all_gather_objects((ids, texts, rewards))
    return [i for p in parts for i in p[0]], [t for p in parts for t in p[1]], torch.cat([p[2] for p in parts])


def train_quark(policy, ref_policy, reward_fn: RewardFn, tokenizer, prompts: Sequence[str], cfg: QuarkConfig, prepare: Callable | None = None) -> dict:
    """Train ``policy`` in place with Quark on ``prompts`` (formatted prompt strings).

    Adds the control tokens to ``tokenizer``, ``policy`` and ``ref_policy`` (in place; the reference
    is the frozen SFT model, and only its original vocabulary is used). Returns ``{"log": [per-step stats], "generation_prefix",
    "num_prompts", "dropped_prompts", "num_steps", "seconds", "policy"}``; step stats hold ``score`` (mean
    reward of the rollouts), ``train_kl``, ``train_entropy``, ``loss``, ``nll``.

    ``prepare(model, train)`` (e.g. ``afarm.distributed.prepare_model``) runs on the policy
    (``train=True``) and the reference after their embeddings have grown, before training; the
    prepared policy is ``result["policy"]``. With several processes every rank calls this alike.
    """
    with torch_threads(cfg.num_threads):
        return _train_quark(policy, ref_policy, reward_fn, tokenizer, list(prompts), cfg, prepare)


def _train_quark(policy, ref_policy, reward_fn, tokenizer, prompts, cfg: QuarkConfig, prepare) -> dict:
    if cfg.num_reward_tokens < 2:
        raise ValueError("Quark needs at least 2 reward tokens (as upstream)")
    world = distributed.world_size()
    check_batches(cfg, world, "quark")
    torch.manual_seed(cfg.seed)
    start_time = time.perf_counter()
    vocab_size = len(tokenizer)
    kept, _ = tokenize_prompts(tokenizer, prompts, cfg.query_len)
    if len(kept) < cfg.rollout_batch_size:
        raise ValueError(f"{len(kept)} prompts (of {len(prompts)}) fit query_len, fewer than rollout_batch_size {cfg.rollout_batch_size}")
    add_reward_tokens(policy, tokenizer, cfg.num_reward_tokens, cfg.seed)
    grow_embeddings(ref_policy, len(tokenizer), cfg.seed, first_new=vocab_size)  # the policy may sample a control token (as upstream, both grow)
    if prepare is not None:  # shard after growing: the embedding matrices have their final size
        policy, ref_policy = prepare(policy, True), prepare(ref_policy, False)
    top_token = reward_tokens(cfg.num_reward_tokens)[0]
    ref_policy.eval().requires_grad_(False)

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay}, {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        eps=cfg.adam_eps,
    )
    total_steps = max(1, int(len(kept) * cfg.total_epochs) // cfg.rollout_batch_size)
    if cfg.max_steps is not None:
        total_steps = max(1, min(total_steps, cfg.max_steps))
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    stream = PromptStream(len(kept), cfg.seed)
    sampler = torch.Generator().manual_seed(cfg.seed)
    pool_prompts: list[str] = []
    pool_responses: list[list[int]] = []
    pool_rewards: list[float] = []
    log = []
    for step in tqdm(range(1, total_steps + 1), desc="quark", disable=not (cfg.show_progress and distributed.is_main())):
        batch_prompts = [kept[i] for i in stream.take(cfg.rollout_batch_size)]
        prefix = "" if (step == 1 or cfg.train_on_best_quantile) else top_token
        mine, generators = rollout_share(cfg, step, sampler)
        local = quark_rollout(policy, reward_fn, tokenizer, batch_prompts[mine], prefix, cfg, generators, synced=world > 1)
        response_ids, texts, rewards = gather_rollouts(*local)
        if cfg.clear_data_pool_on_each_rollout:
            pool_prompts, pool_responses, pool_rewards = [], [], []
        pool_prompts += batch_prompts
        pool_responses += response_ids
        pool_rewards += rewards.tolist()
        quantiles = assign_quantiles(torch.tensor(pool_rewards), cfg.num_reward_tokens)
        examples = training_examples(tokenizer, pool_prompts, pool_responses, quantiles, cfg)
        lr = scheduler.get_last_lr()[0]

        policy.train()
        order = PromptStream(len(examples), cfg.seed + step)  # shuffled, drop_last, cycling (upstream InfiniteLoader)
        micro = cfg.step_batch_size // cfg.step_micro_batch_size
        train_stats = []
        size = min(cfg.step_micro_batch_size, len(examples))
        for _ in range(cfg.num_gradient_steps_per_step):
            share = distributed.step_share([order.take(size) for _ in range(micro)])  # this rank's micro-batches of the global step
            step_stats = []
            for i, (rows, divisor) in enumerate(share):
                with distributed.accumulate(policy, i == len(share) - 1):  # reduce over the ranks after the last one
                    batch = collate_examples([examples[r] for r in rows], tokenizer.pad_token_id)
                    loss, stats = quark_loss(policy, ref_policy, batch, cfg, vocab_size)
                    (loss / divisor).backward()
                step_stats.append(stats)
            grad_norm = distributed.optimizer_step(policy, optimizer, None, cfg.max_grad_norm)  # schedule: once per Quark step, below
            train_stats.append(mean_stats(step_stats) | {"grad_norm": grad_norm})
        scheduler.step()
        policy.eval()
        log.append(
            {
                "step": step,
                "score": rewards.mean().item(),
                "score_top_quantile": torch.tensor(pool_rewards)[quantiles == 0].mean().item(),
                **{k: sum(s[k] for s in train_stats) / len(train_stats) for k in train_stats[0]},
                "response_length": sum(map(len, response_ids)) / len(response_ids),
                "num_train_examples": len(examples),
                "learning_rate": lr,
                "seconds": time.perf_counter() - start_time,
                "example_response": texts[0],
            }
        )
    return {"log": log, "generation_prefix": generation_prefix(cfg), "num_prompts": len(kept), "dropped_prompts": len(prompts) - len(kept), "num_steps": total_steps, "seconds": time.perf_counter() - start_time, "policy": policy}
