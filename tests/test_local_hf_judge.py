"""The ``local_hf`` judge on a tiny randomly initialised Llama saved to tmp_path (CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.local_hf import LocalHFAnnotator, LocalHFConfig
from afarm.annotators.registry import load_annotator
from afarm.models.lm import ModelConfig, build_model
from afarm.models.tokenizer import train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLF = SHARED / "alpaca_eval/src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"

TEMPLATE = """<|im_start|>system
You compare two answers.
<|im_end|>
<|im_start|>user
Instruction: {instruction}
Answer m: {output_1}
Answer M: {output_2}
Which answer is better, m or M?
<|im_end|>"""

PAIRS = [
    Pair("Name a fruit.", "An apple.", "A carrot is a vegetable, not a fruit."),
    Pair("What is 2+2?", "4", "Five, probably."),
    Pair("Say hi.", "Hi there! How can I help you today? I am happy to help.", "hi"),
    Pair("List three colors.", "red, green, blue", "red"),
    Pair("Translate 'chat' to English.", "cat", "The French word 'chat' means cat in English."),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [p.instruction + " " + p.output_1 + " " + p.output_2 for p in PAIRS] + [TEMPLATE] * 3
    tokenizer = train_tokenizer(texts, vocab_size=320, min_frequency=1)
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=4096)
    model = build_model(cfg, tokenizer)
    path = tmp_path_factory.mktemp("tiny") / "model"
    # a plain transformers folder, as a judge model from the hub (afarm's save_model would give it afarm's
    # one-message prompt template as its chat template, which a judge's ChatML prompt cannot use)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "judge.txt"
    path.write_text(TEMPLATE)
    return path


def test_preference_equals_hand_computed_logprobs(model_dir, template):
    judge = LocalHFAnnotator("tiny", LocalHFConfig(str(model_dir), str(template), batch_size=4))
    got = judge.judge(PAIRS[:4]) + judge.judge(PAIRS[4:])  # a padded batch of 4, then a batch of 1
    m_id = judge.tokenizer.encode("m", add_special_tokens=False)[0]
    big_m_id = judge.tokenizer.encode("M", add_special_tokens=False)[0]
    for pair, judgement in zip(PAIRS, got):
        # by hand: one unpadded forward pass, the next-token distribution after the prompt
        prompt = "\n\n".join(m for m in ["You compare two answers.",
                                          f"Instruction: {pair.instruction}\nAnswer m: {pair.output_1}\n"
                                          f"Answer M: {pair.output_2}\nWhich answer is better, m or M?"]) + "\n\n"
        ids = torch.tensor([judge.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            logprobs = judge.model(input_ids=ids).logits[0, -1].log_softmax(-1)
        p_m, p_big_m = math.exp(logprobs[m_id]), math.exp(logprobs[big_m_id])
        assert judgement.preference == pytest.approx(2 - p_m / (p_m + p_big_m), abs=1e-5)
        raw = json.loads(judgement.raw_completion)
        assert raw["logprob_1"] == pytest.approx(float(logprobs[m_id]), abs=1e-5)
        assert 1.0 <= judgement.preference <= 2.0 and judgement.tokens == ids.shape[1]


def test_deterministic_and_order_randomized(model_dir, template):
    cfg = LocalHFConfig(str(model_dir), str(template), batch_size=3)
    first = LocalHFAnnotator("tiny", cfg)
    second = LocalHFAnnotator("tiny", cfg)
    assert first.fingerprint() == second.fingerprint()
    a, _ = annotate_pairs(first, PAIRS, seed=5, progress=False)
    b, stats = annotate_pairs(second, PAIRS, seed=5, progress=False)
    assert [r["preference"] for r in a] == [r["preference"] for r in b]
    assert stats.n_failed == 0 and stats.price == 0.0
    # a swapped pair is judged as shown and the result mapped back: 3 - preference(shown)
    for pair, record in zip(PAIRS, a):
        shown = Pair(pair.instruction, pair.output_2, pair.output_1) if record["swapped"] else pair
        (direct,) = first.judge([shown])
        expected = 3 - direct.preference if record["swapped"] else direct.preference
        assert record["preference"] == pytest.approx(expected, abs=1e-6)


def test_long_outputs_are_shortened_to_max_length(model_dir, template):
    judge = LocalHFAnnotator("tiny", LocalHFConfig(str(model_dir), str(template), max_length=120))
    long_pair = Pair("Describe the sea.", "waves " * 300, "salt and water " * 200)
    ids = judge.encode(long_pair)
    assert len(ids) <= 120
    text = judge.tokenizer.decode(ids)
    assert "Describe the sea." in text and text.rstrip().endswith("Which answer is better, m or M?")
    (judgement,) = judge.judge([long_pair])
    assert 1.0 <= judgement.preference <= 2.0


@pytest.mark.skipif(not CLF.exists(), reason="data bundle not found")
def test_registry_config_with_the_upstream_clf_prompt(model_dir, tmp_path):
    folder = tmp_path / "configs" / "tiny_clf"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "backend: local_hf\n"
        "settings:\n"
        f"  model_path: {model_dir}\n"
        '  prompt_template: "{shared_data}/alpaca_eval/src/alpaca_eval/evaluators_configs/'
        'alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"\n'
        "  answer_tokens: [m, M]\n"
        "  max_length: 3000\n"
        "  batch_size: 2\n"
    )
    judge = load_annotator("tiny_clf", SHARED, [tmp_path / "configs"])
    records, stats = annotate_pairs(judge, PAIRS[:3], progress=False)
    assert stats.n_failed == 0 and all(1.0 <= r["preference"] <= 2.0 for r in records)
    assert "output_1" in judge.template and len(judge.encode(PAIRS[0])) > 300  # the whole upstream prompt
