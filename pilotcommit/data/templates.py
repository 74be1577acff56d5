r"""The prompt a policy model sees for a problem.

``boxed_cot`` is the paper's template: the problem, then
"Let's think step by step and output the final answer within \boxed{}.",
wrapped in the tokenizer's chat template as one user turn with the assistant
turn opened (``add_generation_prompt=True``) when the tokenizer has a chat
template, and as plain text (problem, a space, the instruction) when it has
none (base models such as Qwen2.5-Math-1.5B's tokenizer do have one; the
embedded character tokenizer does not). ``raw`` is the problem unchanged: the
embedded arithmetic task's prompt is the expression itself.

``arith_chat`` poses an arithmetic problem of the synthetic task (``"47*6-18="``,
pilotcommit/data/synthetic.py) to a pretrained chat model as a question: "What is 47*6-18?
Reply with only the number." (:data:`ARITH_CHAT_QUESTION`; the trailing ``=`` dropped, the
expression otherwise as the task wrote it), through the chat template exactly as ``boxed_cot``
(plain question text without one). It asks for the number, not a box: small chat models
rarely box, and its reward (``arith_chat``, pilotcommit/rewards/arith.py) reads the last
integer they write. Anything but such an expression is refused.

The template is applied as text (``tokenize=False``), so the rollout engines
tokenize prompts the same way whatever produced them. This module does not
tokenize, truncate to a maximum prompt length, or add system prompts.
"""

from __future__ import annotations

import re
from typing import Literal

BOXED_COT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
ARITH_CHAT_QUESTION = "What is {expression}? Reply with only the number."

PromptTemplate = Literal["boxed_cot", "raw", "arith_chat"]

# the synthetic task's problems: non-negative integer operands joined by + - *, then "="
_ARITH_PROBLEM = re.compile(r"([0-9]+(?:[-+*][0-9]+)*)=?")


def has_chat_template(tokenizer: object | None) -> bool:
    """True if ``tokenizer`` carries a chat template (a non-empty ``chat_template``)."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(
    problem: str, tokenizer: object | None = None, template: PromptTemplate = "boxed_cot"
) -> str:
    """The prompt text for ``problem`` (see the module docstring for the two templates)."""
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"format_prompt: problem must be non-empty text, got {problem!r}")
    if template == "raw":
        return problem
    if template == "boxed_cot":
        content = f"{problem.strip()} {BOXED_COT_INSTRUCTION}"
    elif template == "arith_chat":
        content = arith_chat_question(problem)
    else:
        raise ValueError(
            f"format_prompt: unknown template {template!r}; use 'boxed_cot', 'arith_chat' or 'raw'"
        )
    if not has_chat_template(tokenizer):
        return content
    return tokenizer.apply_chat_template(  # type: ignore[union-attr]
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def arith_chat_question(problem: str) -> str:
    """``"47*6-18="`` -> ``"What is 47*6-18? Reply with only the number."`` (module docstring);
    ``ValueError`` for anything that is not an arithmetic problem of the synthetic task."""
    match = _ARITH_PROBLEM.fullmatch(problem.strip()) if isinstance(problem, str) else None
    if match is None:
        raise ValueError(
            f"format_prompt: the arith_chat template takes an arithmetic problem such as "
            f"'47*6-18=' (ASCII digits joined by + - *), got {problem!r}"
        )
    return ARITH_CHAT_QUESTION.format(expression=match.group(1))
