"""Where things are in the MLflow UI: a run's page, a comparison's parent run, and the chart of
``by_rollouts/`` metrics of several runs against the rollout budget. The CLI, the Prefect UI's
artifacts and the run logs all build their links here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

# The MLflow UI a local (SQLite / file) store is browsed with: `mlflow ui` / `pilotcommit serve`.
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


def is_local_store(tracking_uri: str) -> bool:
    """A SQLite or file store: its UI is only there once `mlflow ui` runs on it."""
    return not tracking_uri.startswith(("http://", "https://"))


def mlflow_ui_url(tracking_uri: str) -> str:
    return LOCAL_MLFLOW_UI if is_local_store(tracking_uri) else tracking_uri.rstrip("/")


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui_url(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def browse_hint(tracking_uri: str) -> str:
    """How to open a local store in the UI ("" for a server)."""
    if not is_local_store(tracking_uri):
        return ""
    return f"start the UI first: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def metric_chart_url(ui_url: str, experiment_id: str, run_ids: list[str],
                     metric: str = "by_rollouts/eval/average_accuracy") -> str:
    """The MLflow UI page charting ``metric`` for ``run_ids`` against MLflow's step (for
    ``by_rollouts/`` metrics: the cumulative rollout budget). Same query as the UI builds."""
    from urllib.parse import quote

    return (
        f"{ui_url.rstrip('/')}/#/metric?runs={json.dumps(run_ids)}&metric={quote(json.dumps(metric))}"
        f"&experiments={json.dumps([experiment_id])}&plot_metric_keys={quote(json.dumps([metric]))}"
        "&plot_layout={}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true"
        "&deselected_curves=[]&last_linear_y_axis_range=[]"
    ).replace(" ", "")




@dataclass(frozen=True)
class MlflowLinks:
    """Where a comparison is in the MLflow UI."""

    ui: str
    parent_run: str
    chart: str  # by_rollouts/eval/average_accuracy of the comparison's training runs
    local_store: bool  # a SQLite/file store: the UI is only there once `mlflow ui` runs on it
    tracking_uri: str

    def hint(self) -> str:
        return browse_hint(self.tracking_uri)


def mlflow_links(tracking_uri: str, experiment_id: str, parent_run_id: str, run_ids: Sequence[str]) -> MlflowLinks:
    ui = mlflow_ui_url(tracking_uri)
    return MlflowLinks(
        ui=ui,
        parent_run=mlflow_run_url(tracking_uri, experiment_id, parent_run_id),
        chart=metric_chart_url(ui, experiment_id, list(run_ids)),
        local_store=is_local_store(tracking_uri),
        tracking_uri=tracking_uri,
    )
