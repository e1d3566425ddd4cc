"""How a world's preference pairs are labelled: params section ``preference_data``.

``PreferenceDataConfig`` is read by the stages that make or judge pairs of SFT samples (``preference_data``,
``sft_samples``, ``method_health``); ``judge_instruction`` is what the judge sees of an instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afarm.data import preferences
from afarm.models.generate import GenerationConfig


def _sampling() -> GenerationConfig:
    # AlpacaFarm samples each pair from the SFT model at temperature 1.0 (paper Sec. 4 / App.);
    # top_p 0.9 and 300 new tokens are upstream's decoding defaults (GenerationConfig comments).
    return GenerationConfig(temperature=1.0, do_sample=True, num_samples=2)


@dataclass
class PreferenceDataConfig:
    # preference set -> annotator config name. paper: sim = alpaca_farm_pool (the noisy simulated
    # pool, p_label_flip 0.25); human = the human set of the sim-vs-human stage.
    annotators: dict[str, str | None] = field(default_factory=lambda: {"sim": "alpaca_farm_pool", "human": None})
    # preference set -> where its labels come from: "annotator" (sample pairs from the SFT model, judge
    # them) or "hub" (load labelled pairs: the paper's 10k human pairs, upstream alpaca_human_preference)
    source: dict[str, str] = field(default_factory=lambda: {"sim": "annotator", "human": "hub"})
    hub: preferences.HubPreferenceConfig = field(default_factory=preferences.HubPreferenceConfig)  # source "hub"
    # the pairs' decoding: the `sft_samples` stage draws 2 samples per instruction with it (num_samples is set to 2)
    generation: GenerationConfig = field(default_factory=_sampling)
    seed: int = 0  # order-randomization coin of the judge and the tie-breaking coin (our choice)
    limit: int | None = None  # first N instructions only (quick runs); None = the whole split (paper: 20k)
    config_dirs: list[str] = field(default_factory=list)  # extra folders of annotator configs


def judge_instruction(instruction: str, input: str) -> str:  # noqa: A002 - the data's field name
    """What the judge sees as the instruction: the input appended, as AlpacaEval merges them."""
    return f"{instruction}\n\n{input}" if input else instruction
