r"""Read a math dataset (hub or local file) into the normalised, validated prompt table.

``load_prompt_table(spec)`` reads the rows named by a :class:`DatasetSpec`
through the ``datasets`` library (``load_dataset(hub_name, ...)`` for a hub
dataset, ``load_dataset("json" | "parquet", data_files=...)`` for a local
file, so both paths share one reader and its type inference), then:

1. picks each normalised column from its source column; a dotted path reaches
   into nested fields (``reward_model.ground_truth``; an integer segment
   indexes a list: ``final_answer.0``). A full column name that contains a dot
   wins over the path reading;
2. a ``problem`` given as chat messages (a list of ``{role, content}``, as
   DAPO-Math-17k stores its prompt) becomes the content of the *last* user
   message: the question being asked, without system prompts or earlier turns;
   then ``strip_problem_prefix`` / ``strip_problem_suffix`` remove an
   instruction baked into the source prompt, so that only our template
   instructs the model;
3. turns answers, levels and ids into text by the rule in ``schema.py``
   (``27.0`` -> ``"27"``; a list or dict is an error), and extracts the answer
   from a solution where ``answer_format`` says so (last ``\boxed{}``, or the
   text after GSM8K's ``####``);
4. names each prompt: ``<name>/<source id>`` when the spec maps a
   ``prompt_id`` column (prefixed, so ids stay unique when several datasets
   are mixed), otherwise ``<name>-<first 16 hex of sha256(problem)>`` over the
   whitespace-normalised problem, which is stable across runs, machines and
   row order;
5. validates every row lazily (one error naming every failing row and column,
   loader findings included), removes repeated problems (keeping the first;
   their count is returned), applies ``max_rows``, and validates the result.

The table keeps the source's row numbers as its index, so a later report can
point at a line of the file.

Deliberately not here: downloading anything unless a spec names a hub dataset
(tests use local files with ``HF_HUB_OFFLINE=1``), prompt templates
(``templates.py``), the synthetic task (``synthetic.py``), train/test
splitting or shuffling (the data stream decides the order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pilotcommit.data.schema import (
    PROMPT_TABLE_COLUMNS,
    coerce_text_cell,
    deduplicate,
    normalise_problem_text,
    validate_prompt_table,
)
from pilotcommit.data.specs import DatasetSpec
from pilotcommit.rewards.math_answer import extract_last_boxed

PROMPT_ID_HASH_CHARS = 16


@dataclass(frozen=True)
class LoadedTable:
    """A validated prompt table and where it came from."""

    frame: pd.DataFrame  # columns PROMPT_TABLE_COLUMNS, index = source row number
    origin: str  # hub name with config/split, or the resolved file path
    duplicates_removed: int  # rows dropped because their problem repeated an earlier row


class DatasetColumnError(KeyError):
    """A spec names a source column the dataset does not have."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


# --------------------------------------------------------------------------- reading


def resolve_dataset_path(spec: DatasetSpec, base_dir: str | Path | None = None) -> Path:
    """The local file of ``spec``: absolute, or relative to ``base_dir`` (default: cwd)."""
    if spec.path is None:
        raise ValueError(f"dataset {spec.name!r} is a hub dataset ({spec.hub_name}), not a file")
    path = Path(spec.path).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return path.resolve()


def _read_rows(spec: DatasetSpec, base_dir: str | Path | None):
    """The dataset's rows as a ``datasets.Dataset`` and a description of their origin."""
    import datasets  # heavy import, only when data is actually read

    if spec.hub_name is not None:
        dataset = datasets.load_dataset(spec.hub_name, spec.hub_config, split=spec.split)
        return dataset, spec.origin
    path = resolve_dataset_path(spec, base_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {spec.name!r}: file not found: {path} (spec path {spec.path!r}"
            + (f", relative to {Path(base_dir).resolve()})" if base_dir is not None else ")")
        )
    builder = "parquet" if path.suffix.lower() == ".parquet" else "json"
    dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    return dataset, str(path)


# --------------------------------------------------------------------------- cell access


class _CellError(ValueError):
    """One cell cannot be read or converted; the message says why (row and column added later)."""


def _as_list(value: object) -> list | None:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return None


def _follow_path(value: object, top: str, segments: Sequence[str]) -> object:
    """Walk ``segments`` (keys or list indices) into a nested cell of column ``top``."""
    walked = top
    for segment in segments:
        if isinstance(value, Mapping):
            if segment not in value:
                raise _CellError(f"{walked!r} has no key {segment!r} (keys: {sorted(value)})")
            value = value[segment]
        else:
            items = _as_list(value)
            if items is None or not segment.lstrip("-").isdigit():
                raise _CellError(f"cannot take {segment!r} of {walked!r}, a {type(value).__name__}")
            index = int(segment)
            if not -len(items) <= index < len(items):
                raise _CellError(f"index {index} of {walked!r} out of range (length {len(items)})")
            value = items[index]
        walked = f"{walked}.{segment}"
    return value


def _split_source(source: str, column_names: Sequence[str]) -> tuple[str, list[str]]:
    """(top-level column, path segments inside it) of a spec's source column."""
    if source in column_names:
        return source, []
    top, *rest = source.split(".")
    return top, rest


def _chat_user_content(messages: list) -> str:
    """Content of the last user message of a chat-message list."""
    if not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages):
        raise _CellError("a list that is not chat messages ({role, content} mappings)")
    user = [m["content"] for m in messages if m["role"] == "user"]
    if not user:
        raise _CellError(
            f"chat messages without a user message (roles: {[m['role'] for m in messages]})"
        )
    return user[-1]


def _problem_cell(value: object, spec: DatasetSpec) -> object:
    messages = _as_list(value)
    if messages is not None:
        value = _chat_user_content(messages)
    if isinstance(value, str):
        if spec.strip_problem_prefix and value.startswith(spec.strip_problem_prefix):
            value = value[len(spec.strip_problem_prefix) :]
        if spec.strip_problem_suffix and value.endswith(spec.strip_problem_suffix):
            value = value[: len(value) - len(spec.strip_problem_suffix)]
        value = value.strip()
    return value  # a non-string is left for the schema to report with its type


def _answer_cell(value: object, spec: DatasetSpec) -> str | None:
    text, error = coerce_text_cell(value)
    if error is not None:
        raise _CellError(error)
    if text is None or spec.answer_format == "plain":
        return text
    if spec.answer_format == "boxed":
        # a trusted solution may nest deeper than model answers are allowed to
        answer = extract_last_boxed(text, max_depth=10_000, max_chars=len(text))
        if answer is None:
            raise _CellError("answer_format 'boxed': no well-formed \\boxed{} in the solution")
        return answer
    # gsm8k: the reference solution ends with "#### <answer>"
    marker = text.rfind("####")
    answer = text[marker + 4 :].strip() if marker >= 0 else ""
    if not answer:
        raise _CellError("answer_format 'gsm8k': no '#### <answer>' in the solution")
    return answer


def _text_cell(value: object) -> str | None:
    text, error = coerce_text_cell(value)
    if error is not None:
        raise _CellError(error)
    return text


def stable_prompt_id(source: str, problem: str) -> str:
    """``<source>-<16 hex of sha256(normalised problem)>``: the same text, the same id."""
    digest = hashlib.sha256(normalise_problem_text(problem).encode("utf-8")).hexdigest()
    return f"{source}-{digest[:PROMPT_ID_HASH_CHARS]}"


# --------------------------------------------------------------------------- the table


def build_prompt_frame(
    columns: Mapping[str, list], spec: DatasetSpec, n_rows: int
) -> tuple[pd.DataFrame, dict[int, dict[str, str]]]:
    """Normalised rows from column-wise source data, and the per-row problems found.

    ``columns`` maps each top-level source column the spec uses to its values
    (python objects, one per row). Cells that cannot be read are ``None`` in the
    frame and explained in the returned ``row -> column -> message`` mapping.
    """
    row_errors: dict[int, dict[str, str]] = {}
    converters = {
        "problem": lambda v: _problem_cell(v, spec),
        "answer": lambda v: _answer_cell(v, spec),
        "level": _text_cell,
        "prompt_id": _text_cell,
    }
    names = list(columns)
    out: dict[str, list] = {}
    for target, source in spec.columns.items():
        top, segments = _split_source(source, names)
        values = columns[top]
        convert = converters[target]
        cells: list = []
        for row in range(n_rows):
            try:
                cells.append(convert(_follow_path(values[row], top, segments)))
            except _CellError as err:
                cells.append(None)
                row_errors.setdefault(row, {})[target] = f"{err} (source {source!r})"
        out[target] = cells

    problems = out["problem"]
    if "prompt_id" in out:
        ids = [None if pid is None else f"{spec.name}/{pid.strip()}" for pid in out["prompt_id"]]
    else:
        # a row whose problem is unusable fails on the problem; a placeholder id keeps the
        # report to that one reason instead of adding "prompt_id is missing"
        ids = [
            stable_prompt_id(spec.name, p)
            if isinstance(p, str) and p.strip()
            else f"{spec.name}-row{row}"
            for row, p in enumerate(problems)
        ]
    frame = pd.DataFrame(
        {
            "prompt_id": pd.Series(ids, dtype=object),
            "problem": pd.Series(problems, dtype=object),
            "answer": pd.Series(out["answer"], dtype=object),
            "source": spec.name,
            "level": pd.Series(out.get("level", [None] * n_rows), dtype=object),
        },
        index=pd.RangeIndex(n_rows),
    )
    return frame[list(PROMPT_TABLE_COLUMNS)], row_errors


def load_prompt_table(spec: DatasetSpec, *, base_dir: str | Path | None = None) -> LoadedTable:
    """Read, normalise, validate and de-duplicate the prompts of ``spec`` (module docstring).

    Raises ``FileNotFoundError`` (a local file is missing; names the path and the
    spec), :class:`DatasetColumnError` (a mapped column is absent; names it and the
    available ones) or ``DatasetValidationError`` (rows break the schema; names
    every failing row and column).
    """
    dataset, origin = _read_rows(spec, base_dir)
    available = list(dataset.column_names)
    needed: dict[str, None] = {}
    for target, source in spec.columns.items():
        top, _ = _split_source(source, available)
        if top not in available:
            raise DatasetColumnError(
                f"dataset {spec.name!r} ({origin}): column {top!r} (for {target!r}, "
                f"source {source!r}) not found; available columns: {available}"
            )
        needed[top] = None
    columns = dataset.select_columns(list(needed)).to_dict()
    frame, row_errors = build_prompt_frame(columns, spec, dataset.num_rows)
    validate_prompt_table(frame, origin=origin, require_unique_ids=False, row_errors=row_errors)
    kept, removed = deduplicate(frame, origin=origin)
    if spec.max_rows is not None:
        kept = kept.iloc[: spec.max_rows]
    validate_prompt_table(kept, origin=origin)
    return LoadedTable(frame=kept, origin=origin, duplicates_removed=removed)
