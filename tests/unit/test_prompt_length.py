"""``model.max_prompt_length``: data preparation drops longer prompts and counts them.

The "pretrained" model here is a local directory holding the embedded character tokenizer (no
hub access in tests); lengths are counted with it exactly as the training run will encode the
prompts (``encode_prompts``), so the test's expectation is derived from the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pilotcommit.config import load_experiment_config
from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.pipeline import data_fingerprint, prepare_data, read_prompt_table
from pilotcommit.run_parts import encode_prompts
from tests.conftest import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
MAX_TOKENS = 8


def _config(tmp_path: Path, problems: list[str], max_prompt_length: int = MAX_TOKENS):
    tokenizer_dir = tmp_path / "policy"
    build_char_tokenizer().save_pretrained(tokenizer_dir)
    rows = [{"id": f"r{i}", "problem": p, "answer": "1"} for i, p in enumerate(problems)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bench.jsonl").write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    raw = {
        "name": "prompt-length",
        "data": {
            "kind": "math",
            "base_dir": str(tmp_path),
            "train": {"name": "train", "path": "train.jsonl",
                      "columns": {"problem": "problem", "answer": "answer", "prompt_id": "id"}},
            "benchmarks": [{"name": "bench", "path": "bench.jsonl",
                            "columns": {"problem": "problem", "answer": "answer"}}],
        },
        "model": {"kind": "pretrained", "name_or_path": str(tokenizer_dir), "label": "local",
                  "dtype": "float32", "prompt_template": "raw", "max_prompt_length": max_prompt_length},
        "methods": ["grpo"],
        "budget": {"max_steps": 1},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_experiment_config(path, conf_dir=CONF_DIR)


def test_longer_prompts_are_dropped_at_preparation_and_counted(tmp_path):
    problems = ["1" * n + "+1" for n in (1, 3, 5, 6, 7, 9, 12)]
    cfg = _config(tmp_path, problems)
    lengths = [len(ids) for ids in encode_prompts(problems, build_char_tokenizer(), cfg)]
    expected_kept = [p for p, n in zip(problems, lengths) if n <= MAX_TOKENS]
    assert 0 < len(expected_kept) < len(problems)  # the case exercises both sides of the limit

    prepared = prepare_data(cfg, tmp_path / "prepared")
    train = read_prompt_table(prepared.train_path)
    assert train["problem"].tolist() == expected_kept
    manifest = json.loads(prepared.manifest_path.read_text())
    dropped = len(problems) - len(expected_kept)
    assert manifest["train"]["train"]["prompts_too_long"] == dropped
    assert manifest["train"]["train"]["rows"] == len(expected_kept)
    assert prepared.dropped_prompts() == {
        "data.train.train.prompts_too_long": dropped, "data.benchmarks.bench.prompts_too_long": 0,
    }


def test_the_data_stage_key_depends_on_the_limit(tmp_path):
    """A different limit (or tokenizer) prepares different data: a new cache key."""
    a = _config(tmp_path / "a", ["1+1"], max_prompt_length=8)
    b = _config(tmp_path / "a", ["1+1"], max_prompt_length=9)
    assert data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(a)[0] == data_fingerprint(b)[0]  # the data config itself is the same


def test_a_training_set_with_only_long_prompts_fails_naming_the_file(tmp_path):
    cfg = _config(tmp_path, ["1" * 20 + "+1", "2" * 30 + "+2"])
    with pytest.raises(ValueError, match=r"train\.jsonl.*max_prompt_length = 8"):
        prepare_data(cfg, tmp_path / "prepared")
