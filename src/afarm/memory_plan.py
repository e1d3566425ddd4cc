"""Memory plan: will a stage fit on its devices? Checked before launch, from params alone.

Standard library only (no torch or transformers), so a launcher can call it before heavy imports.
``check_stage(module, params)`` is the entry point for stages; ``plan`` / ``check`` take the
numbers directly. All sizes are bytes per device; 1 GB = 1e9 bytes.

Method (for a LLaMA-style decoder: ``L`` layers, hidden ``h``, MLP ``i``, vocabulary ``V``, ``a``
heads; micro-batch ``b`` sequences of ``s`` tokens; ``N`` devices; ``P`` a model's parameters):

* Training stages shard every model with FSDP full-shard over ``N`` devices (``fully_shard`` per
  decoder layer, then the root), fp32 master weights and bf16 compute. ``P/N`` below is exact: each
  weight's first dimension is cut in ``N`` chunks of ``ceil(rows/N)`` rows, and FSDP2 keeps the
  parameter and gradient shards padded to that size (AdamW's states are the unpadded shards, plus
  a 4-byte ``step`` per tensor); rank 0 holds the most. Checked against the bytes ranks really hold
  in 2-process runs of every trainer (``afarm.held_memory``, ``tests/test_memory_measured.py``):
  - trained model: fp32 parameters ``4P/N``, fp32 gradients ``4P/N``, AdamW's two fp32 states ``8P/N``;
    gradients are reduce-scattered after every micro-batch; with ``launch.no_sync_accumulation`` a
    step's micro-batches before its last keep the whole fp32 gradient ``4P`` on every device as well;
  - frozen model (reference, reward model): bf16 parameters ``2P/N`` (fp32 ``4P/N`` when the stage's
    precision is fp32);
  - FSDP buffers: the root's parameters (embeddings, final norm, head; ``R``) stay gathered in bf16
    for the step (``2R`` per model that runs; the root does not reshard after forward), a trained
    root's bf16 gradients (``2R``), ``gathered_layers`` decoder layers in bf16 at a time (the
    running one and the prefetched next, ``2 x layer`` each) and one layer's gradients in bf16 and
    in the fp32 reduce-scatter copy (``6 x layer``).
* Inference stages (generate, sft_samples, best_of_n, method_health) hold each model whole in bf16
  (``2P``) on every device; more devices split the prompts, not the model. method_health's
  log-probability passes add one layer's workspace and the logits ``6*s*b*V`` (bf16, fp32 log-softmax).
* Activations kept for backward, per decoder layer (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", Sec. 4.1: count the bytes of every tensor autograd
  saves; their GPT block gives ``sbh(34 + 5as/h)``; the same count for the LLaMA block as
  Hugging Face implements it, bf16 compute, eager attention, no dropout):
  ``A = s*b*(24h + 8i) + 2*a*s^2*b`` -- two RMSNorms (fp32 input 4sbh + bf16 normalised 2sbh each),
  the inputs of the q/k/v, output and gate/up projections (3 x 2sbh), q, k, v after RoPE (6sbh),
  the SwiGLU gate, SiLU, up and product tensors (4 x 2sbi), the softmax probabilities (2as^2b).
  Without checkpointing: ``L*A``; with gradient checkpointing (per decoder layer) only each layer's
  input (``L * 2sbh``) plus one layer recomputed in backward (``A``). Plus the head: final norm and
  head input ``8sbh``, and for a language model the logits ``10*s*b*V`` (bf16 logits, their fp32
  copy and the fp32 log-softmax kept for the loss). A no-grad forward inside the step (DPO's and
  Quark's reference) adds one layer's worth of workspace ``A`` and its logits ``6*s*b*V``.
* Generation: the KV cache ``2 * L * b * s * h_kv * 2`` bytes (K and V, bf16, ``s`` = prompt +
  new tokens), a workspace of one layer's activations ``A`` (the prefill is the largest forward),
  and for PPO the logits of the policy and the reference over the rollout (``2 x 6*s*b*V``).
* Local judges (``local_hf`` annotators, the small scale's open judge; pool members included): the
  stages that judge (annotate, analyze_annotators, preference_data, method_health) load the judge whole in its dtype
  (``2P`` in bf16) for a "judging" phase, with one no-cache forward of ``batch_size`` prompts of
  ``max_length`` tokens: one layer's workspace ``A`` and the logits ``b*s*V`` in the judge's dtype.
* Total = persistent rows (parameters, gradients, optimizer state) + the largest phase (training
  step, rollout, generation, scoring). ``fits`` when the total is at most ``memory_gb``; an
  "80 GB" A100 has 81920 MiB = 85.9e9 bytes, so planning against 80e9 leaves about 5.9 GB for the
  CUDA context, NCCL buffers and allocator fragmentation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afarm.io import InputError

GB = 1e9


@dataclass(frozen=True)
class Arch:
    """A LLaMA-style decoder's shape (Hugging Face config.json names in comments)."""

    hidden_size: int  # hidden_size
    num_layers: int  # num_hidden_layers
    intermediate_size: int  # intermediate_size
    vocab_size: int  # vocab_size (embedding rows)
    num_heads: int  # num_attention_heads
    num_kv_heads: int | None = None  # num_key_value_heads (None: = num_heads)
    tie_word_embeddings: bool = False  # tie_word_embeddings (LLaMA: False)
    attention_bias: bool = False  # biases on q, k, v (LLaMA: none; Qwen2: always, model_type "qwen2")

    @property
    def kv_dim(self) -> int:
        return self.hidden_size * (self.num_kv_heads or self.num_heads) // self.num_heads

    def layer_params(self) -> int:
        """q and o (h x h each), k and v (h x h_kv each), gate/up/down (3 x h x i), two RMSNorm weights,
        and the q, k, v biases where the architecture has them (h + 2 h_kv)."""
        h = self.hidden_size
        bias = h + 2 * self.kv_dim if self.attention_bias else 0
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.intermediate_size + 2 * h + bias

    def root_params(self, head: str = "lm") -> int:
        """Parameters outside the decoder layers: embeddings, final norm and the head (an untied LM
        head ``V x h``, a reward model's scalar head ``h``, a value head with its bias ``h + 1``; a tied
        LM head adds nothing)."""
        h = self.hidden_size
        head_params = {"scalar": h, "value": h + 1}.get(head, 0 if self.tie_word_embeddings else self.vocab_size * h)
        return self.vocab_size * h + h + head_params

    def num_params(self, head: str = "lm") -> int:
        return self.num_layers * self.layer_params() + self.root_params(head)

    def tensor_shapes(self, head: str = "lm") -> list[tuple[int, ...]]:
        """The shape of every parameter tensor, as ``model.parameters()`` yields them (a tied head once)."""
        h, kv, i, v = self.hidden_size, self.kv_dim, self.intermediate_size, self.vocab_size
        layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i), (h,), (h,)]
        layer += [(h,), (kv,), (kv,)] if self.attention_bias else []
        heads = {"scalar": [(1, h)], "value": [(1, h), (1,)], "lm": [] if self.tie_word_embeddings else [(v, h)]}
        return layer * self.num_layers + [(v, h), (h,)] + heads[head]

    def shard_numel(self, head: str, devices: int, rank: int = 0, padded: bool = True) -> int:
        """Elements of rank ``rank``'s FSDP shards over ``devices``: each tensor's rows cut in chunks of
        ``ceil(rows / devices)``; ``padded``: as FSDP2 stores parameter and gradient shards (every rank a
        whole chunk), else the rows the rank owns (AdamW's states)."""
        total = 0
        for shape in self.tensor_shapes(head):
            chunk = -(-shape[0] // devices)
            rows = chunk if padded else max(0, min(chunk, shape[0] - rank * chunk))
            total += rows * math.prod(shape[1:])
        return total


# Architectures of hub ids we may meet without a local folder (no network): from each id's config.json.
KNOWN_ARCHS = {
    # huggyllama/llama-7b config.json; LLaMA paper (Touvron et al. 2023) Table 2 for the 7B model
    "huggyllama/llama-7b": Arch(hidden_size=4096, num_layers=32, intermediate_size=11008, vocab_size=32000, num_heads=32),
    # the small scale's base model, Qwen/Qwen2.5-0.5B config.json: 494,032,768 parameters (tied embeddings)
    "Qwen/Qwen2.5-0.5B": Arch(hidden_size=896, num_layers=24, intermediate_size=4864, vocab_size=151936, num_heads=14,
                              num_kv_heads=2, tie_word_embeddings=True, attention_bias=True),
    # the small scale's open judge, Qwen/Qwen2.5-7B-Instruct config.json: 7,615,616,512 parameters
    "Qwen/Qwen2.5-7B-Instruct": Arch(hidden_size=3584, num_layers=28, intermediate_size=18944, vocab_size=152064, num_heads=28,
                                     num_kv_heads=4, tie_word_embeddings=False, attention_bias=True),
}


def arch_from_config(config: dict[str, Any]) -> Arch:
    return Arch(
        hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        num_heads=int(config["num_attention_heads"]),
        num_kv_heads=config.get("num_key_value_heads"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
    )


def load_arch(name_or_path: str | Path) -> Arch:
    """The architecture of a local model folder (its config.json), else of a known hub id."""
    from afarm.models.hub import split_revision

    name_or_path = split_revision(str(name_or_path))[0]  # the architecture does not depend on the revision
    path = Path(name_or_path)
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            return arch_from_config(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(config_file, f"not a decoder config the memory plan can read ({err!r})") from err
    if str(name_or_path) in KNOWN_ARCHS:
        return KNOWN_ARCHS[str(name_or_path)]
    raise InputError(path, f"no config.json there and not a known hub id ({', '.join(KNOWN_ARCHS)})")


# ---------------------------------------------------------------- stage kinds


@dataclass(frozen=True)
class Model:
    role: str  # policy, value, reference, reward model
    head: str  # "lm" (vocabulary logits), "scalar" (reward model: no bias) or "value" (PPO's value head: with bias)
    trained: bool


POLICY, REFERENCE = Model("policy", "lm", True), Model("reference", "lm", False)
VALUE, REWARD_TRAINED, REWARD = Model("value", "value", True), Model("reward model", "scalar", True), Model("reward model", "scalar", False)
FROZEN_POLICY = Model("policy", "lm", False)

# Models each stage kind holds (the first trained ones are in the training graph).
STAGE_MODELS: dict[str, tuple[Model, ...]] = {
    "sft": (POLICY,),
    "feedme": (POLICY,),
    "reward_conditioning": (POLICY,),
    "expert_iteration": (POLICY,),  # its SFT step (the reward model that scores the samples first is freed before it)
    "reward_model": (REWARD_TRAINED,),
    "dpo": (POLICY, REFERENCE),
    "ppo": (POLICY, VALUE, REFERENCE, REWARD),  # policy and value optimised together (ActorCritic)
    "quark": (POLICY, REFERENCE, REWARD),
    "generate": (FROZEN_POLICY,),
    "sft_samples": (FROZEN_POLICY,),  # preference_data holds no model: it judges sft_samples' pairs
    "best_of_n": (REWARD,),  # scores sft_samples' samples
    # SFT (held throughout), the model under check (one at a time), and the base model (SFT rows) or the
    # reward model (after them): planned as three language models, the larger head (an upper bound).
    "method_health": (FROZEN_POLICY, Model("checked model", "lm", False), Model("base or reward model", "lm", False)),
}
INFERENCE_KINDS = {"generate", "sft_samples", "best_of_n", "method_health"}


@dataclass(frozen=True)
class Row:
    name: str
    bytes: int
    phase: str = ""  # "" = held for the whole run; else the phase it belongs to
    how: str = ""

    @property
    def gb(self) -> float:
        return self.bytes / GB


@dataclass
class Plan:
    stage: str
    arch: Arch
    devices: int
    memory_gb: float
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    generation_batch: int = 0
    generation_len: int = 0
    rows: list[Row] = field(default_factory=list)
    judge_batch: int = 0  # prompts x tokens of a local judge's forward (0: no local judge)
    judge_len: int = 0
    activations_full: int = 0  # the training activations without / with checkpointing (both reported)
    activations_checkpointed: int = 0

    def phase_bytes(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for row in self.rows:
            if row.phase:
                totals[row.phase] = totals.get(row.phase, 0) + row.bytes
        return totals

    @property
    def peak_phase(self) -> str:
        phases = self.phase_bytes()
        return max(phases, key=phases.get) if phases else ""

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows if not r.phase) + max(self.phase_bytes().values(), default=0)

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.memory_gb * GB

    def get(self, name: str, phase: str | None = None) -> int:
        """Bytes of the rows called ``name`` (in ``phase`` when given), summed."""
        return sum(r.bytes for r in self.rows if r.name == name and (phase is None or r.phase == phase))

    def summary(self) -> str:
        """One line: the stage, the need and what is available, and the largest rows of the peak."""
        counted = [r for r in self.rows if r.phase in ("", self.peak_phase)]
        parts = ", ".join(f"{r.name}{f' ({r.phase})' if r.phase else ''} {r.gb:.1f}" for r in sorted(counted, key=lambda r: -r.bytes)[:4])
        verdict = "fits" if self.fits else "does not fit"
        shape = []
        if self.micro_batch:
            shape.append(f"micro-batch {self.micro_batch} x {self.seq_len} tokens, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        if self.generation_batch:
            shape.append(f"generation {self.generation_batch} x {self.generation_len} tokens")
        if self.judge_batch:
            shape.append(f"judge {self.judge_batch} x {self.judge_len} tokens")
        return (
            f"stage '{self.stage}' needs {self.total_gb:.1f} GB per device, {self.memory_gb:g} GB available "
            f"({self.devices} x {self.memory_gb:g} GB, {', '.join(shape)}): {verdict}; largest GB: {parts}"
        )

    def markdown(self) -> str:
        """The rows of this plan as a Markdown table."""
        lines = [f"**{self.stage}** on {self.devices} x {self.memory_gb:g} GB", "", "| row | phase | GB per device | how |", "|---|---|---:|---|"]
        lines += [f"| {r.name} | {r.phase or 'whole run'} | {r.gb:.2f} | {r.how} |" for r in self.rows]
        lines.append(f"| **total** | peak: {self.peak_phase or '-'} | **{self.total_gb:.2f}** | {'fits' if self.fits else 'DOES NOT FIT'} in {self.memory_gb:g} GB |")
        return "\n".join(lines)


class PlanError(InputError):
    """A stage does not fit its devices: one line naming the stage and the numbers."""

    def __init__(self, plan: Plan, path: str = "params.yaml"):
        self.plan = plan
        super().__init__(path, f"memory plan: {plan.summary()}; lower the micro-batch, turn on gradient checkpointing or use more devices")


# ---------------------------------------------------------------- arithmetic


def layer_activations(arch: Arch, b: int, s: int) -> int:
    """Bytes one decoder layer saves for backward (see the module docstring)."""
    h, i, a = arch.hidden_size, arch.intermediate_size, arch.num_heads
    return s * b * (24 * h + 8 * i) + 2 * a * s * s * b


def activations(arch: Arch, head: str, b: int, s: int, checkpointing: bool) -> int:
    """Bytes a training forward keeps for backward: decoder layers, final norm and head, logits."""
    if checkpointing:  # each layer's input, and one layer recomputed during backward
        layers = arch.num_layers * 2 * s * b * arch.hidden_size + layer_activations(arch, b, s)
    else:
        layers = arch.num_layers * layer_activations(arch, b, s)
    logits = 10 * s * b * arch.vocab_size if head == "lm" else 0
    return layers + 8 * s * b * arch.hidden_size + logits


def kv_cache(arch: Arch, b: int, s: int) -> int:
    """K and V of every layer for ``b`` sequences of ``s`` tokens, bf16."""
    return 2 * arch.num_layers * b * s * arch.kv_dim * 2


def plan(
    stage_kind: str,
    arch: Arch,
    devices: int = 8,
    memory_gb: float = 80.0,
    micro_batch: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = False,
    generation_batch: int = 0,
    generation_len: int = 0,
    score_batch: int = 0,
    gathered_layers: int = 2,
    logp_batch: int = 0,
    logp_len: int = 0,
    precision: str = "bf16_mixed",
    no_sync_accumulation: bool = False,
    added_tokens: int = 0,
) -> Plan:
    """The memory plan of one stage kind (a key of ``STAGE_MODELS``).

    ``micro_batch`` x ``seq_len``: sequences per training forward on one device (a DPO or reward-model
    pair counts as 2 sequences). ``generation_batch`` x ``generation_len`` (prompt + new tokens):
    the KV cache of a rollout or generation phase (0: none). ``score_batch``: sequences per reward-model
    forward in a scoring phase (best-of-n). ``logp_batch`` x ``logp_len``: sequences per no-grad
    log-probability forward (method_health). All models share ``arch`` (AlpacaFarm initialises every
    one from the same LLaMA-7B). ``precision``: the training stage's (``bf16_mixed`` keeps frozen models
    in bf16, ``fp32`` in fp32). ``no_sync_accumulation``: gradients reduced after a step's last
    micro-batch only (``launch.no_sync_accumulation``), so the whole fp32 gradients live until then.
    ``added_tokens``: rows the stage adds to the language models' embeddings (Quark's reward tokens, in
    its policy and reference; the reward model keeps its vocabulary).
    """
    if stage_kind not in STAGE_MODELS:
        raise ValueError(f"unknown stage kind {stage_kind!r}; known: {', '.join(STAGE_MODELS)}")
    if devices < 1 or micro_batch < 0 or seq_len < 1:
        raise ValueError(f"devices ({devices}) must be >= 1, micro_batch ({micro_batch}) >= 0, seq_len ({seq_len}) >= 1")
    models = STAGE_MODELS[stage_kind]
    p = Plan(stage_kind, arch, devices, memory_gb, micro_batch, seq_len, gradient_checkpointing, generation_batch, generation_len)
    n, layer, A = devices, arch.layer_params(), layer_activations
    names = lambda ms: ", ".join(m.role for m in ms)  # noqa: E731
    trained = [m for m in models if m.trained]
    frozen = [m for m in models if not m.trained]

    if stage_kind in INFERENCE_KINDS:  # whole bf16 copies, replicated
        params = sum(2 * arch.num_params(m.head) for m in models)
        p.rows.append(Row("parameters", params, how=f"bf16 {names(models)}, whole on every device: 2 x P"))
        b, s = generation_batch, generation_len
        if b:
            p.rows.append(Row("KV cache", kv_cache(arch, b, s), "generation", f"2 x L x {b} x {s} tokens x h_kv x 2 bytes"))
            p.rows.append(Row("workspace", A(arch, b, s), "generation", f"one layer's activations at {b} x {s}"))
        if score_batch:
            p.rows.append(Row("workspace", A(arch, score_batch, s), "scoring", f"reward model, one layer at {score_batch} x {s}"))
        if logp_batch:  # log-probabilities of whole sequences: one layer and the logits (bf16 + fp32 log-softmax)
            p.rows.append(Row("workspace", A(arch, logp_batch, logp_len) + 6 * logp_batch * logp_len * arch.vocab_size, "log-probabilities",
                              f"one layer + logits 6 x {logp_batch} x {logp_len} x V"))
        return p

    frozen_bytes = 2 if precision == "bf16_mixed" else 4
    grown = dataclasses.replace(arch, vocab_size=arch.vocab_size + added_tokens)
    arch_of = lambda m: grown if m.head == "lm" else arch  # noqa: E731
    shard = lambda m, **kw: arch_of(m).shard_numel(m.head, n, **kw)  # noqa: E731  (rank 0's, the largest)
    p.rows.append(Row("parameters", sum(4 * shard(m) for m in trained) + sum(frozen_bytes * shard(m) for m in frozen),
                      how=f"fp32 {names(trained)}: 4P/{n}" + (f"; {'bf16' if frozen_bytes == 2 else 'fp32'} {names(frozen)}: {frozen_bytes}P/{n}" if frozen else "")))
    p.rows.append(Row("gradients", sum(4 * shard(m) for m in trained), how=f"fp32 {names(trained)}: 4P/{n}, reduce-scattered every micro-batch"))
    p.rows.append(Row("optimizer state", sum(8 * shard(m, padded=False) + 4 * len(arch_of(m).tensor_shapes(m.head)) for m in trained),
                      how=f"AdamW exp_avg + exp_avg_sq, fp32: 8P/{n}, and a 4-byte step per tensor"))
    if no_sync_accumulation:
        p.rows.append(Row("unsharded gradients", sum(4 * arch_of(m).num_params(m.head) for m in trained), "train",
                          f"launch.no_sync_accumulation: whole fp32 gradients of {names(trained)} on every device, 4P"))

    # training step: the trained models' graph, plus a no-grad reference forward (DPO, Quark)
    nograd = [m for m in frozen if m.role == "reference" and stage_kind in ("dpo", "quark")]
    running = trained + nograd
    buffers = sum(2 * arch.root_params(m.head) for m in running) + sum(2 * arch.root_params(m.head) for m in trained)
    buffers += gathered_layers * 2 * layer + 6 * layer
    p.rows.append(Row("FSDP buffers", buffers, "train", f"bf16 roots of {names(running)} (+ their grads if trained), {gathered_layers} bf16 layers, one layer's bf16 + fp32 grads"))
    b, s = micro_batch, seq_len
    p.activations_full = sum(activations(arch, m.head, b, s, False) for m in trained)
    p.activations_checkpointed = sum(activations(arch, m.head, b, s, True) for m in trained)
    chosen = p.activations_checkpointed if gradient_checkpointing else p.activations_full
    p.rows.append(Row("activations", chosen, "train", f"{names(trained)} at {b} x {s}, checkpointing {'on' if gradient_checkpointing else 'off'}"))
    for m in nograd:
        p.rows.append(Row("workspace", A(arch, b, s) + 6 * s * b * arch.vocab_size, "train", f"{m.role} no-grad forward: one layer + logits"))

    if generation_batch:  # rollouts (PPO, Quark) from the sharded policy
        b, s = generation_batch, generation_len
        roots = sum(2 * arch.root_params(m.head) for m in models)
        p.rows.append(Row("FSDP buffers", roots + gathered_layers * 2 * layer, "rollout", f"bf16 roots of {names(models)}, {gathered_layers} bf16 layers"))
        p.rows.append(Row("KV cache", kv_cache(arch, b, s), "rollout", f"2 x L x {b} x {s} tokens x h_kv x 2 bytes"))
        p.rows.append(Row("workspace", A(arch, b, s), "rollout", f"one layer's activations at {b} x {s}"))
        if stage_kind == "ppo":  # policy (recomputed) and reference logits over the rollout, alive together
            p.rows.append(Row("logits", 2 * 6 * s * b * arch.vocab_size, "rollout", f"policy + reference: 2 x 6 x {b} x {s} x V"))
    return p


@dataclass(frozen=True)
class Judge:
    """A local judge model a stage loads (an annotator config of backend ``local_hf``)."""

    name: str
    model: str  # the config's model_path: a local folder or a (pinned) hub id
    arch: Arch
    batch_size: int
    max_length: int
    dtype_bytes: int  # 4 for float32, else 2 (bf16 / fp16; a judge saved in bf16 when dtype is unset)


def add_judges(p: Plan, judges: list["Judge"]) -> Plan:
    """Add the rows of ``judges`` loaded together (a pool's members) to plan ``p`` (phase "judging")."""
    for j in judges:
        p.rows.append(Row("judge parameters", j.dtype_bytes * j.arch.num_params(), "judging", f"{j.name}: whole, {j.dtype_bytes} bytes x P"))
        b, s = j.batch_size, j.max_length
        p.rows.append(Row("workspace", layer_activations(j.arch, b, s), "judging", f"{j.name}: one layer's activations at {b} x {s}"))
        p.rows.append(Row("logits", j.dtype_bytes * b * s * j.arch.vocab_size, "judging", f"{j.name}: {b} x {s} x V logits"))
    if judges:
        p.judge_batch, p.judge_len = max(j.batch_size for j in judges), max(j.max_length for j in judges)
    return p


def check(stage_kind: str, arch: Arch, path: str = "params.yaml", **kwargs: Any) -> Plan:
    """``plan(...)``, raising ``PlanError`` when it does not fit."""
    result = plan(stage_kind, arch, **kwargs)
    if not result.fits:
        raise PlanError(result, path)
    return result


def markdown_table(plans: list[Plan]) -> str:
    """One line per plan: the rows in GB (parameters include a local judge's), activations with and without
    checkpointing, the verdict."""
    def gb(x: int) -> str:
        return f"{x / GB:.1f}" if x else "-"

    lines = [
        "| stage | devices | parameters | gradients | optimizer | FSDP buffers (peak phase) | activations: off / on | KV cache + logits + workspace | peak phase | total GB | fits |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for p in plans:
        peak = p.peak_phase
        gen = sum(r.bytes for r in p.rows if r.phase == peak and r.name in ("KV cache", "logits", "workspace"))
        acts = f"{gb(p.activations_full)} / {gb(p.activations_checkpointed)}" if p.activations_full else "-"
        lines.append(
            f"| {p.stage} | {p.devices} x {p.memory_gb:g} GB | {gb(p.get('parameters') + p.get('judge parameters'))} | {gb(p.get('gradients'))} | {gb(p.get('optimizer state'))} "
            f"| {gb(p.get('FSDP buffers', peak))} | {acts} | {gb(gen)} | {peak} | {p.total_gb:.1f} | {'yes' if p.fits else '**no**'} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- host memory of a node

# What one stage process holds in host memory besides model weights: the Python interpreter, torch,
# transformers and (on a GPU) the CUDA context and its pinned buffers. An assumption, not a measurement:
# a few GB per process is what such processes hold on a GPU node.
PROCESS_HOST_BYTES = 4 * 10**9

# The whole model copies a stage holds in CPU memory at once while loading, in bytes per parameter:
# (on rank 0, on every rank). Training stages load on rank 0 only, the others build on the meta device
# (afarm.models.lm.load_model(..., rank0_only=True)); a copy is freed once its model is sharded.
# Trained models load in fp32 (4); a stored reward model is fp32 (4) and is cast to bf16 to be frozen
# (+2 while it converts); a frozen policy loads in bf16 (2). Inference stages load straight onto their
# GPU, tensor by tensor (device_map; best_of_n's and expert iteration's scorer too,
# afarm.methods.best_of_n.load_for_scoring), except method_health, which loads one fp32 model at a
# time on the CPU before moving it.
HOST_COPIES = {
    "sft": (4, 0), "feedme": (4, 0), "reward_conditioning": (4, 0), "expert_iteration": (4, 0), "reward_model": (4, 0),
    "dpo": (4 + 2, 0),  # the reference loads in its stored fp32 and is cast to bf16 (the policy is sharded by then)
    "ppo": (4 + 4, 0),  # the reward model (fp32) and its copy, the value model (fp32), before either is sharded
    "quark": (4 + 2, 0),  # policy (fp32) and reference (bf16), loaded together and grown before sharding
    "generate": (0, 0), "sft_samples": (0, 0), "best_of_n": (0, 0), "method_health": (0, 4),
}


def host_ram(stage_kind: str, arch: Arch, processes: int) -> int:
    """Bytes of host memory a node needs for ``stage_kind`` in ``processes`` processes: the larger of rank
    0's and all ranks' whole CPU copies while loading (``HOST_COPIES``), plus ``PROCESS_HOST_BYTES`` each."""
    rank0, every = HOST_COPIES[stage_kind]
    return max(rank0, processes * every) * arch.num_params() + processes * PROCESS_HOST_BYTES


# ---------------------------------------------------------------- from params.yaml

# Values the plan needs that a section may leave out: upstream's, as the stages' config dataclasses.
DEFAULTS = {
    "query_len": 192,  # ppo_utils.py / quark_utils.py query_len=192
    "response_len": 300,  # ppo_utils.py / quark_utils.py response_len=300
    "step_micro_batch_size": 2,  # rlhf_ppo.sh / rlhf_quark.sh --step_per_device_batch_size 2
    "rollout_micro_batch_size": 32,  # rlhf_ppo.sh / rlhf_quark.sh --rollout_per_device_batch_size 32
    "micro_batch_size": 1,  # sft.sh / reward_modeling.sh / dpo.sh --per_device_train_batch_size 1
    "max_length": 512,  # sft.sh --model_max_length 512
    "max_new_tokens": 300,  # examples/best_of_n.py run_decode max_new_tokens=300
    "generation_batch_size": 4,  # examples/best_of_n.py run_decode per_device_batch_size=4
    "precision": "bf16_mixed",  # every upstream training script: --bf16 True (frozen models in bf16)
    "num_reward_tokens": 4,  # quark_utils.py num_reward_tokens=4: rows Quark adds to the embeddings
}
# Prompt tokens assumed at generation (prompts are not truncated there): our bound, the SFT max_length.
PROMPT_TOKENS = 512
# Sections holding the training recipe of SFT-like stages.
TRAIN_SECTIONS = {"sft": "sft", "feedme": "feedme", "reward_conditioning": "reward_conditioning", "expert_iteration": "expert_iteration", "dpo": "dpo"}


def _resolved(params: dict, name: str) -> dict:
    from afarm.config import section

    return section(params, name) if name in params else {}


def stage_inputs(module: str, params: dict) -> dict[str, Any]:
    """The ``plan`` keyword arguments of stage ``module`` read from params (sections resolved at the scale)."""
    d = DEFAULTS
    if module in TRAIN_SECTIONS:
        train = _resolved(params, TRAIN_SECTIONS[module]).get("train", {})
        pairs = 2 if module == "dpo" else 1  # chosen and rejected both in the graph
        return {"micro_batch": pairs * train.get("micro_batch_size", d["micro_batch_size"]), "seq_len": train.get("max_length", d["max_length"]),
                "gradient_checkpointing": bool(train.get("gradient_checkpointing", False)), "precision": train.get("precision", d["precision"])}
    if module == "reward_model":
        rm = _resolved(params, "reward_model")
        return {"micro_batch": 2 * rm.get("micro_batch_size", d["micro_batch_size"]), "seq_len": rm.get("max_length", d["max_length"]),
                "gradient_checkpointing": bool(rm.get("gradient_checkpointing", False)), "precision": rm.get("precision", d["precision"])}
    if module in ("ppo", "quark"):
        rl = _resolved(params, module)
        s = rl.get("query_len", d["query_len"]) + rl.get("response_len", d["response_len"]) + (1 if module == "quark" else 0)  # + control token
        added = {"added_tokens": rl.get("num_reward_tokens", d["num_reward_tokens"])} if module == "quark" else {}
        return {"micro_batch": rl.get("step_micro_batch_size", d["step_micro_batch_size"]), "seq_len": s,
                "gradient_checkpointing": bool(rl.get("gradient_checkpointing", False)), "precision": rl.get("precision", d["precision"]),
                "generation_batch": rl.get("rollout_micro_batch_size", d["rollout_micro_batch_size"]), "generation_len": s, **added}
    if module == "method_health":  # samples with preference_data's decoding; scores and log-probabilities in batches
        health, gen = _resolved(params, module), _resolved(params, "preference_data").get("generation", {})
        b, s = health.get("batch_size", d["generation_batch_size"]), health.get("max_length", d["max_length"])
        return {"micro_batch": 0, "seq_len": 1, "generation_batch": gen.get("batch_size", d["generation_batch_size"]),
                "generation_len": PROMPT_TOKENS + gen.get("max_new_tokens", d["max_new_tokens"]), "score_batch": b, "logp_batch": b, "logp_len": s}
    if module == "sft_samples":  # the largest decoding of its recipes (afarm.methods.sft_samples)
        gens = [_resolved(params, "preference_data").get("generation", {}), _resolved(params, "best_of_n").get("generation", {}),
                _resolved(params, "expert_iteration").get("best_of_n", {}).get("generation", {})]
        return {"micro_batch": 0, "seq_len": 1, "generation_batch": max(g.get("batch_size", d["generation_batch_size"]) for g in gens),
                "generation_len": PROMPT_TOKENS + max(g.get("max_new_tokens", d["max_new_tokens"]) for g in gens)}
    if module == "best_of_n":  # scores the samples: no generation
        sec = _resolved(params, module)
        return {"micro_batch": 0, "seq_len": 1, "generation_batch": 0,
                "generation_len": PROMPT_TOKENS + sec.get("generation", {}).get("max_new_tokens", d["max_new_tokens"]),
                "score_batch": sec.get("score_batch_size", d["generation_batch_size"])}
    if module in INFERENCE_KINDS:
        gen = _resolved(params, module)
        return {"micro_batch": 0, "seq_len": 1, "generation_batch": gen.get("batch_size", d["generation_batch_size"]),
                "generation_len": PROMPT_TOKENS + gen.get("max_new_tokens", d["max_new_tokens"])}
    raise KeyError(module)


# Stage modules that load annotators: the (section, key) pairs of params naming them; config_dirs from
# the first section. method_health: the training labeller, its clean counterpart, the hub set's stand-in.
JUDGE_STAGES = {
    "annotate": (("annotate", "annotators"),),
    "preference_data": (("preference_data", "annotators"),),
    "analyze_annotators": (("analyze_annotators", "annotators"),),
    "method_health": (("preference_data", "annotators"), ("method_health", "clean_annotators"), ("method_health", "hub_labellers")),
}
LOCAL_BACKENDS = ("local_hf",)
BUILTIN_CONFIGS = Path(__file__).resolve().parent / "annotators" / "configs"  # afarm.annotators.registry.BUILTIN_CONFIGS


def _judge_names(module: str, params: dict) -> tuple[list[str], list[Path]]:
    names = []
    for section, key in JUDGE_STAGES[module]:
        value = _resolved(params, section).get(key) or {}
        names += list(value.values()) if isinstance(value, dict) else list(value)
    dirs = _resolved(params, JUDGE_STAGES[module][0][0]).get("config_dirs") or []
    return [n for n in names if n], [Path(d) for d in dirs]


def _load_judges(name: str, dirs: list[Path], shared_data: str, where: str) -> list[Judge]:
    """The local judges annotator ``name`` loads at once: itself, or a pool's local members."""
    import yaml

    # as afarm.annotators.registry.find_config (not imported: a stage's code dependencies, found from its
    # imports, would then include every annotator backend)
    found = [d / name / "config.yaml" for d in [*dirs, BUILTIN_CONFIGS] if (d / name / "config.yaml").is_file()]
    if not found:
        raise InputError(where, f"memory plan: unknown annotator {name!r} (looked in {', '.join(str(d) for d in [*dirs, BUILTIN_CONFIGS])})")
    path = found[0]
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    settings = spec.get("settings") or {}
    fill = lambda v: v.format(shared_data=shared_data, config_dir=str(path.parent)) if isinstance(v, str) else v  # noqa: E731
    if spec.get("backend") in LOCAL_BACKENDS:
        model = fill(settings["model_path"])
        arch = load_arch(model)
        dtype = settings.get("dtype")
        return [Judge(name, model, arch, int(settings.get("batch_size", 8)), int(settings.get("max_length", 2048)), 4 if dtype == "float32" else 2)]
    if spec.get("backend") == "pool":  # members from the members file are API judges; folders may be local
        listed = set()
        if settings.get("members_file"):
            listed = set(yaml.safe_load(Path(fill(settings["members_file"])).read_text(encoding="utf-8")) or {})
        member_dirs = [Path(fill(d)) for d in settings.get("member_config_dirs") or []]
        return [j for m in settings.get("members") or [] if m not in listed for j in _load_judges(m, member_dirs, shared_data, where)]
    return []


def stage_judges(module: str, params: dict) -> list[list[Judge]]:
    """For each annotator stage ``module`` may load (by params), the local judges it holds at once."""
    if module not in JUDGE_STAGES:
        return []
    names, dirs = _judge_names(module, params)
    shared = _resolved(params, "paths").get("shared_data", "")
    where = params.get("_path", "params.yaml")
    return [found for n in dict.fromkeys(names) if (found := _load_judges(n, dirs, shared, where))]


def stage_arch(params: dict, model_dir: str | Path | None = None) -> Arch:
    """The stage's model: ``model_dir``'s config.json when given, else ``base_model.model``: its
    ``pretrained`` folder or known hub id, or (tiny, from scratch) its architecture keys."""
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        return load_arch(model_dir)
    model = _resolved(params, "base_model").get("model", {})
    if model.get("pretrained"):
        try:
            return load_arch(model["pretrained"])
        except InputError as err:
            raise InputError(params.get("_path", "params.yaml"), f"memory plan: {err}", field="base_model.model.pretrained") from err
    return Arch(
        hidden_size=model.get("hidden_size", 128), num_layers=model.get("num_layers", 4), intermediate_size=model.get("intermediate_size", 336),
        vocab_size=model.get("vocab_size") or 2048, num_heads=model.get("num_heads", 4), tie_word_embeddings=model.get("tie_word_embeddings", True),
    )  # defaults: afarm.models.lm.ModelConfig's tiny-scale choices


def check_stage(module: str, params: dict, devices: int = 8, memory_gb: float = 80.0, model_dir: str | Path | None = None,
                gradient_checkpointing: bool | None = None) -> Plan | None:
    """Plan stage ``module`` (``afarm.stages.<module>``) from ``params`` (as ``afarm.config.load_params``
    returns it) on ``devices`` x ``memory_gb``; raise ``PlanError`` if it does not fit. ``None`` for a
    stage that holds no model (data, annotate, ...). ``gradient_checkpointing`` overrides params."""
    result = stage_plan(module, params, devices, memory_gb, model_dir, gradient_checkpointing)
    if result is not None and not result.fits:
        raise PlanError(result, params.get("_path", "params.yaml"))
    return result


def stage_plan(module: str, params: dict, devices: int = 1, memory_gb: float = 80.0, model_dir: str | Path | None = None,
               gradient_checkpointing: bool | None = None) -> Plan | None:
    """The plan of stage ``module`` (its models, and the largest set of local judges it may load), fitting or
    not; ``None`` for a stage that holds no model."""
    judge_sets = stage_judges(module, params)
    if module not in STAGE_MODELS and not judge_sets:
        return None
    if module in STAGE_MODELS:
        kwargs = stage_inputs(module, params)
        if module not in INFERENCE_KINDS:
            from afarm.launch import launch_config

            kwargs["no_sync_accumulation"] = launch_config(params).no_sync_accumulation
        if gradient_checkpointing is not None:
            kwargs["gradient_checkpointing"] = gradient_checkpointing
        result = plan(module, stage_arch(params, model_dir), devices=devices, memory_gb=memory_gb, **kwargs)
    else:
        result = Plan(module, judge_sets[0][0].arch, devices, memory_gb, 0, 1, False)
    if judge_sets:  # the largest set of judges the stage may load (annotate: one world's judge per run)
        largest = max(judge_sets, key=lambda js: add_judges(Plan(module, js[0].arch, 1, memory_gb, 0, 1, False), js).total_bytes)
        result.arch = result.arch if module in STAGE_MODELS else largest[0].arch
        add_judges(result, largest)
    return result


def paper_plans(params: dict, memory_gb: float = 80.0, device_counts: tuple[int, ...] = (8, 4, 1)) -> list[Plan]:
    """The plan of every stage kind at ``scale: paper`` on each device count (docs/memory_plan.md's table)."""
    params = {**params, "scale": "paper"}
    arch = stage_arch(params)
    from afarm.launch import launch_config

    no_sync = {"no_sync_accumulation": launch_config(params).no_sync_accumulation}
    return [plan(kind, arch, devices=n, memory_gb=memory_gb, **stage_inputs(kind, params), **({} if kind in INFERENCE_KINDS else no_sync))
            for kind in STAGE_MODELS for n in device_counts]


# Stage modules the small scale plans: every model-holding kind, and the judging stages.
SMALL_MODULES = (*STAGE_MODELS, "preference_data", "annotate", "analyze_annotators")


def scale_plans(params: dict, scale: str = "small", judges: str = "local", memory_gb: float | None = None) -> list[Plan]:
    """The plan of every stage at ``scale`` on the devices the stage table gives it (small: 1 GPU each)
    and ``memory_gb`` (default: params' ``launch.device_memory_gb`` at that scale); stages holding no model
    at that scale are left out."""
    from afarm import launch

    params = {**params, "scale": scale, "judges": judges}
    memory = memory_gb if memory_gb is not None else launch.launch_config(params).device_memory_gb or 80.0
    plans = [stage_plan(m, params, devices=launch.processes(m, params), memory_gb=memory) for m in SMALL_MODULES]
    return [p for p in plans if p is not None]


def smallest_device_gb(plans: list[Plan]) -> float:
    """The memory one device needs so that every plan fits: the largest total, in GB."""
    return max(p.total_gb for p in plans)


def fit_summary(params: dict, memory_gb: float = 80.0) -> str:
    """A short Markdown table (README): GB per device of every paper stage on 8 and on 1 x ``memory_gb``."""
    plans = {(p.stage, p.devices): p for p in paper_plans(params, memory_gb, (8, 1))}
    mem = f"{memory_gb:g}"
    rows = [f"| stage | 8 x {mem} GB | 1 x {mem} GB |", "|---|---:|---:|"]
    for kind in STAGE_MODELS:
        cells = [f"{plans[kind, n].total_gb:.1f}" + ("" if plans[kind, n].fits else " (does not fit)") for n in (8, 1)]
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


__all__ = ["fit_summary", "host_ram", "paper_plans", "scale_plans", "smallest_device_gb", "stage_plan", "stage_judges", "Arch", "Judge",
           "KNOWN_ARCHS", "Plan", "PlanError", "Row", "check", "check_stage", "load_arch", "markdown_table", "plan"]
