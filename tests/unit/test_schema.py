"""The prompt-table schema: broken rows are reported together, by row and column.

Most cases go through the real loader on a small broken JSON-lines file, so the type
handling of ``datasets`` (mixed-type columns) is part of what is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pilotcommit.data.loaders import load_prompt_table
from pilotcommit.data.schema import (
    DatasetValidationError,
    coerce_text_cell,
    deduplicate,
    validate_prompt_table,
)
from pilotcommit.data.specs import DatasetSpec


def _load(tmp_path: Path, rows: list[dict], **spec_overrides):
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "t", "path": str(path), "columns": {"problem": "q", "answer": "a"}}
    spec.update(spec_overrides)
    return load_prompt_table(DatasetSpec.model_validate(spec))


def _row_line(message: str, row: int) -> str:
    lines = [ln for ln in message.splitlines() if re.match(rf"\s+row {row}\b", ln)]
    assert len(lines) == 1, f"no single line for row {row} in:\n{message}"
    return lines[0]


# --------------------------------------------------------------------------- the type rule


@pytest.mark.parametrize(
    "value, text",
    [
        ("  x ", "  x "),
        (72, "72"),
        (np.int64(-3), "-3"),
        (27.0, "27"),
        (0.5, "0.5"),
        (np.float32(2.0), "2"),
        (1e20, "100000000000000000000"),
        (None, None),
        (float("nan"), None),
    ],
)
def test_text_rule_converts_numbers(value: object, text: str | None) -> None:
    assert coerce_text_cell(value) == (text, None)


@pytest.mark.parametrize("value", [True, [1, 2], {"a": 1}, float("inf"), (1,), object()])
def test_text_rule_rejects_objects_with_no_single_text(value: object) -> None:
    text, error = coerce_text_cell(value)
    assert text is None and error


# --------------------------------------------------------------------------- broken files


def test_every_broken_row_is_named_in_one_error(tmp_path: Path) -> None:
    rows = [
        {"q": "fine?", "a": "1"},  # 0: fine
        {"q": "   ", "a": "2"},  # 1: empty problem
        {"q": "no answer?"},  # 2: missing answer
        {"q": "list answer?", "a": [1, 2]},  # 3: wrong type
        {"q": "dict answer?", "a": {"value": 3}},  # 4: wrong type
        {"q": "bool answer?", "a": True},  # 5: wrong type
        {"q": 17, "a": "5"},  # 6: problem is not text
        {"q": "int answer?", "a": 6},  # 7: converted, fine
    ]
    with pytest.raises(DatasetValidationError) as info:
        _load(tmp_path, rows)
    message = str(info.value)
    assert "broken.jsonl" in message.splitlines()[0]
    assert "6 failing row(s)" in message
    assert "problem" in _row_line(message, 1)
    assert "answer" in _row_line(message, 2) and "missing" in _row_line(message, 2)
    assert "answer" in _row_line(message, 3) and "list" in _row_line(message, 3)
    assert "answer" in _row_line(message, 4) and "dict" in _row_line(message, 4)
    assert "answer" in _row_line(message, 5) and "boolean" in _row_line(message, 5)
    assert "problem" in _row_line(message, 6) and "int" in _row_line(message, 6)
    assert not re.search(r"\brow 0\b", message) and not re.search(r"\brow 7\b", message)


def test_numbers_in_a_text_column_are_converted_by_the_rule(tmp_path: Path) -> None:
    rows = [
        {"q": "a?", "a": 6},
        {"q": "b?", "a": 27.0},
        {"q": "c?", "a": 0.25},
        {"q": "d?", "a": "x"},
    ]
    assert list(_load(tmp_path, rows).frame["answer"]) == ["6", "27", "0.25", "x"]


def test_duplicate_ids_with_different_problems_name_the_id_and_rows(tmp_path: Path) -> None:
    rows = [
        {"id": "p1", "q": "What is 1+1?", "a": "2"},
        {"id": "p2", "q": "What is 2+2?", "a": "4"},
        {"id": "p1", "q": "What is 3+3?", "a": "6"},
    ]
    with pytest.raises(DatasetValidationError) as info:
        _load(tmp_path, rows, columns={"problem": "q", "answer": "a", "prompt_id": "id"})
    message = str(info.value)
    assert "'t/p1'" in message and "rows 0, 2" in message
    assert "p2" not in message


def test_duplicate_ids_of_a_repeated_problem_are_not_a_clash(tmp_path: Path) -> None:
    rows = [
        {"id": "p1", "q": "What is 1+1?", "a": "2"},
        {"id": "p1", "q": "What is  1+1? ", "a": "2"},  # same problem up to whitespace
        {"id": "p2", "q": "What is 2+2?", "a": "4"},
    ]
    table = _load(tmp_path, rows, columns={"problem": "q", "answer": "a", "prompt_id": "id"})
    assert table.duplicates_removed == 1
    assert list(table.frame["prompt_id"]) == ["t/p1", "t/p2"]


# --------------------------------------------------------------------------- direct validation


def _frame(**columns) -> pd.DataFrame:
    base = {
        "prompt_id": ["a", "b"],
        "problem": ["x", "y"],
        "answer": ["1", "2"],
        "source": ["s", "s"],
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_valid_table_passes_unchanged() -> None:
    df = _frame(level=[None, "3"])
    assert validate_prompt_table(df, origin="t").equals(df)


def test_unique_ids_are_required_only_after_dedup() -> None:
    df = _frame(prompt_id=["a", "a"])
    validate_prompt_table(df, origin="t", require_unique_ids=False)
    with pytest.raises(DatasetValidationError, match=r"row 0.*prompt_id"):
        validate_prompt_table(df, origin="t")


def test_level_must_be_text_or_missing() -> None:
    with pytest.raises(DatasetValidationError) as info:
        validate_prompt_table(_frame(level=["1", 3]), origin="levels.parquet")
    line = _row_line(str(info.value), 1)
    assert "level" in line and "int" in line


def test_loader_findings_merge_with_schema_failures_one_line_per_row() -> None:
    df = _frame(answer=[None, ""])
    with pytest.raises(DatasetValidationError) as info:
        validate_prompt_table(
            df, origin="t", row_errors={0: {"answer": "no \\boxed{} in the solution"}}
        )
    message = str(info.value)
    assert "no \\boxed{} in the solution" in _row_line(message, 0)
    assert "missing" not in _row_line(message, 0)  # the loader's reason replaces the echo
    assert "non-empty" in _row_line(message, 1)


def test_report_is_capped_but_counts_every_row() -> None:
    n = 45
    df = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "problem": [""] * n,
            "answer": ["1"] * n,
            "source": ["s"] * n,
        }
    )
    with pytest.raises(DatasetValidationError) as info:
        validate_prompt_table(df, origin="t")
    message = str(info.value)
    assert f"({n} failing row(s))" in message and "and 25 more failing row(s)" in message


def test_deduplicate_keeps_first_and_counts() -> None:
    df = pd.DataFrame(
        {
            "prompt_id": ["a", "b", "c"],
            "problem": ["x  y", "x y", "z"],
            "answer": ["1", "1", "2"],
            "source": ["s"] * 3,
        }
    )
    kept, removed = deduplicate(df)
    assert removed == 1 and list(kept["prompt_id"]) == ["a", "c"]
