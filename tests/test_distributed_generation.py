"""Data-parallel generation: the batch split by hand, and the real stages in 2 processes vs 1.

The stages `generate`, `sft_samples` (the preference pairs; best-of-n's samples) and `best_of_n` (scoring
those samples) run once in one process (in the launcher's environment) and once through the stage launcher
(``python -m afarm.stages <module>``) in two gloo processes on the CPU, with sampling on (temperature 0.7,
top_p 0.9) and prompt counts that do not divide into 2 x batch size; the files they write must be
byte-identical, and the logs must show that both ranks generated (or scored) a share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from afarm import distributed
from afarm.config import load_params
from afarm.methods.best_of_n import BestOfNConfig, load_for_scoring, score_data_parallel
from afarm.methods.reward_model import init_reward_model, save_reward_model, score
from afarm.models.generate import GenerationConfig, generate, generate_samples, generate_samples_finished, load_for_generation
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm import launch

pytestmark = pytest.mark.slow  # several processes (torchrun): not in the fast tier

REPO = Path(__file__).resolve().parents[1]
TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
INSTRUCTIONS = ["Name a fruit.", "Say hello to the whole class.", "Count to three.", "Give a color.", "What is water?",
                "Explain why the sky is blue.", "List three animals that live in the sea."]
SAMPLING = {"max_new_tokens": 10, "temperature": 0.7, "top_p": 0.9, "do_sample": True, "seed": 0, "num_threads": 1,
            "show_progress": False}
NOISY = "backend: pool\nsettings:\n  members: [heuristic]\n  p_label_flip: 0.25\n  seed: 0\n  batch_size: 20\n"


def test_each_batch_goes_to_exactly_one_rank():
    assert list(distributed.batches_of_rank(5, of_rank=0, world=2)) == [0, 2, 4]
    assert list(distributed.batches_of_rank(5, of_rank=1, world=2)) == [1, 3]
    assert list(distributed.batches_of_rank(1, of_rank=2, world=3)) == []  # more ranks than batches: idle rank
    for n, world in [(0, 2), (7, 2), (7, 3), (2, 8)]:
        shares = [list(distributed.batches_of_rank(n, of_rank=r, world=world)) for r in range(world)]
        assert sorted(b for share in shares for b in share) == list(range(n))
    assert list(distributed.batches_of_rank(3)) == [0, 1, 2]  # one process: every batch
    assert distributed.merge_from_ranks({(0, 1): "a"}) == {(0, 1): "a"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A toy SFT model and reward model (Hugging Face folders), inputs, and params for 1 and 2 processes."""
    root = tmp_path_factory.mktemp("dp")
    tok = train_tokenizer([format_prompt(i) + " apple banana one two three red water" for i in INSTRUCTIONS] * 4,
                          vocab_size=320)
    policy = build_model(TOY, tok)
    save_model(policy, tok, root / "sft")
    save_reward_model(init_reward_model(policy, tok, seed=0), tok, root / "rm")
    (root / "eval.json").write_text(json.dumps(
        [{"instruction": i, "output": "ref", "generator": "text_davinci_003", "dataset": "toy"} for i in INSTRUCTIONS]))
    (root / "preference.json").write_text(json.dumps(
        [{"instruction": i, "input": "x" if k % 3 == 0 else "", "output": "o"} for k, i in enumerate(INSTRUCTIONS)]))
    (root / "configs" / "noisy_heuristic").mkdir(parents=True)
    (root / "configs" / "noisy_heuristic" / "config.yaml").write_text(NOISY)
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["generate"].update(SAMPLING, batch_size=2)  # 7 prompts: 4 batches, the last of one row
    data["best_of_n"].update(n=3, score_batch_size=4, generation={**SAMPLING, "batch_size": 2})  # 21 samples: 11 batches
    data["preference_data"].update(annotators={"sim": "noisy_heuristic"}, source={"sim": "annotator"},
                                   config_dirs=[str(root / "configs")], generation={**SAMPLING, "batch_size": 3})
    for processes in (1, 2):
        data["launch"].update(processes=processes, backend="gloo", timeout_s=60)
        data["paths"] = {"shared_data": str(root), "cache_dir": str(root / f"cache{processes}")}
        (root / f"p{processes}.yaml").write_text(yaml.safe_dump(data))
    return root


def _shares(monkeypatch, run, missing=0.0) -> list[dict]:
    """What each of two simulated ranks computes when ``run()`` goes data-parallel (before the merge; the
    other rank's results read as ``missing``)."""
    shares: list[dict] = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "merge_from_ranks", lambda local: shares.append(local) or _Everything(missing))
        run()
    monkeypatch.undo()
    assert shares[0] and shares[1] and not shares[0].keys() & shares[1].keys()
    return shares


class _Everything(dict):
    def __init__(self, missing):
        super().__init__()
        self.missing = missing

    def __missing__(self, key):
        return self.missing


def test_each_rank_computes_exactly_what_one_process_computes_for_its_batches(workspace, monkeypatch):
    model, tok = load_for_generation(workspace / "sft", GenerationConfig())
    rm, rm_tok = load_for_scoring(workspace / "rm", BestOfNConfig())
    prompts = [format_prompt(i) for i in INSTRUCTIONS]
    cfg = GenerationConfig(**{**SAMPLING, "batch_size": 2, "num_samples": 2})  # 14 samples: 7 batches
    alone, finished = generate_samples_finished(model, tok, prompts, cfg)
    assert alone == generate_samples(model, tok, prompts, cfg)
    shares = _shares(monkeypatch, lambda: generate_samples(model, tok, prompts, cfg), missing=("", True))  # (text, finished)
    assert {**shares[0], **shares[1]} == {(i, j): (alone[i][j], finished[i][j]) for i in range(len(prompts)) for j in range(2)}
    responses = [s for per in alone for s in per]
    flat = [p for p in prompts for _ in range(2)]
    rewards = score(rm, rm_tok, flat, responses, 4)  # 14 pairs: 4 batches
    shares = _shares(monkeypatch, lambda: score_data_parallel(rm, rm_tok, flat, responses, 4))
    merged = {**shares[0], **shares[1]}
    assert torch.equal(torch.tensor([merged[i] for i in range(len(flat))]), rewards)  # bit for bit


def test_sampler_and_scorer_load_in_their_configured_dtype_on_this_processs_device(workspace):
    model, tok = load_for_generation(workspace / "sft", GenerationConfig())
    assert model.dtype == torch.float32  # None keeps the checkpoint's dtype (the tiny scale)
    model, tok = load_for_generation(workspace / "sft", GenerationConfig(dtype="bfloat16"))
    assert model.dtype == torch.bfloat16 and next(model.parameters()).device == distributed.device()
    assert len(generate(model, tok, ["Say hello."], GenerationConfig(max_new_tokens=3, show_progress=False))) == 1
    rm, _ = load_for_scoring(workspace / "rm", BestOfNConfig(reward_dtype="bfloat16"))
    assert rm.dtype == torch.bfloat16 and next(rm.parameters()).device == distributed.device()
    with pytest.raises(ValueError, match="bf16"):
        load_for_scoring(workspace / "rm", BestOfNConfig(reward_dtype="bf16"))


# run name -> (stage module, flags, what its log shows each rank did); in this order (best_of_n scores the
# samples that the one-process `samples` run wrote)
STAGES = {
    "generate": ("generate", "--model sft --eval_set eval.json --out {o}/out.json --generator toy", "generated"),
    "pairs": ("sft_samples", "--sft sft --prompts preference.json --out {o}/out.json --recipe preference_data", "generated"),
    "samples": ("sft_samples", "--sft sft --prompts eval.json --out {o}/out.json --recipe best_of_n", "generated"),
    "best_of_n": ("best_of_n", "--samples samples1/out.json --reward_model rm --eval_set eval.json --out {o}/out.json "
                  "--metrics {o}/m.json --generator bon", "scored"),
}


def _argv(root: Path, name: str, processes: int) -> list[str]:
    out = root / f"{name}{processes}"
    out.mkdir()
    return ["--params", f"p{processes}.yaml", *STAGES[name][1].format(o=out.name).split()]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


# The three one-process runs in one Python process (each start costs seconds of imports), in the
# environment the launcher gives a stage (threads, kernels, hash seed), each through ``_cli.run``.
ONE_PROCESS = """
import importlib, json, sys
from afarm.stages import _cli
for module, argv in json.loads(sys.argv[1]):
    stage = importlib.import_module(f"afarm.stages.{module}")
    _cli.run(stage.main, stage.arguments(), argv)
"""


def test_two_processes_write_the_bytes_of_one(workspace):
    argvs = [(module, _argv(workspace, name, 1)) for name, (module, _, _) in STAGES.items()]
    env = launch.environment(load_params(workspace / "p1.yaml"), base=_env())
    _check(subprocess.run([sys.executable, "-c", ONE_PROCESS, json.dumps(argvs)], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=600))
    for name, (module, _, did) in STAGES.items():  # the real launcher, two gloo processes
        cmd = [sys.executable, "-m", "afarm.stages", module, *_argv(workspace, name, 2)]
        log = _check(subprocess.run(cmd, cwd=workspace, env=_env(), capture_output=True, text=True, timeout=600))
        assert f"rank 0 of 2 {did}" in log and f"rank 1 of 2 {did}" in log, log[-4000:]
        one, two = workspace / f"{name}1", workspace / f"{name}2"
        assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
        for path in one.iterdir():
            assert (two / path.name).read_bytes() == path.read_bytes(), f"{name}: {path.name} differs"
    outputs = json.loads((workspace / "generate1" / "out.json").read_text())
    assert [r["instruction"] for r in outputs] == INSTRUCTIONS  # merged in instruction order
    assert len({r["output"] for r in outputs}) > 1
    best = json.loads((workspace / "best_of_n1" / "m.json").read_text())
    assert best["n"] == 3 and best["num_prompts"] == 7
    pairs = json.loads((workspace / "pairs1" / "out.json").read_text())
    assert [p["instruction"] for p in pairs] == INSTRUCTIONS and all(len(p["samples"]) == 2 for p in pairs)
    assert any(p["samples"][0] != p["samples"][1] for p in pairs)
