"""What a model folder says about itself, so it reproduces its evaluated generations on its own.

``afarm.models.lm.save_model`` writes, next to the weights, config and tokenizer:

- the prompt template as the tokenizer's chat template (``chat_template.jinja``), the folder's
  control token (if any) in front of it (``afarm.models.prompts.chat_template``): the one place a
  control token is recorded, read by every generation path;
- ``padding_side: left`` in ``tokenizer_config.json`` (batched generation pads on the left);
- ``generation_config.json``: the evaluation decoding (max_new_tokens, do_sample, and for sampling
  temperature, top_p and no top-k), so ``model.generate(**inputs)`` decodes as the stage did;
- ``README.md``: a short model card naming the method, the base model, the sha256 of every data
  file and of every resolved params section the weights came from.

Everything here is a function of the inputs (no timestamps, no host names), so the same inputs
and params give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from afarm.io import sha256_file
from afarm.models.prompts import chat_template


@dataclass
class ModelCard:
    method: str  # the stage that trained the weights, e.g. "sft", "reward_conditioning"
    base_model: str | None = None  # folder or hub id the weights started from; None: trained from scratch
    data: list[str] = field(default_factory=list)  # data files the weights were trained on (hashed)
    models: dict[str, str] = field(default_factory=dict)  # other model folders used, role -> folder (e.g. the reward model)
    params: dict[str, object] = field(default_factory=dict)  # params section name -> resolved config (dataclass or dict)
    prompt_prefix: str = ""  # control token put before every prompt at generation time ("" for none)
    generation: object | None = None  # afarm GenerationConfig of the evaluation decoding; None: not a generator


# Keys that say how a run is carried out, not what it computes: left out of the hash (the weights do not depend on them).
NOT_HASHED = ("checkpoint_every",)  # afarm.checkpoint: how often a resumable checkpoint is saved


def _hashed(data):
    if isinstance(data, dict):
        return {k: _hashed(v) for k, v in data.items() if k not in NOT_HASHED}
    return data


def params_hash(config) -> str:
    """sha256 of a resolved config (a dataclass or plain data) as canonical JSON (sorted keys, no spaces),
    without the ``NOT_HASHED`` keys."""
    data = _hashed(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_tokenizer(tokenizer, prompt_prefix: str = "") -> None:
    """Give ``tokenizer`` (in place) the prompt template with ``prompt_prefix`` and left padding."""
    tokenizer.chat_template = chat_template(prompt_prefix)
    tokenizer.padding_side = "left"  # afarm's own code pads explicitly; plain batched generate needs left


def generation_config(tokenizer, decoding):
    """A ``transformers.GenerationConfig`` decoding as afarm's ``decoding`` (its GenerationConfig).

    Greedy (``do_sample`` false or temperature <= 0, as ``afarm.models.generate``) writes no
    temperature / top_p, which transformers rejects without sampling. Sampling writes ``top_k: 0``:
    afarm samples from the top-p nucleus only (transformers' default would also cut at 50 tokens).
    """
    from transformers import GenerationConfig

    sample = bool(decoding.do_sample) and decoding.temperature > 0
    kwargs = {"max_new_tokens": decoding.max_new_tokens, "do_sample": sample}
    if sample:
        kwargs |= {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **kwargs)


def readme(card: ModelCard) -> str:
    """The model card (README.md) text."""
    lines = ["---", "library_name: transformers", f"tags: [afarm, {card.method}]", "---", "",
             f"# afarm model: {card.method}", "",
             f"- method: `{card.method}` (stage module `afarm.stages.{card.method}`)",
             f"- base model: `{card.base_model}`" if card.base_model else "- base model: none (trained from scratch)"]
    lines += [f"- {role}: `{folder}`" for role, folder in card.models.items()]
    lines.append(f"- control token before every prompt: `{card.prompt_prefix}`" if card.prompt_prefix
                 else "- control token: none")
    if card.generation is not None and getattr(card.generation, "dtype", None):
        lines.append(f"- evaluated with the weights loaded in `{card.generation.dtype}` (`from_pretrained(folder, dtype=...)`)")
    lines += ["", "| data file | sha256 |", "|---|---|"]
    lines += [f"| `{path}` | `{sha256_file(path)}` |" for path in card.data]
    lines += ["", "| params section (resolved) | sha256 of its canonical JSON |", "|---|---|"]
    lines += [f"| `{name}` | `{params_hash(cfg)}` |" for name, cfg in card.params.items()]
    lines += ["", "## Generating as the pipeline did", "",
              "The prompt template (with the control token) is the tokenizer's chat template; the decoding is "
              "`generation_config.json`. With transformers alone:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(folder)  # padding_side left",
              "model = AutoModelForCausalLM.from_pretrained(folder)",
              'text = tok.apply_chat_template([{"role": "user", "content": instruction, "input": ""}], tokenize=False)',
              "batch = tok([text], return_tensors=\"pt\", padding=True)  # the tokenizer adds BOS",
              "out = model.generate(**batch)  # decoding from generation_config.json",
              "answer = tok.decode(out[0, batch[\"input_ids\"].shape[1]:], skip_special_tokens=True).strip()",
              "```", "",
              "With greedy decoding (the tiny scale) this gives the pipeline's outputs (`tests/test_model_folder.py` "
              "checks it byte for byte; padding other than the pipeline's batches can round a rare near-tie "
              "otherwise). Sampled outputs (paper scale) follow the same distribution, but afarm seeds each prompt "
              "with its own generator (`afarm.models.generate.sample_seed`), which transformers' sampler does not.", ""]
    return "\n".join(lines)


def folder_files(card: ModelCard | None) -> dict[str, str]:
    """Extra text files of the folder: ``README.md`` when there is a card."""
    return {"README.md": readme(card)} if card is not None else {}
