"""Causal language model: build (from scratch or from a checkpoint), save, load.

The tiny scale builds a small Llama-architecture model from scratch (``ModelConfig``
architecture fields); the paper scale sets ``pretrained`` to a local path or hub id of a
real checkpoint (AlpacaFarm fine-tunes LLaMA-7B) and the same code loads it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from afarm.io import InputError, read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    # Local folder or hub id of a causal LM, ``<hub id>@<revision>`` to pin a commit (afarm.models.hub);
    # None builds the architecture below from scratch. Paper: LLaMA-7B (AlpacaFarm section 5).
    pretrained: str | None = None
    # Architecture of the from-scratch model: our tiny-scale choices (about 1M parameters with a
    # 2048-token vocabulary; LLaMA-7B is 32000 / 4096 / 32 / 32 / 11008 / 2048).
    vocab_size: int | None = None  # None: len(tokenizer); if set, must be >= len(tokenizer)
    hidden_size: int = 128  # tiny-scale choice
    num_layers: int = 4  # tiny-scale choice
    num_heads: int = 4  # tiny-scale choice
    intermediate_size: int = 336  # tiny-scale choice (about 8/3 * hidden, as LLaMA)
    max_position_embeddings: int = 512  # tiny-scale choice; upstream sft.sh uses model_max_length 512
    tie_word_embeddings: bool = True  # tiny-scale choice (LLaMA unties; tying halves a tiny model's embeddings)
    seed: int = 0  # seeds the random initialisation
    dtype: str = "float32"  # tiny scale on CPU; paper: bfloat16 (upstream sft.sh --bf16 True)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_model(cfg: ModelConfig, tokenizer) -> PreTrainedModel:
    """A causal LM for ``tokenizer``: loaded from ``cfg.pretrained``, or a fresh seeded Llama."""
    dtype = _dtype(cfg.dtype)
    if cfg.pretrained:
        from afarm.models.hub import pretrained_kwargs

        name, revision = pretrained_kwargs(cfg.pretrained)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **revision)
        if tokenizer.pad_token_id is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # e.g. a pad token was added
            model.resize_token_embeddings(len(tokenizer))
        return model
    vocab_size = cfg.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"ModelConfig.vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = LlamaForCausalLM(config).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def save_model(model: PreTrainedModel, tokenizer, path: str | os.PathLike, card=None) -> None:
    """Write model (safetensors) and tokenizer to folder ``path`` atomically, self-described.

    The one function every stage saves a model folder with. Besides weights, config and tokenizer
    the folder gets the prompt template as the tokenizer's chat template (with ``card.prompt_prefix``,
    the control token, in front), left padding, and with a ``card`` (``afarm.models.card.ModelCard``)
    its ``generation_config.json`` (``card.generation``) and ``README.md``
    (``afarm.models.card``). ``tokenizer`` is given the chat template and left padding in place.

    The bytes depend only on the weights, config, tokenizer and card (no timestamps), so identical
    inputs give identical files. A model sharded over several processes is gathered and written by
    rank 0 (``afarm.distributed.save_model``).
    """
    from afarm import distributed
    from afarm.models.card import describe_tokenizer, folder_files, generation_config

    describe_tokenizer(tokenizer, card.prompt_prefix if card is not None else "")
    generation = card.generation if card is not None else None
    distributed.save_model(model, tokenizer, path, extra_files=folder_files(card),
                           generation_config=generation_config(tokenizer, generation) if generation is not None else None)


def check_model_folder(path: str | os.PathLike) -> None:
    """A model folder that exists must hold a readable ``config.json`` (else ``InputError`` naming it:
    an interrupted copy is the usual cause). A path that does not exist is left to the loader
    (it may be a hub id)."""
    folder = Path(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(folder, "expected a model folder, found a file")
    config = folder / "config.json"
    if not config.is_file():
        raise InputError(folder, "not a model folder: config.json is missing")
    if not isinstance(read_json(config), dict):  # malformed JSON names the file, line and column
        raise InputError(config, "expected a JSON object")


def load_model(path: str | os.PathLike, dtype: str | None = None, device: torch.device | None = None,
               rank0_only: bool = False) -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer) from a folder written by ``save_model`` (or any HF checkpoint folder).

    ``device``: a GPU to load the weights straight onto (no full copy in CPU memory first, as
    upstream inference/decode.py's ``device_map``); None or the CPU loads into CPU memory.
    ``rank0_only``: for a model that ``afarm.distributed.prepare_model`` shards next; among several
    processes only rank 0 reads the weights, the others build the model on the meta device (no memory)
    and receive their shards from rank 0 when it is prepared.
    """
    from afarm.models.hub import pretrained_kwargs

    check_model_folder(path)
    path, revision = pretrained_kwargs(str(path))  # a hub reference (e.g. a judge model) may pin a revision
    if rank0_only and not _reads_weights():
        model = on_meta(AutoModelForCausalLM, path, dtype, revision)
    else:
        kwargs = {"dtype": _dtype(dtype)} if dtype else {"dtype": "auto"}
        kwargs.update(revision)
        if device is not None and torch.device(device).type != "cpu":
            kwargs["device_map"] = {"": torch.device(device)}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, **revision)
    model.eval()
    return model, tokenizer


def _reads_weights() -> bool:
    """Whether this process reads a checkpoint's weights: one process, or rank 0 of several."""
    from afarm import distributed

    return distributed.is_main()


def on_meta(model_class, path: str, dtype: str | None, revision: dict, **config_changes) -> PreTrainedModel:
    """The model of checkpoint ``path`` (its config.json only) on the meta device: shapes, no memory."""
    config = AutoConfig.from_pretrained(path, **revision, **config_changes)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    with torch.device("meta"):
        return model_class.from_config(config, dtype=_dtype(dtype) if dtype else stored)


def num_parameters(model: PreTrainedModel) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def _cache_name(model_class: type) -> str:
    """The name a model class's ``forward`` takes the KV cache under (looked up once per class: it is
    asked on every decoding step)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cached_forward(model, cache, **inputs):
    """One forward pass of a decoding loop that continues from the KV ``cache`` (None: the first pass,
    which starts one); returns (the model output, its cache). transformers 5.x names the cache ``cache``
    (in and out) and warns that ``past_key_values``, the only name of 4.x, goes in 5.40: pass the name that
    the model's ``forward`` takes."""
    name = _cache_name(type(model))
    if cache is not None:
        inputs[name] = cache
    out = model(**inputs, use_cache=True)
    return out, getattr(out, name)


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch CPU threads (None: unchanged), then restore the old count."""
    old = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
