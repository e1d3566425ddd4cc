"""Baseline rows: published outputs from the bundle, the reference's own 50% row, SFT 10k vs 52k, API models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.heuristic import HeuristicAnnotator
from afarm.data.eval_set import load_eval_set, read_model_outputs
from afarm.methods.api_model import APIModelConfig, generate_with_api, published_outputs
from afarm.metrics.winrate import win_rate

MODELS = ["gpt4", "gpt-3.5-turbo-0301", "text_davinci_001", "alpaca-farm-ppo-human", "alpaca-farm-ppo-sim-gpt4-20k"]
PARAMS = {"scale": "tiny", "_path": "params.yaml", "published_outputs": {}, "generate": {"max_new_tokens": 8, "do_sample": False}}  # generate: the decoding a model folder records


def _run_published(shared, tmp_path, model, eval_set_path, generator=None):
    from afarm.stages.published_outputs import arguments, main

    source = shared / "alpaca_eval" / "results" / model / "model_outputs.json"
    out, metrics = tmp_path / f"{model}.json", tmp_path / f"{model}.metrics.json"
    argv = ["--source", str(source), "--eval_set", str(eval_set_path), "--out", str(out), "--metrics", str(metrics)]
    main(arguments().parse_args(argv + (["--generator", generator] if generator else [])), PARAMS)
    return json.loads(out.read_text()), json.loads(metrics.read_text()), json.loads(source.read_text())


@pytest.mark.parametrize("model", MODELS)
def test_published_outputs_follow_the_eval_set(shared, tmp_path, model):
    eval_path = shared / "alpaca_eval" / "results" / "text_davinci_003" / "model_outputs.json"
    eval_set = load_eval_set(eval_path)
    records, metrics, source = _run_published(shared, tmp_path, model, eval_path)
    assert [r["instruction"] for r in records] == [r["instruction"] for r in eval_set]  # eval-set order
    assert {r["generator"] for r in records} == {model} and [r["dataset"] for r in records] == [r["dataset"] for r in eval_set]
    by_instruction = {r["instruction"]: r["output"] for r in source}
    assert all(r["output"] == by_instruction.get(r["instruction"], "") for r in records)  # the real outputs, unchanged
    n_missing = 2 if model == "text_davinci_001" else 0  # the bundle has 803 of Davinci001's 805 outputs
    assert metrics["n_outputs"] == 805 and metrics["n_missing_filled_empty"] == n_missing
    assert sum(r["output"] == "" for r in records) == n_missing
    read_model_outputs(tmp_path / f"{model}.json", expected_instructions=[r["instruction"] for r in eval_set])  # what annotate reads


def test_published_outputs_on_a_prefix_eval_set(shared, tmp_path):
    eval_set = load_eval_set(shared / "alpaca_eval" / "results" / "text_davinci_003" / "model_outputs.json", limit=24)
    (tmp_path / "eval.json").write_text(json.dumps(eval_set))
    records, metrics, _ = _run_published(shared, tmp_path, "gpt4", tmp_path / "eval.json", generator="GPT-4")
    assert len(records) == 24 and metrics["n_source_rows_dropped"] == 805 - 24
    assert [r["instruction"] for r in records] == [r["instruction"] for r in eval_set] and records[0]["generator"] == "GPT-4"


def test_published_outputs_by_hand():
    eval_set = [{"instruction": i, "output": "ref", "generator": "ref", "dataset": "d"} for i in ("b", "a", "c")]
    source = [{"instruction": "a", "output": "A", "generator": "m"}, {"instruction": "b", "output": "B", "generator": "m"},
              {"instruction": "z", "output": "Z", "generator": "m"}]
    records, counts = published_outputs(source, eval_set, "m")
    assert [(r["instruction"], r["output"]) for r in records] == [("b", "B"), ("a", "A"), ("c", "")]
    assert counts["n_missing_filled_empty"] == 1 and counts["missing_instructions"] == ["c"] and counts["n_source_rows_dropped"] == 1


def _self_win_rate(eval_set) -> float:
    pairs = [Pair(r["instruction"], r["output"], r["output"]) for r in eval_set]
    records, stats = annotate_pairs(HeuristicAnnotator(), pairs, cache=None, seed=0, progress=False)
    df = pd.DataFrame(records).assign(generator_1="text_davinci_003", generator_2="text_davinci_003")
    assert stats.n_ties_identical == len(eval_set)
    return win_rate(df).win_rate


def test_reference_row_is_50_percent_by_construction(tmp_path):
    eval_set = [{"instruction": f"q{i}", "output": f"answer number {i}" * (i % 3), "generator": "text_davinci_003", "dataset": "d"}
                for i in range(7)]
    assert _self_win_rate(eval_set) == 50.0


def test_reference_row_is_50_percent_on_the_real_eval_set(shared):
    eval_set = load_eval_set(shared / "alpaca_eval" / "results" / "text_davinci_003" / "model_outputs.json")
    assert _self_win_rate(eval_set) == 50.0


def test_sft_stage_takes_several_splits_and_a_size(tmp_path):
    """SFT 10k vs 52k: the same stage on the sft split, or on every split (tiny: 1000 vs 5200)."""
    from afarm.models.lm import ModelConfig, build_model, save_model
    from afarm.models.tokenizer import train_tokenizer
    from afarm.stages.sft import arguments, main

    splits = {}
    for name, n in {"sft": 4, "preference": 8, "validation": 2}.items():
        rows = [{"id": f"{name}{i}", "instruction": f"Say {name} {i}.", "input": "", "output": f"{name} {i}."} for i in range(n)]
        splits[name] = tmp_path / f"{name}.json"
        splits[name].write_text(json.dumps(rows))
    from afarm.models.prompts import format_prompt

    tok = train_tokenizer([format_prompt("Say sft preference validation 0 1 2 3 4 5 6 7.")] * 5, vocab_size=300)
    save_model(build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok), tok, tmp_path / "base")
    params = {**PARAMS, "sft": {"train": {"num_epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_length": 256,
                                          "num_threads": 1, "show_progress": False}}}

    def run(*extra):
        argv = ["--base_model", str(tmp_path / "base"), "--validation", str(splits["validation"]), "--out", str(tmp_path / "m"),
                "--metrics", str(tmp_path / "metrics.json"), *extra]
        main(arguments().parse_args(argv), params)
        return json.loads((tmp_path / "metrics.json").read_text())

    small = run("--sft", str(splits["sft"]))  # the existing single-file form
    assert small["num_examples"] == 4 and small["num_steps"] == 2 and small["validation_in_training"] is False
    every = run("--sft", str(splits["sft"]), str(splits["preference"]), str(splits["validation"]))
    assert every["num_examples"] == 14 and every["num_steps"] == 7 and every["validation_in_training"] is True
    capped = run("--sft", str(splits["sft"]), str(splits["preference"]), "--max_examples", "6")
    assert capped["num_examples"] == 6 and capped["num_steps"] == 3


def test_generate_with_api_against_a_real_http_server():
    from fake_openai_server import FakeOpenAIServer, Reply, prompt_text

    with FakeOpenAIServer(lambda body: Reply(content=f"  answer to: {prompt_text(body)}\n")) as srv:
        cfg = APIModelConfig(model="gpt-4-0314", base_url=srv.url, num_workers=3, max_retries=0, timeout=10)
        outputs = generate_with_api([f"question {i}" for i in range(5)], cfg)
        assert outputs == [f"answer to: question {i}" for i in range(5)]  # input order, stripped
        assert srv.calls == 5
        assert {r["model"] for r in srv.requests} == {"gpt-4-0314"}
        assert {(r["max_tokens"], r["temperature"]) for r in srv.requests} == {(300, 0.7)}


def test_published_stage_generates_api_rows_through_an_openai_compatible_server(shared, tmp_path):
    """Paper-scale path: a row listed in published_outputs.api_models is generated anew over HTTP."""
    from fake_openai_server import FakeOpenAIServer, Reply, prompt_text

    from conftest import EVAL_SOURCE

    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(load_eval_set(EVAL_SOURCE, limit=4)))
    with FakeOpenAIServer(lambda body: Reply(content=f"api says: {prompt_text(body)[:20]}")) as srv:
        params = {
            **PARAMS,
            "published_outputs": {"api_models": {"gpt4": "gpt-4-0314"}, "api": {"base_url": srv.url, "max_retries": 0, "timeout": 10.0}},
        }
        from afarm.stages.published_outputs import arguments, main

        source = shared / "alpaca_eval" / "results" / "gpt4" / "model_outputs.json"
        out, metrics = tmp_path / "gpt4.json", tmp_path / "m.json"
        main(arguments().parse_args(["--source", str(source), "--eval_set", str(eval_path), "--out", str(out), "--metrics", str(metrics)]), params)
        assert srv.calls == 4 and {r["model"] for r in srv.requests} == {"gpt-4-0314"}
    rows = json.loads(out.read_text())
    assert [r["generator"] for r in rows] == ["gpt4"] * 4
    assert all(r["output"].startswith("api says: ") for r in rows)
