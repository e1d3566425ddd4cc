"""Stand-ins for what the GPU scales download from the Hugging Face hub, written to local folders in
the hub layout (tests only; shared by the paper- and small-scale miniatures):

* ``hub_dataset``: ``tatsu-lab/alpaca_farm``'s ``alpaca_instructions`` config (a dataset card + jsonl),
  read by ``datasets.load_dataset`` exactly as the hub copy would be;
* ``pretrained_llama``: a small Llama saved as a converted checkpoint (bf16 weights, a tokenizer without a
  pad token), loaded with ``from_pretrained`` exactly as a hub model would be;
* ``MINIATURE``: params that shrink only sizes (data, batches, steps, lengths) of the spine
  data -> base_model -> sft -> preference_data -> reward_model -> ppo -> generate -> annotate. Plain
  values: they replace every scale's value (a miniature workspace runs one scale).
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = "red green blue cat dog bird sun moon tree river stone cloud fast slow big small warm cold".split()
SPLIT_SIZES = {"sft": 16, "preference": 8, "unlabeled": 8, "val": 4}  # hub split names


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(n))


def hub_dataset(folder: Path) -> None:
    """tatsu-lab/alpaca_farm's `alpaca_instructions` config in the hub layout (a dataset card + jsonl)."""
    (folder / "alpaca_instructions").mkdir(parents=True)
    for split, n in SPLIT_SIZES.items():
        rows = [{"instruction": f"Name {text(i + len(split), 2)} things ({split} {i}).", "input": "", "output": text(i, 4 + i % 5)} for i in range(n)]
        (folder / "alpaca_instructions" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = ["---", "configs:", "- config_name: alpaca_instructions", "  data_files:"]
    card += [f"  - split: {s}\n    path: alpaca_instructions/{s}.jsonl" for s in SPLIT_SIZES]
    (folder / "README.md").write_text("\n".join(card + ["---", ""]))


def pretrained_llama(folder: Path) -> None:
    """A small Llama in the hub layout, as a converted LLaMA checkpoint: bf16 weights, a tokenizer
    without a pad token (the base_model stage adds "[PAD]" as upstream)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from afarm.models.prompts import format_prompt
    from afarm.models.tokenizer import train_tokenizer

    texts = [format_prompt(f"Name {text(i, 2)} things.") + text(i, 6) for i in range(60)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


_TRAIN = {"batch_size": 4, "micro_batch_size": 1, "num_epochs": 1, "max_length": 128}
_GENERATION = {"max_new_tokens": 8, "batch_size": 2}
MINIATURE = {
    "data": {"sizes": {"sft": 16, "preference": 8, "unlabeled": 8, "validation": 4}, "eval_limit": 4},
    "sft": {"train": _TRAIN},
    "generate": dict(_GENERATION),
    "preference_data": {"limit": 8, "generation": dict(_GENERATION)},
    "reward_model": {"batch_size": 4, "micro_batch_size": 1, "num_epochs": 1, "eval_size": 2, "max_length": 128},
    "ppo": {"max_steps": 1, "rollout_batch_size": 4, "step_batch_size": 4, "rollout_micro_batch_size": 1,
            "step_micro_batch_size": 1, "response_len": 8, "query_len": 128},
}
