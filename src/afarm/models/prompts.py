"""The Alpaca / AlpacaFarm instruction prompt.

Same text as the prompt dictionary upstream AlpacaFarm uses for SFT, PPO, best-of-n and
evaluation decoding: ``examples/prompts/v0_inputs_noinputs.json`` in tatsu-lab/alpaca_farm
(the Stanford Alpaca template). The response is appended directly after the prompt (no
separator), then EOS, as upstream's ``data_preprocessor.preprocess_for_sft`` does.
"""

from __future__ import annotations

# Upstream: tatsu-lab/alpaca_farm examples/prompts/v0_inputs_noinputs.json ("prompt_noinputs").
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# Upstream: tatsu-lab/alpaca_farm examples/prompts/v0_inputs_noinputs.json ("prompt_inputs").
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def format_prompt(instruction: str, input: str | None = "") -> str:  # noqa: A002 - the data's field name
    """The prompt for one instruction: the ``### Input:`` template when ``input`` is a non-empty string
    (as upstream, a whitespace-only input still counts as an input; ``None`` counts as none)."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# ---------------------------------------------------------------- the prompt as a chat template
# A saved model folder carries the prompt above as its tokenizer's chat template, with the folder's
# control token (if any) in front: ``tokenizer.apply_chat_template(messages(instruction, input),
# tokenize=False)`` is then exactly the text every generation path of afarm feeds the model (the
# tokenizer adds BOS when it encodes it). This is the one place a control token is recorded.


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja unescapes literals as Python's ``unicode_escape``)."""
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def chat_template(prompt_prefix: str = "") -> str:
    """A Jinja chat template rendering one user message as ``prompt_prefix + format_prompt(content, input)``.

    The message is ``{"role": "user", "content": instruction, "input": input}`` (``messages``); a
    missing, empty or null ``input`` selects the template without an input, as ``format_prompt``.
    The rendered text ends with ``### Response:`` whether or not a generation prompt is asked for.
    """
    head, tail = PROMPT_NO_INPUT.split("{instruction}")
    head_in, rest = PROMPT_WITH_INPUT.split("{instruction}")
    mid_in, tail_in = rest.split("{input}")
    p = _literal(prompt_prefix)
    return (
        "{%- if messages | length != 1 or messages[0]['role'] != 'user' -%}"
        "{{ raise_exception('this prompt template takes exactly one user message') }}"
        "{%- endif -%}"
        "{%- set m = messages[0] -%}"
        "{%- if m['input'] is defined and m['input'] -%}"
        f"{{{{ {p} + {_literal(head_in)} + m['content'] + {_literal(mid_in)} + m['input'] + {_literal(tail_in)} }}}}"
        "{%- else -%}"
        f"{{{{ {p} + {_literal(head)} + m['content'] + {_literal(tail)} }}}}"
        "{%- endif -%}"
    )


def messages(instruction: str, input: str | None = "") -> list[dict]:  # noqa: A002 - the data's field name
    """The chat messages of one instruction, for ``chat_template``."""
    return [{"role": "user", "content": instruction, "input": input or ""}]


def chat_prompt(tokenizer, instruction: str, input: str | None = "") -> str:  # noqa: A002
    """The prompt text of ``instruction`` as the tokenizer's chat template renders it (ValueError if it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: the model folder was not written by "
                         "afarm.models.lm.save_model (which records the prompt template and control token)")
    return tokenizer.apply_chat_template(messages(instruction, input), tokenize=False)
