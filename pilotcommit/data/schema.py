"""The normalised prompt table: its pandera schema, its validation report and de-duplication.

Every prompt source (hub datasets, the shipped benchmark files, the synthetic task)
ends up as one pandas table with these columns, one row per prompt:

- ``prompt_id`` (str, unique): the key the allocators, rollouts and metrics use.
- ``problem`` (str, non-empty after strip): the problem text, without any template.
- ``answer`` (str, non-empty after strip): the reference final answer, as text.
- ``source`` (str, non-empty): the dataset name the row came from.
- ``level`` (str or missing, optional column): the source's own difficulty label.
  Kept as text because sources disagree on its meaning (MATH levels 1-5,
  DeepMath difficulty 1.0-10.0, Polaris pass-rate fractions such as "3/8");
  converting them to one numeric scale would invent a semantics none of them has.

Validation is lazy: one :class:`DatasetValidationError` names every failing row
(index and prompt_id) and column with the check that failed and the offending
value's type, so a broken file is fixed in one pass rather than one error at a
time. A loader's own per-row findings (a missing nested key, a solution without
an answer) are merged into the same report.

Type rule for text cells read from JSON / parquet (:func:`coerce_text_cell`):
answers and levels are text, but sources often store numbers. A string is kept
as is; an integer becomes its decimal digits (``72`` -> ``"72"``); a float that
is a whole number becomes the integer's digits (``27.0`` -> ``"27"``: AMC 2023
stores answers so, and the trailing ``.0`` is a storage artefact, not part of the
answer); any other finite float becomes its shortest round-trip form (``0.5`` ->
``"0.5"``); numpy scalars follow the same rule. ``None`` / NaN stay missing. A
boolean, list, dict or any other object is an error: there is no single obvious
text for it, and guessing (``[1, 2]`` -> ``"1, 2"``?) would silently change what
counts as a correct answer.

Deliberately not here: reading files (``loaders.py``), answer extraction or
normalisation (``loaders.py``), prompt templates (``templates.py``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections import defaultdict
from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

PROMPT_TABLE_COLUMNS = ("prompt_id", "problem", "answer", "source", "level")

# Reports on files with thousands of broken rows stay readable; the count of the rest is given.
MAX_REPORTED_ROWS = 20
MAX_REPORTED_IDS = 20


class DatasetValidationError(ValueError):
    """A prompt table (or the file it came from) breaks the schema; the message says where."""


def _is_non_empty_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _non_empty_text_check(column: str) -> pa.Check:
    return pa.Check(
        _is_non_empty_str,
        element_wise=True,
        name="non_empty_text",
        error=f"{column} must be a non-empty string after strip",
    )


def _optional_str_check() -> pa.Check:
    # level may be missing; when present it is text (see the module docstring for why).
    return pa.Check(
        lambda value: (
            value is None or (isinstance(value, float) and pd.isna(value)) or isinstance(value, str)
        ),
        element_wise=True,
        name="str_or_missing",
        error="level must be a string or missing",
    )


def _build_schema(*, unique_ids: bool) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "prompt_id": pa.Column(
                str, _non_empty_text_check("prompt_id"), unique=unique_ids, nullable=False
            ),
            "problem": pa.Column(str, _non_empty_text_check("problem"), nullable=False),
            "answer": pa.Column(str, _non_empty_text_check("answer"), nullable=False),
            "source": pa.Column(str, _non_empty_text_check("source"), nullable=False),
            # No dtype for level: an all-missing column is object, a filled one str; the check sees values.
            "level": pa.Column(None, _optional_str_check(), nullable=True, required=False),
        },
        # Extra columns are allowed so that callers may carry provenance along; only ours are checked.
        strict=False,
        coerce=False,
        name="prompt_table",
    )


# Row-level checks only: used before de-duplication, when repeated problems may still share an id.
PROMPT_ROW_SCHEMA = _build_schema(unique_ids=False)
# The full contract of a finished prompt table.
PROMPT_TABLE_SCHEMA = _build_schema(unique_ids=True)


def coerce_text_cell(value: object) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, error)`` for one answer / level / id cell (rule above).

    A missing value gives ``(None, None)``: whether that is allowed is the schema's call.
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, (bool, np.bool_)):
        return None, f"expected text or a number, got a boolean ({value!r})"
    if isinstance(value, numbers.Integral):
        return str(int(value)), None
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None, None
        if math.isinf(number):
            return None, f"expected text or a finite number, got {number!r}"
        if number.is_integer():
            return str(int(number)), None
        return repr(number), None
    return None, f"expected text or a number, got {_describe_value(value)}"


def _describe_value(value: object) -> str:
    """Type and a short preview of a cell, for error messages."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    preview = repr(value)
    if len(preview) > 60:
        preview = preview[:57] + "..."
    return f"{type(value).__name__} {preview}"


# pandera's check names -> what a person fixing the file needs to read
_CHECK_TEXT = {
    "field_uniqueness": "repeats another row's value (ids must be unique)",
    "not_nullable": "is missing",
}


def _format_failures(
    df: pd.DataFrame,
    failure_cases: pd.DataFrame | None,
    origin: str,
    row_errors: Mapping[Hashable, Mapping[str, str]] | None = None,
) -> str:
    """One message naming every failing column (table-level) and row (with prompt_id)."""
    table_level: list[str] = []
    by_row: dict[object, dict[str, list[str]]] = defaultdict(dict)
    for index, problems in (row_errors or {}).items():
        for column, message in problems.items():
            by_row[index][column] = [message]
    loader_found = {(i, c) for i, problems in (row_errors or {}).items() for c in problems}
    cases = failure_cases.itertuples(index=False) if failure_cases is not None else ()
    for case in cases:
        column = case.column if isinstance(case.column, str) else "<table>"
        index = case.index
        if index is None or (isinstance(index, float) and pd.isna(index)):
            if case.check == "column_in_dataframe":  # pandera reports the schema's name as the column
                table_level.append(f"column {case.failure_case!r} is missing")
                continue
            table_level.append(
                f"column {column!r}: {case.check} (failure case: {case.failure_case!r})"
            )
            continue
        if (index, column) in loader_found:
            continue  # the loader already said why this cell is wrong
        check = str(case.check)
        if check.startswith("dtype("):
            check = "must be a string"
        check = _CHECK_TEXT.get(check, check)
        by_row[index].setdefault(column, [])
        if check not in by_row[index][column]:
            by_row[index][column].append(check)

    def describe_cell(index: object, column: str) -> str:
        # the type of a wrong-typed value is the fastest hint to a fix; text and gaps need none
        if column in df.columns and index in df.index:
            value = df.at[index, column]
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            if not missing and not isinstance(value, str):
                return f" (got {_describe_value(value)})"
        return ""

    n_rows = len(by_row)
    lines = [f"{origin}: prompt table failed validation ({n_rows} failing row(s))"]
    lines += [f"  {entry}" for entry in dict.fromkeys(table_level)]
    has_ids = "prompt_id" in df.columns
    for shown, (index, columns) in enumerate(
        sorted(by_row.items(), key=lambda kv: _row_key(kv[0]))
    ):
        if shown == MAX_REPORTED_ROWS:
            lines.append(f"  ... and {n_rows - MAX_REPORTED_ROWS} more failing row(s)")
            break
        label = f"row {index}"
        if has_ids and index in df.index and isinstance(df.at[index, "prompt_id"], str):
            label += f" (prompt_id={df.at[index, 'prompt_id']!r})"
        parts = []
        for column, checks in columns.items():
            from_loader = (index, column) in loader_found
            if len(checks) > 1 and "must be a string" in checks:
                checks = [c for c in checks if c != "must be a string"]  # the value check says more
            detail = "" if from_loader else describe_cell(index, column)
            parts.append(f"{column}: {'; '.join(checks)}{detail}")
        lines.append(f"  {label}: " + "; ".join(parts))
    return "\n".join(lines)


def _row_key(index: object) -> tuple[int, object]:
    # numeric row numbers in numeric order (row 2 before row 10), anything else after
    if isinstance(index, (int, np.integer)):
        return (0, int(index))
    return (1, str(index))


def validate_prompt_table(
    df: pd.DataFrame,
    *,
    origin: str,
    require_unique_ids: bool = True,
    row_errors: Mapping[Hashable, Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """Validate ``df`` against the prompt-table schema and return it unchanged.

    ``origin`` (a file path or hub name) opens the error message. With
    ``require_unique_ids=False`` only the per-row checks run (for tables that have
    not been de-duplicated yet). ``row_errors`` (row index -> column -> message) are
    a loader's own findings, reported together with the schema's in one message.
    Raises :class:`DatasetValidationError`.
    """
    schema = PROMPT_TABLE_SCHEMA if require_unique_ids else PROMPT_ROW_SCHEMA
    try:
        validated = schema.validate(df, lazy=True)
    except SchemaErrors as err:
        raise DatasetValidationError(
            _format_failures(df, err.failure_cases, origin, row_errors)
        ) from err
    except SchemaError as err:  # pandera raises this for a few table-level problems even when lazy
        raise DatasetValidationError(f"{origin}: prompt table failed validation: {err}") from err
    if row_errors:
        raise DatasetValidationError(_format_failures(df, None, origin, row_errors))
    return validated


_WHITESPACE = re.compile(r"\s+")


def normalise_problem_text(problem: str) -> str:
    """The text two problems are compared on: stripped, runs of whitespace collapsed.

    Case is kept: in LaTeX ``$X$`` and ``$x$`` can be different problems.
    """
    return _WHITESPACE.sub(" ", problem).strip()


def deduplicate(df: pd.DataFrame, *, origin: str = "prompt table") -> tuple[pd.DataFrame, int]:
    """Drop rows whose normalised problem repeats an earlier row; keep the first.

    Returns the remaining rows (original index kept, so later reports still point
    at source rows) and the number removed. Two remaining rows that share a
    ``prompt_id`` have different problems: that is an error naming the ids.
    """
    keys = df["problem"].map(lambda p: normalise_problem_text(p) if isinstance(p, str) else p)
    repeated = keys.duplicated(keep="first")
    kept = df.loc[~repeated]
    clashing = kept["prompt_id"][kept["prompt_id"].duplicated(keep=False)]
    if len(clashing) > 0:
        ids = list(dict.fromkeys(clashing.tolist()))
        shown = ", ".join(
            f"{pid!r} (rows {', '.join(str(i) for i in clashing.index[clashing == pid])})"
            for pid in ids[:MAX_REPORTED_IDS]
        )
        more = f" ... and {len(ids) - MAX_REPORTED_IDS} more" if len(ids) > MAX_REPORTED_IDS else ""
        raise DatasetValidationError(
            f"{origin}: {len(ids)} prompt_id(s) are shared by different problems: {shown}{more}"
        )
    return kept, int(repeated.sum())
