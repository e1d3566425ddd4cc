"""Binary FeedME: the preferred output of each pair is the SFT target; the stage end to end."""

from __future__ import annotations

import json

import torch

from afarm.methods.feedme import FeedMEConfig, feedme_examples, train_feedme
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import TrainConfig, evaluate_loss

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)

PREFS = [
    {"instruction": "Name a fruit.", "input": "", "output_1": "An apple.", "output_2": "A chair.", "preference": 1, "annotator": "a"},
    {"instruction": "Name a color.", "input": "", "output_1": "A spoon.", "output_2": "Blue.", "preference": 2, "annotator": "a"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output_1": "Five.", "output_2": "Six.", "preference": 1.0, "annotator": "b"},
    {"instruction": "Name a tree.", "input": "", "output_1": "Oak.", "output_2": "Pine.", "preference": 1.5, "annotator": "b"},
    {"instruction": "Name a planet.", "input": "", "output_1": "A shoe.", "output_2": "Mars.", "preference": 1.8, "annotator": "c"},
]


def test_feedme_keeps_the_preferred_output_with_its_prompt():
    examples, ties = feedme_examples(PREFS)
    assert ties == 1  # the exact tie has no preferred output
    assert examples == [
        (format_prompt("Name a fruit."), "An apple."),
        (format_prompt("Name a color."), "Blue."),
        (format_prompt("Add the numbers.", "2 and 3"), "Five."),  # the input goes into the prompt
        (format_prompt("Name a planet."), "Mars."),  # a soft label counts for its side
    ]


def _cfg() -> FeedMEConfig:
    return FeedMEConfig(train=TrainConfig(learning_rate=1e-2, num_epochs=60, batch_size=4, micro_batch_size=4,
                                          warmup_ratio=0.0, max_length=256, seed=0, num_threads=1, show_progress=False))


def test_feedme_training_prefers_the_chosen_outputs():
    tok = train_tokenizer([format_prompt(r["instruction"]) + r["output_1"] + r["output_2"] for r in PREFS] * 4, vocab_size=300)
    model = build_model(TINY, tok)
    chosen = [(format_prompt(r["instruction"], r["input"]), c) for r, c in zip(PREFS, ["An apple.", "Blue.", "Five.", None, "Mars."]) if c]
    rejected = [(p, r) for (p, _), r in zip(chosen, ["A chair.", "A spoon.", "Six.", "A shoe."])]
    stats = train_feedme(model, tok, PREFS, _cfg())
    assert stats["num_examples"] == 4 and stats["dropped_ties"] == 1 and stats["num_steps"] == 60
    tc = _cfg().train
    assert evaluate_loss(model, tok, chosen, tc, True)["loss"] < 0.5 * evaluate_loss(model, tok, rejected, tc, True)["loss"]


def test_feedme_stage_end_to_end(tmp_path):
    from afarm.stages.feedme import arguments, main

    tok = train_tokenizer([format_prompt(r["instruction"]) + r["output_1"] + r["output_2"] for r in PREFS] * 4, vocab_size=300)
    save_model(build_model(TINY, tok), tok, tmp_path / "sft")
    (tmp_path / "prefs.json").write_text(json.dumps(PREFS))
    (tmp_path / "validation.json").write_text(json.dumps([{"id": "v0", "instruction": "Name a fruit.", "input": "", "output": "A pear."}]))
    params = {"scale": "tiny", "_path": "params.yaml", "generate": {"max_new_tokens": 8, "do_sample": False}, "feedme": {"train": {
        "learning_rate": 1e-2, "num_epochs": 2, "batch_size": {"tiny": 2, "paper": 128}, "micro_batch_size": {"tiny": 2, "paper": 1},
        "max_length": 256, "seed": 0, "num_threads": 1, "show_progress": False}}}
    args = arguments().parse_args(["--sft", str(tmp_path / "sft"), "--preferences", str(tmp_path / "prefs.json"),
                                   "--validation", str(tmp_path / "validation.json"),
                                   "--out", str(tmp_path / "feedme_sim"), "--metrics", str(tmp_path / "m.json")])
    main(args, params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_examples"] == 4 and metrics["num_steps"] == 4 and metrics["dropped_ties"] == 1
    trained, _ = load_model(tmp_path / "feedme_sim")
    start, _ = load_model(tmp_path / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters()))
