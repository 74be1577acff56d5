"""What a user sees on the Prefect run page: the flows' run logs and artifacts, read back from the
session's real Prefect server (tests/integration/conftest.py), and in headless Chromium.

Read from the shared smoke comparison (``pilotcommit compare`` of GRPO, DAPO and Pilot-Commit,
two runs at once in child processes). Checked:
- its logs hold each stage's "computed" line, the first and final evaluation lines of every
  training run (trained in child processes: their progress crosses a pipe and is logged by the
  train task in the CLI's process), the summary and the MLflow links; the same comparison again
  logs every stage as served from the cache;
- its artifacts: the markdown comparison (target, one row per method with its numbers), link
  artifacts to the MLflow parent run and its by-rollouts chart;
- headless Chromium on the flow run's Logs and Artifacts tabs and the comparison artifact
  (screenshots go to docs/ with ``PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT=1``).
The sweep's and the nightly's artifacts are checked with those flows in test_flows_reruns.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import flow_artifacts, flow_logs, table_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METHODS = ("dapo", "grpo", "pilot_commit")


def test_compare_logs_stages_evaluations_summary_and_links(smoke_compare, smoke_outcome):
    out, _ = smoke_outcome  # the same runs, read from the cache
    logs = flow_logs(smoke_compare.flow_run_id)
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
    assert " | INFO " not in smoke_compare.stdout  # ...while the console stays quiet


def test_compare_artifacts_have_the_comparison_and_mlflow_links(smoke_compare, smoke_outcome):
    out, _ = smoke_outcome
    artifacts = flow_artifacts(smoke_compare.flow_run_id)
    assert set(artifacts) == {"comparison-smoke", "comparison-smoke-mlflow-run", "comparison-smoke-mlflow-chart"}
    markdown = artifacts["comparison-smoke"]
    assert markdown.type == "markdown"
    summary = out["report"]["summary"]
    assert f"eval/average_accuracy = **{summary['target']:.4f}**" in markdown.data
    rows = table_rows(markdown.data)
    # Pilot-Commit's speed-up over each of the other methods
    assert rows["method"] == ["method", "rollouts to target", "reached", "final accuracy", "speed-up vs grpo",
                              "speed-up vs dapo"]
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


def test_the_cached_compare_logs_every_stage_served_from_the_cache(smoke_outcome):
    _, flow_run_id = smoke_outcome
    text = "\n".join(flow_logs(flow_run_id))
    for stage in ["prepare-data (smoke)", "initial-policy (tiny-h64-l2)", "report (smoke)",
                  *[f"train {m} seed 0 (tiny-h64-l2)" for m in METHODS]]:
        assert f"{stage}: served from the cache" in text, f"{stage} not served from the cache:\n{text}"
    assert "evaluation at step" not in text  # nothing trained
    assert "comparison-smoke" in flow_artifacts(flow_run_id)  # the outcome on this run's page too


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
def test_prefect_ui_shows_the_logs_and_artifacts_of_a_compare(smoke_compare, prefect_server, tmp_path):
    """The shared ``pilotcommit compare`` ran against a started Prefect server (as with
    ``pilotcommit serve``): headless Chromium on its flow run's Logs and Artifacts tabs."""
    run_id = smoke_compare.flow_run_id
    artifact_id = flow_artifacts(run_id)["comparison-smoke"].id
    ui = prefect_server.url.removesuffix("/api")
    docs = os.environ.get("PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT")
    shots = REPO_ROOT / "docs" if docs else tmp_path
    browser = Browser(tmp_path / "chromium-profile")
    try:
        # the Logs tab (the default): the stage and evaluation lines of the run
        browser.open(f"{ui}/runs/flow-run/{run_id}", "train grpo seed 0 (tiny-h64-l2): evaluation at step 0/2")
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
