"""Preference data: binary labels by hand, and the stage end to end on a toy SFT model."""

from __future__ import annotations

import json

import pytest

from afarm.annotators.heuristic import HeuristicAnnotator
from afarm.data.preferences import binarize, binary_label, chosen_rejected, read_preferences, tie_coin
from afarm.io import InputError
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.stages import preference_data as stage
from afarm.stages import sft_samples as samples_stage

TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
ROWS = [
    {"id": str(i), "instruction": ins, "input": inp, "output": "x"}
    for i, (ins, inp) in enumerate([("Name a fruit.", ""), ("Translate to French.", "cat"), ("Say hello.", ""),
                                     ("Count to three.", ""), ("Summarize the text.", "A long story about a dog."),
                                     ("Give a color.", ""), ("What is water?", ""), ("Sort these.", "3 1 2")])
]
# the simulated-set recipe at toy scale: a pool of one heuristic judge with AlpacaFarm's label noise
NOISY = "backend: pool\nsettings:\n  members: [heuristic]\n  p_label_flip: 0.25\n  seed: 0\n  batch_size: 20\n"


def test_binary_labels_by_hand():
    assert [binary_label(p, coin=2) for p in (1.0, 1.2, 1.4999, 1.5, 1.5001, 2.0)] == [1, 1, 1, 2, 2, 2]
    assert binary_label(1.5, coin=1) == 1
    coins = {tie_coin(0, f"instruction {i}", "", "a", "b") for i in range(40)}
    assert coins == {1, 2}  # a fair coin: both sides come up
    assert tie_coin(0, "q", "", "a", "b") == tie_coin(0, "q", "", "a", "b")
    recs = [{"instruction": f"q{i}", "input": "", "output_1": "a", "output_2": "b", "preference": p, "annotator": "j"}
            for i, p in enumerate([1.3, 1.5, 1.9])]
    out = binarize(recs, seed=0)
    assert [r["preference"] for r in out] == [1, tie_coin(0, "q1", "", "a", "b"), 2]
    assert [r["preference_raw"] for r in out] == [1.3, 1.5, 1.9] and recs[0]["preference"] == 1.3  # inputs untouched
    assert chosen_rejected(out[0]) == ("a", "b") and chosen_rejected(out[2]) == ("b", "a")
    assert chosen_rejected(recs[1]) is None


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    texts = [format_prompt(r["instruction"], r["input"]) + " apple banana one two three red water" for r in ROWS] * 3
    tok = train_tokenizer(texts, vocab_size=320)
    folder = tmp_path_factory.mktemp("toy") / "sft"
    save_model(build_model(TOY, tok), tok, folder)
    return folder


def _params(tmp_path, annotators: dict) -> dict:
    (tmp_path / "configs" / "noisy_heuristic").mkdir(parents=True, exist_ok=True)
    (tmp_path / "configs" / "noisy_heuristic" / "config.yaml").write_text(NOISY)
    generation = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "batch_size": 8, "num_threads": 1, "show_progress": False}
    return {
        "scale": "tiny", "_path": "params.yaml",
        "paths": {"shared_data": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
        "preference_data": {"annotators": annotators, "source": {k: "annotator" for k in annotators}, "generation": generation, "seed": 0,
                            "config_dirs": [str(tmp_path / "configs")]},
    }


def _args(sft, tmp_path, params, preference_set="sim"):
    """The stage's flags, after the `sft_samples` stage sampled the pairs (recipe preference_data)."""
    (tmp_path / "preference.json").write_text(json.dumps(ROWS))
    samples_stage.main(samples_stage.arguments().parse_args([
        "--sft", str(sft), "--prompts", str(tmp_path / "preference.json"), "--out", str(tmp_path / "pairs.json"),
        "--recipe", "preference_data"]), params)
    return stage.arguments().parse_args([
        "--samples", str(tmp_path / "pairs.json"), "--out", str(tmp_path / "prefs" / f"{preference_set}.json"),
        "--metrics", str(tmp_path / "m.json"), "--preference_set", preference_set])


def test_preference_data_stage_end_to_end(sft_folder, tmp_path, monkeypatch):
    params = _params(tmp_path, {"sim": "noisy_heuristic", "human": "heuristic"})
    args = _args(sft_folder, tmp_path, params)
    stage.main(args, params)
    records = read_preferences(tmp_path / "prefs" / "sim.json")
    assert [(r["instruction"], r["input"]) for r in records] == [(r["instruction"], r["input"]) for r in ROWS]
    assert all(r["preference"] in (1, 2) and 1 <= r["preference_raw"] <= 2 for r in records)
    assert {r["annotator"] for r in records} == {"noisy_heuristic"}
    assert any(r["output_1"] != r["output_2"] for r in records)
    # noise: a pair either keeps the judge's soft value or gets a hard random label, flipped with p = 0.25
    soft = [r for r in records if r["preference_raw"] not in (1.0, 1.5, 2.0)]
    assert soft and all(r["preference"] == (2 if r["preference_raw"] > 1.5 else 1) for r in soft)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_pairs"] == len(ROWS) and metrics["annotator"] == "noisy_heuristic" and metrics["preference_set"] == "sim"
    first = (tmp_path / "prefs" / "sim.json").read_bytes()

    # a second run takes every judgement from the cache: the judge is never called, same bytes
    def no_call(self, pairs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(HeuristicAnnotator, "judge", no_call)
    stage.main(args, params)
    assert (tmp_path / "prefs" / "sim.json").read_bytes() == first
    assert json.loads((tmp_path / "m.json").read_text()) == metrics


def test_preference_set_picks_its_annotator_and_unknown_sets_fail(sft_folder, tmp_path):
    params = _params(tmp_path, {"sim": "noisy_heuristic", "human": "heuristic"})
    params["preference_data"]["limit"] = 3
    stage.main(_args(sft_folder, tmp_path, params, "human"), params)
    records = read_preferences(tmp_path / "prefs" / "human.json")
    assert len(records) == 3 and {r["annotator"] for r in records} == {"heuristic"}
    # the plain heuristic judge is soft: labels are its rounded value
    assert all(r["preference"] == (2 if r["preference_raw"] > 1.5 else 1) for r in records if r["preference_raw"] != 1.5)
    with pytest.raises(InputError, match="preference_data.annotators.other"):
        stage.main(_args(sft_folder, tmp_path, params, "other"), params)
