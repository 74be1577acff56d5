"""Pure helpers of pilotcommit.tracking: where the store is, the reachability check, the code
version of cache keys, parameter flattening, prompt-stat figures, the gap summary."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd
import pytest

from pilotcommit import tracking


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_default_runs_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PILOTCOMMIT_RUNS_DIR", str(tmp_path / "r"))
    assert tracking.default_runs_root() == (tmp_path / "r").resolve()
    monkeypatch.delenv("PILOTCOMMIT_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    assert tracking.default_runs_root() == (tmp_path / "runs").resolve()


def test_artifact_root_beside_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert tracking.default_artifact_root(uri) == (tmp_path / "store" / "mlartifacts").as_uri()
    assert tracking.default_artifact_root("http://127.0.0.1:5000") is None


def test_unreachable_server_fails_fast_with_a_clear_message():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(tracking.TrackingUnavailable) as info:
        tracking.check_tracking_server(f"http://127.0.0.1:{port}", timeout_s=1)
    message = str(info.value)
    assert f"http://127.0.0.1:{port} is unreachable" in message and "pilotcommit serve" in message


def test_unwritable_sqlite_directory_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(tracking.TrackingUnavailable, match="cannot write"):
        tracking.check_tracking_server(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    tracking.check_tracking_server(f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}")
    assert (tmp_path / "ok").is_dir()


def test_source_hash_sees_result_code_not_presentation(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "loop.py").write_text("x = 1\n")
    (pkg / "analysis").mkdir()
    (pkg / "analysis" / "render.py").write_text("y = 1\n")
    (pkg / "cli.py").write_text("z = 1\n")
    before = tracking.source_hash(pkg)
    (pkg / "analysis" / "render.py").write_text("y = 2\n")  # how results are shown: same cache key
    (pkg / "cli.py").write_text("z = 2\n")
    assert tracking.source_hash(pkg) == before
    (pkg / "loop.py").write_text("x = 2\n")  # what results are: new key
    assert tracking.source_hash(pkg) != before


def test_code_version_has_package_version_and_hash():
    version = tracking.code_version()
    assert "+" in version and len(version.split("+")[-1]) == 16


def test_flatten_params():
    flat = tracking.flatten_params({"learner": {"lr": 1e-4, "betas": [0.9, 0.99]}, "name": "x"})
    assert flat == {"learner.lr": "0.0001", "learner.betas": "[0.9, 0.99]", "name": "x"}


def test_run_key_is_stable_and_distinguishes_parts():
    from pilotcommit.stages.table import run_key

    assert run_key("abc", "grpo", 0) == run_key("abc", "grpo", 0)
    assert run_key("abc", "grpo", 0) != run_key("abc", "grpo", 1)


def test_prompt_stats_figure_and_missing_column():
    from pilotcommit.analysis.figures import prompt_stats_figure

    frame = pd.DataFrame({"prompt_id": ["a", "b"], "pass_rate": [0.0, 0.5], "reward_variance": [0.0, 0.25]})
    fig = prompt_stats_figure(frame, "eval")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="missing column 'reward_variance'"):
        prompt_stats_figure(frame.drop(columns="reward_variance"), "eval")


def test_gap_summary():
    gap = tracking.TrackingGap()
    assert not gap.any and gap.summary() == "no tracking outage"
    gap = tracking.TrackingGap(delayed_metrics=12, delayed_steps=(4, 9), failed_attempts=3,
                               lost_metrics=2, spool_path=Path("/tmp/s.jsonl"))
    text = gap.summary()
    assert "12 metric value(s) delayed" in text and "steps 4-9" in text and "/tmp/s.jsonl" in text


def test_configure_mlflow_http_keeps_user_settings(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)  # restored after
    tracking.configure_mlflow_http(max_retries=1, timeout_s=5)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
