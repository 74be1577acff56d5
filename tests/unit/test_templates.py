"""The prompt template: the paper's instruction, through a chat template when there is one.

The chat tokenizer is the project's own character tokenizer (built locally) with a
Qwen-style chat template set on it; nothing is downloaded.
"""

from __future__ import annotations

import pytest

from pilotcommit.data.templates import BOXED_COT_INSTRUCTION, format_prompt, has_chat_template
from pilotcommit.models.tokenizer import build_char_tokenizer

QWEN_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROBLEM = "What is $\\frac{1}{2} + \\frac{1}{3}$?"


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = QWEN_STYLE_TEMPLATE
    return tokenizer


def test_instruction_is_the_papers() -> None:
    assert BOXED_COT_INSTRUCTION == (
        "Let's think step by step and output the final answer within \\boxed{}."
    )


def test_chat_template_wraps_one_user_turn_and_opens_the_assistant_turn(chat_tokenizer) -> None:
    prompt = format_prompt(PROBLEM, chat_tokenizer)
    assert prompt == (
        f"<|im_start|>user\n{PROBLEM} {BOXED_COT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_chat_template_the_prompt_is_plain_text() -> None:
    tokenizer = build_char_tokenizer()
    assert not has_chat_template(tokenizer)
    expected = f"{PROBLEM} {BOXED_COT_INSTRUCTION}"
    assert format_prompt(PROBLEM, tokenizer) == expected
    assert format_prompt(f"  {PROBLEM}\n", None) == expected


def test_raw_returns_the_problem_unchanged(chat_tokenizer) -> None:
    assert format_prompt("47*6-18=", chat_tokenizer, template="raw") == "47*6-18="


@pytest.mark.parametrize("problem", ["", "   ", None])
def test_empty_problem_is_an_error(problem) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        format_prompt(problem)


def test_unknown_template_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown template"):
        format_prompt(PROBLEM, template="fancy")  # type: ignore[arg-type]
