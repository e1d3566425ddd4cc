"""RLHF with PPO, as AlpacaFarm runs it (tatsu-lab/alpaca_farm src/alpaca_farm/rl/ppo_trainer.py).

One PPO step:

1. Rollout. Take ``rollout_batch_size`` prompts of the unlabeled split, sample one response each
   from the policy (temperature ``temperature``, no top-k / top-p, at most ``response_len`` tokens,
   stop at EOS). Record, per response token: the policy's log-probability (``old_logprobs``), the
   frozen SFT reference's log-probability, the value model's value, the policy's entropy.
2. Reward. The reward model scores prompt + response (``score``); every response token gets a KL
   penalty ``-kl_coef * max(logp - ref_logp, 0)`` and the last one (EOS) also gets the score.
3. Advantages. The rewards are scaled by their standard deviation (``whiten_rewards``), GAE gives
   advantages and returns, the advantages are whitened.
4. Update. ``noptepochs`` passes over the rollouts in shuffled batches of ``step_batch_size``
   (micro-batches of ``step_micro_batch_size``, gradients accumulated): one AdamW step per batch on
   the clipped policy loss plus ``vf_coef`` times the clipped value loss. The learning rate
   scheduler steps once per PPO step (as upstream's rl_trainer.py).

The policy starts from the SFT model, the value model from the reward model's backbone with a new
scalar head set to zero (upstream rl_models.py ``Value``); policy and value are optimised together
(upstream's ``ActorCritic``), the reference and the reward model are frozen.

Several processes (one per device, ``afarm.distributed``): the stage shards every model over the
ranks; ``rollout_batch_size`` and ``step_batch_size`` stay global. Each rank samples, scores and
evaluates its contiguous share of the rollout batch (whole chunks of ``rollout_micro_batch_size``
prompts), then every rank gathers the whole batch (token ids and per-token floats: a few MB), so
the advantages, the whitening and the shuffled step batches are those of one process. Each step
batch's micro-batches are dealt out over the ranks (``afarm.distributed.step_share``) and the
gradients are averaged. With ``rollout_seeding: per_chunk`` a chunk samples from its own seeded
generator, so the rollouts do not depend on the number of processes; ``stream`` (one generator
for the run, the tiny scale's bytes) works with one process only.

Deliberate differences from upstream (documented so results can be compared):
* Padding after EOS is masked out of every mean (whitening, losses, statistics); upstream pads
  responses to ``response_len`` and averages over the padded positions too. GAE is the same.
* Rollout responses are right-padded only to the longest response of the rollout, not to
  ``response_len`` (same result, less compute).
* With several processes the whitening statistics and the step batches are global (upstream
  whitens and shuffles each rank's rollouts on their own), so the process count changes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from afarm import distributed
from afarm.checkpoint import Checkpoints, rng_states, set_rng_states
from afarm.models.lm import cached_forward, torch_threads

RewardFn = Callable[[list[str], list[str]], torch.Tensor]  # (prompts, responses) -> scores, shape (B,)


@dataclass
class PPOConfig:
    # Defaults are upstream's PPO recipe: examples/scripts/rlhf_ppo.sh, where it sets a flag, else
    # src/alpaca_farm/rl/ppo_utils.py TrainingArguments, else the HF TrainingArguments default.
    total_epochs: float = 10.0  # rlhf_ppo.sh --total_epochs 10 (passes over the prompts; sets the step count)
    max_steps: int | None = None  # our addition: stop after this many PPO steps (None: total_epochs decides)
    # our addition: a resumable checkpoint every this many PPO steps (afarm.checkpoint; 0: none)
    checkpoint_every: int = 0
    rollout_batch_size: int = 512  # rlhf_ppo.sh --rollout_batch_size 512 (prompts per PPO step)
    rollout_micro_batch_size: int = 32  # rlhf_ppo.sh --rollout_per_device_batch_size 32 (generation chunk)
    step_batch_size: int = 256  # rlhf_ppo.sh --step_batch_size 256 (rollouts per optimizer step)
    step_micro_batch_size: int = 2  # rlhf_ppo.sh --step_per_device_batch_size 2 (gradient accumulation chunk)
    noptepochs: int = 2  # ppo_utils.py noptepochs=2 (passes over each rollout batch)
    learning_rate: float = 1e-5  # rlhf_ppo.sh --learning_rate 1e-5
    warmup_steps: int = 5  # rlhf_ppo.sh --warmup_steps 5 (in PPO steps)
    lr_scheduler: str = "linear"  # HF TrainingArguments lr_scheduler_type default; stepped once per PPO step
    weight_decay: float = 0.0  # HF TrainingArguments default
    adam_eps: float = 1e-5  # ppo_utils.py adam_epsilon=1e-5 (OpenAI PPO value, not the HF default)
    max_grad_norm: float = 1.0  # HF TrainingArguments default (rl_trainer.py clips with it)
    kl_coef: float = 0.0067  # rlhf_ppo.sh default; upstream README: 0.0067 for sim, 0.02 for human preferences
    adaptive_kl: bool = False  # ppo_utils.py adaptive_kl=False (fixed coefficient)
    target_kl: float = 6.0  # ppo_utils.py target_kl=6.0 (adaptive controller only)
    k_beta: float = 0.1  # ppo_utils.py k_beta=0.1 (adaptive controller only)
    vf_coef: float = 0.1  # ppo_utils.py vf_coef=0.1
    cliprange: float = 0.2  # ppo_utils.py cliprange=0.2
    cliprange_value: float = 0.2  # ppo_utils.py cliprange_value=0.2
    gamma: float = 1.0  # ppo_utils.py gamma=1.0
    lam: float = 1.0  # ppo_utils.py lam=1.0
    whiten_rewards: bool = True  # ppo_utils.py whiten_rewards=True
    temperature: float = 1.0  # ppo_utils.py temperature=1.0 (rlhf_ppo.sh does not override; 0.7 is only eval decoding)
    query_len: int = 192  # ppo_utils.py query_len=192 (longer prompts are dropped, as upstream QueryDataset)
    response_len: int = 300  # ppo_utils.py response_len=300 (max new tokens in rollouts)
    # Old log-probabilities from a fresh forward pass over the rollouts (upstream) or from the sampling
    # pass itself (trl; saves one policy forward per rollout, equal up to float rounding in fp32).
    recompute_logprobs: bool = True  # upstream ppo_trainer.py rollout(); tiny scale sets False for speed
    init_value_head: str = "zero"  # upstream rl_models.py zero-initialises the value head; "reward": copy the RM head
    # Sampling randomness of the rollouts. "stream": one generator for the whole run (our first
    # choice, kept for the tiny scale's bytes; one process only); "per_chunk": one generator per
    # rollout chunk, seeded by (seed, step, chunk), so any process count gives the same rollouts.
    rollout_seeding: str = "stream"
    precision: str = "fp32"  # "fp32" | "bf16_mixed" (afarm.distributed.prepare_model); upstream: accelerate mixed_precision bf16
    gradient_checkpointing: bool = False  # recompute activations in backward (our choice; upstream does not)
    seed: int = 42  # HF TrainingArguments default seed (rlhf_ppo.sh does not set one)
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    show_progress: bool = True  # tqdm bar


# ---------------------------------------------------------------- math (pure functions on tensors)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, shift_mean: bool = True, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over all (unmasked) entries; ``shift_mean=False`` adds the mean back
    (only rescales). Population std, as upstream torch_ops.whiten. Masked entries come out 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) / (var.sqrt() + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over right-padded (B, T) tensors.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    V and A zero after the last token; returns (advantages, returns = advantages + values).
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The KL estimate of each sampled token, ``max(log pi - log pi_ref, 0)`` (upstream ppo_trainer._shape_reward)."""
    return (logprobs - ref_logprobs).clamp(min=0.0)


def kl_penalized_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * kl_t``, plus the sequence's ``score`` on its last unmasked token.

    Returns (rewards, kl), both (B, T) and zero on masked positions.
    """
    kl = per_token_kl(logprobs, ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1  # index of the last response token (EOS, if the response ended)
    rewards[torch.arange(rewards.size(0)), last] += score.to(rewards.dtype)
    return rewards, kl


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate ``mean(max(-A r, -A clip(r, 1-c, 1+c)))``, r = exp(logp - old logp).

    Returns (loss, fraction of tokens where the clipped term was used).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return masked_mean(torch.maximum(loss1, loss2), mask), masked_mean((loss2 > loss1).float(), mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))``.

    Returns (loss, fraction of tokens where the clipped term was used).
    """
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(loss1, loss2), mask), masked_mean((loss2 > loss1).float(), mask)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``0.5 E[(log pi - log pi_old)^2]``: the quadratic KL estimator upstream logs as ``approxkl``."""
    return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at each position, in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class AdaptiveKLController:
    """Ziegler et al. (2019) controller (upstream kl_controller.py): multiply the coefficient by
    ``1 + k_beta * clip(kl / target - 1, -0.2, 0.2)`` after each step; fixed when ``adaptive`` is False."""

    def __init__(self, value: float, target: float, k_beta: float, adaptive: bool):
        self.value, self.target, self.k_beta, self.adaptive = value, target, k_beta, adaptive

    def step(self, kl: float) -> None:
        if self.adaptive:
            self.value *= 1.0 + self.k_beta * min(max(kl / self.target - 1.0, -0.2), 0.2)


# ---------------------------------------------------------------- models


class ValueModel(nn.Module):
    """A transformer backbone and a linear head: one value per position, from the last hidden state."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    @classmethod
    def from_reward_model(cls, reward_model: nn.Module, init_head: str = "zero") -> "ValueModel":
        """A copy of the reward model's backbone; the head is zero (upstream) or the reward head ("reward")."""
        backbone = copy.deepcopy(reward_model.base_model)
        hidden = backbone.config.hidden_size
        weight = next(backbone.parameters())  # its dtype, and its device (meta on a rank that receives its shards)
        head = nn.Linear(hidden, 1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            if init_head == "reward":  # a LlamaForSequenceClassification-style model: its head is `score`
                head.weight.copy_(reward_model.score.weight.reshape(1, hidden))
                if getattr(reward_model.score, "bias", None) is not None:
                    head.bias.copy_(reward_model.score.bias.reshape(1))
            elif init_head != "zero":
                raise ValueError(f"init_value_head must be 'zero' or 'reward', got {init_head!r}")
        return cls(backbone, head)

    @property
    def base_model(self) -> nn.Module:
        """The backbone, under the name Hugging Face models give theirs (``afarm.distributed``
        shards ``base_model.layers``)."""
        return self.backbone

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor, query_width: int, temperature: float) -> torch.Tensor:
    """Logits (divided by the temperature) predicting each response token: positions query_width-1 .. T-2."""
    keep = sequences.size(1) - query_width + 1  # the lm head runs on the last query position and the response only
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False, logits_to_keep=keep)
    return out.logits[:, :-1].float() / temperature


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def response_values(value_model: ValueModel, sequences, attention_mask, query_width: int) -> torch.Tensor:
    """V of the state before each response token (aligned with ``response_logits``)."""
    return value_model(sequences, attention_mask, position_ids(attention_mask))[:, query_width - 1 : -1]


# ---------------------------------------------------------------- rollouts


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def sample_responses(model, queries: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, temperature: float, eos_id: int, pad_id: int, generator: torch.Generator, *, synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample from left-padded queries with the KV cache; pure temperature sampling (upstream: top_p 1, top_k 0).

    Returns (responses, mask, logprobs, entropies), right-padded (B, R): tokens up to and including
    EOS have mask 1; logprobs / entropies are those of the sampling distribution (logits / temperature).

    ``synced``: every rank calls this together on a sharded model, whose every forward pass gathers
    weights from all ranks. A rank whose rows have all ended (EOS or its ``max_new_tokens``) keeps
    running forward passes (on padding, results unused, no random numbers drawn) until every rank's
    rows have, as Hugging Face's ``generate(synced_gpus=True)``; its outputs are the same as unsynced.
    """
    device = queries.device
    attention_mask, pos = query_mask, position_ids(query_mask)
    out, cache = cached_forward(model, None, input_ids=queries, attention_mask=attention_mask, position_ids=pos, logits_to_keep=1)
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(queries.size(0), dtype=torch.bool, device=device)
    tokens, masks, logprobs, entropies = [], [], [], []
    logits = out.logits[:, -1]
    ended = False  # every row of this rank has reached EOS or max_new_tokens
    while True:
        if not ended:
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            token = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(-1).to(device)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            masks.append(~done)
            tokens.append(token)
            logprobs.append(logp.gather(-1, token[:, None]).squeeze(-1))
            entropies.append(-(logp.exp() * logp).sum(-1))
            done = done | (token == eos_id)
            fed, fed_mask = token, masks[-1]
            ended = bool(done.all()) or len(tokens) == max_new_tokens
        else:  # waiting for other ranks: feed padding that no position attends to
            fed, fed_mask = torch.full_like(fed, pad_id), torch.zeros_like(fed_mask)
        if (distributed.mean_across_ranks(float(ended)) == 1.0) if synced else ended:
            break
        attention_mask = torch.cat([attention_mask, fed_mask.long()[:, None]], dim=1)  # the fed token's mask
        out, cache = cached_forward(model, cache, input_ids=fed[:, None], attention_mask=attention_mask, position_ids=next_pos)
        next_pos, logits = next_pos + 1, out.logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(masks, 1).long(), torch.stack(logprobs, 1), torch.stack(entropies, 1)


def _pad_cat(tensors: list[torch.Tensor], value, left: bool) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    padded = [F.pad(t, (width - t.size(1), 0) if left else (0, width - t.size(1)), value=value) for t in tensors]
    return torch.cat(padded, dim=0)


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop query columns that are padding in every row (left) and response columns likewise (right)."""
    q_keep = int(batch["query_mask"].sum(0).nonzero().min()) if batch["query_mask"].any() else 0
    r_len = int(batch["response_mask"].sum(1).max())
    out = {}
    for key, value in batch.items():
        if key in ("queries", "query_mask"):
            out[key] = value[:, q_keep:]
        elif value.dim() == 2:
            out[key] = value[:, :r_len]
        else:
            out[key] = value
    return out


def tokenize_prompts(tokenizer, prompts: Sequence[str], query_len: int) -> tuple[list[str], list[list[int]]]:
    """Token ids (with BOS) of each prompt; prompts longer than ``query_len`` tokens are dropped (as upstream)."""
    kept_prompts, kept_ids = [], []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        if len(ids) <= query_len:
            kept_prompts.append(prompt)
            kept_ids.append(ids)
    return kept_prompts, kept_ids


class PromptStream:
    """An endless stream of prompt indices: a fresh seeded permutation per epoch, incomplete batches dropped."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.order = n, seed, 0, []

    def take(self, k: int) -> list[int]:
        if k > self.n:
            raise ValueError(f"batch of {k} prompts asked from only {self.n}")
        if len(self.order) < k:  # drop_last, then a new epoch
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self.order, self.epoch = torch.randperm(self.n, generator=gen).tolist(), self.epoch + 1
        batch, self.order = self.order[:k], self.order[k:]
        return batch


ROLLOUT_SEEDINGS = ("stream", "per_chunk")


def chunk_generator(seed: int, step: int, chunk: int) -> torch.Generator:
    """The sampling generator of rollout chunk ``chunk`` (global index) of PPO / Quark step ``step``
    (``rollout_seeding: per_chunk``): seeded by a hash of the three, so a chunk samples the same
    tokens on whichever rank it lands."""
    digest = hashlib.sha256(f"{seed}\x00{step}\x00{chunk}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def rollout_share(cfg, step: int, stream: torch.Generator) -> tuple[slice, list[torch.Generator]]:
    """This rank's part of the rollout batch (a contiguous slice of whole chunks) and one sampling
    generator per chunk: ``stream`` itself (``rollout_seeding: stream``) or ``chunk_generator``s."""
    share = cfg.rollout_batch_size // distributed.world_size()
    first = distributed.rank() * share
    chunks = math.ceil(share / cfg.rollout_micro_batch_size)
    if cfg.rollout_seeding == "stream":
        generators = [stream] * chunks
    else:
        first_chunk = first // cfg.rollout_micro_batch_size
        generators = [chunk_generator(cfg.seed, step, first_chunk + c) for c in range(chunks)]
    return slice(first, first + share), generators


def check_batches(cfg, world: int, name: str) -> None:
    """Raise ``ValueError`` naming the params keys (``<name>.<key>``) when the global batches of
    ``cfg`` (PPOConfig or QuarkConfig) do not split over ``world`` processes.

    A step batch is dealt out in micro-batches of ``step_micro_batch_size``, the same number to
    every rank; the rollout batch in whole chunks of ``rollout_micro_batch_size`` prompts, the
    same number to every rank (one process may take a short last chunk).
    """
    if cfg.rollout_seeding not in ROLLOUT_SEEDINGS:
        raise ValueError(f"{name}.rollout_seeding must be one of {ROLLOUT_SEEDINGS}, got {cfg.rollout_seeding!r}")
    if min(cfg.rollout_batch_size, cfg.rollout_micro_batch_size, cfg.step_batch_size, cfg.step_micro_batch_size) < 1:
        raise ValueError(f"{name}: batch sizes must be positive")
    per_step = cfg.step_micro_batch_size * world
    if cfg.step_batch_size % per_step:
        raise ValueError(
            f"{name}.step_batch_size {cfg.step_batch_size} must be a multiple of step_micro_batch_size "
            f"{cfg.step_micro_batch_size} x {world} process(es) = {per_step}"
        )
    if world > 1:
        per_rollout = cfg.rollout_micro_batch_size * world
        if cfg.rollout_batch_size % per_rollout:
            raise ValueError(
                f"{name}.rollout_batch_size {cfg.rollout_batch_size} must be a multiple of rollout_micro_batch_size "
                f"{cfg.rollout_micro_batch_size} x {world} processes = {per_rollout}"
            )
        if cfg.rollout_seeding == "stream":
            raise ValueError(
                f"{name}.rollout_seeding 'stream' draws one random stream through the whole rollout batch and "
                f"cannot be split over {world} processes; set it to 'per_chunk'"
            )


def _merge(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate rollout batches along the batch dimension: queries left-padded, per-token
    tensors right-padded (token ids with ``pad_id``, the rest with 0), per-sequence ones as they are."""
    out = {}
    for key in parts[0]:
        tensors = [part[key] for part in parts]
        if tensors[0].dim() == 1:
            out[key] = torch.cat(tensors)
        else:
            out[key] = _pad_cat(tensors, pad_id if key in ("queries", "responses") else 0, left=key in ("queries", "query_mask"))
    return out


def gather_rollouts(batch: dict[str, torch.Tensor], texts: list[str], pad_id: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every rank's rollouts, in rank order (= the global order), on every rank; with one process
    the rollouts themselves. Padding is that of one process (the widest row of the whole batch)."""
    if distributed.world_size() == 1:
        return batch, texts
    parts = distributed.all_gather_objects((batch, texts))
    return _merge([b for b, _ in parts], pad_id), [t for _, part in parts for t in part]


@torch.no_grad()
def rollout(policy, ref_policy, value_model, reward_fn: RewardFn, tokenizer, prompts: list[str], prompt_ids: list[list[int]], cfg: PPOConfig, generators: Sequence[torch.Generator], synced: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Sample, score and evaluate rollouts of ``prompts`` in chunks of ``rollout_micro_batch_size``,
    chunk ``c`` sampling from ``generators[c]``. Returns (B, ...) tensors (queries left-padded,
    responses right-padded, per-token logprobs / values / entropies, scores) and the response texts.
    ``synced``: sharded models, every rank calls this with as many chunks (see ``sample_responses``)."""
    policy.eval()
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(policy.parameters()).device
    chunks = []
    for c, start in enumerate(range(0, len(prompts), cfg.rollout_micro_batch_size)):
        queries, query_mask = (t.to(device) for t in left_pad(prompt_ids[start : start + cfg.rollout_micro_batch_size], pad_id))
        responses, response_mask, logprobs, entropies = sample_responses(policy, queries, query_mask, cfg.response_len, cfg.temperature, eos_id, pad_id, generators[c], synced=synced)
        sequences = torch.cat([queries, responses], 1)
        mask = torch.cat([query_mask, response_mask], 1)
        width = queries.size(1)
        if cfg.recompute_logprobs:  # a full forward pass, as upstream (the cached pass differs by rounding only)
            logits = response_logits(policy, sequences, mask, width, cfg.temperature)
            logprobs, entropies = token_logprobs(logits, responses), entropy_from_logits(logits)
        ref_logits = response_logits(ref_policy, sequences, mask, width, cfg.temperature)
        chunks.append(
            {
                "queries": queries.cpu(), "query_mask": query_mask.cpu(),
                "responses": responses.cpu(), "response_mask": response_mask.cpu(),
                "logprobs": logprobs.cpu(),
                "ref_logprobs": token_logprobs(ref_logits, responses).cpu(),
                "entropies": entropies.cpu(),
                "ref_entropies": entropy_from_logits(ref_logits).cpu(),
                "values": response_values(value_model, sequences, mask, width).cpu(),
            }
        )
    batch = _merge(chunks, pad_id)
    mask = batch["response_mask"].bool()
    for key in ("logprobs", "ref_logprobs", "entropies", "ref_entropies", "values"):
        batch[key] = torch.where(mask, batch[key], 0.0)  # padding after EOS: 0 (never inf or nan)

    texts = [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True).strip() for r, m in zip(batch["responses"], batch["response_mask"])]
    batch["scores"] = reward_fn(list(prompts), texts).detach().float().cpu().reshape(-1)
    return batch, texts


def add_advantages(batch: dict[str, torch.Tensor], cfg: PPOConfig, kl_coef: float) -> None:
    """KL-shaped rewards, (whitened) GAE advantages and returns, added to ``batch`` in place."""
    mask = batch["response_mask"].float()
    rewards, kl = kl_penalized_rewards(batch["scores"], batch["logprobs"], batch["ref_logprobs"], mask, kl_coef)
    batch["kl"], batch["shaped_rewards"] = kl, rewards
    if cfg.whiten_rewards:
        rewards = whiten(rewards, shift_mean=False, mask=mask)
    advantages, returns = gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    batch["advantages"], batch["returns"] = whiten(advantages, shift_mean=True, mask=mask), returns


# ---------------------------------------------------------------- training


def ppo_loss(policy, value_model, batch: dict[str, torch.Tensor], cfg: PPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in trim(batch).items()}
    sequences = torch.cat([batch["queries"], batch["responses"]], 1)
    attention_mask = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    width, mask = batch["queries"].size(1), batch["response_mask"].float()
    logits = response_logits(policy, sequences, attention_mask, width, cfg.temperature)
    logprobs = token_logprobs(logits, batch["responses"])
    values = response_values(value_model, sequences, attention_mask, width)
    pg_loss, pg_clipfrac = ppo_policy_loss(logprobs, batch["logprobs"], batch["advantages"], mask, cfg.cliprange)
    vf_loss, vf_clipfrac = ppo_value_loss(values, batch["values"], batch["returns"], mask, cfg.cliprange_value)
    loss = pg_loss + cfg.vf_coef * vf_loss
    stats = {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "approx_kl": approx_kl(logprobs.detach(), batch["logprobs"], mask).item(),
        "clipfrac": pg_clipfrac.item(),
        "value_clipfrac": vf_clipfrac.item(),
    }
    return loss, stats


def num_ppo_steps(num_prompts: int, cfg: PPOConfig) -> int:
    """Upstream rl_trainer.py: total_steps = len(prompts) * total_epochs // rollout_batch_size (capped by max_steps)."""
    steps = int(num_prompts * cfg.total_epochs) // cfg.rollout_batch_size
    return max(1, min(steps, cfg.max_steps) if cfg.max_steps is not None else steps)




def mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each statistic over this rank's micro-batches, then over the ranks (every rank
    ran as many micro-batches): the mean over the step's micro-batches, as with one process."""
    keys = list(stats[0])
    return dict(zip(keys, distributed.mean_across_ranks([sum(d[k] for d in stats) / len(stats) for k in keys])))


def check_ppo_batches(cfg: PPOConfig, world: int) -> None:
    """``ValueError`` (naming the ``ppo.`` keys) unless the global batches split over ``world`` processes."""
    if cfg.rollout_batch_size % cfg.step_batch_size:
        raise ValueError(f"ppo.rollout_batch_size {cfg.rollout_batch_size} must be a multiple of ppo.step_batch_size {cfg.step_batch_size}")
    check_batches(cfg, world, "ppo")


def train_ppo(policy, ref_policy, value_model: ValueModel, reward_fn: RewardFn, tokenizer, prompts: Sequence[str], cfg: PPOConfig,
              checkpoints: Checkpoints | None = None) -> dict:
    """Train ``policy`` and ``value_model`` in place with PPO on ``prompts`` (formatted prompt strings).

    ``reward_fn(prompts, responses)`` returns one score per response (e.g. a closure over
    ``afarm.methods.reward_model.score``). Returns ``{"log": [per-step stats], "num_prompts",
    "dropped_prompts", "seconds"}``; the per-step stats hold ``score`` (mean reward-model score),
    ``kl`` (summed per sequence, mean over sequences), ``entropy``, the losses and more.

    With several processes every rank calls this with its models already prepared
    (``afarm.distributed.prepare_model``) and the same arguments; every rank returns the same log.
    ``checkpoints``: every ``cfg.checkpoint_every`` steps the run saves what its next step needs, and a
    run that finds a checkpoint there continues after it (the same log and weights as an uninterrupted run).
    """
    with torch_threads(cfg.num_threads):
        return _train_ppo(policy, ref_policy, value_model, reward_fn, tokenizer, list(prompts), cfg, checkpoints)


def _train_ppo(policy, ref_policy, value_model, reward_fn, tokenizer, prompts, cfg: PPOConfig, checkpoints: Checkpoints | None) -> dict:
    world = distributed.world_size()
    check_ppo_batches(cfg, world)
    torch.manual_seed(cfg.seed)
    start_time = time.perf_counter()
    kept, prompt_ids = tokenize_prompts(tokenizer, prompts, cfg.query_len)
    if len(kept) < cfg.rollout_batch_size:
        raise ValueError(f"{len(kept)} prompts (of {len(prompts)}) fit query_len, fewer than rollout_batch_size {cfg.rollout_batch_size}")
    ref_policy.eval().requires_grad_(False)
    params = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate, eps=cfg.adam_eps
    )
    actor_critic = nn.ModuleList([policy, value_model])  # optimised together: one gradient norm (upstream ActorCritic)
    total_steps = num_ppo_steps(len(kept), cfg)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.k_beta, cfg.adaptive_kl)
    stream = PromptStream(len(kept), cfg.seed)
    sampler = torch.Generator().manual_seed(cfg.seed)
    shuffler = torch.Generator().manual_seed(cfg.seed + 1)
    log = []
    trained, rngs = {"policy": policy, "value": value_model}, {"sampler": sampler, "shuffler": shuffler}
    done = 0
    restored = checkpoints.restore(trained, optimizer) if checkpoints is not None else None
    if restored is not None:
        done, rest = restored
        scheduler.load_state_dict(rest["scheduler"])
        kl_ctl.value, (stream.epoch, stream.order), log = rest["kl_coef"], rest["stream"], rest["log"]
        set_rng_states(rngs, rest["generators"])
    for step in tqdm(range(done + 1, total_steps + 1), desc="ppo", initial=done, total=total_steps,
                     disable=not (cfg.show_progress and distributed.is_main())):
        index = stream.take(cfg.rollout_batch_size)
        mine, generators = rollout_share(cfg, step, sampler)
        local, texts = rollout(
            policy, ref_policy, value_model, reward_fn, tokenizer, [kept[i] for i in index[mine]], [prompt_ids[i] for i in index[mine]],
            cfg, generators, synced=world > 1,
        )
        batch, texts = gather_rollouts(local, texts, tokenizer.pad_token_id)
        add_advantages(batch, cfg, kl_ctl.value)  # on the whole batch: global whitening, as one process
        lr = scheduler.get_last_lr()[0]

        policy.train()
        value_model.train()
        train_stats: list[dict] = []
        for _ in range(cfg.noptepochs):
            order = torch.randperm(cfg.rollout_batch_size, generator=shuffler)
            for s in range(0, cfg.rollout_batch_size, cfg.step_batch_size):
                micro = [order[m : m + cfg.step_micro_batch_size] for m in range(s, s + cfg.step_batch_size, cfg.step_micro_batch_size)]
                share = distributed.step_share(micro)  # this rank's micro-batches, each with its loss divisor
                step_stats = []
                for i, (idx, divisor) in enumerate(share):
                    last = i == len(share) - 1  # gradients are reduced over the ranks after the last one only
                    with distributed.accumulate(policy, last), distributed.accumulate(value_model, last):
                        loss, stats = ppo_loss(policy, value_model, {k: v[idx] for k, v in batch.items()}, cfg)
                        (loss / divisor).backward()
                    step_stats.append(stats)
                grad_norm = distributed.optimizer_step(actor_critic, optimizer, None, cfg.max_grad_norm)  # schedule: once per PPO step, below (upstream rl_trainer.py)
                train_stats.append(mean_stats(step_stats) | {"grad_norm": grad_norm})
        scheduler.step()

        mask = batch["response_mask"].float()
        record = {
            "step": step,
            "score": batch["scores"].mean().item(),
            "kl": batch["kl"].sum(1).mean().item(),
            "kl_per_token": masked_mean(batch["kl"], mask).item(),
            "kl_coef": kl_ctl.value,
            "shaped_reward": batch["shaped_rewards"].sum(1).mean().item(),
            "entropy": masked_mean(batch["entropies"], mask).item(),
            "ref_entropy": masked_mean(batch["ref_entropies"], mask).item(),
            "response_length": mask.sum(1).mean().item(),
            "learning_rate": lr,
            **{k: sum(d[k] for d in train_stats) / len(train_stats) for k in train_stats[0]},
            "seconds": time.perf_counter() - start_time,
            "example_response": texts[0],
        }
        log.append(record)
        kl_ctl.step(record["kl"])
        if checkpoints is not None and checkpoints.due(step, total_steps):
            checkpoints.save(step, trained, optimizer, {"scheduler": scheduler.state_dict(), "kl_coef": kl_ctl.value,
                                                        "stream": (stream.epoch, stream.order), "log": log, "generators": rng_states(rngs)})
    policy.eval()
    value_model.eval()
    return {"log": log, "num_prompts": len(kept), "dropped_prompts": len(prompts) - len(kept), "num_steps": total_steps, "seconds": time.perf_counter() - start_time}
