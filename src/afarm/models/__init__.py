"""Model layer: prompt format and chat template (prompts), byte-level BPE tokenizer (tokenizer), tiny
Llama or a pretrained checkpoint (lm), what a saved folder says about itself (card), training loop
(train) and batched seeded generation (generate)."""
