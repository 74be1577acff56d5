"""Shared fixtures: the smoke experiment's prepared data and initial policy, built once per session.

The smoke config (conf/experiment/smoke.yaml) builds its own data and a tiny
warm-started model in a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
SMOKE_CONFIG = CONF_DIR / "experiment" / "smoke.yaml"


def smoke_core_methods_override() -> str:
    """``methods={...}``: the smoke config's GRPO, DAPO and Pilot-Commit only (their smoke
    settings, as JSON, which the override parser reads as YAML). For the slowest tests of the
    pipeline's mechanics (the CLI, the Prefect UI), whose cost grows with every method trained;
    GRESO and SPEED-RL have their own training, resume and flow tests."""
    import json

    import yaml

    methods = yaml.safe_load(SMOKE_CONFIG.read_text())["methods"]
    return "methods=" + json.dumps({m: methods[m] for m in ("grpo", "dapo", "pilot_commit")})


@pytest.fixture(scope="session")
def smoke_config():
    from pilotcommit.config import load_experiment_config

    return load_experiment_config(SMOKE_CONFIG)


@pytest.fixture(scope="session")
def smoke_prepared(smoke_config, tmp_path_factory):
    from pilotcommit.pipeline import prepare_data

    return prepare_data(smoke_config, tmp_path_factory.mktemp("smoke-data"))


@pytest.fixture(scope="session")
def smoke_policy(smoke_config, smoke_prepared, tmp_path_factory) -> str:
    from pilotcommit.pipeline import build_initial_policy

    return build_initial_policy(smoke_config, smoke_prepared, tmp_path_factory.mktemp("smoke-policy"))


def listening_addresses(root_pid: int) -> set[tuple[str, int]]:
    """``(ip, port)`` of every socket listening in process ``root_pid`` and its descendants."""
    import psutil

    root = psutil.Process(root_pid)
    addresses: set[tuple[str, int]] = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses
