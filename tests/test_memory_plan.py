"""Memory plan: the arithmetic against hand-computed LLaMA-7B numbers, PPO on 1 vs 8 GPUs, the
one-line error, architectures from config.json, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from afarm import memory_plan as mp
from afarm.config import load_params
from afarm.io import InputError

REPO = Path(__file__).resolve().parents[1]
LLAMA_7B = mp.KNOWN_ARCHS["huggyllama/llama-7b"]

# LLaMA-7B by hand (h 4096, L 32, i 11008, V 32000, 32 heads, untied head):
LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # q k v o + gate up down + 2 RMSNorms
ROOT = 32000 * 4096 + 4096 + 32000 * 4096  # embeddings, final norm, LM head
P = 32 * LAYER + ROOT
P_SCALAR = 32 * LAYER + 32000 * 4096 + 4096 + 4096  # reward model: scalar head (no bias) instead of the LM head
P_VALUE = P_SCALAR + 1  # PPO's value model: a scalar head with a bias
BACKBONE = P_SCALAR - 4096  # all but the scalar head; every first dimension divides by 4 and by 8
TENSORS_LM, TENSORS_VALUE = 32 * 9 + 3, 32 * 9 + 4  # tensors per model (AdamW keeps a 4-byte step for each)


def scalar_shard(devices: int, bias: int = 0) -> int:
    """A scalar-head model's shard on rank 0 of ``devices``: the head's one row is not split (rank 0 owns it,
    and FSDP pads every other rank's shard to it), its bias likewise."""
    return BACKBONE // devices + 4096 + bias


def paper_params() -> dict:
    params = load_params(REPO / "params.yaml")
    params["scale"] = "paper"
    return params


def test_llama_7b_parameter_count_by_hand():
    assert LAYER == 67_108_864 + 135_266_304 + 8_192 == 202_383_360
    assert P == 6_476_267_520 + 262_144_000 + 4_096 == 6_738_415_616  # the well-known "6.74B"
    assert LLAMA_7B.layer_params() == LAYER and LLAMA_7B.root_params() == ROOT
    assert LLAMA_7B.num_params() == P and LLAMA_7B.num_params("scalar") == P_SCALAR == 6_607_347_712


def test_sft_7b_on_8_a100_by_hand():
    plan = mp.plan("sft", LLAMA_7B, devices=8, memory_gb=80, micro_batch=1, seq_len=512)
    assert plan.get("parameters") == 3_369_207_808  # fp32 master weights 26.96 GB / 8 = 3.37 GB
    assert plan.get("gradients") == 3_369_207_808
    # two fp32 Adam states: 53.9 GB / 8, and a 4-byte step for each of the 32 x 9 + 3 = 291 tensors
    assert plan.get("optimizer state") == 6_738_415_616 + 4 * TENSORS_LM
    # root (2 x 262,148,096 bytes of bf16 params + the same of bf16 grads) + 2 gathered bf16 layers
    # (4 x 202,383,360) + one layer's bf16 and fp32 grads (6 x 202,383,360)
    assert plan.get("FSDP buffers") == 1_048_592_384 + 2_023_833_600 == 3_072_425_984
    # one layer at b=1, s=512: 512 * (24*4096 + 8*11008) + 2*32*512^2 = 95,420,416 + 16,777,216
    per_layer = 112_197_632
    head = 8 * 512 * 4096 + 10 * 512 * 32000  # final norm + head input, logits
    assert plan.activations_full == 32 * per_layer + head == 3_770_941_440
    assert plan.activations_checkpointed == 32 * 2 * 512 * 4096 + per_layer + head == 427_032_576
    assert plan.total_bytes == 2 * 3_369_207_808 + 6_738_415_616 + 4 * 291 + 3_072_425_984 + 3_770_941_440 == 20_320_199_820
    assert plan.fits and plan.peak_phase == "train"
    checkpointed = mp.plan("sft", LLAMA_7B, devices=8, micro_batch=1, seq_len=512, gradient_checkpointing=True)
    assert checkpointed.total_bytes == 20_320_199_820 - 3_770_941_440 + 427_032_576


def test_ppo_needs_eight_gpus():
    """Policy and value trained (fp32, Adam), reference and reward model frozen (bf16), all sharded."""
    steps = 4 * (TENSORS_LM + TENSORS_VALUE)  # AdamW's step scalars
    persistent_1 = 16 * (P + P_VALUE) + 2 * (P + P_SCALAR) + steps  # 240.2 GB on one device
    rollout = (
        2 * (2 * ROOT + 2 * (32000 * 4096 + 2 * 4096) + 1) + 4 * LAYER  # bf16 roots of the 4 models (a value bias), 2 layers
        + 2 * 32 * 32 * 492 * 4096 * 2  # KV cache: 32 rollouts x (192 + 300) tokens
        + 32 * 492 * (24 * 4096 + 8 * 11008) + 2 * 32 * 492**2 * 32  # one layer's workspace
        + 12 * 32 * 492 * 32000  # policy + reference logits over the rollout
    )
    assert rollout == 20_112_457_730
    on_eight = mp.check_stage("ppo", paper_params(), devices=8, memory_gb=80)
    persistent_8 = 16 * P // 8 + 16 * scalar_shard(8, bias=1) + 2 * P // 8 + 2 * scalar_shard(8) + steps
    assert on_eight.fits and on_eight.total_bytes == persistent_8 + rollout == 50_140_492_078
    assert on_eight.peak_phase == "rollout"
    with pytest.raises(mp.PlanError) as err:
        mp.check_stage("ppo", paper_params(), devices=1, memory_gb=80)
    message = str(err.value)
    assert err.value.plan.total_bytes == persistent_1 + rollout == 260_336_199_982
    assert isinstance(err.value, InputError) and "\n" not in message
    assert "stage 'ppo' needs 260.3 GB per device, 80 GB available (1 x 80 GB" in message


def test_every_paper_stage_fits_on_8_a100_and_training_does_not_fit_on_one():
    params = paper_params()
    for kind in mp.STAGE_MODELS:
        assert mp.check_stage(kind, params, devices=8).fits
        one = mp.plan(kind, LLAMA_7B, devices=1, **mp.stage_inputs(kind, params))
        assert one.fits == (kind in mp.INFERENCE_KINDS), kind  # 16 bytes per trained parameter > 80 GB
    assert mp.check_stage("data", params) is None  # holds no model


def test_agrees_with_upstreams_hardware_notes():
    """Upstream README ("Running reference methods"): SFT and reward modeling fit on 4 80GB A100s,
    PPO needs at least 8. On 4 x 80 GB PPO needs about 18 (P + P_scalar) / 4 = 60.06 GB + its rollout."""
    params = paper_params()
    assert mp.check_stage("sft", params, devices=4).fits and mp.check_stage("reward_model", params, devices=4).fits
    persistent_4 = 18 * P // 4 + 16 * scalar_shard(4, bias=1) + 2 * scalar_shard(4) + 4 * (TENSORS_LM + TENSORS_VALUE)
    assert mp.plan("ppo", LLAMA_7B, devices=4, **mp.stage_inputs("ppo", params)).total_bytes == persistent_4 + 20_112_457_730
    with pytest.raises(mp.PlanError, match="needs 80.2 GB per device, 80 GB available"):
        mp.check_stage("ppo", params, devices=4)


def test_every_gpu_stage_of_the_dag_has_a_plan():
    from afarm import dag

    gpu_modules = {s.module for s in dag.STAGES if s.resources("paper").gpus}
    # base_model only evaluates the pretrained model's loss (bf16, forward only): no plan needed.
    assert gpu_modules - set(mp.STAGE_MODELS) == {"base_model"}
    assert set(mp.STAGE_MODELS) <= gpu_modules


def test_tiny_scale_fits_trivially():
    params = load_params(REPO / "params.yaml")
    assert params["scale"] == "tiny"
    for kind in mp.STAGE_MODELS:
        plan = mp.check_stage(kind, params, devices=1, memory_gb=1)
        assert plan.arch.hidden_size == 128 and plan.total_gb < 1


def test_architecture_from_config_json_and_unknown_ids(tmp_path):
    config = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = mp.load_arch(tmp_path)
    assert arch.kv_dim == 32
    assert arch.layer_params() == 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    assert arch.num_params() == 2 * arch.layer_params() + 100 * 64 + 64  # tied: no separate head
    assert mp.kv_cache(arch, b=3, s=10) == 2 * 2 * 3 * 10 * 32 * 2
    plan = mp.check_stage("sft", paper_params(), model_dir=tmp_path)  # the folder wins over base_model
    assert plan.arch == arch
    params = paper_params()
    params["base_model"]["model"]["pretrained"] = {"tiny": None, "paper": "someone/unknown-7b"}
    with pytest.raises(InputError, match="base_model.model.pretrained.*not a known hub id"):
        mp.check_stage("sft", params)


def test_markdown_table_and_no_heavy_imports():
    plans = [mp.plan("sft", LLAMA_7B, devices=n, micro_batch=1, seq_len=512) for n in (8, 1)]
    table = mp.markdown_table(plans).splitlines()
    assert len(table) == 4 and table[2].startswith("| sft | 8 x 80 GB | 3.4 | 3.4 | 6.7 | 3.1 | 3.8 / 0.4 |")
    assert table[2].endswith("| 20.3 | yes |") and table[3].endswith("| **no** |")
    code = "import sys, afarm.memory_plan; assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_the_docs_table_is_what_the_plan_computes():
    """docs/memory_plan.md's table is bench/bench_memory_plan.py's output for today's params.yaml."""
    from pathlib import Path

    from afarm import memory_plan as mp
    from afarm.config import load_params

    repo = Path(__file__).resolve().parents[1]
    table = mp.markdown_table(mp.paper_plans(load_params(repo / "params.yaml")))
    assert table.strip() in (repo / "docs" / "memory_plan.md").read_text(), "rerun bench/bench_memory_plan.py and paste its table"


def test_the_paper_scale_table_is_what_the_plan_computes():
    """docs/paper_scale.md's memory table (in the README until issue #33) is afarm.memory_plan.fit_summary's."""
    from pathlib import Path

    from afarm import memory_plan as mp
    from afarm.config import load_params

    repo = Path(__file__).resolve().parents[1]
    summary = mp.fit_summary(load_params(repo / "params.yaml"))
    assert "| ppo | 50.1 | 260.3 (does not fit) |" in summary  # the numbers docs/memory_plan.md explains
    assert summary in (repo / "docs" / "paper_scale.md").read_text(), "paste afarm.memory_plan.fit_summary's table into docs/paper_scale.md"


def test_the_docs_small_scale_table_is_what_the_plan_computes():
    """docs/memory_plan.md's small-scale table is `bench/bench_memory_plan.py --scale small`'s output."""
    params = load_params(REPO / "params.yaml")
    plans = mp.scale_plans(params, "small", "local")
    table = mp.markdown_table(plans)
    assert table.strip() in (REPO / "docs" / "memory_plan.md").read_text(), "rerun bench/bench_memory_plan.py --scale small and paste its table"
    assert all(p.fits and p.memory_gb == 24 for p in plans)
    assert f"{mp.smallest_device_gb(plans):.1f}" == "23.6"  # the number the docs and README quote


def test_every_paper_stage_fits_the_host_memory_its_slurm_job_asks_for():
    """Host memory per node (rank 0 loads, the others build on the meta device): PPO holds the reward model
    and its copy, the value model, in fp32 at once (8 bytes per parameter) plus 4 GB per process; every
    stage fits the stage table's mem_mb, and docs/memory_plan.md carries bench/bench_memory_plan.py --host."""
    from afarm import dag, launch

    params = paper_params()
    assert mp.host_ram("ppo", LLAMA_7B, 8) == 8 * P + 8 * 4 * 10**9  # 86 GB
    assert mp.host_ram("method_health", LLAMA_7B, 1) == 4 * P + 4 * 10**9  # one fp32 model at a time on the CPU
    for stage in dag.STAGES:
        if stage.module in mp.HOST_COPIES:
            need = mp.host_ram(stage.module, LLAMA_7B, launch.processes(stage.module, params))
            assert need <= stage.resources("paper").mem_mb * 1e6, stage.name
    table = subprocess.run([sys.executable, str(REPO / "bench" / "bench_memory_plan.py"), "--host"], capture_output=True,
                           text=True, check=True).stdout.split("\n\n", 1)[1]
    assert table.strip() in (REPO / "docs" / "memory_plan.md").read_text(), "rerun bench/bench_memory_plan.py --host and paste its table"
