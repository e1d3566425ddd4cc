"""Batched generation from a causal LM, seeded per prompt.

How it works: prompts are tokenized (with BOS), sorted by length (longest first) so each
batch needs little padding, left-padded, and decoded token by token with the model's KV
cache. A sequence stops at EOS (or ``max_new_tokens``) and leaves the batch, whose KV cache
shrinks with it; a batch ends when all of its sequences have. Results come back in input
order, decoded without the prompt, stripped.

Seeding: every (prompt, sample index) pair draws its random numbers from its own generator
seeded by ``seed``, the prompt text and the sample index, so a sample does not depend on the
batch it lands in or on the other prompts (up to float rounding, which can differ with the
amount of padding; greedy decoding is unaffected in practice). Same inputs, same outputs.

Devices and processes: :func:`load_for_generation` loads the model in ``GenerationConfig.dtype``
onto this process's device (``afarm.distributed.device()``: its GPU, else the CPU); inputs
follow the model, and the texts come back as Python strings. In a distributed run (one process
per GPU) generation is data-parallel: the list of batches is formed exactly as in one process
(same sort, same rows, same padding), each rank generates every ``world_size``-th batch, and
the texts are gathered, in input order, on every rank. A sample therefore has the same tokens
in any number of processes. Each process holds a full copy of the model, not an FSDP shard:
a 7B model in bf16 is 13.5 GB, which one 80 GB GPU holds with room for the KV cache, and
unsharded ranks need no collective per forward pass, so each rank's batches finish at their
own pace (sharded ranks would have to run the same number of decoding steps in lockstep).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from afarm import distributed
from afarm.models.lm import cached_forward, load_model, torch_threads

log = logging.getLogger("afarm.models.generate")


@dataclass
class GenerationConfig:
    # Paper defaults from upstream AlpacaFarm decoding, unless a comment says otherwise:
    # examples/best_of_n.py run_decode and src/alpaca_farm/inference/decode.py HFDecodingArguments.
    max_new_tokens: int = 300  # best_of_n.py run_decode max_new_tokens=300 (decode.py's own default: 100)
    temperature: float = 1.0  # best_of_n.py run_decode temperature=1.0
    top_p: float = 0.9  # decode.py HFDecodingArguments top_p=0.9 (top_k=0: no top-k)
    do_sample: bool = True  # decode.py HFDecodingArguments do_sample=True; False (or temperature 0) is greedy
    batch_size: int = 4  # best_of_n.py run_decode per_device_batch_size=4
    num_samples: int = 1  # outputs per prompt (best_of_n.py: num_return_sequences=4 for best-of-n)
    seed: int = 0  # our choice (upstream passes seed=None unless given)
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    show_progress: bool = True  # tqdm bar
    # dtype the sampling model is loaded in (load_for_generation); None keeps the checkpoint's own.
    # paper: bfloat16, as upstream inference/decode.py loads its decoder in the dtype of its
    # ``mixed_precision`` argument (bf16 / fp16) -- half the memory and time of float32.
    dtype: str | None = None


def load_for_generation(path: str | os.PathLike, cfg: GenerationConfig) -> tuple[object, object]:
    """(model, tokenizer) from a model folder: the model in ``cfg.dtype``, on this process's device."""
    device = distributed.device()
    model, tokenizer = load_model(path, cfg.dtype, device)
    return model.to(device), tokenizer


def sample_seed(seed: int, prompt: str, sample_index: int) -> int:
    """The seed of one (prompt, sample) pair: a hash of the run seed, the prompt text and the index."""
    digest = hashlib.sha256(f"{seed}\x00{sample_index}\x00{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _next_tokens(logits: torch.Tensor, cfg: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Pick one token per row: argmax, or a draw from the temperature / top-p (nucleus) distribution."""
    if not cfg.do_sample or cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        # Nucleus: keep the smallest prefix of the sorted distribution whose mass reaches top_p.
        # Fast path: when the 64 likeliest tokens of every row already reach top_p, the
        # nucleus lies inside them and a full sort of the vocabulary is not needed.
        sorted_probs, sorted_ids = probs.topk(min(64, probs.size(-1)), dim=-1)
        if not bool((sorted_probs.cumsum(-1)[:, -1] >= cfg.top_p).all()):
            sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs > cfg.top_p, 0.0)
    else:
        sorted_probs, sorted_ids = probs, None
    cdf = sorted_probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])  # CPU generators
    u = u.to(device=cdf.device, dtype=cdf.dtype)
    pick = (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=cdf.size(-1) - 1)  # inverse CDF
    return pick if sorted_ids is None else sorted_ids.gather(-1, pick[:, None]).squeeze(-1)


@torch.inference_mode()
def _generate_batch(model, input_ids, attention_mask, cfg, generators, eos_id: int) -> list[list[int]]:
    """Token ids generated after each (left-padded) prompt row, EOS excluded.

    Rows that reach EOS leave the batch (their KV cache rows are dropped), so the rest run
    faster; each row samples from its own generator, so dropping others does not change it.
    A sharded (FSDP) model among several ranks, which all run this same batch: every rank takes rank 0's
    tokens at each step, so all stop at the same step and run the same forward passes (each pass
    gathers the weights on every rank) even where their numerics would part.
    """
    synced = distributed.world_size() > 1 and _is_sharded(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out, cache = cached_forward(model, None, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1)
    next_position = position_ids[:, -1:] + 1
    live = list(range(input_ids.size(0)))  # original row of each row still generating
    generated: list[list[int]] = [[] for _ in live]
    logits = out.logits[:, -1, :]
    for step in range(cfg.max_new_tokens):
        tokens = _next_tokens(logits, cfg, [generators[row] for row in live])
        if synced:
            tokens = distributed.broadcast_tensor(tokens)
        finished = tokens == eos_id
        for row, token in zip(live, tokens.tolist()):
            if token != eos_id:
                generated[row].append(token)
        if bool(finished.all()) or step == cfg.max_new_tokens - 1:
            break
        if bool(finished.any()):  # drop finished rows from the batch and the cache
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            tokens, attention_mask, next_position = tokens[keep], attention_mask[keep], next_position[keep]
            live = [live[k] for k in keep.tolist()]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=1)
        out, cache = cached_forward(model, cache, input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position)
        logits, next_position = out.logits[:, -1, :], next_position + 1
    return generated


def generate_samples(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig, data_parallel: bool = True) -> list[list[str]]:
    """``cfg.num_samples`` completions for each prompt: a list (input order) of lists of strings.

    In a distributed run with ``data_parallel`` the ranks share the batches and every rank
    returns all completions (module docstring). ``data_parallel=False``: this process generates
    every prompt itself (e.g. its own share of rollouts, or a sharded FSDP model, whose ranks
    must all run the same forward passes).
    """
    return generate_samples_finished(model, tokenizer, prompts, cfg, data_parallel)[0]


def generate_samples_finished(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                              data_parallel: bool = True) -> tuple[list[list[str]], list[list[bool]]]:
    """``generate_samples``, and for each completion whether it *finished*: the model emitted EOS within
    ``cfg.max_new_tokens``. An unfinished one was cut off by the cap; training on it must not teach the
    model to stop there (``afarm.models.train.tokenize_example``'s ``eos``)."""
    if data_parallel and distributed.world_size() > 1 and _is_sharded(model):
        raise distributed.DistributedError("a sharded (FSDP) model cannot generate data-parallel: each rank needs a full "
                                           "copy; pass data_parallel=False to generate the same batches on every rank")
    with torch_threads(cfg.num_threads):
        return _generate_samples(model, tokenizer, prompts, cfg, data_parallel)


def _is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def _generate_samples(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig, data_parallel: bool) -> tuple[list[list[str]], list[list[bool]]]:
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token for batched generation")
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    items = [(i, j) for i in range(len(prompts)) for j in range(cfg.num_samples)]
    items.sort(key=lambda item: -len(prompt_ids[item[0]]))  # stable: ties keep input order
    batches = [items[start : start + cfg.batch_size] for start in range(0, len(items), cfg.batch_size)]
    mine = distributed.batches_of_rank(len(batches)) if data_parallel else range(len(batches))
    texts: dict[tuple[int, int], tuple[str, bool]] = {}  # (text, finished)
    was_training = model.training
    model.eval()
    bar = tqdm(total=sum(len(batches[b]) for b in mine), desc="generate",
               disable=not cfg.show_progress or not distributed.is_main())
    for chunk in (batches[b] for b in mine):
        width = max(len(prompt_ids[i]) for i, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (i, _) in enumerate(chunk):  # left padding
            ids = prompt_ids[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        generators = [torch.Generator().manual_seed(sample_seed(cfg.seed, prompts[i], j)) for i, j in chunk]
        outputs = _generate_batch(model, input_ids.to(device), attention_mask.to(device), cfg, generators, eos_id)
        for item, ids in zip(chunk, outputs):
            texts[item] = (tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids) < cfg.max_new_tokens)  # EOS excluded
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    if data_parallel and distributed.world_size() > 1:
        log.info("rank %d of %d generated %d of %d samples (%d of %d batches)", distributed.rank(),
                 distributed.world_size(), len(texts), len(items), len(mine), len(batches))
        texts = distributed.merge_from_ranks(texts)
    return ([[texts[(i, j)][0] for j in range(cfg.num_samples)] for i in range(len(prompts))],
            [[texts[(i, j)][1] for j in range(cfg.num_samples)] for i in range(len(prompts))])


def generate(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig, data_parallel: bool = True) -> list[str]:
    """One completion per prompt (``cfg.num_samples`` must be 1), in input order, prompt excluded, stripped."""
    if cfg.num_samples != 1:
        raise ValueError("generate() returns one output per prompt; use generate_samples() for num_samples > 1")
    return [samples[0] for samples in generate_samples(model, tokenizer, prompts, cfg, data_parallel)]
