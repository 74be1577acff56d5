"""MlflowTracker against a real MLflow SQLite store (and, marked slow, a real MLflow server).

What is checked: metric batching and by_rollouts logging, prompt-stat figures and tables,
params and artifacts; no duplicate steps after a resume; a failing store (injected faults
on top of the real client, then a real server stopped mid-run) delays metrics without
blocking the caller, and the gap is reported.
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from pilotcommit import services, tracking
from pilotcommit.tracking import MlflowTracker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def client(sqlite_uri):
    return tracking.mlflow_client(sqlite_uri)


@pytest.fixture
def run_id(client, request, tmp_path) -> str:
    experiment_id = tracking.ensure_experiment(client, f"t-{request.node.name}", (tmp_path / "art").as_uri())
    return client.create_run(experiment_id).info.run_id


def steps_of(client, run_id, key) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def prompt_frame(n: int = 10) -> pd.DataFrame:
    p = [i / n for i in range(n)]
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "pass_rate": p,
                         "reward_variance": [x * (1 - x) for x in p], "level": ["0"] * n})


def test_metrics_evaluations_prompt_stats_params(client, run_id):
    tracker = MlflowTracker(run_id, client)
    tracker.log_params({"learner.lr": 1e-4, "method": "grpo"})
    for step in range(1, 6):
        tracker.log_metrics({"rollouts/sampled": 16.0 * step, "loss/policy": 0.1 / step}, step)
    tracker.log_evaluation({"eval/average_accuracy": 0.5, "eval/arith/accuracy": 0.5}, step=5, cumulative_rollouts=80)
    tracker.log_prompt_stats(prompt_frame(), step=5, name="eval")
    gap = tracker.close()

    assert not gap.any
    assert steps_of(client, run_id, "rollouts/sampled") == [1, 2, 3, 4, 5]
    assert steps_of(client, run_id, "eval/average_accuracy") == [5]
    # the same evaluation again, against the budget
    assert steps_of(client, run_id, "by_rollouts/eval/average_accuracy") == [80]
    run = client.get_run(run_id)
    assert run.data.params == {"learner.lr": "0.0001", "method": "grpo"}
    files = {a.path for a in client.list_artifacts(run_id, "prompt_stats/eval")}
    assert files == {"prompt_stats/eval/step_000005.png", "prompt_stats/eval/step_000005.csv"}


def test_resume_skips_steps_already_logged(client, run_id):
    first = MlflowTracker(run_id, client)
    for step in range(1, 6):
        first.log_metrics({"loss/policy": float(step)}, step)
    first.log_evaluation({"eval/average_accuracy": 0.1}, step=5, cumulative_rollouts=50)
    first.log_params({"seed": 0})
    first.close()

    # The loop resumed from its checkpoint at step 3 and re-logs steps 4 and 5, then goes on.
    second = MlflowTracker(run_id, client)
    second.log_params({"seed": 0})  # identical params are not re-sent (MLflow would accept them)
    for step in range(4, 9):
        second.log_metrics({"loss/policy": 100.0 + step}, step)
    second.log_evaluation({"eval/average_accuracy": 0.1}, step=5, cumulative_rollouts=50)
    second.log_evaluation({"eval/average_accuracy": 0.2}, step=8, cumulative_rollouts=80)
    second.close()

    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss/policy")}
    assert steps_of(client, run_id, "loss/policy") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert history[5] == 5.0 and history[6] == 106.0  # the first logging of a step is kept
    assert steps_of(client, run_id, "by_rollouts/eval/average_accuracy") == [50, 80]


def test_checkpoint_barrier_delivers_everything_logged_before_it(client, run_id):
    """MlflowTracker.checkpoint_barrier's claim: when it returns True, every value logged before
    it is in the store, so a crash after the checkpoint (even SIGKILL) loses none of them and the
    resumed run re-logs exactly the steps after it. The store is stalled until a timer opens it:
    without the barrier's wait the values are not there yet (the control, checked first)."""
    gated = GatedClient(client)
    tracker = MlflowTracker(run_id, gated)
    for step in (1, 2, 3):
        tracker.log_metrics({"loss/policy": float(step), "reward/mean": step / 10}, step)
    tracker.log_evaluation({"eval/average_accuracy": 0.5}, step=3, cumulative_rollouts=48)
    assert steps_of(client, run_id, "loss/policy") == []  # control: queued, not delivered
    threading.Timer(1.0, gated.gate.set).start()
    try:
        assert tracker.checkpoint_barrier()
        for key in ("loss/policy", "reward/mean"):
            assert steps_of(client, run_id, key) == [1, 2, 3], key
        assert steps_of(client, run_id, "eval/average_accuracy") == [3]
        assert steps_of(client, run_id, "by_rollouts/eval/average_accuracy") == [48]
    finally:
        gated.gate.set()
        tracker.close()


class FlakyClient:
    """The real MlflowClient with injected failures of log_batch (a store outage)."""

    def __init__(self, inner, fail_calls: int) -> None:
        self.inner = inner
        self.fail_calls = fail_calls
        self.failed = 0

    def log_batch(self, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        if self.failed < self.fail_calls:
            self.failed += 1
            raise MlflowException("API request to http://127.0.0.1:1/api failed with exception Connection refused")
        return self.inner.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class GatedClient:
    """The real MlflowClient whose log_batch waits until ``gate`` opens (a slow or stalled store).
    The wait is bounded so that a regression fails the test instead of hanging it."""

    def __init__(self, inner, fail_calls: int = 0) -> None:
        self.flaky = FlakyClient(inner, fail_calls)
        self.gate = threading.Event()

    def log_batch(self, *args, **kwargs):
        self.gate.wait(timeout=120)
        return self.flaky.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.flaky, name)


def test_transient_failures_are_retried_and_reported(client, run_id):
    gated = GatedClient(client, fail_calls=3)
    tracker = MlflowTracker(run_id, gated, retry_initial_s=0.01, retry_max_s=0.05)

    def log_all() -> None:
        for step in range(1, 21):
            tracker.log_metrics({"reward/mean": step / 20}, step)

    # The caller (training) never waits on the store: every call returns while the store is
    # stalled (a logging call that waited would block on the closed gate for 120 s).
    caller = threading.Thread(target=log_all, daemon=True)
    caller.start()
    try:
        caller.join(timeout=60)
        assert not caller.is_alive() and not gated.gate.is_set()
        assert steps_of(client, run_id, "reward/mean") == []  # nothing could be delivered yet
    finally:
        gated.gate.set()
    gap = tracker.close()
    flaky = gated.flaky

    assert flaky.failed == 3
    assert steps_of(client, run_id, "reward/mean") == list(range(1, 21))
    assert gap.failed_attempts == 3 and gap.delayed_metrics >= 1 and gap.lost_metrics == 0
    tags = client.get_run(run_id).data.tags
    assert int(tags[tracking.TAG_DELAYED_METRICS]) == gap.delayed_metrics
    assert tags[tracking.TAG_LOST_METRICS] == "0"


def test_rejected_write_is_dropped_not_retried_forever(client, run_id):
    tracker = MlflowTracker(run_id, client, retry_initial_s=0.01)
    tracker.log_params({"a": 1})
    tracker.flush(10)
    tracker._logged_params.clear()  # simulate a changed value MLflow refuses (params are immutable)
    tracker.log_params({"a": 2})
    tracker.log_metrics({"x": 1.0}, 1)
    gap = tracker.close()
    assert len(gap.lost_operations) == 1 and "rejected" in gap.lost_operations[0]
    assert steps_of(client, run_id, "x") == [1]  # later writes were not blocked by it


def test_store_unreachable_at_start_is_reported_before_compute():
    port = services.free_port()
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        tracking.check_tracking_server(f"http://127.0.0.1:{port}", timeout_s=2)
    # fails fast: it does not sit in MLflow's own retries (minutes by default); the margin holds
    # on a loaded machine (measured 0.0 s on 2 shared cores)
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_server_outage_mid_run_does_not_stop_training(tmp_path, monkeypatch):
    """A real ``mlflow server`` on 127.0.0.1 is stopped while metrics are being logged and
    started again on the same port and store: all steps arrive, the gap is tagged. Then it is
    stopped for good: close() returns within its timeout and spools what was not delivered,
    which is replayed into the same store afterwards."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    port = services.free_port()

    def start():
        return services.start_mlflow_server(backend, tmp_path / "artifacts", tmp_path / "mlflow.log", port=port)

    server = start()
    try:
        tracking.check_tracking_server(server.url)
        client = tracking.mlflow_client(server.url)
        experiment_id = tracking.ensure_experiment(client, "outage")
        run_id = client.create_run(experiment_id).info.run_id
        tracker = MlflowTracker(run_id, client, retry_initial_s=0.2, retry_max_s=1.0, close_timeout_s=120)

        step_times = []
        for step in range(1, 11):
            t0 = time.perf_counter()
            tracker.log_metrics({"loss/policy": float(step)}, step)
            step_times.append(time.perf_counter() - t0)
            if step == 3:
                assert tracker.flush(30)
                server.stop()
            time.sleep(0.1)
        # logging never blocked while the server was down (a blocking call would wait out the
        # 3 s HTTP timeout); the margin is for a loaded machine
        assert max(step_times) < 2.5
        time.sleep(1.0)  # let a few retries fail
        server = start()
        gap = tracker.close()
        assert gap.failed_attempts >= 1 and gap.lost_metrics == 0
        assert gap.delayed_steps is not None and gap.delayed_steps[0] >= 4
        assert steps_of(client, run_id, "loss/policy") == list(range(1, 11))
        tags = client.get_run(run_id).data.tags
        assert int(tags[tracking.TAG_DELAYED_METRICS]) >= 1

        # An outage that outlasts the run: nothing blocks past close_timeout_s; the rest is spooled.
        spool = tmp_path / "undelivered.jsonl"
        tracker = MlflowTracker(run_id, client, retry_initial_s=0.2, retry_max_s=0.5,
                                close_timeout_s=2, spool_path=spool)
        server.stop()
        for step in range(11, 14):
            tracker.log_metrics({"loss/policy": float(step)}, step)
        t0 = time.perf_counter()
        gap = tracker.close()
        assert time.perf_counter() - t0 < 30  # close_timeout_s=2, not the endless retries
        assert gap.lost_metrics == 3 and gap.spool_path == spool
        # The server's own store, read directly: the spool brings the missing steps back.
        direct = tracking.mlflow_client(backend)
        assert tracking.replay_spool(direct, spool) == 3
        assert steps_of(direct, run_id, "loss/policy") == list(range(1, 14))
    finally:
        server.stop()
        assert not server.running
