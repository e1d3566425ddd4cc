"""Run by tests/test_distributed_training.py under torchrun with 2 processes (or alone, for a look).

    python tests/distributed_check.py MODEL_DIR OUT_DIR
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_check.py MODEL_DIR OUT_DIR

Checks several things in one launch (a launch costs ~20 s) and writes OUT_DIR/report.json on rank 0:

* ``shards``: after ``prepare_model(bf16_mixed, gradient checkpointing)``, each rank's share
  (rows held / rows, dtype) of every parameter, and the dtypes a decoder layer's projection sees
  in the forward pass (input and weight);
* ``mixed`` / ``pure_bf16``: the share of weight elements that 10 AdamW steps at lr 1e-6 change,
  with fp32 masters (bf16_mixed) and with the weights themselves in bf16;
* ``run``: losses and gradient norms of an fp32 run (``config(precision="fp32")``) whose last
  optimizer step is short (3 micro-batches on 2 ranks: one rank runs a weight-0 pass), saved to
  OUT_DIR/model, for comparison with the same run in one process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from afarm import distributed
from afarm.models.lm import save_model
from afarm.models.train import TrainConfig, collate, tokenize_example, train_causal_lm

WORDS = "red green blue cat dog bird sun moon tree river stone cloud".split()
EXAMPLES = [(f"Name {i % 5} things.", " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 4))) for i in range(15)]


def config(**changes) -> TrainConfig:
    base = dict(learning_rate=1e-3, num_epochs=1, batch_size=4, micro_batch_size=1, warmup_ratio=0.0, lr_scheduler="constant",
                max_length=64, seed=0, num_threads=1, show_progress=False, precision="bf16_mixed", gradient_checkpointing=True)
    return TrainConfig(**{**base, **changes})


def changed_share(before: dict, after: dict) -> float:
    """Share of the weight elements that differ, over every parameter but the input embeddings (the
    rows of tokens absent from the data get no gradient, so AdamW leaves them as they are)."""
    keys = [k for k in before if "embed_tokens" not in k]
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in keys)
    return changed / sum(before[k].numel() for k in keys)


def main(model_dir: str, out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed.init_process_group(world, "gloo", timeout_s=60)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    report: dict = {"world_size": distributed.world_size()}

    # 1. sharding and precision
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = distributed.prepare_model(model, train=True, precision="bf16_mixed", gradient_checkpointing=True)
    report["shards"] = {name: {"local_rows": p.to_local().shape[0], "rows": p.shape[0], "local_numel": p.to_local().numel(),
                               "numel": p.numel(), "dtype": str(p.dtype), "dtensor": type(p).__name__ == "DTensor"}
                        for name, p in model.named_parameters()}
    seen = {}
    layer = model.model.layers[0].self_attn.q_proj
    hook = layer.register_forward_hook(lambda mod, args, out: seen.update(input=str(args[0].dtype), weight=str(mod.weight.dtype),
                                                                          output=str(out.dtype)))
    batch = collate([tokenize_example(tokenizer, p, r, 64, True) for p, r in EXAMPLES[:2]], tokenizer.pad_token_id)
    with torch.no_grad():
        model(**batch)
    hook.remove()
    report["compute"] = seen

    # 2. 10 steps at lr 1e-6: fp32 masters move (nearly) every weight
    before = distributed.full_state_dict(model)
    before = {k: v.clone() for k, v in before.items()} if before is not None else None  # one rank: may alias the weights
    stats = train_causal_lm(model, tokenizer, EXAMPLES * 3, config(learning_rate=1e-6, max_steps=10), response_only=True)
    after = distributed.full_state_dict(model)
    if distributed.is_main():
        report["mixed"] = {"changed": changed_share(before, after), "steps": stats["num_steps"]}
        # the same 10 steps with bf16 weights (no masters), one process: updates below half a bf16 step vanish
        plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        plain_before = {k: v.clone() for k, v in plain.state_dict().items()}
        optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-6, weight_decay=0.0)
        plain.train()
        for step in range(10):
            rows = [EXAMPLES[(step * 4 + k) % len(EXAMPLES)] for k in range(4)]
            batch = collate([tokenize_example(tokenizer, p, r, 64, True) for p, r in rows], tokenizer.pad_token_id)
            plain(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        report["pure_bf16"] = {"changed": changed_share(plain_before, plain.state_dict())}

    # 3. an fp32 run with a short last step (15 examples, 4 per step), saved
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    stats = train_causal_lm(model, tokenizer, EXAMPLES, config(precision="fp32", gradient_checkpointing=False), response_only=True)
    save_model(model, tokenizer, Path(out_dir) / "model")
    report["run"] = {k: stats[k] for k in ("losses", "grad_norms", "num_steps", "num_tokens")}
    if distributed.is_main():
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=1))
    distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
