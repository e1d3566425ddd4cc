"""Best-of-n: sample n outputs per instruction, keep the one the reward model scores highest.

Inference-time only (no training), as upstream AlpacaFarm examples/best_of_n.py
(``run_best_of_n`` = ``run_decode`` then ``run_rerank`` with the reward model, top 1 kept).
Samples come from ``afarm.models.generate.generate_samples``, which seeds every (prompt,
sample index) on its own, so the first k samples of best-of-n are the same for every n >= k.
The pipeline draws the samples once, in the `sft_samples` stage (both worlds sample the same SFT
model with the same decoding), and each world's stage scores them (``best_of_samples``).

In a distributed run (one process per GPU, each with full copies of both models) sampling and
scoring are data-parallel: each rank computes whole batches of the single-process batch list
and the results are gathered on every rank, so the outputs are those of one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch

from afarm import distributed
from afarm.methods.reward_model import encode, load_reward_model, score
from afarm.models.generate import GenerationConfig, generate_samples_finished
from afarm.models.lm import DTYPES, check_model_folder, torch_threads

log = logging.getLogger("afarm.methods.best_of_n")


def _sampling() -> GenerationConfig:
    # upstream examples/best_of_n.py run_decode: temperature 1.0, max_new_tokens 300,
    # per_device_batch_size 4; top_p 0.9 from inference/decode.py HFDecodingArguments.
    return GenerationConfig(temperature=1.0, top_p=0.9, do_sample=True, max_new_tokens=300, batch_size=4)


@dataclass
class BestOfNConfig:
    n: int = 16  # upstream README best-of-n command: --num_return_sequences 16 ("the n in best-of-n")
    generation: GenerationConfig = field(default_factory=_sampling)  # its num_samples is replaced by n
    score_batch_size: int = 4  # upstream README best-of-n command: --per_device_batch_size 4 (decode and rerank)
    # dtype the reward model is cast to for scoring; None keeps the checkpoint's own. paper: bfloat16,
    # as upstream inference/score.py loads its scorer in the dtype of its ``mixed_precision`` argument.
    reward_dtype: str | None = None


def best_of_n_select(samples: Sequence[Sequence[str]], rewards) -> tuple[list[str], list[int]]:
    """For each prompt, the sample with the highest reward (the first one on a tie) and its index.

    ``samples``: one list of n strings per prompt; ``rewards``: same shape (nested lists or a
    ``[prompts, n]`` tensor).
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64) if not isinstance(rewards, torch.Tensor) else rewards
    if rewards.dim() != 2 or rewards.size(0) != len(samples) or any(len(s) != rewards.size(1) for s in samples):
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not match {len(samples)} lists of samples")
    index = rewards.argmax(dim=1).tolist()  # torch returns the first maximal index
    return [s[i] for s, i in zip(samples, index)], index


def sample_and_score(policy, policy_tokenizer, reward_model, reward_tokenizer, prompts: Sequence[str],
                     cfg: BestOfNConfig) -> tuple[list[list[str]], torch.Tensor, list[list[bool]]]:
    """``cfg.n`` samples per prompt, their rewards (a ``[len(prompts), n]`` float tensor) and whether each
    finished (EOS within the generation cap; ``afarm.models.generate.generate_samples_finished``)."""
    gen = GenerationConfig(**{**vars(cfg.generation), "num_samples": cfg.n})
    samples, finished = generate_samples_finished(policy, policy_tokenizer, prompts, gen)
    return samples, score_samples(reward_model, reward_tokenizer, prompts, samples, cfg), finished


def score_samples(reward_model, reward_tokenizer, prompts: Sequence[str], samples: Sequence[Sequence[str]],
                  cfg: BestOfNConfig) -> torch.Tensor:
    """The reward of each of the ``cfg.n`` samples of each prompt: a ``[len(prompts), n]`` float tensor."""
    if any(len(s) != cfg.n for s in samples):
        raise ValueError(f"expected {cfg.n} samples per prompt (best-of-n's n)")
    flat_prompts = [p for p in prompts for _ in range(cfg.n)]
    flat_samples = [s for per_prompt in samples for s in per_prompt]
    with torch_threads(cfg.generation.num_threads):
        rewards = score_data_parallel(reward_model, reward_tokenizer, flat_prompts, flat_samples, cfg.score_batch_size)
    return rewards.view(len(prompts), cfg.n)


def score_data_parallel(reward_model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int) -> torch.Tensor:
    """``afarm.methods.reward_model.score`` with its batches shared by the ranks of a distributed run.

    ``score`` sorts the pairs by encoded length (longest first, stable) and cuts batches of
    ``batch_size``; here the same batches are formed and each rank scores every ``world_size``-th
    one by calling ``score`` on that batch alone (already in length order, so it forms the very
    same padded batch). One process: ``score`` itself.
    """
    if distributed.world_size() == 1:
        return score(reward_model, tokenizer, list(prompts), list(responses), batch_size)
    max_length = getattr(reward_model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    lengths = [len(encode(tokenizer, p, r, max_length)) for p, r in zip(prompts, responses)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    local: dict[int, float] = {}
    for b in distributed.batches_of_rank(len(batches)):
        rows = batches[b]
        values = score(reward_model, tokenizer, [prompts[i] for i in rows], [responses[i] for i in rows], batch_size)
        local.update(zip(rows, values.tolist()))
    log.info("rank %d of %d scored %d of %d samples (%d of %d batches)", distributed.rank(), distributed.world_size(),
             len(local), len(lengths), len(distributed.batches_of_rank(len(batches))), len(batches))
    merged = distributed.merge_from_ranks(local)
    return torch.tensor([merged[i] for i in range(len(lengths))], dtype=torch.float32)


def load_for_scoring(path, cfg: BestOfNConfig) -> tuple[object, object]:
    """(reward model, tokenizer) from a reward model folder: cast to ``cfg.reward_dtype``, on this process's device."""
    if cfg.reward_dtype is not None and cfg.reward_dtype not in DTYPES:
        raise ValueError(f"unknown reward_dtype {cfg.reward_dtype!r}; expected one of {sorted(DTYPES)}")
    dtype = DTYPES[cfg.reward_dtype] if cfg.reward_dtype is not None else None
    device = distributed.device()
    if device.type != "cpu":  # straight onto the GPU in its dtype, tensor by tensor: no whole copy in host memory per rank
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_model_folder(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or "auto", device_map={"": device})
        return model.eval(), AutoTokenizer.from_pretrained(path)
    model, tokenizer = load_reward_model(path)
    return model.to(device=device, dtype=dtype), tokenizer  # tensor by tensor: no second full copy


def best_of_n(policy, policy_tokenizer, reward_model, reward_tokenizer, prompts: Sequence[str], cfg: BestOfNConfig) -> dict:
    """Best-of-n outputs for formatted ``prompts``.

    Returns ``{"outputs": [str], "indices": [int], "rewards": [n floats per prompt],
    "samples": [n strings per prompt], "finished": [bool per output: EOS within the generation cap]}``.
    """
    samples, rewards, finished = sample_and_score(policy, policy_tokenizer, reward_model, reward_tokenizer, prompts, cfg)
    return _result(samples, rewards, finished)


def best_of_samples(reward_model, reward_tokenizer, prompts: Sequence[str], samples: Sequence[Sequence[str]],
                    finished: Sequence[Sequence[bool]], cfg: BestOfNConfig) -> dict:
    """``best_of_n`` on samples drawn beforehand (the `sft_samples` stage, with ``cfg.generation`` and
    ``cfg.n``): the same result as sampling them here."""
    return _result(samples, score_samples(reward_model, reward_tokenizer, prompts, samples, cfg), finished)


def _result(samples, rewards: torch.Tensor, finished) -> dict:
    outputs, indices = best_of_n_select(samples, rewards)
    return {"outputs": outputs, "indices": indices, "rewards": rewards.tolist(), "samples": [list(s) for s in samples],
            "finished": [f[i] for f, i in zip(finished, indices)]}
