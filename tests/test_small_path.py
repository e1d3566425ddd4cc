"""The small scale's code path, run end to end in miniature on CPU.

``scale: small`` with ``judges: local`` and every setting that decides *how* things run left as it is --
the pretrained base model loaded with ``from_pretrained`` from a local folder in the hub layout (a small
Llama standing in for ``Qwen/Qwen2.5-0.5B``), the data splits through the ``datasets`` hub loader,
fp32 master weights with bf16 compute and gradient checkpointing in ONE process, the memory plan
checked against one 24 GB device before every stage, and the open-judge path: ``local_judge_noisy``
(the shipped config file, AlpacaFarm's label noise) labels the simulated pairs and ``local_judge``
(``local_hf`` backend) evaluates, with a tiny local judge model in place of Qwen2.5-7B-Instruct. Only
sizes are shrunk (hub_fixtures.MINIATURE). One Snakemake run of the spine
data -> base_model -> sft -> preference_data -> reward_model -> ppo -> generate -> annotate.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from afarm.annotators.registry import BUILTIN_CONFIGS
from hub_fixtures import MINIATURE, hub_dataset, pretrained_llama
from pipeline_helpers import copy_repo, merge, run, sh
from test_local_hf_judge import TEMPLATE

pytestmark = pytest.mark.slow

JUDGE_TEMPLATE = TEMPLATE  # the tiny ChatML judge prompt of the local_hf tests


def _judge_configs(folder, judge_model) -> None:
    """`local_judge` pointed at a tiny local model on the CPU; `local_judge_noisy` is the shipped file,
    copied beside it (it finds its member in `{config_dir}/..`, so it now finds this judge)."""
    (folder / "local_judge").mkdir(parents=True)
    (folder / "judge.txt").write_text(JUDGE_TEMPLATE)
    settings = {"model_path": str(judge_model), "prompt_template": str(folder / "judge.txt"), "answer_tokens": ["m", "M"],
                "max_length": 200, "batch_size": 4, "dtype": "float32", "device": "cpu"}  # the model has 256 positions
    (folder / "local_judge" / "config.yaml").write_text(yaml.safe_dump({"backend": "local_hf", "settings": settings}))
    shutil.copytree(BUILTIN_CONFIGS / "local_judge_noisy", folder / "local_judge_noisy")


def test_small_spine_in_one_process_with_the_local_judge(repo, shared, tmp_path):
    work = tmp_path / "repo"
    copy_repo(repo, work)
    hub_dataset(tmp_path / "alpaca_farm")
    pretrained_llama(tmp_path / "llama")
    _judge_configs(tmp_path / "judges", tmp_path / "llama")  # the stand-in base model doubles as the tiny judge
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["scale"], params["judges"] = "small", "local"
    params["paths"] = {"shared_data": str(shared), "cache_dir": str(tmp_path / "annotation-cache")}
    merge(params, copy.deepcopy(MINIATURE))
    merge(params, {
        "launch": {"backend": "gloo", "num_threads": 1, "timeout_s": 120},  # CPU; one process (1 GPU per stage at small)
        "data": {"hub_id": str(tmp_path / "alpaca_farm")},
        "base_model": {"model": {"pretrained": {"small": str(tmp_path / "llama")}}},
        "preference_data": {"config_dirs": [str(tmp_path / "judges")]},
        "annotate": {"config_dirs": [str(tmp_path / "judges")]},
    })
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q -b main && git add -A && git commit -qm small-miniature", work)

    from afarm.config import load_params, section
    from afarm import launch
    from afarm.stages import _launch

    resolved = load_params(work / "params.yaml")
    assert section(resolved, "sft")["train"]["precision"] == "bf16_mixed"  # the paper's settings, not a CPU variant
    assert section(resolved, "ppo")["rollout_seeding"] == "per_chunk"
    assert section(resolved, "preference_data")["annotators"]["sim"] == "local_judge_noisy"
    assert section(resolved, "annotate")["annotators"] == {"sim": "local_judge", "human": "local_judge"}
    assert section(resolved, "launch")["device_memory_gb"] == 24  # every stage's plan is checked on one 24 GB GPU
    for module in ("sft", "reward_model", "ppo", "sft_samples", "preference_data", "generate"):
        assert launch.processes(module, resolved) == 1
    # the plan of the judging stages holds the local judge (fp32 here: 4 bytes per parameter of its config.json)
    from afarm.memory_plan import load_arch

    judge_params = load_arch(tmp_path / "llama").num_params()
    assert _launch.check_memory("annotate", resolved).get("judge parameters") == 4 * judge_params
    assert _launch.check_memory("preference_data", resolved).get("judge parameters") == 4 * judge_params

    targets = "results/annotations/sim/ppo_sim.json results/annotations/sim/sft.json"
    result = run(f"snakemake --cores 1 {targets}", work, timeout=1500)
    log = result.stdout + result.stderr
    for rule in ("data", "base_model", "sft", "sft_samples_preference", "preference_data_sim", "reward_model_sim", "ppo_sim", "generate_ppo_sim", "annotate_sim_sft"):
        assert f"rule {rule}:" in log
    sft = json.loads((work / "models" / "sft" / "config.json").read_text())
    assert sft["hidden_size"] == 64 and sft["vocab_size"] >= 400  # the local "pretrained" model, with "[PAD]" added
    assert json.loads((work / "results" / "metrics" / "base_model.json").read_text())["pretrained_commit"] is None  # a local folder
    pairs = json.loads((work / "data" / "preferences" / "sim.json").read_text())
    assert len(pairs) == 8 and {p["preference"] for p in pairs} <= {1, 2}
    metrics = json.loads((work / "results" / "metrics" / "preference_data_sim.json").read_text())
    assert "local_judge_noisy" in json.dumps(metrics)
    for name in ("ppo_sim", "sft"):
        records = json.loads((work / "results" / "annotations" / "sim" / f"{name}.json").read_text())
        assert len(records) == 4 and {r["annotator"] for r in records} == {"local_judge"}
        assert all(1.0 <= r["preference"] <= 2.0 for r in records)
