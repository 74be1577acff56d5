"""The embedded verifiable task: seeded integer-arithmetic problems in graded levels.

A problem is an expression such as ``"47*6-18="``; its answer is the exact
integer (``"264"``), possibly negative. Problems are drawn from *templates*
(``"dd*d±dd"``: ``d`` is one digit of an operand, ``±`` is ``+`` or ``-``,
``+ - *`` are literal operators) grouped into difficulty levels, from one-digit
sums to multi-operation multi-digit expressions. Usual precedence applies
(``*`` before ``+``/``-``, left to right), so answers are computed by a tiny
evaluator of our own, never by ``eval``.

Splits are deterministic in the seed, and a problem string appears in at most
one split and one level (deduplicated across both). Each level draws from its
own random stream (seeded by ``(seed, level)``), so changing the size of one
level does not change the problems of another.

Output rows use the project's normalised columns: ``prompt_id``, ``problem``,
``answer``, ``source``, ``level``.

This module deliberately does not tokenize, template prompts for a chat model,
or score model outputs (that is ``pilotcommit.rewards``); it only makes data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SOURCE = "synthetic-arith"
COLUMNS = ("prompt_id", "problem", "answer", "source", "level")
OPERATORS = "+-*"
# template symbols: operand digit, operator "+ or -", literal operators
_DIGIT, _PLUS_MINUS = "d", "±"


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class _Template:
    # one pattern per operand: "d" is a random digit, a literal digit stands for itself
    operands: tuple[str, ...]
    operators: tuple[str, ...]  # one entry per gap; "±" means + or -

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(len(o) for o in self.operands)


def parse_template(template: str) -> _Template:
    """Split ``"dd*d±dd"`` into operands ``("dd", "d", "dd")`` and operators ``("*", "±")``.

    Operands are runs of ``d`` (a random digit) and literal digits: ``"dd+0"`` is a two-digit
    number plus zero. A literal multi-digit operand must not start with 0.
    """
    operands: list[str] = []
    operators: list[str] = []
    run = ""
    for char in template:
        if char == _DIGIT or char.isdigit():
            run += char
        elif char in OPERATORS or char == _PLUS_MINUS:
            if not run:
                raise ValueError(f"template {template!r}: operator {char!r} without a left operand")
            operands.append(run)
            operators.append(char)
            run = ""
        else:
            raise ValueError(f"template {template!r}: unknown symbol {char!r}")
    if not run:
        raise ValueError(f"template {template!r}: must end with an operand")
    operands.append(run)
    for operand in operands:
        if len(operand) > 1 and operand[0] == "0":
            raise ValueError(f"template {template!r}: operand {operand!r} has a leading zero")
    return _Template(tuple(operands), tuple(operators))


def _draw_operand(pattern: str, rng: np.random.Generator) -> str:
    digits = []
    for position, char in enumerate(pattern):
        if char != _DIGIT:
            digits.append(char)
        else:
            # a multi-digit operand has a non-zero leading digit, so "dd" is 10..99
            low = 1 if position == 0 and len(pattern) > 1 else 0
            digits.append(str(int(rng.integers(low, 10))))
    return "".join(digits)


def _draw_problem(template: _Template, rng: np.random.Generator) -> str:
    parts: list[str] = []
    for i, pattern in enumerate(template.operands):
        parts.append(_draw_operand(pattern, rng))
        if i < len(template.operators):
            op = template.operators[i]
            parts.append(("+", "-")[int(rng.integers(2))] if op == _PLUS_MINUS else op)
    return "".join(parts) + "="


@dataclass(frozen=True)
class ArithLevel:
    """One difficulty level: the templates it draws from and how many problems per split."""

    level: int
    templates: tuple[str, ...]
    n_train: int
    n_test: int

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"level {self.level}: needs at least one template")
        for template in self.templates:
            parse_template(template)  # fails early, naming the template
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError(f"level {self.level}: n_train and n_test must be >= 0")


# The default mix, the same as conf/data/arith.yaml (docs/embedded_task.md explains it): trivial
# identities the warm-started policy always solves, graded middle levels it partly solves (where
# RL has signal), and multi-digit sums and products it never solves.
DEFAULT_LEVELS: tuple[ArithLevel, ...] = (
    ArithLevel(0, ("dd+0", "0+dd", "dd*1", "1*dd", "dd-0"), n_train=350, n_test=100),
    ArithLevel(1, ("d+d",), n_train=60, n_test=40),
    ArithLevel(2, ("dd+d", "d+dd"), n_train=1500, n_test=70),
    ArithLevel(3, ("dd+dd",), n_train=3000, n_test=70),
    ArithLevel(4, ("dd-d", "dd-dd"), n_train=3000, n_test=70),
    ArithLevel(5, ("dd*d",), n_train=700, n_test=70),
    ArithLevel(6, ("d*d+dd", "dd+d*d"), n_train=3000, n_test=70),
    ArithLevel(7, ("ddd+ddd",), n_train=3000, n_test=55),
    ArithLevel(8, ("dd*dd",), n_train=3000, n_test=55),
)


@dataclass(frozen=True)
class ArithSpec:
    """Which levels to generate and the seed of the whole data set."""

    levels: tuple[ArithLevel, ...] = DEFAULT_LEVELS
    seed: int = 0
    # draws per requested problem before a level is declared exhausted (small template spaces)
    max_draws_factor: int = 20

    def __post_init__(self) -> None:
        numbers = [lvl.level for lvl in self.levels]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"ArithSpec.levels: duplicate level numbers {numbers}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedPaths:
    """Where ``write_prepared_dataset`` put the splits."""

    train: Path
    test: Path
    manifest: Path


# --------------------------------------------------------------------------- evaluator


def tokenize_expression(expression: str) -> list[int | str]:
    """``"12+7*3"`` -> ``[12, "+", 7, "*", 3]``; a trailing ``=`` is allowed and dropped."""
    text = expression[:-1] if expression.endswith("=") else expression
    items: list[int | str] = []
    number = ""
    for position, char in enumerate(text):
        if char.isdigit():
            number += char
        elif char in OPERATORS:
            if not number:
                raise ValueError(f"expression {expression!r}: operator at position {position} "
                                 "has no left operand")
            items.append(int(number))
            items.append(char)
            number = ""
        else:
            raise ValueError(f"expression {expression!r}: unexpected {char!r} at position {position}")
    if not number:
        raise ValueError(f"expression {expression!r}: must end with a number")
    items.append(int(number))
    return items


def evaluate_expression(expression: str) -> int:
    """Exact value of a ``+ - *`` expression of non-negative integers (``*`` binds tighter)."""
    items = tokenize_expression(expression)
    # fold products first into signed terms, then sum the terms (left to right)
    terms: list[int] = []
    sign = 1
    product = items[0]
    for op, operand in zip(items[1::2], items[2::2]):
        if op == "*":
            product *= operand
        else:
            terms.append(sign * product)
            sign = 1 if op == "+" else -1
            product = operand
    terms.append(sign * product)
    return sum(terms)


# --------------------------------------------------------------------------- splits


def prompt_id_for(level: int, problem: str) -> str:
    """Stable id: the level and a hash of the problem string (same problem, same id)."""
    digest = hashlib.sha1(problem.encode()).hexdigest()[:10]
    return f"arith-{level}-{digest}"


def _unique_level_problems(
    level: ArithLevel, seed: int, taken: set[str], max_draws_factor: int
) -> list[str]:
    rng = np.random.default_rng([seed, level.level])
    templates = [parse_template(t) for t in level.templates]
    wanted = level.n_train + level.n_test
    problems: list[str] = []
    seen: set[str] = set()
    for _ in range(max(wanted * max_draws_factor, 100)):
        if len(problems) == wanted:
            break
        template = templates[int(rng.integers(len(templates)))]
        problem = _draw_problem(template, rng)
        if problem in seen or problem in taken:
            continue
        seen.add(problem)
        problems.append(problem)
    return problems


def _rows(level: int, problems: list[str]) -> list[dict]:
    return [
        {
            "prompt_id": prompt_id_for(level, p),
            "problem": p,
            "answer": str(evaluate_expression(p)),
            "source": SOURCE,
            "level": level,
        }
        for p in problems
    ]


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("prompt_id", "problem", "answer", "source"):
        frame[column] = frame[column].astype(str)
    frame["level"] = frame["level"].astype("int64")
    return frame.reset_index(drop=True)


def generate_arith_splits(spec: ArithSpec = ArithSpec()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(train_df, test_df)`` with the normalised columns, no problem in both.

    A level whose template space is smaller than ``n_train + n_test`` (``d+d`` has 100
    problems) fills the test split first and gives the train split what is left.
    """
    train_rows: list[dict] = []
    test_rows: list[dict] = []
    taken: set[str] = set()
    for level in sorted(spec.levels, key=lambda lvl: lvl.level):
        problems = _unique_level_problems(level, spec.seed, taken, spec.max_draws_factor)
        taken.update(problems)
        test_rows += _rows(level.level, problems[: level.n_test])
        train_rows += _rows(level.level, problems[level.n_test :])
    return _frame(train_rows), _frame(test_rows)


def content_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of a table's content, independent of the file format and its library versions.

    Rows in order, columns in ``COLUMNS`` order, every cell as text, joined with separators
    that cannot occur in a cell (unit and record separators). The parquet bytes are not
    hashed: they carry the writer's library version. The data are made only of integer draws
    from numpy's PCG64 and string formatting, so this hash is the same on every machine
    (pinned in tests/unit/test_synthetic.py).
    """
    digest = hashlib.sha256()
    for row in frame[list(COLUMNS)].itertuples(index=False):
        digest.update(("\x1f".join(str(cell) for cell in row) + "\x1e").encode())
    return digest.hexdigest()


def write_prepared_dataset(out_dir: str | Path, spec: ArithSpec = ArithSpec()) -> PreparedPaths:
    """Generate the splits and write ``train.parquet``, ``test.parquet`` and ``manifest.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_df, test_df = generate_arith_splits(spec)
    paths = PreparedPaths(out / "train.parquet", out / "test.parquet", out / "manifest.json")
    train_df.to_parquet(paths.train, index=False)
    test_df.to_parquet(paths.test, index=False)
    manifest = {
        "source": SOURCE,
        "spec": spec.to_dict(),
        "rows": {"train": len(train_df), "test": len(test_df)},
        "content_sha256": {"train": content_hash(train_df), "test": content_hash(test_df)},
        "rows_per_level": {
            "train": {int(k): int(v) for k, v in train_df["level"].value_counts().sort_index().items()},
            "test": {int(k): int(v) for k, v in test_df["level"].value_counts().sort_index().items()},
        },
    }
    paths.manifest.write_text(json.dumps(manifest, indent=2))
    return paths
