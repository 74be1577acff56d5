"""The prompt template: the paper's instruction, through a chat template when there is one.

The chat tokenizer is the project's own character tokenizer (built locally) with a
Qwen-style chat template set on it; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotcommit.data.synthetic import generate_arith_splits
from pilotcommit.data.templates import (
    ARITH_CHAT_QUESTION,
    BOXED_COT_INSTRUCTION,
    arith_chat_question,
    format_prompt,
    has_chat_template,
)
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


# --------------------------------------------------------------------------- arith_chat


def test_arith_chat_asks_for_the_number_through_the_chat_template(chat_tokenizer) -> None:
    assert format_prompt("47*6-18=", chat_tokenizer, template="arith_chat") == (
        "<|im_start|>user\nWhat is 47*6-18? Reply with only the number.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ARITH_CHAT_QUESTION.format(expression="3+4") == "What is 3+4? Reply with only the number."


def test_arith_chat_without_chat_template_is_the_plain_question() -> None:
    assert format_prompt(" 3+4=\n", None, template="arith_chat") == "What is 3+4? Reply with only the number."
    assert format_prompt("12", build_char_tokenizer(), template="arith_chat") == (
        "What is 12? Reply with only the number."
    )


def test_arith_chat_takes_every_problem_of_the_synthetic_task() -> None:
    train, test = generate_arith_splits()
    for problem in list(train["problem"]) + list(test["problem"]):
        assert arith_chat_question(problem) == f"What is {problem[:-1]}? Reply with only the number."


@pytest.mark.parametrize(
    "problem", ["What is 2+2?", "2 + 2 =", "2+=", "+2=", "2+2==", "2/3=", "x+1=", "\u0663+4=", "3.5+1="]
)
def test_arith_chat_refuses_anything_but_an_arithmetic_problem(problem) -> None:
    with pytest.raises(ValueError, match="arith_chat template takes an arithmetic problem"):
        format_prompt(problem, None, template="arith_chat")


@pytest.mark.real_model
def test_arith_chat_through_smollm2s_chat_template(smollm2_folder) -> None:
    """SmolLM2-135M-Instruct's ChatML template adds its default system prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder))
    prompt = format_prompt("3+4=", tokenizer, template="arith_chat")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 3+4? Reply with only the number.<|im_end|>\n<|im_start|>assistant\n"
    )
