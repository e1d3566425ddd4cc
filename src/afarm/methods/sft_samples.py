"""Samples of the SFT model that several stages start from: ``data/sft_samples/<prompts>.json``.

Four methods begin with samples of the SFT model, drawn with a decoding fixed by params: the preference
pairs (``preference_data``), best-of-n on the evaluation set, expert iteration's best-of-n on the unlabeled
split, and method health's held-out pairs and baseline samples on the validation split. None of them
depends on the world (sim or human): the model, prompts, decoding and per-sample seeds
(``afarm.models.generate.sample_seed``) are the same. So the `sft_samples` stage draws each set once and
both worlds' stages read it; the bytes are those each stage drew itself before, in half the time.

A *recipe* (one per params section that decides a set) gives the decoding, the number of samples per
prompt and how many prompts (a prefix of the file):

    preference_data    preference_data.generation, 2 samples (one pair), the first preference_data.limit
    best_of_n          best_of_n.generation, best_of_n.n samples, the evaluation set (no input field)
    expert_iteration   expert_iteration.best_of_n.generation and .n, the first expert_iteration.limit
    method_health      preference_data.generation (the training pairs' decoding), method_health's count

The file: a JSON list, one record per prompt, ``{instruction, input, samples: [n strings], finished: [n
booleans: EOS within the generation cap]}``. ``read_samples`` checks a consumer's expectations (the count
per prompt; the instructions, when it has its own copy of the rows) with errors naming file, row and field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from afarm.config import stage_config
from afarm.data.labelling import PreferenceDataConfig
from afarm.io import InputError, read_records
from afarm.methods.best_of_n import BestOfNConfig
from afarm.methods.expert_iteration import ExpertIterationStageConfig
from afarm.methods.health import MethodHealthConfig
from afarm.models.generate import GenerationConfig

RECIPES = ("preference_data", "best_of_n", "expert_iteration", "method_health")


@dataclass(frozen=True)
class Recipe:
    generation: GenerationConfig  # num_samples already set to the count per prompt
    limit: int | None  # the first `limit` prompts; None: all
    has_input: bool  # the prompt file's records have an `input` field (the splits; not the evaluation set)


def recipe(params: dict, name: str) -> Recipe:
    """The recipe of params section ``name`` (one of ``RECIPES``)."""
    if name == "preference_data":
        cfg = stage_config(params, "preference_data", PreferenceDataConfig)
        return Recipe(_with_n(cfg.generation, 2), cfg.limit, True)
    if name == "best_of_n":
        cfg = stage_config(params, "best_of_n", BestOfNConfig)
        return Recipe(_with_n(cfg.generation, cfg.n), None, False)
    if name == "expert_iteration":
        cfg = stage_config(params, "expert_iteration", ExpertIterationStageConfig)
        return Recipe(_with_n(cfg.best_of_n.generation, cfg.best_of_n.n), cfg.limit, True)
    if name == "method_health":
        pdata = stage_config(params, "preference_data", PreferenceDataConfig)
        health = stage_config(params, "method_health", MethodHealthConfig)
        return Recipe(_with_n(pdata.generation, health.sft_samples), None, True)
    raise ValueError(f"unknown sft_samples recipe {name!r}; expected one of {RECIPES}")


def _with_n(generation: GenerationConfig, n: int) -> GenerationConfig:
    return GenerationConfig(**{**vars(generation), "num_samples": n})


def sample_records(rows: list[dict], samples: list[list[str]], finished: list[list[bool]]) -> list[dict]:
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "samples": s, "finished": f}
            for r, s, f in zip(rows, samples, finished)]


def read_samples(path: str | os.PathLike, n: int, rows: list[dict] | None = None, what: str = "n") -> list[dict]:
    """The records of a samples file, each with exactly ``n`` samples (``what`` names the params key that
    asks for them); with ``rows``, the same instructions (and inputs, where the rows have them) in order."""
    records = read_records(path, required=("instruction", "input", "samples", "finished"), nonempty=("instruction",),
                           types={"instruction": str, "input": str, "samples": list, "finished": list})
    for i, r in enumerate(records):
        if len(r["samples"]) != n or not all(isinstance(s, str) for s in r["samples"]):
            raise InputError(path, f"expected {n} strings ({what}), got {len(r['samples'])} items; rerun its sft_samples stage",
                             row=i, field="samples")
        if len(r["finished"]) != n or not all(isinstance(f, bool) for f in r["finished"]):
            raise InputError(path, f"expected {n} booleans, one per sample", row=i, field="finished")
    if rows is not None:
        if len(rows) != len(records):
            raise InputError(path, f"{len(records)} records for {len(rows)} prompts; rerun its sft_samples stage")
        for i, (r, row) in enumerate(zip(records, rows)):
            if r["instruction"] != row["instruction"] or r["input"] != row.get("input", ""):
                raise InputError(path, "not the instruction of the same row of the prompts; rerun its sft_samples stage",
                                 row=i, field="instruction")
    return records
