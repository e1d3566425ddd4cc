"""The memory plan against the bytes ranks really hold: every trainer in 2 CPU processes (gloo).

Each stage runs through the real launcher with ``AFARM_MEMORY_PROBE`` set, so ``afarm.distributed``
writes, after every micro-batch's backward and at every optimizer step, the bytes each rank holds by
the plan's terms (``afarm.held_memory``: storages of the parameter shards, the gradients, FSDP's
unsharded gradient accumulators, AdamW's state). The plan of the same small model on 2 devices
(``afarm.memory_plan.plan``, with the stage's precision) must give exactly those numbers:

* parameters and gradients: FSDP2 pads each shard to ``ceil(rows / 2)`` rows, so both ranks hold what
  the plan gives for rank 0 (the scalar head's one row is padded on rank 1);
* optimizer state: AdamW's states are unpadded shards (rank 1 holds less than rank 0, the plan's
  rank-0 number, by the head row it does not own) plus a 4-byte step per tensor;
* no FSDP parameter stays gathered at these points (a frozen model's root is resharded after its
  forward), and the whole-gradient accumulators are empty unless ``launch.no_sync_accumulation``;
  with it, after a micro-batch whose reduction waits, each rank holds every trained model's whole
  fp32 gradient, exactly the plan's ``unsharded gradients`` row.

Every run also loads its checkpoints on rank 0 only: rank 1 cannot read a safetensors file
(``tests/rank0_guard``), builds its models on the meta device and receives its shards.

The transient terms (activations, gathered layers, KV cache) are not measured here: a CPU process has
no allocator statistics, so the plan's estimates of those stay estimates (docs/memory_plan.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afarm import memory_plan as mp
from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
GUARD = Path(__file__).resolve().parent / "rank0_guard"  # its sitecustomize.py: only rank 0 may read weights
# a vocabulary of up to 701 tokens and the scalar heads' one row do not split evenly over 2 ranks: padding shows
TOY = ModelConfig(hidden_size=36, num_layers=2, num_heads=2, intermediate_size=70, max_position_embeddings=256)
TRAIN = {"learning_rate": 1e-3, "num_epochs": 1, "batch_size": 4, "micro_batch_size": 1, "warmup_ratio": 0.0,
         "lr_scheduler": "constant", "max_length": 128, "seed": 0, "num_threads": 1, "show_progress": False,
         "precision": "bf16_mixed", "gradient_checkpointing": True}
RL = {"rollout_batch_size": 16, "rollout_micro_batch_size": 8, "step_batch_size": 8, "step_micro_batch_size": 2,
      "response_len": 6, "learning_rate": 1e-3, "warmup_steps": 0, "rollout_seeding": "per_chunk", "seed": 0,
      "num_threads": 1, "show_progress": False, "kl_coef": 0.05, "max_steps": 1, "precision": "bf16_mixed",
      "gradient_checkpointing": True}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory_inputs")
    words = "red green blue cat dog bird sun moon tree river".split()
    text = lambda i, n: " ".join(words[(i * 3 + k) % len(words)] for k in range(n))  # noqa: E731
    rows = [{"instruction": f"Say {text(i, 2)}.", "input": "", "output": text(i + 1, 3 + i % 4)} for i in range(12)]
    prefs = [{"instruction": f"Say {text(i, 2)}.", "input": "", "output_1": text(i + 1, 3), "output_2": text(i + 5, 4),
              "preference": 1 + i % 2, "annotator": "test"} for i in range(16)]
    for name, data in {"sft.json": rows, "validation.json": rows[:4], "prefs.json": prefs,
                       "unlabeled.json": [{**r, "output": ""} for r in rows * 3]}.items():
        (root / name).write_text(json.dumps(data))
    tok = train_tokenizer([format_prompt(r["instruction"]) + r["output"] for r in rows] * 4, vocab_size=701)
    sft = build_model(TOY, tok)
    save_model(sft, tok, root / "sft")
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, root / "rm")
    return root


def flags(stage: str, inputs: Path) -> list[str]:
    common = ["--out", "model", "--metrics", "metrics.json"]
    by_stage = {
        "sft": ["--base_model", inputs / "sft", "--sft", inputs / "sft.json", "--validation", inputs / "validation.json"],
        "reward_model": ["--sft", inputs / "sft", "--preferences", inputs / "prefs.json"],
        "dpo": ["--sft", inputs / "sft", "--preferences", inputs / "prefs.json"],
        "ppo": ["--sft", inputs / "sft", "--reward_model", inputs / "rm", "--unlabeled", inputs / "unlabeled.json",
                "--preference_set", "sim", "--plot", "curves.png"],
        "quark": ["--sft", inputs / "sft", "--reward_model", inputs / "rm", "--unlabeled", inputs / "unlabeled.json",
                  "--preference_set", "sim", "--plot", "curves.png", "--eval_set", inputs / "eval.json", "--outputs", "outputs.json", "--generator", "q"],
    }
    return [str(a) for a in by_stage[stage]] + common


SECTIONS = {
    "sft": {"sft": {"train": TRAIN}},
    "reward_model": {"reward_model": {**TRAIN, "eval_size": 4, "eval_batch_size": 4}},
    "dpo": {"dpo": {"beta": 0.1, "eval_size": 4, "train": TRAIN}},
    "ppo": {"ppo": RL},
    "quark": {"quark": RL},
}


def start(stage: str, inputs: Path, out: Path, no_sync: bool = False) -> subprocess.Popen:
    out.mkdir(parents=True)
    (out / "probe").mkdir()
    params = {"scale": "tiny", "launch": {"processes": 2, "backend": "gloo", "timeout_s": 60, "num_threads": 1, "no_sync_accumulation": no_sync},
              "generate": {"max_new_tokens": 4, "do_sample": False, "batch_size": 2, "num_threads": 1, "show_progress": False},
              **SECTIONS[stage]}
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    # GUARD: ranks other than 0 cannot read a safetensors file, so every run here also shows that only rank 0
    # loads the checkpoints (afarm.models.lm.load_model(..., rank0_only=True)); the others receive their shards
    env = {**os.environ, "AFARM_MEMORY_PROBE": str(out / "probe"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(GUARD), str(SRC), os.environ.get("PYTHONPATH", "")) if p)}
    argv = [sys.executable, "-m", "afarm.stages", stage, "--params", "params.yaml", *flags(stage, inputs)]
    return subprocess.Popen(argv, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, out: Path) -> dict[int, list[dict]]:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-5000:]
    return {r: [json.loads(line) for line in (out / "probe" / f"held.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}


def the_plan(stage: str, inputs: Path, **kwargs) -> mp.Plan:
    """The plan of ``stage`` for the toy model on 2 devices, with the stage's precision and Quark's tokens."""
    arch = mp.load_arch(inputs / "sft")
    added = {"added_tokens": 4} if stage == "quark" else {}  # quark.num_reward_tokens (default 4)
    return mp.plan(stage, arch, devices=2, micro_batch=2, seq_len=128, precision="bf16_mixed", **added, **kwargs)


def check_against_plan(stage: str, inputs: Path, held: dict[int, list[dict]], plan: mp.Plan) -> None:
    rank0_optimizer = None
    for rank, lines in held.items():
        assert {line["phase"] for line in lines} == {"micro_batch", "optimizer_step"}, (stage, rank)
        for line in lines:
            where = (stage, rank, line["phase"])
            assert line["world_size"] == 2
            assert line["trained_parameters"] + line["frozen_parameters"] == plan.get("parameters"), where
            if line.get("reduced", True):
                assert line["gradients"] == plan.get("gradients"), where
            else:  # a micro-batch whose reduction waits: no shard yet before the step's first reduction
                assert line["gradients"] in (0, plan.get("gradients")), where
            assert line["gathered_parameters"] == 0, where  # nothing left gathered between forwards
            if line["phase"] == "optimizer_step":
                optimizer = line["optimizer_state"] + line["optimizer_steps"]
                if rank == 0:
                    assert optimizer == plan.get("optimizer state"), where
                    rank0_optimizer = optimizer
                else:  # rank 1 owns no row of the scalar head / fewer rows of odd dimensions: less, never more
                    assert 0 < optimizer < plan.get("optimizer state"), where
    assert rank0_optimizer is not None


@pytest.mark.parametrize("stages", [("sft", "reward_model"), ("dpo", "ppo")])
def test_every_trainer_holds_what_the_plan_says(inputs, tmp_path, stages):
    runs = {stage: (start(stage, inputs, tmp_path / stage), tmp_path / stage) for stage in stages}
    for stage, (proc, out) in runs.items():
        held = finish(proc, out)
        assert all(line["unsharded_gradients"] == 0 for lines in held.values() for line in lines), stage
        check_against_plan(stage, inputs, held, the_plan(stage, inputs))


def test_quark_and_no_sync_accumulation_hold_what_the_plan_says(inputs, tmp_path):
    (inputs / "eval.json").write_text(json.dumps([{"instruction": f"Name thing {i}.", "output": "ref", "generator": "text_davinci_003",
                                                   "dataset": "toy"} for i in range(2)]))
    quark = (start("quark", inputs, tmp_path / "quark"), tmp_path / "quark")
    no_sync = (start("ppo", inputs, tmp_path / "ppo_no_sync", no_sync=True), tmp_path / "ppo_no_sync")
    check_against_plan("quark", inputs, finish(*quark), the_plan("quark", inputs))

    held = finish(*no_sync)
    plan = the_plan("ppo", inputs, no_sync_accumulation=True)
    check_against_plan("ppo", inputs, held, plan)
    whole = plan.get("unsharded gradients")
    # policy and value, whole, fp32: 4 bytes x (P_policy + P_value)
    arch = mp.load_arch(inputs / "sft")
    assert whole == 4 * (arch.num_params("lm") + arch.num_params("value")) > 0
    for rank, lines in held.items():
        waiting = [line for line in lines if line["phase"] == "micro_batch" and not line["reduced"]]
        reduced = [line for line in lines if line["phase"] == "micro_batch" and line["reduced"]]
        assert waiting and reduced, rank  # 4 micro-batches a step over 2 ranks: the first of each rank waits
        assert all(line["unsharded_gradients"] == whole for line in waiting), (rank, waiting[0])
        assert all(line["unsharded_gradients"] == 0 for line in reduced), rank


def test_no_sync_accumulation_is_refused_where_the_plan_says_it_does_not_fit():
    """Paper-scale PPO on 8 x 80 GB fits with gradients reduced every micro-batch; deferring the reduction
    would hold policy and value whole (about 54 GB more per GPU): the launcher's check refuses it."""
    from afarm.config import load_params
    from afarm.stages import _launch

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["scale"] = "paper"
    assert _launch.check_memory("ppo", params).fits
    params["launch"] = {**params["launch"], "no_sync_accumulation": True}
    with pytest.raises(mp.PlanError, match=r"stage 'ppo' needs \d+\.\d GB per device, 80 GB available.*does not fit.*unsharded gradients"):
        _launch.check_memory("ppo", params)
    assert _launch.check_memory("sft", params).fits  # SFT alone still fits with it (one model's 27 GB)
