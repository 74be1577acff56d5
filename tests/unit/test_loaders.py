"""Dataset specs and the loader: every conf/data spec against a file shaped like its source.

The hub-shaped fixtures (tests/fixtures/data/hub_*) copy the column names, types and
nesting of the hub datasets; the loader reads them through the same ``datasets`` code path
as a hub dataset, so the column mappings in conf/data are exercised without a download.
The shipped_* fixtures are the first 20 rows of the shipped benchmark files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilotcommit.data.loaders import (
    DatasetColumnError,
    LoadedTable,
    load_prompt_table,
    stable_prompt_id,
)
from pilotcommit.data.schema import PROMPT_TABLE_COLUMNS, DatasetValidationError
from pilotcommit.data.specs import DatasetSpec, DatasetSpecError, read_dataset_specs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DATA = REPO_ROOT / "conf" / "data"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "data"
SHIPPED_DIR = REPO_ROOT.parent / "shared" / "data" / "benchmarks"

DAPO_PREFIX = "Solve the following math problem step by step."


def _as_local(spec: DatasetSpec, fixture: str) -> DatasetSpec:
    """The same spec (same column mapping) pointed at a local fixture instead of the hub."""
    data = spec.model_dump()
    data.update(hub_name=None, hub_config=None, split="train", path=str(FIXTURES / fixture))
    return DatasetSpec.model_validate(data)


def _spec_named(path: Path, name: str) -> DatasetSpec:
    return next(s for s in read_dataset_specs(path) if s.name == name)


def _check_table(table: LoadedTable, name: str, n_rows: int) -> None:
    frame = table.frame
    assert list(frame.columns) == list(PROMPT_TABLE_COLUMNS)
    assert len(frame) == n_rows
    assert frame["prompt_id"].is_unique
    assert (frame["source"] == name).all()
    for column in ("problem", "answer", "prompt_id"):
        assert frame[column].map(lambda v: isinstance(v, str) and v.strip() != "").all(), column


# --------------------------------------------------------------------------- conf/data files


def test_every_conf_data_spec_file_loads() -> None:
    files = sorted(p for p in CONF_DATA.glob("*.yaml") if p.name != "arith.yaml")
    assert {p.name for p in files} >= {
        "deepmath-103k.yaml",
        "polaris-53k.yaml",
        "dapo-math-17k.yaml",
        "benchmarks-paper.yaml",
        "benchmarks-shipped.yaml",
    }
    for path in files:
        assert read_dataset_specs(path), path


def test_paper_benchmarks_are_the_six_of_the_paper_with_their_sample_counts() -> None:
    specs = {s.name: s for s in read_dataset_specs(CONF_DATA / "benchmarks-paper.yaml")}
    assert set(specs) == {"math500", "aime24", "aime25", "amc23", "minerva", "olympiadbench"}
    assert {n: s.eval_samples for n, s in specs.items()} == {
        "math500": 1,
        "aime24": 32,
        "aime25": 32,
        "amc23": 32,
        "minerva": 1,
        "olympiadbench": 1,
    }
    assert all(s.hub_name for s in specs.values())


# --------------------------------------------------------------------------- hub-shaped fixtures


def test_deepmath_mapping() -> None:
    spec = _as_local(read_dataset_specs(CONF_DATA / "deepmath-103k.yaml")[0], "hub_deepmath.jsonl")
    table = load_prompt_table(spec)
    _check_table(table, "deepmath", 12)
    first = table.frame.iloc[0]
    assert first["problem"] == "Compute $3 \\times 7 - 2$."
    assert first["answer"] == "19"
    assert first["level"] == "4"  # difficulty 4.0 -> "4" by the text rule
    assert table.frame.iloc[1]["level"] == "4.5"
    assert first["prompt_id"] == stable_prompt_id("deepmath", first["problem"])


def test_polaris_mapping_keeps_fraction_difficulty_as_text() -> None:
    spec = _as_local(read_dataset_specs(CONF_DATA / "polaris-53k.yaml")[0], "hub_polaris.jsonl")
    table = load_prompt_table(spec)
    _check_table(table, "polaris", 12)
    assert table.frame.iloc[3]["level"] == "3/8"


def test_dapo_chat_prompt_nested_answer_instruction_stripped_and_repeats_counted() -> None:
    spec = _as_local(
        read_dataset_specs(CONF_DATA / "dapo-math-17k.yaml")[0], "hub_dapo_math.parquet"
    )
    table = load_prompt_table(spec)
    _check_table(table, "dapo_math", 10)
    assert table.duplicates_removed == 2
    for problem in table.frame["problem"]:
        assert not problem.startswith(DAPO_PREFIX)
        assert "Answer:" not in problem
    assert table.frame.iloc[0]["problem"] == "Compute $43 \\times 7 - 2$."
    assert table.frame.iloc[0]["answer"] == str(43 * 7 - 2)


@pytest.mark.parametrize(
    "name, fixture, first_answer",
    [
        ("aime25", "hub_aime25.jsonl", str(63 * 7 - 2)),
        ("amc23", "hub_amc23.jsonl", str(83 * 7 - 2)),
        ("minerva", "hub_minerva.jsonl", str(103 * 7 - 2)),
        # OlympiadBench: final_answer is a list; "final_answer.0" takes its item (with its $...$)
        ("olympiadbench", "hub_olympiadbench.parquet", f"${123 * 7 - 2}$"),
    ],
)
def test_paper_benchmark_mappings(name: str, fixture: str, first_answer: str) -> None:
    spec = _as_local(_spec_named(CONF_DATA / "benchmarks-paper.yaml", name), fixture)
    table = load_prompt_table(spec)
    _check_table(table, name, 10)
    assert table.frame.iloc[0]["answer"] == first_answer


@pytest.mark.parametrize(
    "name, fixture, first_id, first_answer",
    [
        (
            "math500",
            "shipped_math500.jsonl",
            "math500/test/precalculus/807.json",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("aime24", "shipped_aime24.jsonl", "aime24/60", "204"),
        ("amc23", "shipped_amc23.jsonl", "amc23/0", "27"),  # stored as the float 27.0
        ("gsm8k", "shipped_gsm8k.jsonl", None, "18"),  # "... #### 18"
    ],
)
def test_shipped_benchmark_mappings_on_samples(
    name: str, fixture: str, first_id: str | None, first_answer: str
) -> None:
    spec = _as_local(_spec_named(CONF_DATA / "benchmarks-shipped.yaml", name), fixture)
    table = load_prompt_table(spec)
    _check_table(table, name, 20)
    first = table.frame.iloc[0]
    assert first["answer"] == first_answer
    if first_id is not None:
        assert first["prompt_id"] == first_id
    else:
        assert first["prompt_id"] == stable_prompt_id(name, first["problem"])


def test_math500_level_int_becomes_text() -> None:
    spec = _as_local(
        _spec_named(CONF_DATA / "benchmarks-shipped.yaml", "math500"), "shipped_math500.jsonl"
    )
    levels = load_prompt_table(spec).frame["level"]
    assert set(levels) <= {"1", "2", "3", "4", "5"}


@pytest.mark.skipif(not SHIPPED_DIR.is_dir(), reason=f"shipped benchmarks absent: {SHIPPED_DIR}")
def test_shipped_benchmark_files_load_in_full_from_the_repo_root() -> None:
    sizes = {
        spec.name: len(load_prompt_table(spec, base_dir=REPO_ROOT).frame)
        for spec in read_dataset_specs(CONF_DATA / "benchmarks-shipped.yaml")
    }
    assert sizes == {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}


# --------------------------------------------------------------------------- ids, dedup, max_rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(path: Path, **overrides) -> DatasetSpec:
    data = {"name": "t", "path": str(path), "columns": {"problem": "q", "answer": "a"}}
    data.update(overrides)
    return DatasetSpec.model_validate(data)


def test_generated_ids_are_stable_and_whitespace_insensitive(tmp_path: Path) -> None:
    rows = [{"q": "What is  1+1?", "a": "2"}, {"q": "What is 2+2?", "a": "4"}]
    first = load_prompt_table(_spec(_write_jsonl(tmp_path / "a.jsonl", rows))).frame
    rows_reordered = [{"q": "What is 2+2?", "a": "4"}, {"q": " What is 1+1? ", "a": "2"}]
    second = load_prompt_table(_spec(_write_jsonl(tmp_path / "b.jsonl", rows_reordered))).frame
    assert set(first["prompt_id"]) == set(second["prompt_id"])
    assert first["prompt_id"].iloc[0] == stable_prompt_id("t", "What is 1+1?")
    assert first["prompt_id"].iloc[0] != first["prompt_id"].iloc[1]


def test_duplicate_problems_are_removed_and_counted(tmp_path: Path) -> None:
    rows = [{"q": f"Problem {i % 3}", "a": str(i % 3)} for i in range(7)]
    table = load_prompt_table(_spec(_write_jsonl(tmp_path / "d.jsonl", rows)))
    assert table.duplicates_removed == 4
    assert list(table.frame["problem"]) == ["Problem 0", "Problem 1", "Problem 2"]
    assert list(table.frame.index) == [0, 1, 2]  # source row numbers of the kept rows


def test_max_rows_keeps_the_first_unique_prompts(tmp_path: Path) -> None:
    rows = [{"q": "same", "a": "1"}, {"q": "same", "a": "1"}] + [
        {"q": f"p{i}", "a": str(i)} for i in range(5)
    ]
    table = load_prompt_table(_spec(_write_jsonl(tmp_path / "m.jsonl", rows), max_rows=3))
    assert list(table.frame["problem"]) == ["same", "p0", "p1"]
    assert table.duplicates_removed == 1


def test_source_ids_are_prefixed_with_the_dataset_name(tmp_path: Path) -> None:
    rows = [{"id": 7, "q": "x?", "a": "1"}, {"id": "b-2", "q": "y?", "a": "2"}]
    spec = _spec(
        _write_jsonl(tmp_path / "i.jsonl", rows),
        columns={"problem": "q", "answer": "a", "prompt_id": "id"},
    )
    assert list(load_prompt_table(spec).frame["prompt_id"]) == ["t/7", "t/b-2"]


def test_boxed_answer_format_takes_the_last_box(tmp_path: Path) -> None:
    rows = [{"q": "p", "s": "First \\boxed{1}, then \\boxed{\\frac{1}{2}}."}]
    spec = _spec(
        _write_jsonl(tmp_path / "b.jsonl", rows),
        columns={"problem": "q", "answer": "s"},
        answer_format="boxed",
    )
    assert load_prompt_table(spec).frame["answer"].iloc[0] == "\\frac{1}{2}"


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write_jsonl(tmp_path / "sub" / "r.jsonl", [{"q": "x?", "a": "1"}])
    spec = _spec(Path("sub/r.jsonl"))
    assert len(load_prompt_table(spec, base_dir=tmp_path).frame) == 1


# --------------------------------------------------------------------------- clear errors


def test_missing_file_names_the_path_and_the_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nowhere.jsonl", name="mybench")
    with pytest.raises(FileNotFoundError) as info:
        load_prompt_table(spec)
    assert "nowhere.jsonl" in str(info.value) and "'mybench'" in str(info.value)


def test_missing_column_names_it_and_the_available_ones(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"question": "x?", "solution": "1"}])
    with pytest.raises(DatasetColumnError) as info:
        load_prompt_table(_spec(path, columns={"problem": "question", "answer": "final_answer"}))
    message = str(info.value)
    assert "'final_answer'" in message and "question" in message and "solution" in message


def test_missing_nested_key_names_the_row_and_the_path(tmp_path: Path) -> None:
    rows = [
        {"q": "x?", "rm": {"ground_truth": "1"}},
        {"q": "y?", "rm": {"style": "rule"}},
    ]
    spec = _spec(
        _write_jsonl(tmp_path / "n.jsonl", rows),
        columns={"problem": "q", "answer": "rm.ground_truth"},
    )
    with pytest.raises(DatasetValidationError) as info:
        load_prompt_table(spec)
    message = str(info.value)
    assert "row 1" in message and "answer" in message and "'ground_truth'" in message
    assert "row 0" not in message


def test_chat_prompt_without_user_message_is_an_error(tmp_path: Path) -> None:
    rows = [{"p": [{"role": "system", "content": "be brief"}], "a": "1"}]
    spec = _spec(
        _write_jsonl(tmp_path / "chat.jsonl", rows), columns={"problem": "p", "answer": "a"}
    )
    with pytest.raises(DatasetValidationError, match=r"row 0.*problem.*without a user message"):
        load_prompt_table(spec)


def test_solution_without_answer_marker_is_an_error(tmp_path: Path) -> None:
    rows = [{"q": "x?", "s": "It is 3.\n#### 3"}, {"q": "y?", "s": "no marker here"}]
    spec = _spec(
        _write_jsonl(tmp_path / "g.jsonl", rows),
        columns={"problem": "q", "answer": "s"},
        answer_format="gsm8k",
    )
    with pytest.raises(DatasetValidationError, match=r"row 1.*answer.*####"):
        load_prompt_table(spec)


# --------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"hub_name": "org/set"}, "exactly one of hub_name and path"),
        ({"path": None}, "exactly one of hub_name and path"),
        ({"columns": {"problem": "q"}}, "missing required column"),
        (
            {"columns": {"problem": "q", "answer": "a", "solution": "s"}},
            "unknown normalised column",
        ),
        ({"columns": {"problem": "q", "answer": "a..b"}}, "not a column name or dotted path"),
        ({"split": "test"}, "split applies to hub datasets only"),
        ({"path": "data.csv"}, ".jsonl, .json or .parquet"),
        ({"eval_samples": 0}, "greater than or equal to 1"),
        ({"typo_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_specs_fail_at_load_naming_the_field(overrides: dict, fragment: str) -> None:
    data = {"name": "t", "path": "x.jsonl", "columns": {"problem": "q", "answer": "a"}}
    data.update(overrides)
    with pytest.raises(ValueError, match=None) as info:
        DatasetSpec.model_validate(data)
    assert fragment in str(info.value)


def test_spec_file_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text("benchmarks:\n  - name: a\n    path: a.jsonl\n    columns: {problem: q}\n")
    with pytest.raises(DatasetSpecError) as info:
        read_dataset_specs(path)
    assert "bench.yaml" in str(info.value) and "benchmarks[0]" in str(info.value)


def test_hub_spec_calls_load_dataset_with_name_config_and_split(monkeypatch) -> None:
    """The hub itself is replaced by a test double (no network here): it records the call and
    returns rows shaped like DeepMath-103K; everything after the read is the real loader."""
    import datasets

    calls = []
    rows = [json.loads(line) for line in (FIXTURES / "hub_deepmath.jsonl").read_text().splitlines()]

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = read_dataset_specs(CONF_DATA / "deepmath-103k.yaml")[0]
    table = load_prompt_table(spec)
    assert calls == [(("zwhe99/DeepMath-103K", None), {"split": "train"})]
    assert table.origin == "hub:zwhe99/DeepMath-103K[train]"
    _check_table(table, "deepmath", 12)
