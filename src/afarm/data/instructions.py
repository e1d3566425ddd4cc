"""Training instructions and the AlpacaFarm splits.

AlpacaFarm splits Alpaca's 52k instructions into sft (10k), preference (20k),
unlabeled (20k) and validation (2k) (paper, Sec. 4; upstream hub dataset
``tatsu-lab/alpaca_farm``, config ``alpaca_instructions``). The paper scale
loads those splits from the hub with ``datasets``; the tiny scale draws splits
of the same proportions from the real instruction file shipped in ``data/raw``.
"""

from __future__ import annotations

import contextlib
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from afarm.io import InputError, check_unique, read_records

SPLITS = ("sft", "preference", "unlabeled", "validation")
RECORD_FIELDS = ("id", "instruction", "input", "output")


@dataclass
class SplitConfig:
    source: str = "local"  # "local": data/raw file (tiny); "hub": upstream splits via `datasets` (paper)
    # Split sizes; paper: 10k / 20k / 20k / 2k (AlpacaFarm paper, Sec. 4 and hub dataset card).
    sizes: dict[str, int] = field(default_factory=lambda: {"sft": 10_000, "preference": 20_000, "unlabeled": 20_000, "validation": 2_000})
    seed: int = 0
    hub_id: str = "tatsu-lab/alpaca_farm"  # upstream hub dataset
    hub_config: str = "alpaca_instructions"
    hub_revision: str | None = None
    # our split name -> the hub's split name (upstream calls the validation split "val")
    hub_splits: dict[str, str] = field(default_factory=lambda: {"sft": "sft", "preference": "preference", "unlabeled": "unlabeled", "validation": "val"})
    eval_limit: int | None = None  # evaluate on the first N eval instructions only (quick runs); None = all 805


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used to keep training disjoint from evaluation."""
    return re.sub(r"\s+", " ", text).strip().lower()


def read_instructions(path: str | Path) -> list[dict]:
    records = read_records(path, required=RECORD_FIELDS, nonempty=("id", "instruction", "output"), types={f: str for f in RECORD_FIELDS})
    check_unique(records, "id", path)
    return records


def drop_eval_overlap(records: list[dict], eval_instructions: list[str]) -> list[dict]:
    banned = {normalize(t) for t in eval_instructions}
    return [r for r in records if normalize(r["instruction"]) not in banned]


def split_local(records: list[dict], cfg: SplitConfig, path: str | Path = "instructions") -> dict[str, list[dict]]:
    """Seeded shuffle, then consecutive blocks of the configured sizes (disjoint by construction)."""
    need = sum(cfg.sizes[s] for s in SPLITS)
    if need > len(records):
        raise InputError(path, f"splits need {need} instructions but only {len(records)} are available")
    order = sorted(records, key=lambda r: r["id"])
    random.Random(cfg.seed).shuffle(order)
    out, start = {}, 0
    for name in SPLITS:
        out[name] = order[start : start + cfg.sizes[name]]
        start += cfg.sizes[name]
    return out


def load_hub_splits(cfg: SplitConfig) -> dict[str, list[dict]]:
    """Upstream's splits through the real ``datasets`` loader (a hub id, or a local folder in the same layout)."""
    import datasets

    # A local copy in the hub layout is read through a cache of its own: `datasets`' shared cache may
    # otherwise return the rows of another folder with the same name and file layout (seen with two
    # local copies of alpaca_farm).
    local = Path(cfg.hub_id).is_dir()
    cache = tempfile.TemporaryDirectory(prefix="afarm-datasets-") if local else contextlib.nullcontext(None)
    with cache as cache_dir:
        return _read_hub_splits(cfg, datasets, cache_dir)


def _read_hub_splits(cfg: SplitConfig, datasets, cache_dir: str | None) -> dict[str, list[dict]]:
    out = {}
    for name in SPLITS:
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.hub_splits[name], revision=cfg.hub_revision,
                                   cache_dir=cache_dir)
        rows = []
        for i, row in enumerate(ds):
            rows.append(
                {
                    "id": f"{cfg.hub_config}-{name}-{i:06d}",
                    "instruction": row["instruction"],
                    "input": row.get("input") or "",
                    "output": row.get("output") or "",
                    "source": cfg.hub_id,
                }
            )
        limit = cfg.sizes.get(name)
        out[name] = rows[:limit] if limit else rows
    return out


def read_examples(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a split file, in the AlpacaFarm prompt format."""
    from afarm.models.prompts import format_prompt

    rows = read_records(path, required=("instruction", "output"), nonempty=("instruction",))
    return [(format_prompt(r["instruction"], r.get("input", "")), r["output"]) for r in rows]
