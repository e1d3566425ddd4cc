"""Binary reward conditioning: data construction, control tokens, the generation prefix, the stages."""

from __future__ import annotations

import json

import pytest
import torch

from afarm.methods.reward_conditioning import RewardConditioningConfig, add_control_tokens, conditioned_examples
from afarm.models.card import ModelCard
from afarm.models.generate import GenerationConfig, generate
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import chat_prompt, format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import TrainConfig

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
THINGS = ["cats", "dogs", "rain", "bread", "music", "trees", "boats", "tea"]


def prefs() -> list[dict]:
    """The preferred answer is always "Yes, gladly." and the other one "No."; sides alternate."""
    out = []
    for i, thing in enumerate(THINGS):
        good_first = i % 2 == 0
        out.append({"instruction": f"Can you talk about {thing}?", "input": "", "output_1": "Yes, gladly." if good_first else "No.",
                    "output_2": "No." if good_first else "Yes, gladly.", "preference": 1 if good_first else 2, "annotator": "t"})
    return out


@pytest.fixture()
def tok():
    return train_tokenizer([format_prompt(r["instruction"]) + " Yes, gladly. No." for r in prefs()] * 3, vocab_size=300)


def test_conditioned_examples_double_the_pairs():
    cfg = RewardConditioningConfig(positive_token="<+>", negative_token="<->")
    recs = prefs()[:2] + [{**prefs()[2], "preference": 1.5}]
    examples, ties = conditioned_examples(recs, cfg)
    assert ties == 1 and len(examples) == 4  # two examples per non-tied pair
    p0, p1 = format_prompt(recs[0]["instruction"]), format_prompt(recs[1]["instruction"])
    assert examples == [("<+>" + p0, "Yes, gladly."), ("<->" + p0, "No."), ("<+>" + p1, "Yes, gladly."), ("<->" + p1, "No.")]


def test_control_tokens_are_single_ids_after_bos_and_seeded(tok):
    cfg = RewardConditioningConfig()
    models = []
    for _ in range(2):
        t = train_tokenizer([format_prompt(r["instruction"]) + " Yes, gladly. No." for r in prefs()] * 3, vocab_size=300)
        model = build_model(TINY, t)
        old = model.get_input_embeddings().weight.detach().clone()
        add_control_tokens(model, t, cfg)
        models.append(model)
        good, bad = t.convert_tokens_to_ids([cfg.positive_token, cfg.negative_token])
        assert (good, bad) == (old.size(0), old.size(0) + 1)
        ids = t(cfg.positive_token + format_prompt("Hi"))["input_ids"]
        assert ids[:2] == [t.bos_token_id, good] and ids[2:] == t(format_prompt("Hi"))["input_ids"][1:]
        new = model.get_input_embeddings().weight
        assert new.size(0) == old.size(0) + 2 and torch.equal(new[: old.size(0)], old)  # old rows untouched
        assert t.decode(ids, skip_special_tokens=True) == format_prompt("Hi")  # never shows up in decoded text
    assert torch.equal(models[0].get_input_embeddings().weight, models[1].get_input_embeddings().weight)


def test_control_token_lives_in_the_chat_template(tok, tmp_path):
    save_model(build_model(TINY, tok), tok, tmp_path / "plain")
    assert chat_prompt(load_model(tmp_path / "plain")[1], "Hi") == format_prompt("Hi")  # no control token
    save_model(build_model(TINY, tok), tok, tmp_path / "good", ModelCard(method="t", prompt_prefix="<|good|>"))
    assert chat_prompt(load_model(tmp_path / "good")[1], "Hi", "x") == "<|good|>" + format_prompt("Hi", "x")


def test_stage_then_generate_uses_the_positive_token(tok, tmp_path):
    from afarm.stages import generate as generate_stage
    from afarm.stages.reward_conditioning import arguments, main

    save_model(build_model(TINY, tok), tok, tmp_path / "sft")
    (tmp_path / "prefs.json").write_text(json.dumps(prefs()))
    (tmp_path / "validation.json").write_text(json.dumps([{"id": "v", "instruction": "Can you talk about snow?", "input": "", "output": "Yes, gladly."}]))
    params = {"scale": "tiny", "_path": "params.yaml",
              "reward_conditioning": {"train": {"learning_rate": 1e-2, "num_epochs": 100, "batch_size": 8, "warmup_ratio": 0.0,
                                                "micro_batch_size": 8, "max_length": 128, "seed": 0,
                                                "num_threads": 1, "show_progress": False}},
              "generate": {"max_new_tokens": 12, "do_sample": False, "batch_size": 8, "num_threads": 1, "show_progress": False}}
    out = tmp_path / "reward_conditioning_sim"
    main(arguments().parse_args(["--sft", str(tmp_path / "sft"), "--preferences", str(tmp_path / "prefs.json"),
                                 "--validation", str(tmp_path / "validation.json"), "--out", str(out),
                                 "--metrics", str(tmp_path / "m.json")]), params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_examples"] == 16 and metrics["num_steps"] == 200 and metrics["prompt_prefix"] == "<|good|>"
    assert chat_prompt(load_model(out)[1], "Hi") == "<|good|>" + format_prompt("Hi")

    eval_set = [{"instruction": f"Can you talk about {t}?", "output": "ref", "generator": "ref", "dataset": "d"} for t in THINGS[:4]]
    (tmp_path / "eval.json").write_text(json.dumps(eval_set))
    generate_stage.main(generate_stage.arguments().parse_args(
        ["--model", str(out), "--eval_set", str(tmp_path / "eval.json"), "--out", str(tmp_path / "outputs.json"),
         "--generator", "reward_conditioning_sim"]), params)
    outputs = [r["output"] for r in json.loads((tmp_path / "outputs.json").read_text())]
    assert outputs == ["Yes, gladly."] * 4  # conditioned on the positive token: the preferred style
    # The same model conditioned on the negative token answers in the dispreferred style.
    model, t = load_model(out)
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, num_threads=1, show_progress=False)
    assert generate(model, t, ["<|bad|>" + format_prompt(r["instruction"]) for r in eval_set], cfg) == ["No."] * 4
