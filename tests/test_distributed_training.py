"""Sharded training in 2 CPU processes (gloo) gives the weights of 1 process, and the sharding is real.

A small Llama (hidden 64, 2 layers, untied embeddings as LLaMA, its own 700-token tokenizer) is
saved once as a Hugging Face folder; the real stages then run through the launcher
(``python -m afarm.stages <module>``) with ``launch.processes`` 1 and 2 and the same params: the
same global batch, micro-batches of 1 (so 2 processes accumulate half as many), seeds and data.

Tolerances. fp32: the two runs do the same arithmetic except the order of the gradient sums
(FSDP reduce-scatters each rank's accumulated half), so they differ by float32 rounding; Adam
turns a relative gradient difference d into an update difference of about d x lr, and we measured
<= 6e-8 after 4 steps at lr 1e-3: 1e-5 leaves a wide margin, while a missing, doubled or
misweighted micro-batch moves weights by a sizeable part of lr = 1e-3 per step. Logged losses
agree to 1e-5 relative for the same reason. bf16_mixed: each micro-batch's forward and backward
run in bf16 from the same fp32 masters in both runs, identical until the masters differ in their
last fp32 bit; then the few elements at a bf16 rounding boundary round one bf16 step (2^-8
relative) apart, and the runs drift apart slowly: measured 1.5e-5 after 4 steps at lr 1e-3.
We allow 1e-4 = lr / 10, still far below what a wrong micro-batch does, and check the first
step's loss (before any update the casts are identical) to 1e-5.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from afarm.io import InputError
from afarm.methods.reward_model import init_reward_model, load_reward_model, save_reward_model
from afarm.models.prompts import chat_prompt, format_prompt
from afarm.models.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from distributed_check import EXAMPLES, config  # noqa: E402

pytestmark = pytest.mark.slow  # several processes (torchrun): not in the fast tier

TIMEOUT_S = 60  # launch.timeout_s: a hung collective fails the stage within a minute
WORDS = "red green blue cat dog bird sun moon tree river stone cloud fast slow big small".split()
TRAIN = {"learning_rate": 1e-3, "num_epochs": 1, "batch_size": 4, "micro_batch_size": 1, "warmup_ratio": 0.0,
         "lr_scheduler": "constant", "max_length": 128, "seed": 0, "num_threads": 1, "show_progress": False,
         "precision": "fp32", "gradient_checkpointing": False}
BF16 = {**TRAIN, "precision": "bf16_mixed", "gradient_checkpointing": True}


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A Hugging Face folder ``sft`` (small Llama + tokenizer), a reward model folder ``rm`` and data."""
    root = tmp_path_factory.mktemp("small")
    rows = [{"id": f"r{i}", "instruction": f"Say {_text(i, 2)}.", "input": "", "output": _text(i + 1, 3 + i % 4)} for i in range(14)]
    prefs = [{"instruction": f"Say {_text(i, 2)}.", "input": "", "output_1": _text(i + 1, 3 + i % 3), "output_2": _text(i + 5, 4),
              "preference": 1 + i % 2, "annotator": "test"} for i in range(22)]
    (root / "sft.json").write_text(json.dumps(rows))
    (root / "validation.json").write_text(json.dumps(rows[:4]))
    (root / "unlabeled.json").write_text(json.dumps([{**r, "output": ""} for r in rows[:4]]))
    (root / "prefs.json").write_text(json.dumps(prefs))
    # trained on formatted prompts, so the AlpacaFarm prompt template costs few tokens
    tokenizer = train_tokenizer([format_prompt(r["instruction"]) + r["output"] for r in rows] * 4 + [_text(i, 8) for i in range(40)],
                                vocab_size=700)
    config_ = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config_).save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    save_reward_model(init_reward_model(root / "sft", tokenizer, seed=0), tokenizer, root / "rm")
    return root


def _params(processes: int, sections: dict) -> dict:
    return {"scale": "tiny", "launch": {"num_threads": 1, "processes": processes, "backend": "gloo", "timeout_s": TIMEOUT_S},
            "generate": {"max_new_tokens": 8, "do_sample": False}, **sections}  # generate: the decoding a model folder records


def _launch(root: Path, name: str, module: str, flags: dict, sections: dict) -> dict[int, subprocess.Popen]:
    """Start ``module`` with 1 and with 2 processes at once (outputs under root/name/p1 and p2)."""
    runs = {}
    for n in (1, 2):
        out = root / name / f"p{n}"
        out.mkdir(parents=True)
        (out / "params.yaml").write_text(yaml.safe_dump(_params(n, sections)))
        argv = [sys.executable, "-m", "afarm.stages", module, "--params", str(out / "params.yaml")]
        for flag, value in flags.items():
            argv += [f"--{flag}", str(value).format(out=out, root=root)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        runs[n] = subprocess.Popen(argv, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return runs


def _wait(runs: dict[int, subprocess.Popen]) -> None:
    for n, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{n} process(es) failed:\n{output[-5000:]}"


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    assert all(v.dtype == torch.float32 for v in y.values())  # the fp32 masters are what is saved
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def _close(a, b, rel: float, path: str = "") -> None:
    """Metrics JSON ``a`` equals ``b``: counts exactly, floats to ``rel`` (relative, 1e-9 absolute floor)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-9), path
    else:
        assert a == b, path


def _metrics(root: Path, name: str) -> tuple[dict, dict]:
    return tuple(json.loads((root / name / f"p{n}" / "metrics.json").read_text()) for n in (1, 2))


def test_sharding_precision_and_fp32_masters(small, tmp_path):
    """One torchrun launch: each rank holds half of every weight, in fp32; the forward pass computes
    in bf16; 10 AdamW steps at lr 1e-6 move (nearly) every weight with fp32 masters and (nearly) none
    with bf16 weights; a short last step weighs its micro-batches as one process does."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "distributed_check.py"), str(small / "sft"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())

    assert report["world_size"] == 2
    for name, shard in report["shards"].items():
        assert shard["dtensor"] and shard["dtype"] == "torch.float32", name
        assert shard["local_rows"] == math.ceil(shard["rows"] / 2), name  # rank 0's half (Shard(0))
        assert shard["local_numel"] * 2 >= shard["numel"] > shard["local_numel"], name
    assert report["compute"] == {"input": "torch.bfloat16", "weight": "torch.bfloat16", "output": "torch.bfloat16"}
    assert report["mixed"]["steps"] == 10 and report["mixed"]["changed"] > 0.99
    assert report["pure_bf16"]["changed"] < 0.05  # only weights within ~100 x lr of zero move

    # the same fp32 run in this process (unsharded): same losses, gradient norms and weights
    one = AutoModelForCausalLM.from_pretrained(small / "sft", dtype=torch.float32)
    from afarm.models.train import train_causal_lm

    stats = train_causal_lm(one, AutoTokenizer.from_pretrained(small / "sft"), EXAMPLES, config(precision="fp32", gradient_checkpointing=False),
                            response_only=True)
    run = report["run"]
    assert run["num_steps"] == stats["num_steps"] == 4 and run["num_tokens"] == stats["num_tokens"]
    assert run["losses"] == pytest.approx(stats["losses"], rel=1e-5)
    assert run["grad_norms"] == pytest.approx(stats["grad_norms"], rel=1e-5)
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert max(float((saved[k] - v).abs().max()) for k, v in one.state_dict().items()) < 1e-5


def test_sft_fp32_and_feedme_bf16_mixed(small):
    sft = _launch(small, "sft", "sft", {"base_model": small / "sft", "sft": small / "sft.json", "validation": small / "validation.json",
                                        "out": "{out}/model", "metrics": "{out}/metrics.json", "log": "{out}/curve.csv"}, {"sft": {"train": TRAIN}})
    feedme = _launch(small, "feedme", "feedme", {"sft": small / "sft", "preferences": small / "prefs.json",
                                                 "validation": small / "validation.json", "out": "{out}/model",
                                                 "metrics": "{out}/metrics.json"}, {"feedme": {"train": BF16}})
    _wait(sft)
    _wait(feedme)
    one, two = _metrics(small, "sft")
    assert one["num_steps"] == 4  # 14 examples, 4 per step: the last step is short
    _close(one, two, rel=1e-5)
    assert _max_diff(small / "sft" / "p1" / "model", small / "sft" / "p2" / "model") < 1e-5
    # the training curve, written by rank 0 from the values averaged over the ranks: that of one process
    curves = [list(csv.DictReader((small / "sft" / f"p{n}" / "curve.csv").open())) for n in (1, 2)]
    assert [r["step"] for r in curves[1]] == ["1", "2", "3", "4"] and list(curves[1][0]) == ["step", "loss", "learning_rate", "grad_norm"]
    _close([{k: float(v) for k, v in r.items()} for r in curves[0]], [{k: float(v) for k, v in r.items()} for r in curves[1]], rel=1e-5)
    assert float(curves[1][-1]["loss"]) == two["final_train_loss"]
    one, two = _metrics(small, "feedme")
    assert one["num_steps"] == 6  # 22 preferred outputs
    _close({k: v for k, v in one.items() if k != "final_train_loss"}, {k: v for k, v in two.items() if k != "final_train_loss"}, rel=1e-3)
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-3)
    assert _max_diff(small / "feedme" / "p1" / "model", small / "feedme" / "p2" / "model") < 1e-4
    for name in ("sft", "feedme"):  # an ordinary Hugging Face folder, loaded by a plain process
        model = AutoModelForCausalLM.from_pretrained(small / name / "p2" / "model")
        assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32


def test_reward_model_and_expert_iteration(small):
    reward_model = {**{k: v for k, v in TRAIN.items()}, "eval_size": 4, "eval_batch_size": 4}
    rm = _launch(small, "rm", "reward_model", {"sft": small / "sft", "preferences": small / "prefs.json", "out": "{out}/model",
                                               "metrics": "{out}/metrics.json"}, {"reward_model": reward_model})
    generation = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "batch_size": 8, "num_threads": 1, "show_progress": False}
    # the `sft_samples` stage's file for the first 4 unlabeled instructions, 2 samples each (its sampling is
    # tested in 2 processes in test_distributed_generation.py); one sample cut off at the cap
    rows = json.loads((small / "unlabeled.json").read_text())[:4]
    words = ["apple", "banana one", "two three red", "water", "red apple two", "one", "three water banana", "apple red"]
    (small / "ei_samples.json").write_text(json.dumps([
        {"instruction": r["instruction"], "input": r["input"], "samples": words[2 * i : 2 * i + 2], "finished": [True, i != 1]}
        for i, r in enumerate(rows)]))
    ei = _launch(small, "ei", "expert_iteration", {"sft": small / "sft", "reward_model": small / "rm", "unlabeled": small / "unlabeled.json",
                                                   "samples": small / "ei_samples.json",
                                                   "out": "{out}/model", "data": "{out}/data.json", "metrics": "{out}/metrics.json"},
                 {"expert_iteration": {"limit": 4, "best_of_n": {"n": 2, "generation": generation, "score_batch_size": 8},
                                       "train": {**TRAIN, "batch_size": 2}}})
    _wait(rm)
    _wait(ei)
    one, two = _metrics(small, "rm")
    assert one["num_train_pairs"] == 18 and one["num_steps"] == 5
    _close(one, two, rel=1e-5)
    assert _max_diff(small / "rm" / "p1" / "model", small / "rm" / "p2" / "model") < 1e-5
    model, _ = load_reward_model(small / "rm" / "p2" / "model")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    one, two = _metrics(small, "ei")
    _close(one, two, rel=1e-5)
    assert (small / "ei" / "p1" / "data.json").read_text() == (small / "ei" / "p2" / "data.json").read_text()
    assert _max_diff(small / "ei" / "p1" / "model", small / "ei" / "p2" / "model") < 1e-5


def test_dpo_and_reward_conditioning(small):
    dpo = _launch(small, "dpo", "dpo", {"sft": small / "sft", "preferences": small / "prefs.json", "out": "{out}/model",
                                        "metrics": "{out}/metrics.json"}, {"dpo": {"beta": 0.1, "eval_size": 4, "train": TRAIN}})
    rc = _launch(small, "rc", "reward_conditioning", {"sft": small / "sft", "preferences": small / "prefs.json",
                                                      "validation": small / "validation.json", "out": "{out}/model",
                                                      "metrics": "{out}/metrics.json"}, {"reward_conditioning": {"train": TRAIN}})
    _wait(dpo)
    _wait(rc)
    one, two = _metrics(small, "dpo")
    assert one["num_pairs"] == 18 and one["num_steps"] == 5
    _close(one, two, rel=1e-5)
    assert _max_diff(small / "dpo" / "p1" / "model", small / "dpo" / "p2" / "model") < 1e-5
    one, two = _metrics(small, "rc")
    _close(one, two, rel=1e-5)
    assert _max_diff(small / "rc" / "p1" / "model", small / "rc" / "p2" / "model") < 1e-5
    for n in (1, 2):
        assert chat_prompt(AutoTokenizer.from_pretrained(small / "rc" / f"p{n}" / "model"), "Hi") == "<|good|>" + format_prompt("Hi")
    tokenizer = AutoTokenizer.from_pretrained(small / "rc" / "p2" / "model")
    assert AutoModelForCausalLM.from_pretrained(small / "rc" / "p2" / "model").get_input_embeddings().num_embeddings >= len(tokenizer)


def test_a_global_batch_that_does_not_divide_names_the_params_key(small, tmp_path):
    from afarm.stages._cli import check_training

    cfg = config(batch_size=6, micro_batch_size=4)
    with pytest.raises(InputError, match=r"sft\.train\.batch_size.*not a multiple of micro_batch_size 4"):
        check_training({"_path": "params.yaml"}, "sft.train", cfg)
    with pytest.raises(InputError, match=r"sft\.train\.precision"):
        check_training({"_path": "params.yaml"}, "sft.train", config(precision="bf16"))
