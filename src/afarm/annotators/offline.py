"""The tiny-scale default judge: a logistic model fitted to real GPT-4 pairwise judgments.

No key, no download, CPU only. The probability that ``output_2`` wins is

    p = sigmoid( w_dense . (f(o2) - f(o1)) + w_len . tanh(k * dlen) + w_hash . (h(o2) - h(o1)) )

where ``f`` is a vector of hand-made features of one output given the instruction
(length, formatting, refusals, repetition, instruction overlap, readability),
``dlen = log(1 + chars_2) - log(1 + chars_1)`` and ``h`` is a binary vector of hashed
word unigrams and bigrams (plus the first and last two words) of the output. Every
term is a difference between the two outputs, so swapping them negates the score
exactly and the judge has no position bias: ``judge(b, a) = 3 - judge(a, b)``.

The weights are fitted by ``scripts/fit_offline_judge.py`` on the AlpacaEval GPT-4 and
GPT-4 Turbo annotations of the data bundle, split by model; its held-out numbers are
in ``docs/offline_judge.md``. They live in the annotator's config folder
(``weights.json`` + ``hash_weights.npy`` + ``bigrams.npy``, the word pairs of the
reference answers) and are loaded by path.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from afarm.annotators.base import Annotator, Judgement, Pair

# ---------------------------------------------------------------- hand-made features of one output

_WORD = re.compile(r"[a-z0-9']+")
_LIST = re.compile(r"^\s*(?:[-*\u2022+]|\d+[.)])\s+", re.M)
_HEADER = re.compile(r"^\s*(?:#{1,6}\s|\*\*[^*\n]{1,80}\*\*:?\s*$|[A-Z][^\n]{0,60}:\s*$)", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_PUNCT = re.compile(r"[^\w\s]|_")
_UPPER = re.compile(r"[A-Z]")
_DIGIT = re.compile(r"[0-9]")
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|as an ai|as a language model|i cannot|i can'?t|i can not|"
    r"i'?m not able to|i am not able to|i'?m unable|i am unable|unable to provide|not appropriate|"
    r"i don'?t have (?:access|the ability|personal))",
    re.I,
)
# words that carry no topic: ignored when measuring overlap with the instruction
_STOP = frozenset(
    "a an the and or but if of to in on for with at by from as is are was were be been it this that these those "
    "i you he she we they me my your our their what which who how why when where do does did can could would "
    "should will not no yes".split()
)
# the most frequent English function words: fluent text is about 30-50% of them, word salad far less
_FUNCTION = frozenset(
    "the a an of to in and is that it for on with as are be this was by or at from have has not but can which "
    "their they you your will would more other also its some these there".split()
)

FEATURES = (
    "log_chars",  # log(1 + characters)
    "log_words",  # log(1 + words)
    "log_lines",  # log(1 + non-empty lines)
    "log_list_items",  # lines starting with a bullet or "1."
    "log_headers",  # markdown headers, bold or "Title:" lines
    "log_bold",
    "has_code",  # a ``` block
    "refusal",  # "I'm sorry", "As an AI", ... in the first 400 characters
    "distinct_3grams",  # share of distinct word 3-grams (1 = no repetition)
    "compression",  # zlib size / raw size (low = repetitive)
    "instruction_coverage",  # share of the instruction's content words used
    "copy_instruction",  # share of the output's content words taken from the instruction
    "mean_word_len",
    "log_sentence_len",  # log(1 + words per sentence)
    "punctuation_share",
    "non_ascii_share",
    "upper_share",
    "ends_cleanly",  # ends with . ! ? ) ] ` " ' * :  (not cut off)
    "function_word_share",
    "type_token_ratio",
    "digit_share",
    "empty",
    "log_questions",
    "log_paragraphs",
    "word_salad",  # max(0, 0.15 - function_word_share) / 0.15, damped below 30 words: random word lists
    "run_on",  # max(0, log(words per sentence / 50)): no sentence structure at all
    "unknown_bigrams",  # share of word pairs never seen in the reference answers, damped below 20 words
)
BIGRAM_BITS = 21  # bitset of word pairs seen in the references (256 KB); our choice


def bigram_bucket(a: str, b: str) -> int:
    return zlib.crc32(f"{a} {b}".encode("utf-8")) & ((1 << BIGRAM_BITS) - 1)


def known_bigrams(texts: Sequence[str]) -> np.ndarray:
    """Packed bitset (uint8) of the word pairs occurring in ``texts``."""
    bits = np.zeros(1 << BIGRAM_BITS, dtype=bool)
    for text in texts:
        words = _WORD.findall(text.lower())
        bits[[bigram_bucket(a, b) for a, b in zip(words, words[1:])]] = True
    return np.packbits(bits)
LENGTH_SCALES = (0.5, 1.0, 2.0)  # pair terms tanh(k * dlen); our choice, a smooth saturating length effect


def output_features(
    instruction: str, output: str, instruction_words: frozenset[str] | None = None, bigrams: np.ndarray | None = None
) -> np.ndarray:
    """The ``FEATURES`` of one output, as float64 (``bigrams``: packed bitset of known word pairs)."""
    n = len(output)
    words = _WORD.findall(output.lower())
    f = np.zeros(len(FEATURES))
    if not words:  # empty, whitespace or symbols only
        f[0] = math.log1p(n)
        f[8] = f[9] = f[21] = 1.0
        return f
    nw = len(words)
    content_i = instruction_words if instruction_words is not None else _content_words(instruction)
    wordset = set(words)
    content_o = [w for w in words if w not in _STOP]
    grams = list(zip(words, words[1:], words[2:]))
    raw = output.encode("utf-8")
    f[:] = (
        math.log1p(n),
        math.log1p(nw),
        math.log1p(sum(1 for line in output.split("\n") if line.strip())),
        math.log1p(len(_LIST.findall(output))),
        math.log1p(len(_HEADER.findall(output))),
        math.log1p(len(_BOLD.findall(output))),
        float("```" in output),
        float(_REFUSAL.search(output[:400]) is not None),
        len(set(grams)) / len(grams) if grams else 1.0,
        len(zlib.compress(raw, 6)) / len(raw),
        len(content_i & wordset) / len(content_i) if content_i else 0.0,
        sum(w in content_i for w in content_o) / len(content_o) if content_o else 0.0,
        sum(map(len, words)) / nw,
        math.log1p(nw / max(1, len(_SENTENCE_END.findall(output)))),
        len(_PUNCT.findall(output)) / n,
        (n - len(output.encode("ascii", "ignore"))) / n,
        len(_UPPER.findall(output)) / n,
        float(output.rstrip()[-1:] in ".!?)]`\"'*:"),
        sum(w in _FUNCTION for w in words) / nw,
        len(wordset) / nw,
        len(_DIGIT.findall(output)) / n,
        0.0,
        math.log1p(output.count("?")),
        math.log1p(output.count("\n\n")),
        0.0,
        0.0,
        0.0,
    )
    f[24] = max(0.0, 0.15 - f[18]) / 0.15 * min(1.0, nw / 30.0)
    f[25] = max(0.0, math.log(nw / max(1, len(_SENTENCE_END.findall(output))) / 50.0))
    if bigrams is not None and nw > 1:
        buckets = [bigram_bucket(a, b) for a, b in zip(words, words[1:])]
        known = np.count_nonzero(bigrams[np.asarray(buckets) >> 3] & (128 >> (np.asarray(buckets) & 7)))
        f[26] = (1.0 - known / len(buckets)) * min(1.0, nw / 20.0)
    return f


def _content_words(instruction: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(instruction.lower()) if w not in _STOP)


# ---------------------------------------------------------------- hashed n-grams of one output

_TOKEN = re.compile(r"[a-z0-9']+|[^a-z0-9'\s]+")


def hashed_ngrams(output: str, bits: int) -> list[int]:
    """Sorted distinct buckets (CRC32, stable across runs) of words, word pairs, first and last two words."""
    tokens = _TOKEN.findall(output.lower())
    grams = set(tokens)
    grams.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:]))
    grams.add("^" + " ".join(tokens[:2]))
    grams.add("$" + " ".join(tokens[-2:]))
    mask = (1 << bits) - 1
    return sorted({zlib.crc32(g.encode("utf-8")) & mask for g in grams})


# ---------------------------------------------------------------- design matrix of a batch of pairs


def dense_design(F1: np.ndarray, F2: np.ndarray) -> np.ndarray:
    """Antisymmetric dense pair features from the two outputs' ``FEATURES`` rows."""
    dlen = F2[:, 0] - F1[:, 0]
    return np.column_stack([F2 - F1] + [np.tanh(k * dlen) for k in LENGTH_SCALES])


DENSE_NAMES = FEATURES + tuple(f"tanh({k}*dlog_chars)" for k in LENGTH_SCALES)


class FeatureCache:
    """Features of each distinct (instruction, output) computed once: references repeat across pairs."""

    def __init__(self, bits: int, bigrams: np.ndarray | None = None):
        self.bits = bits
        self.bigrams = bigrams
        self.dense: dict[tuple[str, str], np.ndarray] = {}
        self.hashed: dict[str, list[int]] = {}
        self.instr: dict[str, frozenset[str]] = {}

    def features(self, instruction: str, output: str) -> np.ndarray:
        key = (instruction, output)
        if key not in self.dense:
            if instruction not in self.instr:
                self.instr[instruction] = _content_words(instruction)
            self.dense[key] = output_features(instruction, output, self.instr[instruction], self.bigrams)
        return self.dense[key]

    def buckets(self, output: str) -> list[int]:
        if output not in self.hashed:
            self.hashed[output] = hashed_ngrams(output, self.bits)
        return self.hashed[output]

    def dense_design(self, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str]) -> np.ndarray:
        """Dense [n, len(DENSE_NAMES)] with rows = features(o2) - features(o1) and the length terms."""
        F1 = np.stack([self.features(i, o) for i, o in zip(instructions, outputs_1)]) if len(instructions) else np.zeros((0, len(FEATURES)))
        F2 = np.stack([self.features(i, o) for i, o in zip(instructions, outputs_2)]) if len(instructions) else np.zeros((0, len(FEATURES)))
        return dense_design(F1, F2)

    def design(self, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str]):
        """(dense [n, len(DENSE_NAMES)], sparse CSR [n, 2**bits]) with rows = features(o2) - features(o1)."""
        return self.dense_design(instructions, outputs_1, outputs_2), self.hashed_design(outputs_1, outputs_2)

    def hashed_design(self, outputs_1: Sequence[str], outputs_2: Sequence[str]) -> sp.csr_matrix:
        """Rows = binary bucket vector of output_2 minus that of output_1 (shared buckets cancel)."""
        index: dict[str, int] = {}
        for text in list(outputs_1) + list(outputs_2):
            index.setdefault(text, len(index))
        indptr, cols = [0], []
        for text in index:
            cols.extend(self.buckets(text))
            indptr.append(len(cols))
        unique = sp.csr_matrix(
            (np.ones(len(cols)), np.asarray(cols, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
            shape=(len(index), 1 << self.bits),
        )
        rows_1 = np.fromiter((index[t] for t in outputs_1), dtype=np.int64, count=len(outputs_1))
        rows_2 = np.fromiter((index[t] for t in outputs_2), dtype=np.int64, count=len(outputs_2))
        diff = (unique[rows_2] - unique[rows_1]).tocsr()
        diff.eliminate_zeros()
        return diff


# ---------------------------------------------------------------- weights file


@dataclass
class OfflineWeights:
    dense: np.ndarray  # one weight per DENSE_NAMES entry, already divided by the feature's scale
    hashed: np.ndarray | None  # float32 [2**bits]; None = a judge on the dense features only
    bits: int  # 0 when ``hashed`` is None
    meta: dict[str, Any]
    bigrams: np.ndarray  # packed bitset [2**BIGRAM_BITS / 8] of known word pairs

    def save(self, path: str | Path) -> None:
        """``path`` (JSON: dense weights, metadata) + ``hash_weights.npy`` (unless dense-only) and
        ``bigrams.npy`` beside it; same weights, same bytes."""
        from afarm.io import atomic_write, write_json

        path = Path(path)
        hash_file = None if self.hashed is None else path.with_name("hash_weights.npy")
        if hash_file is not None:
            with atomic_write(hash_file, "wb") as handle:
                np.save(handle, self.hashed.astype("<f4"), allow_pickle=False)
        with atomic_write(path.with_name("bigrams.npy"), "wb") as handle:
            np.save(handle, self.bigrams.astype(np.uint8), allow_pickle=False)
        write_json(
            path,
            {
                "format": "afarm-offline-judge-v1",
                "features": list(DENSE_NAMES),
                "dense": [float(f"{w:.8g}") for w in self.dense],
                "hash_bits": self.bits if hash_file is not None else 0,
                "hash_file": hash_file.name if hash_file is not None else None,
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> "OfflineWeights":
        from afarm.io import InputError, read_json

        path = Path(path)
        spec = read_json(path)
        if spec.get("format") != "afarm-offline-judge-v1":
            raise InputError(path, f"not an offline-judge weights file (format {spec.get('format')!r})", field="format")
        if list(spec["features"]) != list(DENSE_NAMES):
            raise InputError(path, "feature list differs from this version of afarm; refit the weights", field="features")
        hashed = None  # "hash_file": null = a dense-only judge (hand features + length terms)
        if spec.get("hash_file") is not None:
            hash_file = path.with_name(spec["hash_file"])
            if not hash_file.exists():
                raise InputError(hash_file, "file not found (hash weights named by the weights file)")
            hashed = np.load(hash_file, allow_pickle=False).astype(np.float64)
            if hashed.shape != (1 << int(spec["hash_bits"]),):
                raise InputError(hash_file, f"expected {1 << int(spec['hash_bits'])} weights, got shape {hashed.shape}")
        bigram_file = path.with_name("bigrams.npy")
        if not bigram_file.exists():
            raise InputError(bigram_file, "file not found (bigram bitset beside the weights file)")
        bigrams = np.load(bigram_file, allow_pickle=False)
        if bigrams.shape != (1 << BIGRAM_BITS >> 3,):
            raise InputError(bigram_file, f"expected {1 << BIGRAM_BITS >> 3} bytes, got shape {bigrams.shape}")
        return cls(np.asarray(spec["dense"], dtype=np.float64), hashed, int(spec["hash_bits"]), spec.get("meta", {}), bigrams)


# ---------------------------------------------------------------- the annotator


@dataclass
class OfflineJudgeConfig:
    weights: str  # path of weights.json (the config uses {config_dir}/weights.json)
    batch_size: int = 1024  # pairs per call of judge(); our choice (features are cached per batch)


def score_pairs(weights: OfflineWeights, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str], cache: FeatureCache | None = None) -> np.ndarray:
    """Logit of "output_2 is better" for each pair (antisymmetric in the two outputs)."""
    cache = cache or FeatureCache(weights.bits, weights.bigrams)
    if weights.hashed is None:
        return cache.dense_design(instructions, outputs_1, outputs_2) @ weights.dense
    dense, hashed = cache.design(instructions, outputs_1, outputs_2)
    return dense @ weights.dense + hashed @ weights.hashed


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exactly antisymmetric around 0.5 and overflow-free


class OfflineJudge(Annotator):
    def __init__(self, name: str = "offline_judge", cfg: OfflineJudgeConfig | None = None):
        if cfg is None:
            raise ValueError("OfflineJudge needs a config with the weights path")
        self.name = name
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.weights = OfflineWeights.load(cfg.weights)
        from afarm.io import sha256_file

        path = Path(cfg.weights)
        files = (path.name, "hash_weights.npy", "bigrams.npy") if self.weights.hashed is not None else (path.name, "bigrams.npy")
        self._digest = "".join(sha256_file(path.with_name(f))[:16] for f in files)

    def config(self) -> dict[str, Any]:
        # the weights' content, not their path, decides the answers
        return {"name": self.name, "backend": "offline", "weights_sha256": self._digest}

    def probabilities(self, pairs: Sequence[Pair]) -> np.ndarray:
        """P(output_2 is better) for each pair."""
        z = score_pairs(self.weights, [p.instruction for p in pairs], [p.output_1 for p in pairs], [p.output_2 for p in pairs])
        return _sigmoid(z)

    def judge(self, pairs: Sequence[Pair]) -> list[Judgement]:
        probs = self.probabilities(pairs)
        return [Judgement(preference=1.0 + float(p), raw_completion=f"p(output_2)={p:.6f}") for p in probs]
