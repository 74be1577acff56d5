"""A pretrained model given as a GGUF file (issue 25): the model config names the file and its
sha256; the model stage converts it once into the model cache, in a folder named by the hash,
which every loader then reads; a missing file fails before any compute, saying how to fetch it.
The real file's conversion is a ``real_model`` test (tests/unit/test_gguf.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotcommit.config import ConfigError, load_experiment_config
from pilotcommit.config.loading import config_hash
from pilotcommit.models.fetch import (
    MODEL_CACHE_ENV,
    converted_folder,
    model_cache_dir,
    model_file_path,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
SMOLLM2 = CONF / "experiment" / "smollm2-arith.yaml"
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_the_model_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path))
    assert model_cache_dir() == tmp_path
    assert model_file_path("x.gguf") == tmp_path / "x.gguf"  # a bare name: in the cache
    assert model_file_path("/data/x.gguf") == Path("/data/x.gguf")  # a path: as given
    assert converted_folder("SmolLM2-135M-Instruct.Q4_1.gguf", SHA) == (
        tmp_path / "converted" / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f")
    monkeypatch.delenv(MODEL_CACHE_ENV)
    assert model_cache_dir() == Path.home() / ".cache" / "pilotcommit" / "models"


def test_the_smollm2_config_loads_from_its_converted_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path))
    cfg = load_experiment_config(SMOLLM2)
    assert cfg.model.gguf.sha256 == SHA and cfg.data.reward == "arith_chat"
    assert cfg.model.load_path == str(converted_folder(cfg.model.gguf.file, SHA))
    assert cfg.learner.max_tokens_per_micro_batch is not None  # the packed learner, on a Llama


def test_a_missing_gguf_file_fails_before_any_stage_saying_how_to_fetch_it(monkeypatch, tmp_path):
    from pilotcommit.stages.materialise import materialise_data

    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "empty-cache"))
    cfg = load_experiment_config(SMOLLM2)
    with pytest.raises(FileNotFoundError, match=r"python -m pilotcommit.models.fetch smollm2-135m-instruct"):
        materialise_data(cfg, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing prepared


def test_a_wrong_hash_is_refused_at_load_and_a_mismatching_file_before_conversion(monkeypatch, tmp_path):
    from pilotcommit.models.fetch import HashMismatchError
    from pilotcommit.models.gguf import ensure_converted

    with pytest.raises(ConfigError, match="sha256"):
        load_experiment_config(SMOLLM2, overrides=["model.gguf.sha256=abc"])
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path))
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"not the model")
    cfg = load_experiment_config(SMOLLM2)
    with pytest.raises(HashMismatchError):
        ensure_converted(cfg.model)
    assert not (tmp_path / "converted").exists() or not any((tmp_path / "converted").iterdir())


def test_hub_models_keep_their_config_hashes_and_the_arith_reward_matches_the_model():
    paper = load_experiment_config(CONF / "experiment" / "paper-4b.yaml")
    assert "gguf" not in paper.model.model_dump()
    assert config_hash(paper.model) == config_hash(paper.model.model_copy())
    with pytest.raises(ConfigError, match="needs model.prompt_template: arith_chat and data.reward: arith_chat"):
        load_experiment_config(SMOLLM2, overrides=["data.reward=arith_exact"])
    with pytest.raises(ConfigError, match="the tiny model needs arith_exact"):
        load_experiment_config(CONF / "experiment" / "smoke.yaml", overrides=["data.reward=arith_chat"])
