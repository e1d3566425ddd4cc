"""Self-describing model folders: a folder a stage saved regenerates that stage's evaluated outputs
byte for byte with plain transformers calls and the folder's own files (chat template with the
control token, left padding, generation_config.json), and its model card hashes its inputs."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.card import ModelCard
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.prompts import chat_template, format_prompt
from afarm.models.tokenizer import train_tokenizer
from test_reward_conditioning import prefs  # the toy preferences: "Yes, gladly." always preferred

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
# Greedy, as the tiny scale evaluates; eval prompts of several lengths, so the batch is left-padded.
GENERATE = {"max_new_tokens": 12, "do_sample": False, "temperature": 0.7, "top_p": 0.9, "batch_size": 8,
            "num_threads": 1, "show_progress": False}
EVAL_SET = [{"instruction": q, "output": "ref", "generator": "text_davinci_003", "dataset": "toy"}
            for q in ("Can you talk about cats?", "Tell me, in a few words, about the rain and the music?", "Tea?",
                      "Can you talk about boats and trees and bread, please?")]


def tokenizer():
    return train_tokenizer([format_prompt(r["instruction"]) + " Yes, gladly. No." for r in prefs()] * 3, vocab_size=300)


def plain_transformers(folder, instructions: list[str]) -> list[str]:
    """Generate as anyone could from the folder alone: no afarm code."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    config = GenerationConfig.from_pretrained(folder)
    texts = [tok.apply_chat_template([{"role": "user", "content": q, "input": ""}], tokenize=False) for q in instructions]
    batch = tok(texts, return_tensors="pt", padding=True)  # the folder's tokenizer pads on the left
    with torch.no_grad():
        out = model.generate(**batch, generation_config=config)
    width = batch["input_ids"].shape[1]
    return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def test_chat_template_renders_the_alpaca_prompt_with_any_prefix():
    tok = tokenizer()
    cases = [("Hi {{ there }} {% raw %}", ""), ("a", "b\n"), ("x", None), ("x", "  "), ("\u00fc 'q' \"d\" \\n", "\U0001f600")]
    for prefix in ("", "<|good|>", "a \"quoted\" \\ prefix\n\U0001f600"):
        tok.chat_template = chat_template(prefix)
        for instruction, inp in cases:
            text = tok.apply_chat_template([{"role": "user", "content": instruction, "input": inp}], tokenize=False)
            assert text == prefix + format_prompt(instruction, inp)


def test_reward_conditioning_folder_regenerates_generate_outputs(tmp_path):
    from afarm.stages import generate as generate_stage
    from afarm.stages.reward_conditioning import arguments, main

    tok = tokenizer()
    save_model(build_model(TINY, tok), tok, tmp_path / "sft")
    (tmp_path / "prefs.json").write_text(json.dumps(prefs()))
    (tmp_path / "validation.json").write_text(json.dumps([{"instruction": "Can you talk about snow?", "input": "", "output": "Yes."}]))
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_SET))
    train = {"learning_rate": 1e-2, "num_epochs": 60, "batch_size": 8, "warmup_ratio": 0.0, "micro_batch_size": 8,
             "max_length": 128, "seed": 0, "num_threads": 1, "show_progress": False}
    params = {"scale": "tiny", "_path": "params.yaml", "reward_conditioning": {"train": train}, "generate": GENERATE}
    out = tmp_path / "rc"
    main(arguments().parse_args(["--sft", str(tmp_path / "sft"), "--preferences", str(tmp_path / "prefs.json"),
                                 "--validation", str(tmp_path / "validation.json"), "--out", str(out),
                                 "--metrics", str(tmp_path / "metrics.json")]), params)
    generate_stage.main(generate_stage.arguments().parse_args(
        ["--model", str(out), "--eval_set", str(tmp_path / "eval.json"), "--out", str(tmp_path / "outputs.json"),
         "--generator", "reward_conditioning_sim"]), params)
    stage_outputs = [r["output"] for r in json.loads((tmp_path / "outputs.json").read_text())]

    assert plain_transformers(out, [r["instruction"] for r in EVAL_SET]) == stage_outputs
    assert "Yes, gladly." in stage_outputs  # the positive token is honoured (the chosen style shows up)

    config = json.loads((out / "generation_config.json").read_text())
    assert config["max_new_tokens"] == 12 and config["do_sample"] is False and "temperature" not in config
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    card = (out / "README.md").read_text()
    assert "`reward_conditioning`" in card and f"base model: `{tmp_path / 'sft'}`" in card and "`<|good|>`" in card
    assert hashlib.sha256((tmp_path / "prefs.json").read_bytes()).hexdigest() in card
    assert "| `reward_conditioning` |" in card and "| `generate` |" in card


def test_quark_folder_regenerates_its_own_outputs_and_the_generate_stage_agrees(tmp_path):
    from afarm.stages import generate as generate_stage
    from afarm.stages import quark as stage

    tok = tokenizer()
    sft = build_model(TINY, tok)
    save_model(sft, tok, tmp_path / "sft")
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, tmp_path / "rm")
    (tmp_path / "unlabeled.json").write_text(json.dumps([{"instruction": f"Tell me about item {i}.", "input": "", "output": "x"} for i in range(16)]))
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_SET))
    quark = {"max_steps": 2, "rollout_batch_size": 16, "rollout_micro_batch_size": 16, "step_batch_size": 8, "step_micro_batch_size": 4,
             "response_len": 8, "learning_rate": 1e-2, "warmup_steps": 0, "train_on_best_quantile": False, "seed": 0,
             "num_threads": 1, "show_progress": False}
    params = {"scale": "tiny", "_path": "params.yaml", "quark": quark, "generate": GENERATE}
    stage.main(stage.arguments().parse_args([
        "--sft", str(tmp_path / "sft"), "--reward_model", str(tmp_path / "rm"), "--unlabeled", str(tmp_path / "unlabeled.json"),
        "--eval_set", str(tmp_path / "eval.json"), "--out", str(tmp_path / "quark"), "--outputs", str(tmp_path / "own.json"),
        "--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.png"), "--generator", "quark_sim"]), params)
    own = [r["output"] for r in json.loads((tmp_path / "own.json").read_text())]
    generate_stage.main(generate_stage.arguments().parse_args(
        ["--model", str(tmp_path / "quark"), "--eval_set", str(tmp_path / "eval.json"), "--out", str(tmp_path / "generic.json"),
         "--generator", "quark_sim"]), params)
    assert [r["output"] for r in json.loads((tmp_path / "generic.json").read_text())] == own
    assert plain_transformers(tmp_path / "quark", [r["instruction"] for r in EVAL_SET]) == own
    assert "`<reward_0>`" in (tmp_path / "quark" / "README.md").read_text()


def test_sampling_decoding_and_reward_model_folders(tmp_path):
    from afarm.models.generate import GenerationConfig as Decoding

    tok = tokenizer()
    model = build_model(TINY, tok)
    card = ModelCard(method="ppo", base_model="models/sft", generation=Decoding(max_new_tokens=300, temperature=0.7, top_p=0.9))
    for name in ("policy", "again"):
        save_model(model, tok, tmp_path / name, card)
    for name in ("README.md", "generation_config.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors"):
        assert (tmp_path / "policy" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name  # no timestamps
    config = json.loads((tmp_path / "policy" / "generation_config.json").read_text())
    assert {k: config[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")} == \
        {"max_new_tokens": 300, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}  # nucleus only, no top-k
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    save_reward_model(init_reward_model(model, tok, seed=0), tok, tmp_path / "rm", ModelCard(method="reward_model"))
    assert not (tmp_path / "rm" / "generation_config.json").exists()  # not a generator
    assert "base model: none (trained from scratch)" in (tmp_path / "rm" / "README.md").read_text()


@pytest.mark.parametrize("bad", [[{"role": "user", "content": "x"}] * 2, [{"role": "assistant", "content": "x"}]])
def test_chat_template_takes_one_user_message(bad):
    tok = tokenizer()
    tok.chat_template = chat_template("")
    with pytest.raises(Exception, match="one user message"):
        tok.apply_chat_template(bad, tokenize=False)


def test_generate_names_a_folder_without_a_chat_template(tmp_path):
    from afarm.io import InputError
    from afarm.stages import generate as generate_stage

    tok = tokenizer()
    build_model(TINY, tok).save_pretrained(tmp_path / "raw")  # not written by afarm: no prompt template
    tok.save_pretrained(tmp_path / "raw")
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_SET))
    args = generate_stage.arguments().parse_args(["--model", str(tmp_path / "raw"), "--eval_set", str(tmp_path / "eval.json"),
                                                  "--out", str(tmp_path / "o.json"), "--generator", "raw"])
    with pytest.raises(InputError, match="raw.*no chat template"):
        generate_stage.main(args, {"scale": "tiny", "_path": "params.yaml", "generate": GENERATE})
