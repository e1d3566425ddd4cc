"""Backend ``local_hf``: a local ``transformers`` causal LM as a pairwise judge.

The pair is written into a prompt template (the same kind of file as the API judges use,
e.g. upstream's ``alpaca_eval_clf.txt`` that asks for "m" or "M"), and instead of sampling
an answer we read the model's next-token distribution after the prompt: with ``a1`` the
answer meaning "output_1 is better" and ``a2`` the other,

    preference = 2 - p(a1) / (p(a1) + p(a2))

as upstream's logprob-weighted AlpacaEval 2 judge. It needs no key or network; tiny
models run on CPU, paper-scale ones on a GPU (``device``).

ChatML templates are rendered with the tokenizer's chat template when it has one, else as
the message contents separated by blank lines. Prompts longer than ``max_length`` tokens
have both outputs shortened (the longer one first) until they fit, so the instruction and
the question at the end are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from afarm.annotators.base import Annotator, Judgement, Pair
from afarm.annotators.openai_backend import chatml_to_messages, check_template, fill_template


@dataclass
class LocalHFConfig:
    # folder of a causal LM + tokenizer (e.g. written by afarm.models.lm.save_model), or a hub id, pinned
    # as `<hub id>@<commit>` (afarm.models.hub; the small scale's judge)
    model_path: str
    prompt_template: str  # path of a one-pair prompt file with {instruction} {output_1} {output_2}
    # answers meaning "output_1 better" then "output_2 better"; upstream's weighted judge uses m / M
    answer_tokens: list[str] = field(default_factory=lambda: ["m", "M"])
    max_length: int = 2048  # prompt tokens; our choice (the model's context must allow it)
    batch_size: int = 8  # prompts per forward pass; our choice for CPU
    dtype: str | None = None  # None: as saved; "float32" / "bfloat16" / "float16"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.answer_tokens) != 2:
            raise ValueError(f"answer_tokens must name two answers, got {self.answer_tokens}")


def _folder_digest(path: Path) -> str:
    """Identifies a checkpoint without reading all of a multi-GB file: names, sizes, and the
    first and last MiB of every file (all weights of a trained model change)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\x00{size}\x00".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


class LocalHFAnnotator(Annotator):
    def __init__(self, name: str, cfg: LocalHFConfig):
        from afarm.models.lm import load_model

        self.name = name
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.template = Path(cfg.prompt_template).read_text(encoding="utf-8")
        check_template(self.template, 1, source=cfg.prompt_template)
        self.model, self.tokenizer = load_model(cfg.model_path, dtype=cfg.dtype)
        self.model.to(cfg.device).eval()
        self.answer_ids = []
        for answer in cfg.answer_tokens:
            ids = self.tokenizer.encode(answer, add_special_tokens=False)
            if not ids:
                raise ValueError(f"answer {answer!r} encodes to no token")
            self.answer_ids.append(ids[0])  # the first token decides, as a one-token answer
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError(f"answers {cfg.answer_tokens} start with the same token")
        # a local folder is identified by its bytes; a pinned hub reference by its commit
        self._digest = _folder_digest(Path(cfg.model_path)) if Path(cfg.model_path).exists() else cfg.model_path

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": "local_hf",
            "model": self._digest,
            "template_sha256": hashlib.sha256(self.template.encode("utf-8")).hexdigest(),
            "answer_tokens": list(self.cfg.answer_tokens),
            "max_length": self.cfg.max_length,
            "dtype": self.cfg.dtype,
        }

    # ------------------------------------------------------------ prompts
    def render(self, pair: Pair) -> str:
        text = fill_template(self.template, [pair])
        if not text.lstrip().startswith("<|im_start|>"):
            return text.strip()
        messages = chatml_to_messages(text)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def encode(self, pair: Pair) -> list[int]:
        """Token ids of the prompt, outputs shortened until it fits ``max_length``."""
        ids = self.tokenizer(self.render(pair))["input_ids"]
        if len(ids) <= self.cfg.max_length:
            return ids
        out = [self.tokenizer.encode(o, add_special_tokens=False) for o in (pair.output_1, pair.output_2)]
        budget = max(len(out[0]), len(out[1]))
        while budget > 0 and len(ids) > self.cfg.max_length:
            budget = budget * 3 // 4
            cut = [self.tokenizer.decode(o[:budget]) for o in out]
            ids = self.tokenizer(self.render(Pair(pair.instruction, cut[0], cut[1])))["input_ids"]
        return ids[-self.cfg.max_length :]  # a template longer than max_length alone: keep its end

    # ------------------------------------------------------------ judging
    @torch.no_grad()
    def answer_logprobs(self, pairs: Sequence[Pair]) -> list[tuple[float, float, int]]:
        """(log p(answer 1), log p(answer 2), prompt tokens) for each pair, one forward pass."""
        encoded = [self.encode(pair) for pair in pairs]
        longest = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, ids in enumerate(encoded):  # right padding: causal attention never sees it
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        # use_cache=False: one forward, no KV cache to keep (the memory plan counts logits and one layer)
        logits = self.model(input_ids=input_ids.to(self.cfg.device), attention_mask=mask.to(self.cfg.device), use_cache=False).logits
        last = torch.tensor([len(ids) - 1 for ids in encoded], device=logits.device)
        final = logits[torch.arange(len(encoded), device=logits.device), last].float().log_softmax(-1)
        chosen = final[:, self.answer_ids].cpu().tolist()
        return [(a, b, len(ids)) for (a, b), ids in zip(chosen, encoded)]

    def judge(self, pairs: Sequence[Pair]) -> list[Judgement]:
        start = time.perf_counter()
        scored = self.answer_logprobs(pairs)
        share = (time.perf_counter() - start) / max(1, len(pairs))
        out = []
        for lp_1, lp_2, n_tokens in scored:
            top = max(lp_1, lp_2)
            p_first = math.exp(lp_1 - top) / (math.exp(lp_1 - top) + math.exp(lp_2 - top))
            raw = json.dumps({"logprob_1": lp_1, "logprob_2": lp_2, "answers": self.cfg.answer_tokens})
            out.append(Judgement(preference=2.0 - p_first, raw_completion=raw, time=share, tokens=n_tokens))
        return out


def build(name: str, settings: dict[str, Any]) -> LocalHFAnnotator:
    return LocalHFAnnotator(name, LocalHFConfig(**settings))
