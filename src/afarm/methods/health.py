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

from dataclasses import dataclass, field
from typing import Sequence

import torch

from afarm.methods.dpo import sequence_logps
from afarm.models.lm import torch_threads
from afarm.models.train import IGNORE_INDEX, collate, tokenize_example


@dataclass
class MethodHealthConfig:
    # Held-out pairs per validation prompt (our choice). paper: 1 (2000 prompts, 2000 pairs);
    # tiny: 2, so the 200 validation prompts give 400 pairs (the issue asks for at least 200).
    pairs_per_prompt: int = 1
    # SFT samples per prompt for the best-of-n row: upstream's n = 16 (README best-of-n command).
    best_of_n: int = 16
    # Samples per validation prompt of each policy (PPO, Quark, expert iteration; reward conditioning with each
    # token) and of SFT, compared pairwise by the reward model (our choice; paper 1 on 2000 prompts; tiny 4 on
    # 200, as one sample per prompt leaves an SE near 0.06 from sampling alone). The SE is cluster-robust.
    policy_samples: int = 1
    # A check passes when the gain exceeds k standard errors (our choice: 2, one-sided ~2.3% by chance).
    k: float = 2.0
    # The labeller without label noise, per preference set (None: that column is left out). The ceiling an
    # RM can reach on noisy labels is this judge's agreement with them (p_label_flip 0.25: about 0.75).
    clean_annotators: dict[str, str | None] = field(default_factory=lambda: {"sim": None, "human": None})
    # Labeller of the held-out pairs of a set whose training labels come from the hub (people, paper's human
    # set): the world's evaluator is the nearest judge we can call (our choice).
    hub_labellers: dict[str, str] = field(default_factory=lambda: {"human": "alpaca_farm_greedy_gpt4"})
    max_length: int = 512  # as the methods' training max_length (dpo.sh --model_max_length 512)
    batch_size: int = 32  # sequences per scoring / log-probability pass (our choice)
    num_threads: int | None = None

    @property
    def sft_samples(self) -> int:
        """SFT samples per validation prompt (the `sft_samples` stage draws them): the held-out pairs'
        ``2 x pairs_per_prompt``, best-of-n's ``n`` and the policies' baseline ``policy_samples``, all prefixes."""
        return max(2 * self.pairs_per_prompt, self.best_of_n, self.policy_samples)


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
