"""Pairwise preference data: ``data/preferences/<set>.json``.

A JSON list of records ``{instruction, input, output_1, output_2, preference, annotator}``
(plus optional extras such as ``preference_raw``). ``preference`` follows AlpacaFarm /
AlpacaEval: 1 means ``output_1`` is better, 2 means ``output_2`` is better. AlpacaFarm's
training labels are binary (upstream hub dataset ``tatsu-lab/alpaca_farm``, configs
``alpaca_noisy_multi_preference`` / ``alpaca_human_preference``: ``preference`` is 1 or 2),
so a soft judge's answer is rounded by ``binarize``; an exact tie is broken by a seeded coin.

``load_hub`` reads upstream's real human preferences (paper scale, the ``human`` world) through
the ``datasets`` loader and returns them in this format with ``annotator`` "human".
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from afarm.io import InputError, read_records, validate_records, write_json

FIELDS = ("instruction", "input", "output_1", "output_2", "preference", "annotator")
_TYPES = {
    "instruction": str,
    "input": str,
    "output_1": str,
    "output_2": str,
    "preference": (int, float),
    "annotator": str,
}


def _check(records: list[dict], path: str | os.PathLike) -> list[dict]:
    validate_records(records, path, required=FIELDS, nonempty=("instruction",), types=_TYPES)
    for i, rec in enumerate(records):
        value = rec["preference"]
        if isinstance(value, bool) or not math.isfinite(value) or not 1.0 <= value <= 2.0:
            raise InputError(path, f"preference must be a number in [1, 2], got {value!r}", row=i, field="preference")
    return records


def read_preferences(path: str | os.PathLike) -> list[dict]:
    """Read and validate a preference file; a bad record raises ``InputError`` naming file, row and field."""
    return _check(read_records(path), path)


def write(path: str | os.PathLike, records: list[dict]) -> None:
    """Validate ``records`` (same rules as the reader) and write them atomically."""
    write_json(path, _check(list(records), Path(path)))


def tie_coin(seed: int, instruction: str, input: str, output_1: str, output_2: str) -> int:  # noqa: A002
    """A seeded fair coin (1 or 2) that depends only on the seed and the pair's content."""
    text = "\x00".join([str(seed), instruction, input, output_1, output_2])
    return 1 + (hashlib.sha256(text.encode("utf-8")).digest()[0] & 1)


def binary_label(preference: float, coin: int) -> int:
    """Round a soft preference to 1 or 2; an exact tie (1.5) takes ``coin``."""
    if preference < 1.5:
        return 1
    if preference > 1.5:
        return 2
    return coin


def binarize(records: Sequence[dict], seed: int) -> list[dict]:
    """Copies of ``records`` with a binary ``preference`` and the judge's value kept in ``preference_raw``."""
    out = []
    for rec in records:
        coin = tie_coin(seed, rec["instruction"], rec.get("input", ""), rec["output_1"], rec["output_2"])
        out.append({**rec, "preference": binary_label(rec["preference"], coin), "preference_raw": rec["preference"]})
    return out


def chosen_rejected(record: dict) -> tuple[str, str] | None:
    """(chosen, rejected) outputs of a record, or None for a tie (preference exactly 1.5)."""
    if record["preference"] == 1.5:
        return None
    if record["preference"] > 1.5:
        return record["output_2"], record["output_1"]
    return record["output_1"], record["output_2"]


# ---------------------------------------------------------------- upstream human preferences


@dataclass
class HubPreferenceConfig:
    # Upstream hub dataset (tatsu-lab/alpaca_farm README: "The data needed to run our code is hosted on HuggingFace").
    hub_id: str = "tatsu-lab/alpaca_farm"
    # The 10k real human pairs: upstream examples/scripts/reward_modeling.sh takes "alpaca_human_preference"
    # as <preference_dataset_name> for the human reward model (README, "Reward modeling").
    config_name: str = "alpaca_human_preference"
    # Upstream src/alpaca_farm/data_utils.py make_binary_reward_modeling_data_module reads split "preference".
    split: str = "preference"
    revision: str | None = None  # None = the hub's default branch; pin a commit for exact bytes
    limit: int | None = None  # first N pairs only (quick runs); None = all
    cache_dir: str | None = None  # datasets' cache folder; None = its default (~/.cache/huggingface/datasets)


_HUB_TEXT = ("instruction", "output_1", "output_2")
_SCALAR = (str, int, float, bool, type(None))


def _hub_record(row: dict[str, Any], i: int, source: str) -> dict:
    """One upstream row -> our record; a bad field raises ``InputError`` naming source, row and field."""
    for key in _HUB_TEXT:
        if key not in row:
            raise InputError(source, "missing field", row=i, field=key)
        if not isinstance(row[key], str):
            raise InputError(source, f"expected text, got {type(row[key]).__name__}", row=i, field=key)
    if not row["instruction"].strip():
        raise InputError(source, "empty value", row=i, field="instruction")
    extra_input = row.get("input")
    if extra_input is not None and not isinstance(extra_input, str):
        raise InputError(source, f"expected text, got {type(extra_input).__name__}", row=i, field="input")
    if "preference" not in row:
        raise InputError(source, "missing field", row=i, field="preference")
    value = row["preference"]
    # Upstream labels are binary: 1 = output_1 preferred, 2 = output_2 preferred.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (1, 2):
        raise InputError(source, f"preference must be 1 or 2, got {value!r}", row=i, field="preference")
    record = {
        "instruction": row["instruction"],
        "input": extra_input or "",
        "output_1": row["output_1"],
        "output_2": row["output_2"],
        "preference": int(value),
        "annotator": "human",
    }
    for key, val in row.items():  # keep upstream's other fields (e.g. raw_preference)
        if key in record or key == "input" or not isinstance(val, _SCALAR):
            continue
        if isinstance(val, float) and not math.isfinite(val):
            raise InputError(source, "value is not finite", row=i, field=key)
        record[key] = val
    if "annotator" in row and row["annotator"] != "human":
        record["upstream_annotator"] = row["annotator"]
    return record


def load_hub(cfg: HubPreferenceConfig) -> list[dict]:
    """Upstream's human preference pairs through the real ``datasets`` loader (a hub id, or a local
    folder in the same layout), as records of ``FIELDS`` with ``annotator`` "human"."""
    import datasets

    source = f"{cfg.hub_id} (config {cfg.config_name}, split {cfg.split})"
    try:
        ds = datasets.load_dataset(cfg.hub_id, cfg.config_name, split=cfg.split, revision=cfg.revision, cache_dir=cfg.cache_dir)
    except Exception as err:  # unreachable hub, unknown config or split, unreadable files
        raise InputError(source, f"cannot load: {type(err).__name__}: {err}") from err
    records = []
    for i, row in enumerate(ds):
        if cfg.limit is not None and i >= cfg.limit:
            break
        records.append(_hub_record(row, i, source))
    if not records:
        raise InputError(source, "no preference pairs")
    return _check(records, source)
