"""Optimizer-step time of a small Llama trained with 1 and with 2 CPU processes (gloo, FSDP2).

    python bench/bench_distributed.py [--steps 6] [--precision fp32|bf16_mixed]

Builds a small Llama (hidden 64, 2 layers) in a temporary folder, then runs ``train_causal_lm``
alone and under ``torch.distributed.run --nproc_per_node=2`` with the same global batch (8
examples of 1 per micro-batch), and prints seconds per optimizer step (the first step, which
includes warm-up, is left out). On CPU the two processes share the machine's cores and gloo's
collectives are slow, so this shows the overhead of sharding, not a GPU speed-up. No asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def build(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from afarm.models.tokenizer import train_tokenizer

    words = "red green blue cat dog bird sun moon tree river stone cloud".split()
    tokenizer = train_tokenizer([" ".join(words[(i + k) % len(words)] for k in range(8)) for i in range(60)], vocab_size=400)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def worker(folder: str, steps: int, precision: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afarm import distributed
    from afarm.models.train import TrainConfig, train_causal_lm

    distributed.init_process_group(int(os.environ.get("WORLD_SIZE", "1")), "gloo", 120)
    words = "red green blue cat dog bird sun moon tree river stone cloud".split()
    examples = [(f"Say {words[i % 12]}.", " ".join(words[(i + k) % 12] for k in range(20))) for i in range(8 * steps)]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    cfg = TrainConfig(learning_rate=1e-3, max_steps=steps, batch_size=8, micro_batch_size=1, warmup_ratio=0.0, lr_scheduler="constant",
                      max_length=128, seed=0, num_threads=1, show_progress=False, precision=precision)
    times = []
    original = distributed.optimizer_step

    def timed(*args, **kwargs):  # the end of each optimizer step
        out = original(*args, **kwargs)
        times.append(time.perf_counter())
        return out

    distributed.optimizer_step = timed
    train_causal_lm(model, AutoTokenizer.from_pretrained(folder), examples, cfg, response_only=True)
    if distributed.is_main():
        print(json.dumps({"seconds_per_step": (times[-1] - times[0]) / (len(times) - 1)}))
    distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16_mixed"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.precision)
        return
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        this = [str(Path(__file__).resolve()), "--worker", tmp, "--steps", str(args.steps), "--precision", args.precision]
        for n in (1, 2):
            cmd = [sys.executable, *this] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *this]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            line = next(line for line in out.splitlines() if line.startswith("{"))
            print(f"{n} process(es), {args.precision}: {json.loads(line)['seconds_per_step']:.3f} s per step (global batch 8, micro-batch 1)")


if __name__ == "__main__":
    main()
