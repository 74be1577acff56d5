"""What a user sees on the Prefect run page: the flows' run logs and artifacts, read back from a
real Prefect API (the test harness's temporary server), and, in a browser, from a started
``prefect server`` after ``pilotcommit compare``.

Smoke configs (seconds per run). Checked:
- the compare's logs hold each stage's "computed" line, the first and final evaluation lines
  of every training run (trained in child processes: their progress crosses a pipe and is
  logged by the train task in this process), the summary and the MLflow links; a second
  identical compare logs every stage as served from the cache;
- the compare's artifacts: the markdown comparison (target, one row per method with its
  numbers), link artifacts to the MLflow parent run and its by-rollouts chart;
- a sweep: one comparison artifact per cell (model) and one for the sweep;
- a nightly with an injected regression: the verdict artifact says FAILED with the per-method
  report;
- headless Chromium on the flow run's Artifacts and Logs tabs of a Prefect server (screenshots
  go to docs/ with ``PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT=1``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from pilotcommit import services
from tests.conftest import REPO_ROOT, SMOKE_CONFIG, smoke_core_methods_override

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP_SMOKE = REPO_ROOT / "conf" / "sweep" / "smoke.yaml"
METHODS = ("dapo", "grpo", "pilot_commit")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    # The run loggers' INFO lines are what this module checks: let them through even where the
    # environment quiets Prefect (PREFECT_LOGGING_LEVEL=WARNING sets these loggers' parent).
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    settings = {PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage",
                PREFECT_SERVER_ANALYTICS_ENABLED: False}
    try:
        with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=240):
            yield home
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def flow_logs(flow_run_id) -> list[str]:
    """Every log message of a flow run (its tasks' included), in order, once delivered."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                sort=LogSort.TIMESTAMP_ASC, limit=200)
    return [log.message for log in logs]


def flow_artifacts(flow_run_id) -> dict[str, object]:
    """``{key: artifact}`` of the artifacts created in a flow run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return flow_artifacts_with(client, flow_run_id)


def flow_artifacts_with(client, flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts if a.key}


def run_flow(flow_fn, **kwargs):
    """The flow's return value and its flow run id."""
    state = flow_fn(**kwargs, return_state=True)
    return state.result(), state.state_details.flow_run_id


def table_rows(markdown: str) -> dict[str, list[str]]:
    """``{first cell: cells}`` of every markdown table row (header and separator rows included)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


@pytest.fixture(scope="module")
def compared(prefect_api, tmp_path_factory):
    from flows.compare import compare_flow

    runs_dir = tmp_path_factory.mktemp("runs")
    # two runs at once, each in its own process: progress reaches the log over the pipe
    out, flow_run_id = run_flow(compare_flow, config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir),
                                parallel_runs=2)
    return out, flow_run_id, runs_dir


def test_compare_logs_stages_evaluations_summary_and_links(compared):
    out, flow_run_id, _ = compared
    logs = flow_logs(flow_run_id)
    text = "\n".join(logs)
    for stage in ("prepare-data (smoke): computed", "initial-policy (tiny-h64-l2): computed", "report (smoke): computed"):
        assert stage in text, f"{stage!r} not in the run's logs:\n{text}"
    assert "prepare-data: running" in text and "report: running" in text
    for method in METHODS:
        name = f"train {method} seed 0 (tiny-h64-l2)"
        assert f"{name}: computed" in text
        assert f"{name}: training from scratch" in text
        evaluations = [m for m in logs if m.startswith(f"{name}: evaluation at step")]
        # smoke: 2 steps, an evaluation after each and one before training
        assert [re.search(r"step (\d+)/2", m).group(1) for m in evaluations] == ["0", "1", "2"], evaluations
        assert "(100% of the budget)" in evaluations[-1] and "eval/average_accuracy 0." in evaluations[-1]
        assert "allocation: 1 step," in evaluations[-1] and "informative" in evaluations[-1]
        finished = next(m for m in logs if m.startswith(f"{name}: finished after 2 steps"))
        run_id = next(r["mlflow_run_id"] for r in out["runs"] if r["method"] == method)
        assert f"/#/experiments/{out['experiment_id']}/runs/{run_id}" in finished
    target = out["report"]["summary"]["target"]
    assert f"target eval/average_accuracy = {target:.4f}" in text
    assert "speed-up pilot_commit vs grpo" in text
    assert f"MLflow parent run http://127.0.0.1:5000/#/experiments/{out['experiment_id']}/runs/{out['parent_run_id']}" in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text  # how to open a local store


def test_compare_artifacts_have_the_comparison_and_mlflow_links(compared):
    out, flow_run_id, _ = compared
    artifacts = flow_artifacts(flow_run_id)
    assert set(artifacts) == {"comparison-smoke", "comparison-smoke-mlflow-run", "comparison-smoke-mlflow-chart"}
    markdown = artifacts["comparison-smoke"]
    assert markdown.type == "markdown"
    summary = out["report"]["summary"]
    assert f"eval/average_accuracy = **{summary['target']:.4f}**" in markdown.data
    rows = table_rows(markdown.data)
    # the smoke experiment holds all five methods: PC's speed-up over each of the other four
    assert rows["method"] == ["method", "rollouts to target", "reached", "final accuracy", "speed-up vs grpo",
                              "speed-up vs dapo", "speed-up vs greso", "speed-up vs speed_rl"]
    for method in METHODS:
        m = summary["methods"][method]
        cells = rows[method]
        reached = sum(v is not None for v in m["rollouts_to_target"].values())
        assert cells[2] == f"{reached}/{len(m['rollouts_to_target'])}"
        assert cells[3] == f"{m['final_accuracy_mean']:.4f} ± {m['final_accuracy_std']:.4f}"
        if m["mean"] is not None:
            assert cells[1].startswith(f"{m['mean']:,.0f}")
    speedup = next(s for s in summary["speedups"] if s["baseline"] == "grpo")
    if speedup["ratio_of_means"] is not None:
        assert rows["pilot_commit"][4].startswith(f"{speedup['ratio_of_means']:.2f}x [")
    # Prefect 3 stores a link artifact as markdown: [text](link)
    run_link = artifacts["comparison-smoke-mlflow-run"].data
    assert run_link == (f"[comparison smoke: MLflow parent run](http://127.0.0.1:5000/#/experiments/"
                        f"{out['experiment_id']}/runs/{out['parent_run_id']})")
    chart = artifacts["comparison-smoke-mlflow-chart"].data
    assert chart.startswith("[comparison smoke: accuracy against rollouts (MLflow)](http://127.0.0.1:5000/#/metric?")
    assert "by_rollouts/eval/average_accuracy" in chart
    assert all(r["mlflow_run_id"] in chart for r in out["runs"])


def test_second_compare_logs_every_stage_served_from_the_cache(compared):
    from flows.compare import compare_flow

    _, _, runs_dir = compared
    _, flow_run_id = run_flow(compare_flow, config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    text = "\n".join(flow_logs(flow_run_id))
    for stage in ["prepare-data (smoke)", "initial-policy (tiny-h64-l2)", "report (smoke)",
                  *[f"train {m} seed 0 (tiny-h64-l2)" for m in METHODS]]:
        assert f"{stage}: served from the cache" in text, f"{stage} not served from the cache:\n{text}"
    assert "evaluation at step" not in text  # nothing trained
    assert "comparison-smoke" in flow_artifacts(flow_run_id)  # the outcome on this run's page too


def test_sweep_cells_and_sweep_have_comparison_artifacts(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.sweep import sweep_flow

    out, flow_run_id = run_flow(sweep_flow, sweep_config=str(SWEEP_SMOKE), runs_dir=str(tmp_path / "runs"),
                                parallel_runs=2)
    artifacts = flow_artifacts(flow_run_id)
    assert {"sweep-sweep-smoke", "sweep-sweep-smoke-mlflow-run", "sweep-sweep-smoke-mlflow-chart"} <= set(artifacts)
    sweep_md = artifacts["sweep-sweep-smoke"].data
    for model in out["models"]:
        assert f"# sweep sweep-smoke: {model}" in sweep_md
    assert sweep_md.count("| pilot_commit |") == 2 * len(out["models"])  # summary and per-seed rows per model
    # each cell (a subflow run) has its own model's comparison
    with get_client(sync_client=True) as client:
        cells = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    keys = set()
    for cell in cells:
        cell_artifacts = flow_artifacts(cell.id)
        keys |= set(cell_artifacts)
        (md,) = [a for k, a in cell_artifacts.items() if not k.endswith(("-mlflow-run", "-mlflow-chart"))]
        assert set(METHODS) <= set(table_rows(md.data))
    assert keys == {f"sweep-sweep-smoke-cell-{m}{suffix}" for m in out["models"]
                    for suffix in ("", "-mlflow-run", "-mlflow-chart")}


def test_nightly_verdict_is_an_artifact(prefect_api, compared):
    from flows.nightly import RegressionDetected, nightly_regression_flow
    from pilotcommit import tracking

    out, _, runs_dir = compared
    tracking.accept_baseline(tracking.mlflow_client(out["tracking_uri"]), out["parent_run_id"], note="test baseline")
    # the injected regression of tests/integration/test_flows.py: a weaker warm start
    state = nightly_regression_flow(config_path=str(SMOKE_CONFIG), overrides=["model.warm_start.steps=40"],
                                    runs_dir=str(runs_dir), accuracy_drop=0.01, return_state=True)
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    assert {"nightly-smoke-verdict", "nightly-smoke", "nightly-smoke-mlflow-run", "nightly-smoke-mlflow-chart"} <= set(artifacts)
    verdict = artifacts["nightly-smoke-verdict"].data
    if state.is_failed():
        with pytest.raises(RegressionDetected) as info:
            state.result()
        assert verdict.startswith("# Nightly regression: FAILED")
        assert str(info.value).strip() in verdict  # the whole per-method report
    else:
        assert verdict.startswith("# Nightly regression: PASSED")
    for method in METHODS:
        assert f"  {method}: accuracy" in verdict
    assert f"/runs/{out['parent_run_id']}" in verdict  # the accepted baseline's link
    assert set(METHODS) <= set(table_rows(artifacts["nightly-smoke"].data))
    logs = "\n".join(flow_logs(state.state_details.flow_run_id))
    assert "nightly regression: " in logs and "grpo: accuracy" in logs


# --------------------------------------------------------------------------- in a browser


class Browser:
    """Headless Chromium driven over the DevTools protocol (a tab must be clicked: the Prefect UI
    opens a flow run on its Logs tab). Only Chromium and the ``websockets`` package Prefect
    already depends on; no browser-automation library."""

    def __init__(self, profile) -> None:
        import json
        import urllib.request

        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--window-size=1500,1000",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 120
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=60)
        self.next_id = 0

    def call(self, method: str, **params):
        import json

        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def text(self) -> str:
        return self.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)["result"].get("value", "")

    def wait_for_text(self, expected: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if expected in text:
                return text
            assert time.monotonic() < deadline, f"{expected!r} not on the page:\n{text[-3000:]}"
            time.sleep(1)

    def open(self, url: str, expected: str) -> str:
        self.call("Page.navigate", url=url)
        return self.wait_for_text(expected)

    def click(self, label: str) -> None:
        found = self.call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const el = [...document.querySelectorAll('button, [role=tab], a, li')]"
            f".find(e => e.textContent.trim() === {label!r}); if (el) el.click(); return !!el; }})()"))
        assert found["result"]["value"], f"no {label!r} control on the page"

    def scroll_to(self, text: str) -> None:
        """Scroll the innermost element showing ``text`` to the top of the window."""
        found = self.call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const all = [...document.querySelectorAll('body *')]"
            f".filter(e => e.textContent.includes({text!r}));"
            " const el = all[all.length - 1]; if (el) el.scrollIntoView({block: 'start'}); return !!el; })()"))
        assert found["result"]["value"], f"{text!r} not on the page"

    def screenshot(self, path) -> None:
        import base64

        time.sleep(2)  # let the last render settle
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(30)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_prefect_ui_shows_the_logs_and_artifacts_of_a_compare(tmp_path):
    """``pilotcommit compare`` against a started Prefect server (as with ``pilotcommit serve``),
    then headless Chromium on the flow run's Logs and Artifacts tabs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    server = services.start_prefect_server(tmp_path / "prefect", tmp_path / "prefect.log")
    try:
        env = dict(os.environ)
        for key in ("MLFLOW_TRACKING_URI", "PILOTCOMMIT_RUNS_DIR", "PREFECT_LOGGING_LEVEL"):
            env.pop(key, None)
        env.update(services.prefect_env(tmp_path / "client", server.url))
        # three methods: the run page's log view shows a window of lines, and the test reads its end
        done = subprocess.run([sys.executable, "-m", "pilotcommit.cli", "compare", "-c", str(SMOKE_CONFIG),
                               "--set", smoke_core_methods_override(),
                               "--runs-dir", str(tmp_path / "runs")], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " | INFO " not in done.stdout + done.stderr  # the console stays quiet

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["compare"])))
            artifact_id = flow_artifacts_with(client, run.id)["comparison-smoke"].id
        ui = server.url.removesuffix("/api")
        docs = os.environ.get("PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT")
        shots = REPO_ROOT / "docs" if docs else tmp_path
        browser = Browser(tmp_path / "chromium-profile")
        try:
            # the Logs tab (the default): the stage and evaluation lines of the run
            browser.open(f"{ui}/runs/flow-run/{run.id}", "train grpo seed 0 (tiny-h64-l2): evaluation at step 0/2")
            browser.wait_for_text("MLflow parent run http://127.0.0.1:5000/#/experiments/")
            browser.scroll_to("initial-policy (tiny-h64-l2): computed")
            browser.screenshot(shots / "prefect_run_logs.png")
            browser.click("Artifacts")
            text = browser.wait_for_text("comparison-smoke-mlflow-chart")
            assert "comparison-smoke-mlflow-run" in text and "comparison-smoke" in text
            browser.screenshot(shots / "prefect_run_artifacts.png")
            # the markdown artifact itself: the comparison table
            browser.open(f"{ui}/artifacts/artifact/{artifact_id}", "Rollouts to target per seed")
            text = browser.text()
            assert "pilot_commit" in text and "speed-up vs grpo" in text
            browser.screenshot(shots / "prefect_artifact_comparison.png")
        finally:
            browser.close()
        for name in ("prefect_run_logs.png", "prefect_run_artifacts.png", "prefect_artifact_comparison.png"):
            assert (shots / name).stat().st_size > 10_000
    finally:
        server.stop()
