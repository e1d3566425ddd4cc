"""The first GPU hour: run the paper's code path on random weights and print what it really holds, as JSON.

    python bench/gpu_check.py                                   # one GPU: a ~1B Llama (random weights, no hub)
    python -m torch.distributed.run --standalone --nproc_per_node=8 bench/gpu_check.py   # a node
    python bench/gpu_check.py --size toy                        # CPU, seconds (what the test runs)

The same functions the stages call, with the paper's precision (``bf16_mixed``: fp32 masters, bf16
compute) and gradient checkpointing: SFT steps (``afarm.models.train.train_causal_lm``), two PPO steps
with rollouts sampled from the sharded policy (``afarm.methods.ppo.train_ppo``), data-parallel
generation from a bf16 copy (``afarm.models.generate.generate``), and save + reload of the trained
policy. For each phase it prints the measured peak (``torch.cuda.max_memory_allocated`` on a GPU; on a
CPU, the bytes the plan's tensor terms hold at the end of the phase, ``afarm.held_memory``), the
memory plan's number for the same shape (``afarm.memory_plan.plan``), tokens per second and seconds.
No network: the model is a Llama config with random weights and a tokenizer trained on the spot.
Check what a run will call before it spends GPU time: this calls nothing outside the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from afarm import distributed, held_memory  # noqa: E402
from afarm import memory_plan as mp  # noqa: E402
from afarm.methods.ppo import PPOConfig, ValueModel, train_ppo  # noqa: E402
from afarm.methods.reward_model import init_reward_model, score  # noqa: E402
from afarm.models.generate import GenerationConfig, generate  # noqa: E402
from afarm.models.lm import ModelConfig, build_model, load_model, save_model  # noqa: E402
from afarm.models.prompts import format_prompt  # noqa: E402
from afarm.models.tokenizer import train_tokenizer  # noqa: E402
from afarm.models.train import TrainConfig, train_causal_lm  # noqa: E402

# ~1.1B parameters (TinyLlama's shape, 32k vocabulary): fits one 24-80 GB GPU for every phase here.
SIZES = {
    "1b": ModelConfig(hidden_size=2048, num_layers=22, num_heads=32, intermediate_size=5632, max_position_embeddings=2048,
                      tie_word_embeddings=False, vocab_size=32000),
    "toy": ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=512,
                       tie_word_embeddings=False),
}
WORDS = "the a red green blue cat dog bird sun moon tree river stone cloud fast slow big small runs sees".split()


def texts(n: int, words: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(words)) for i in range(n)]


class Phase:
    """Time a phase and measure its peak: CUDA's allocator peak; on a CPU, which has no allocator statistics,
    the largest sum of the plan's tensor terms that ``afarm.held_memory`` recorded during the phase."""

    def __init__(self, name: str, planned: int, report: dict, probe: Path):
        self.name, self.planned, self.report = name, planned, report
        self.probe = probe / f"held.rank{distributed.rank()}.jsonl"

    def lines(self) -> list[str]:
        return self.probe.read_text().splitlines() if self.probe.exists() else []

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.seen = len(self.lines())
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            measured, how = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
        else:
            terms = [json.loads(line) for line in self.lines()[self.seen:]]
            measured = max((sum(v for k, v in t.items() if k not in ("phase", "rank", "world_size", "reduced")) for t in terms), default=0)
            measured = measured or getattr(self, "held", 0)  # no trainer in the phase: what it says it holds
            how = "largest sum of the tensor terms held (afarm.held_memory; CPU: activations not counted)"
        self.report[self.name] = {"seconds": time.perf_counter() - self.start, "measured_bytes": measured, "measured_how": how,
                                  "planned_bytes": self.planned, "tokens": getattr(self, "tokens", 0)}
        self.report[self.name]["tokens_per_second"] = self.report[self.name]["tokens"] / max(self.report[self.name]["seconds"], 1e-9)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--sft_steps", type=int, default=4)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    distributed.init_process_group(world, backend, timeout_s=600)
    torch.manual_seed(0)
    report: dict = {"size": args.size, "world_size": world, "device": str(distributed.device()), "torch": torch.__version__}

    prompts = [format_prompt(t) for t in texts(64, 6)]
    tokenizer = train_tokenizer(prompts + texts(256, 12), vocab_size=SIZES[args.size].vocab_size or 1000)
    cfg = SIZES[args.size]
    with tempfile.TemporaryDirectory() as own:
        tmp = Path(distributed.broadcast_object(own))  # rank 0's folder (one machine)
        probe = Path(own) / "probe"
        probe.mkdir()
        os.environ[held_memory.ENV] = str(probe)  # afarm.held_memory records each rank's tensor terms there
        if distributed.is_main():  # plain Hugging Face folders (afarm's save_model waits for every rank)
            build_model(cfg, tokenizer).save_pretrained(tmp / "base")
            tokenizer.save_pretrained(tmp / "base")
        distributed.barrier()
        arch = mp.load_arch(tmp / "base")
        report["parameters"] = arch.num_params()

        # SFT: the paper's precision and checkpointing, micro-batches of 1 x 512 tokens
        seq = 512 if args.size == "1b" else 64
        train = TrainConfig(learning_rate=1e-5, batch_size=world, micro_batch_size=1, max_steps=args.sft_steps, max_length=seq,
                            warmup_ratio=0.0, precision="bf16_mixed", gradient_checkpointing=True, show_progress=False)
        examples = [(p, " ".join(texts(1, seq)[0].split() * 40)) for p in prompts]
        model, tok = load_model(tmp / "base", "float32", rank0_only=True)
        with Phase("sft", mp.plan("sft", arch, devices=world, micro_batch=1, seq_len=seq, gradient_checkpointing=True).total_bytes, report, probe) as phase:
            stats = train_causal_lm(model, tok, examples, train, response_only=True)
            phase.tokens = stats["num_tokens"]
        save_model(model, tok, tmp / "sft")
        del model
        if distributed.is_main():
            init = init_reward_model(tmp / "sft", tok, seed=0)
            init.save_pretrained(tmp / "rm")
            tok.save_pretrained(tmp / "rm")
            del init
        distributed.barrier()

        # PPO: two steps, rollouts from the sharded policy (synced), value copied from the reward model
        ppo = PPOConfig(max_steps=2, rollout_batch_size=8 * world, rollout_micro_batch_size=8, step_batch_size=4 * world,
                        step_micro_batch_size=2, query_len=64, response_len=64 if args.size == "1b" else 8, precision="bf16_mixed",
                        gradient_checkpointing=True, show_progress=False, rollout_seeding="per_chunk")

        def prepare(m, trained):
            return distributed.prepare_model(m, train=trained, precision="bf16_mixed", gradient_checkpointing=trained)

        from afarm.methods.reward_model import load_reward_model

        reward_model, _ = load_reward_model(tmp / "rm", rank0_only=True)
        value = prepare(ValueModel.from_reward_model(reward_model).float(), True)
        reward_model = prepare(reward_model, False)
        policy = prepare(load_model(tmp / "sft", "float32", rank0_only=True)[0], True)
        reference = prepare(load_model(tmp / "sft", "bfloat16", rank0_only=True)[0], False)
        s = ppo.query_len + ppo.response_len
        planned = mp.plan("ppo", arch, devices=world, micro_batch=ppo.step_micro_batch_size, seq_len=s, gradient_checkpointing=True,
                          generation_batch=ppo.rollout_micro_batch_size, generation_len=s).total_bytes
        with Phase("ppo", planned, report, probe) as phase:
            result = train_ppo(policy, reference, value, functools.partial(score, reward_model, tok, batch_size=8), tok, prompts, ppo)
            phase.tokens = int(sum(r["response_length"] for r in result["log"]) * ppo.rollout_batch_size)
        save_model(policy, tok, tmp / "ppo")
        del policy, reference, value, reward_model

        # generation: data-parallel, a bf16 copy per rank (as the generate stage)
        gen = GenerationConfig(max_new_tokens=64 if args.size == "1b" else 8, batch_size=8, show_progress=False)
        copy, _ = load_model(tmp / "ppo", "bfloat16", device=distributed.device())
        with Phase("generate", mp.plan("generate", arch, devices=world, generation_batch=gen.batch_size,
                                       generation_len=mp.PROMPT_TOKENS + gen.max_new_tokens).total_bytes, report, probe) as phase:
            outputs = generate(copy, tok, prompts, gen)
            phase.tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs)
            phase.held = sum(p.numel() * p.element_size() for p in copy.parameters())  # the bf16 copy
        del copy

        # save and reload: the saved fp32 policy loads as an ordinary folder and equals what was trained
        reloaded, _ = load_model(tmp / "ppo", "float32")
        saved = json.loads((tmp / "ppo" / "config.json").read_text())
        report["reload"] = {"num_parameters": sum(p.numel() for p in reloaded.parameters()),
                            "dtype": str(next(reloaded.parameters()).dtype), "architecture": saved["architectures"][0]}
        report["sft_losses"] = stats["losses"]
        report["ppo_scores"] = [r["score"] for r in result["log"]]
        report["sft_config"] = asdict(train)
        distributed.barrier()  # every rank is done with rank 0's folder before it goes
    if distributed.is_main():
        text = json.dumps(report, indent=1)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    distributed.destroy_process_group()


if __name__ == "__main__":
    main()
