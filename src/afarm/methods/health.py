"""Model-side inputs of the method-health measures (``afarm.metrics.health`` holds the statistics).

- ``response_logps``: for each (prompt, response), the sum of the response tokens' log-probabilities
  (EOS included, the tokens SFT trains on) and their count, under a causal LM. DPO's implicit
  reward, FeedME's and reward conditioning's log-likelihood margins, the per-example held-out loss
  of SFT and the log-ratio to SFT of a policy's samples (a KL estimate) are all built from it.
- ``labelled_pairs``: the held-out preference pairs of a world: two samples of the SFT model per
  pair on prompts no method trained on, judged by the world's labelling annotator, binarized as the
  training pairs are (``afarm.data.preferences.binarize``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from afarm.methods.dpo import sequence_logps
from afarm.models.lm import torch_threads
from afarm.models.train import IGNORE_INDEX, collate, tokenize_example


@torch.no_grad()
def response_logps(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                   batch_size: int = 32, num_threads: int | None = None) -> tuple[list[float], list[int]]:
    """(sum of log p over each response's label tokens, number of those tokens), in input order.

    Sequences are truncated to ``max_length`` tokens (prompt first, as in training); a response
    truncated away entirely has logp 0 over 0 tokens. Batches are formed by length (little padding);
    the values do not depend on the batching beyond float rounding.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    with torch_threads(num_threads):
        data = [tokenize_example(tokenizer, p, r, max_length, response_only=True) for p, r in zip(prompts, responses)]
        order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        logps, counts = [0.0] * len(data), [0] * len(data)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([data[i] for i in rows], tokenizer.pad_token_id).items()}
            n_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
            keep = n_tokens > 0
            values = torch.zeros(len(rows))
            if bool(keep.any()):
                values[keep.cpu()] = sequence_logps(model, {k: v[keep] for k, v in batch.items()}).float().cpu()
            for row, i in enumerate(rows):
                logps[i], counts[i] = float(values[row]), int(n_tokens[row])
        model.train(was_training)
    return logps, counts


def per_token_loss(logps: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Per example: minus the mean log-probability of its response tokens (examples with no token dropped)."""
    return [-lp / n for lp, n in zip(logps, counts) if n > 0]
