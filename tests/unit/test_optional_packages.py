"""A missing optional package never crashes a run halfway (pilotcommit/dependencies.py): a
setting that needs it fails before any compute, naming the setting and the install command;
a feature that can do without it degrades with one warning."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from pilotcommit import dependencies
from pilotcommit.cli import app
from pilotcommit.config import load_experiment_config
from tests.conftest import SMOKE_CONFIG


def test_a_vllm_config_without_vllm_exits_2_before_compute(tmp_path, monkeypatch):
    monkeypatch.setattr(dependencies, "available", lambda module: module != "vllm")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["train", "-c", str(SMOKE_CONFIG), "-m", "grpo", "--runs-dir", str(runs),
                                      "--set", "rollout.engine=vllm"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "rollout.engine: vllm needs vllm, which is not installed" in text
    assert "pip install 'pilotcommit[vllm]'" in text
    assert not runs.exists()  # nothing was computed or created


def test_check_experiment_names_every_missing_package(monkeypatch):
    monkeypatch.setattr(dependencies, "available", lambda module: False)
    cfg = load_experiment_config(SMOKE_CONFIG, ["rollout.engine=vllm"])
    with pytest.raises(dependencies.MissingDependency, match="smoke: rollout.engine: vllm needs vllm"):
        dependencies.check_experiment(cfg, "smoke")
    assert dependencies.missing_for_experiment(load_experiment_config(SMOKE_CONFIG)) == []


def test_require_imports_or_says_what_to_install():
    if dependencies.available("vllm"):  # the vLLM environment
        assert dependencies.require("vllm.platforms").current_platform is not None
    else:
        with pytest.raises(dependencies.MissingDependency, match=r"needs vllm, which is not installed: vllm 0.32"):
            dependencies.require("vllm.platforms")
    with pytest.raises(KeyError, match="not an optional package"):
        dependencies.require("numpy")


def test_a_missing_optional_package_is_warned_about_once(monkeypatch, caplog):
    monkeypatch.setattr(dependencies, "available", lambda module: False)
    monkeypatch.setattr(dependencies, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="pilotcommit.dependencies"):
        assert dependencies.warn_missing_once("pynvml", "run r") is False
        assert dependencies.warn_missing_once("pynvml", "run r") is False
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["run r: GPU system metrics (system/gpu_*) needs pynvml, which is not installed: "
                     "pip install nvidia-ml-py; going on without it"]


def test_system_metrics_without_psutil_degrade_with_a_warning(monkeypatch, caplog):
    """psutil is a base dependency now; an environment without it still trains, without
    system/* metrics, and MLflow's monitor (which imports psutil at module level) is never loaded."""
    import sys

    from pilotcommit import tracking

    monkeypatch.setattr(dependencies, "available", lambda module: module != "psutil")
    monkeypatch.delitem(sys.modules, "mlflow.system_metrics.system_metrics_monitor", raising=False)
    with caplog.at_level(logging.WARNING):
        assert tracking.start_system_metrics("run-1", "sqlite:///x.db", 10.0) is None
    assert any("no system metrics (psutil is not installed" in r.getMessage() for r in caplog.records)
    assert "mlflow.system_metrics.system_metrics_monitor" not in sys.modules
