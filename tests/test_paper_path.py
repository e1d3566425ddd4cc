"""The paper scale's code path, run end to end in miniature on CPU.

``scale: paper`` with every paper setting that decides *how* things run left as it is -- pretrained
weights loaded with ``from_pretrained`` from a local folder in the hub layout (the stand-in for
``huggyllama/llama-7b``), the data splits through the ``datasets`` hub loader (a local folder in
``tatsu-lab/alpaca_farm``'s layout), fp32 master weights with bf16 compute and gradient
checkpointing, FSDP2-sharded training and data-parallel generation in 2 processes (gloo instead
of nccl), the memory plan checked before every stage, AlpacaFarm's API annotator pool and the
GPT-4 evaluator against the loopback OpenAI-compatible server -- and only the sizes shrunk
(model, data, batches, steps, lengths). Snakemake runs the spine
data -> base_model -> sft -> preference_data -> reward_model -> ppo -> generate -> annotate, and
``afarm leaderboard`` ranks the judged rows.
"""

from __future__ import annotations

import copy
import csv
import json

import pytest
import yaml

from fake_openai_server import FakeOpenAIServer, TemplateJudge, bundle_templates
from hub_fixtures import MINIATURE, hub_dataset, pretrained_llama
from pipeline_helpers import copy_repo, merge, run, sh

pytestmark = pytest.mark.slow

def _small(extra: dict) -> dict:
    """Paper params with only sizes shrunk (hub_fixtures.MINIATURE: every key is a size, a length, a step
    count or a path) and 2 CPU processes on gloo."""
    launch = {"launch": {"processes": {"paper": 2}, "backend": {"paper": "gloo"}, "timeout_s": {"paper": 120}, "num_threads": {"paper": 1}}}
    return merge(merge(launch, copy.deepcopy(MINIATURE)), extra)


def test_paper_spine_in_two_processes_with_api_judges(repo, shared, tmp_path):
    work = tmp_path / "repo"
    copy_repo(repo, work)
    hub_dataset(tmp_path / "alpaca_farm")
    pretrained_llama(tmp_path / "llama")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["scale"] = "paper"
    params["paths"] = {"shared_data": str(shared), "cache_dir": str(tmp_path / "annotation-cache")}
    merge(params, _small({"data": {"hub_id": str(tmp_path / "alpaca_farm")},
                          "base_model": {"model": {"pretrained": {"paper": str(tmp_path / "llama")}}},
                          # a step count: the paper's 5 warmup steps would give the miniature's one step lr 0
                          "ppo": {"warmup_steps": {"paper": 0}}}))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q -b main && git add -A && git commit -qm paper-miniature", work)

    from afarm.config import load_params, section

    resolved = load_params(work / "params.yaml")
    assert section(resolved, "sft")["train"]["precision"] == "bf16_mixed"  # the paper's settings, not a CPU variant
    assert section(resolved, "preference_data")["annotators"]["sim"] == "alpaca_farm_pool"
    assert section(resolved, "annotate")["annotators"]["sim"] == "alpaca_farm_greedy_gpt4"
    assert section(resolved, "launch")["device_memory_gb"] == 80  # every stage's plan is checked

    targets = "results/annotations/sim/ppo_sim.json results/annotations/sim/sft.json"
    with FakeOpenAIServer(TemplateJudge(bundle_templates(shared))) as server:
        result = run(f"snakemake --cores 2 {targets}", work, timeout=1500, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.url)
        assert server.ok_calls > 0
        pool_models = {body.get("model") for body in server.requests}
    log = result.stdout + result.stderr
    assert {"gpt-4-0314"} <= pool_models  # the pool's GPT-4 members and the GPT-4 evaluator answered

    # Training and generation really ran in 2 processes, from the local pretrained weights.
    for rule in ("sft", "reward_model_sim", "ppo_sim", "sft_samples_preference", "preference_data_sim", "generate_ppo_sim"):
        assert f"rule {rule}:" in log
    # Each of them was promised 2 processes by the same params; a stage that found another number of
    # processes would have stopped (afarm.stages._cli), so they ran sharded / data-parallel in 2.
    from afarm import launch

    for module in ("sft", "reward_model", "ppo", "sft_samples", "generate"):
        assert launch.processes(module, resolved) == 2
    assert launch.processes("preference_data", resolved) == 1  # it judges sft_samples' pairs: API calls from one process
    sft = json.loads((work / "models" / "sft" / "config.json").read_text())
    assert sft["hidden_size"] == 64 and sft["vocab_size"] >= 400  # the local "pretrained" model, with "[PAD]" added
    ppo = json.loads((work / "results" / "metrics" / "ppo_sim.json").read_text())
    assert ppo["num_steps"] == section(resolved, "ppo")["max_steps"] == 1  # the step the miniature asks for (rank 0 wrote it)
    from safetensors.torch import load_file

    start, trained = (load_file(work / "models" / name / "model.safetensors") for name in ("sft", "ppo_sim"))
    moved = max((trained[k].float() - start[k].float()).abs().max().item() for k in start if k in trained)
    assert moved > 1e-6, moved  # one PPO step of 2 sharded processes changed the fp32 masters (AdamW moves a weight by ~lr = 1e-5)

    # The judged rows make a leaderboard.
    board = tmp_path / "board"
    flat = tmp_path / "annotations"
    flat.mkdir()
    for name in ("ppo_sim", "sft"):
        records = json.loads((work / "results" / "annotations" / "sim" / f"{name}.json").read_text())
        assert len(records) == 4 and {r["annotator"] for r in records} == {"alpaca_farm_greedy_gpt4"}
        (flat / f"{name}.json").write_text(json.dumps(records))
    sh(f"afarm leaderboard --annotations_dir {flat} --out_dir {board}", tmp_path)
    rows = {r[""]: r for r in csv.DictReader(open(board / "leaderboard.csv"))}  # upstream's layout: unnamed model column
    assert set(rows) == {"ppo_sim", "sft"}
    for name, row in rows.items():  # each win rate is the recount of its judged rows: 100 x mean(preference - 1)
        prefs = [r["preference"] for r in json.loads((flat / f"{name}.json").read_text())]
        assert float(row["win_rate"]) == pytest.approx(100 * sum(p - 1 for p in prefs) / len(prefs), abs=1e-9), name
