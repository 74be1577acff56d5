r"""The prompt a policy model sees for a problem.

``boxed_cot`` is the paper's template: the problem, then
"Let's think step by step and output the final answer within \boxed{}.",
wrapped in the tokenizer's chat template as one user turn with the assistant
turn opened (``add_generation_prompt=True``) when the tokenizer has a chat
template, and as plain text (problem, a space, the instruction) when it has
none (base models such as Qwen2.5-Math-1.5B's tokenizer do have one; the
embedded character tokenizer does not). ``raw`` is the problem unchanged: the
embedded arithmetic task's prompt is the expression itself.

The template is applied as text (``tokenize=False``), so the rollout engines
tokenize prompts the same way whatever produced them. This module does not
tokenize, truncate to a maximum prompt length, or add system prompts.
"""

from __future__ import annotations

from typing import Literal

BOXED_COT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

PromptTemplate = Literal["boxed_cot", "raw"]


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
    if template != "boxed_cot":
        raise ValueError(f"format_prompt: unknown template {template!r}; use 'boxed_cot' or 'raw'")
    content = f"{problem.strip()} {BOXED_COT_INSTRUCTION}"
    if not has_chat_template(tokenizer):
        return content
    return tokenizer.apply_chat_template(  # type: ignore[union-attr]
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
