"""The ``pilotcommit`` command line (typer): compare, train, probe, sweep, study, nightly, report, accept,
serve.

Every command validates its configuration and checks the tracking store *before* any compute:
a config error prints the message (file and field) and exits with code 2, an unreachable
tracking server exits with code 3, both without a traceback. The work itself runs as Prefect
flows (flows/), in this process against an already running Prefect server when there is one
(``PREFECT_API_URL``, or the one ``pilotcommit serve`` runs for the same runs directory), else
against an ephemeral Prefect; the first line of output says which. The CLI only adds progress
bars and the summary table.

Deliberately not here: any stage logic (flows/, pilotcommit/pipeline.py) or summary maths
(pilotcommit/report.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

# Prefect's run logs (INFO) go to its API, so a Prefect server's run page shows them, but its
# console handler prints only warnings unless asked (--verbose): the CLI has its own progress
# bars. Must precede the first import of prefect.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# Prefect's ephemeral API server gets 20 s to start by default; a busy laptop needs more.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="Budget-aware RL post-training: GRPO, DAPO, Pilot-Commit, GRESO and SPEED-RL as a reproducible pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_CONFIG = 2
EXIT_SERVICE = 3
EXIT_FAILED = 1

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML (default: the embedded demo).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override KEY=VALUE (repeatable), e.g. learner.lr=1e-4.")]
RunsDirOpt = Annotated[Path | None, typer.Option("--runs-dir", help="Runs, caches and the default MLflow store (default ./runs or $PILOTCOMMIT_RUNS_DIR).")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: config, $MLFLOW_TRACKING_URI, SQLite in the runs dir).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")]
ParallelOpt = Annotated[int | None, typer.Option(
    "--parallel-runs", min=1,
    help="Training runs at once, each in its own process (default: cores / torch_threads on a CPU "
         "machine, 1 with a GPU).")]


# --------------------------------------------------------------------------- helpers


def _fail(message: str, code: int) -> None:
    from rich.markup import escape

    # escaped: a message holds file names and install commands such as 'pilotcommit[vllm]'
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _load_config(config: Path | None, overrides: list[str] | None, will_run: bool = True):
    """The validated config; ``will_run``: it is about to train or sample, so an optional
    package one of its settings needs must be installed (pilotcommit/dependencies.py)."""
    from pilotcommit.config import ConfigError, demo_config_path, load_experiment_config
    from pilotcommit.dependencies import MissingDependency, check_experiment

    path = config or demo_config_path()
    try:
        cfg = load_experiment_config(path, list(overrides or []))
        if will_run:
            check_experiment(cfg, str(path))
    except (ConfigError, MissingDependency) as err:
        _fail(str(err), EXIT_CONFIG)
    return path, cfg


def _check_store(runs_dir: Path | None, uri: str | None) -> str:
    from pilotcommit import tracking

    tracking.configure_mlflow_http()
    root = runs_dir.resolve() if runs_dir else tracking.default_runs_root()
    resolved = tracking.resolve_tracking_uri(uri, root)
    try:
        tracking.check_tracking_server(resolved)
    except tracking.TrackingUnavailable as err:
        _fail(str(err), EXIT_SERVICE)
    return resolved


def _connect_prefect(runs_dir: Path | None) -> str | None:
    """Point this command's flows at an already running Prefect server when there is one, and
    say in one line which Prefect runs them. Must run before the first import of prefect (its
    settings are read then).

    Order: ``PREFECT_API_URL`` if set; else the server ``pilotcommit serve`` recorded for this
    runs directory (``<runs>/prefect/server.json``) if it answers now; else Prefect's
    ephemeral server, started and stopped by this command (about 5-8 s of its start-up,
    docs/benchmarks.md section 2), whose database lives in ``<runs>/prefect`` (or
    ``$PREFECT_HOME``), not in the ``~/.prefect`` every other project shares; a database there
    that a newer Prefect wrote is refused with what to do (exit 3), before any compute."""
    from pilotcommit import services, tracking

    url = os.environ.get("PREFECT_API_URL")
    if url:
        console.print(f"Prefect: the server at {url} (PREFECT_API_URL)")
        return url
    root = runs_dir.resolve() if runs_dir else tracking.default_runs_root()
    url = services.running_prefect_server(root / "prefect")
    if url:
        os.environ["PREFECT_API_URL"] = url
        console.print(f"Prefect: the running server at {url} (pilotcommit serve, {root})")
        return url
    home = services.use_local_prefect_home(root)
    try:
        services.check_prefect_database(services.prefect_database_path(home))
    except services.PrefectDatabaseError as err:
        _fail(str(err), EXIT_SERVICE)
    console.print(f"Prefect: an ephemeral server for this command, run history in {home} "
                  "(`pilotcommit serve` keeps one running)")
    return None


def _quiet_prefect(verbose: bool) -> None:
    """Set what Prefect prints on the console: everything with --verbose, else nothing (the CLI
    prints failures itself; Prefect's engine would log each one with a traceback). Only the
    console handlers change, so the run logs still reach the Prefect API."""
    from prefect.logging.handlers import PrefectConsoleHandler

    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(level)
    if not verbose:
        for name in ("prefect.server", "httpx", "mlflow"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


class TrainingProgress:
    """Rich progress bars fed by the train task's progress events (one bar per run)."""

    def __init__(self, cfgs: list, console: Console) -> None:
        self.budget = {c.cell_label: c.budget for c in cfgs}
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False,
        )
        self.bars: dict[tuple, Any] = {}

    def __call__(self, event: dict) -> None:
        if event.get("stage") == "probe":  # before any training: the prediction comes first
            from pilotcommit.probe import ProbeResult

            console.print(f"[bold]prediction[/] for {event['cell']}, before training (pilotcommit probe):")
            print_probe(ProbeResult.from_dict(event["probe"]))
            return
        if event.get("stage") == "initial-policy":
            key = ("init", event["model"])
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(f"warm start {event['model']}", total=1)
            if event.get("status") == "done":
                self.progress.update(self.bars[key], completed=1)
            return
        if event.get("stage") != "train":
            return
        cell = event.get("cell", event["model"])
        key = (cell, event["method"], event["seed"])
        budget = self.budget.get(cell)
        by_rollouts = budget is not None and budget.max_rollouts is not None
        total = (budget.max_rollouts if by_rollouts else budget.max_steps) if budget else None
        if key not in self.bars:
            unit = "rollouts" if by_rollouts else "steps"
            self.bars[key] = self.progress.add_task(
                f"{event['method']:<13} {cell} seed {event['seed']} ({unit})", total=total
            )
        done = event.get("rollouts") if by_rollouts else event.get("step")
        if done is not None:
            self.progress.update(self.bars[key], completed=min(float(done), total or float(done)))

    def __enter__(self):
        from flows import stages

        stages.set_progress_sink(self)
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        from flows import stages

        stages.set_progress_sink(None)
        self.progress.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run_flow(call, verbose: bool):
    """Run a flow; print a failure's message (not Prefect's traceback) and exit 1."""
    _quiet_prefect(verbose)
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: runs are marked FAILED, the last
    # checkpoint stays, Prefect's ephemeral server is stopped; rerunning resumes.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return call()
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoints", 130)
    except Exception as err:
        if verbose:
            raise
        _fail(f"{type(err).__name__}: {err}", EXIT_FAILED)


def _print_report(result: dict, title: str) -> None:
    from pilotcommit.report import ComparisonSummary

    _print_summary(ComparisonSummary.from_dict(result["summary"]), title)


def _print_summary(summary, title: str) -> None:
    """The comparison's tables, each within an 80-column terminal."""
    from pilotcommit.report import render_details, render_summary

    console.print(render_summary(summary, title))
    for table in render_details(summary):
        console.print(table)


def _print_where(out: dict) -> None:
    from pilotcommit import tracking

    uri = out["tracking_uri"]
    console.print(f"MLflow: experiment {out['experiment_id']}, parent run [bold]{out['parent_run_id']}[/] in {uri}")
    ui = uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    if uri.startswith("sqlite:"):
        console.print(f"  browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    run_ids = [r["mlflow_run_id"] for r in out.get("runs", [])]
    if run_ids:
        console.print("  accuracy against rollouts, all runs: "
                      + tracking.metric_chart_url(ui, out["experiment_id"], run_ids), soft_wrap=True)


# --------------------------------------------------------------------------- commands


@app.command()
def compare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every stage into new MLflow runs.")] = False,
    parallel_runs: ParallelOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train every method x seed of an experiment under one rollout budget and compare them."""
    path, cfg = _load_config(config, set_)
    _check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    _connect_prefect(runs_dir)
    from flows.compare import compare_flow

    started = time.perf_counter()
    console.print(f"[bold]{cfg.name}[/]: {', '.join(cfg.methods)} x seeds {cfg.seeds} on {cfg.model.label}")
    with TrainingProgress([cfg], console):
        out = _run_flow(lambda: compare_flow(
            config_path=str(path), overrides=list(set_ or []), runs_dir=str(runs_dir) if runs_dir else None,
            tracking_uri=tracking_uri, refresh=refresh, parallel_runs=parallel_runs,
        ), verbose)
    _print_report(out["report"], cfg.name)
    if out.get("probe") and out.get("informative_measured"):
        print_prediction_check(out["probe"], out["informative_measured"])
    gaps = [f"{r['method']} seed {r['seed']}: {r['tracking_gap']}" for r in out["runs"]
            if r.get("tracking_gap") and r["tracking_gap"] != "no tracking outage"]
    for line in gaps:
        console.print(f"[yellow]tracking gap[/] {line}")
    _print_where(out)
    console.print(f"done in {time.perf_counter() - started:.1f} s")


@app.command()
def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Method label of the config: grpo, dapo, pilot_commit, greso or speed_rl.")],
    config: ConfigOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the config's first).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume from the run's last checkpoint.")] = True,
    set_: SetOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train one method x seed (a single MLflow run)."""
    path, cfg = _load_config(config, set_)
    if method not in cfg.methods:
        _fail(f"--method {method!r}: not a method of {path} (have {sorted(cfg.methods)})", EXIT_CONFIG)
    _check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    _connect_prefect(runs_dir)
    from flows.train import train_flow

    seed = cfg.seeds[0] if seed is None else seed
    with TrainingProgress([cfg], console):
        out = _run_flow(lambda: train_flow(
            method=method, seed=seed, config_path=str(path), overrides=list(set_ or []),
            runs_dir=str(runs_dir) if runs_dir else None, tracking_uri=tracking_uri, resume=resume,
        ), verbose)
    from rich.table import Table

    table = Table(title=f"{method} seed {seed}: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(out["final_metrics"].items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and abs(value) < 1e4 else f"{value:,.0f}")
    console.print(table)
    console.print(f"MLflow run [bold]{out['mlflow_run_id']}[/] in {out['tracking_uri']}; run dir {out['run_dir']}")


@app.command()
def probe(
    config: ConfigOpt = None,
    prompts: Annotated[int, typer.Option("--prompts", "-n", min=1, help="Training prompts to probe.")] = 256,
    samples: Annotated[int, typer.Option("--samples", "-k", min=1, help="Rollouts per probed prompt.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the prompt draw and the sampling.")] = 0,
    estimator: Annotated[str, typer.Option(help="empirical_bayes, jeffreys or plug_in (see docs/regimes.md).")] = "empirical_bayes",
    set_: SetOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Predict, before training, which method buys the most informative groups on this data."""
    if estimator not in ("empirical_bayes", "jeffreys", "plug_in"):
        _fail(f"--estimator {estimator!r}: use empirical_bayes, jeffreys or plug_in", EXIT_CONFIG)
    path, cfg = _load_config(config, set_)
    _check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    _connect_prefect(runs_dir)
    from flows.probe import probe_flow
    from pilotcommit.probe import ProbeResult

    console.print(f"[bold]{cfg.name}[/]: probing {prompts} training prompts x {samples} rollouts "
                  f"with the initial policy of {cfg.model.label}")
    with TrainingProgress([cfg], console):
        out = _run_flow(lambda: probe_flow(
            config_path=str(path), overrides=list(set_ or []), runs_dir=str(runs_dir) if runs_dir else None,
            tracking_uri=tracking_uri, prompts=prompts, samples=samples, seed=seed, estimator=estimator,
        ), verbose)
    result = ProbeResult.from_dict(out["probe"])
    print_probe(result)
    console.print(f"MLflow run [bold]{out['mlflow_run_id']}[/] in {out['tracking_uri']}")


def print_prediction_check(probe: dict, measured: dict) -> None:
    """Predicted (before training) beside measured informative groups per 1,000 rollouts."""
    from rich.table import Table

    from pilotcommit.report import EARLY_STEPS

    table = Table(title="informative groups per 1,000 sampled rollouts")
    table.add_column("method")
    table.add_column("predicted", justify="right")
    table.add_column(f"measured, first {EARLY_STEPS} steps", justify="right")
    table.add_column("measured, whole run", justify="right")
    for pred in probe["predictions"]:
        got = measured.get(pred["method"])
        table.add_row(pred["method"], f"{pred['informative_groups_per_1k']:.1f}",
                      f"{got['early_per_1k']:.1f}" if got else "-", f"{got['per_1k']:.1f}" if got else "-")
    console.print(table)


def print_probe(result) -> None:
    """The probe's spread, per-method predictions and recommendation (fits 80 columns)."""
    from rich.table import Table

    s = result.spread
    console.print(f"pass rates of {len(result.prompt_ids)} prompts ({result.samples} samples each): "
                  f"{s['at_0']:.1%} at 0, {s['between']:.1%} between, {s['at_1']:.1%} at 1")
    table = Table(title=f"predicted per 1,000 sampled rollouts ({result.estimator})")
    table.add_column("method")
    table.add_column("informative groups", justify="right")
    table.add_column("where the rest goes")
    for pred in result.predictions:
        b = pred.breakdown
        if pred.kind == "grpo":
            rest = f"{b['zero_variance_groups_per_1k']:.1f} zero-variance groups trained"
        elif pred.kind in ("dapo", "greso"):  # GRESO's first epoch is DAPO's
            rest = (f"{b.get('dropped_groups_per_1k', 0):.1f} dropped, "
                    f"{b.get('discarded_groups_per_1k', 0):.1f} discarded groups")
        elif pred.kind == "speed_rl":
            rest = f"{b.get('rejected_screens_per_1k', 0):.0f} screened prompts rejected"
        else:
            rest = (f"{b.get('too_hard_pilots_per_1k', 0):.0f} too hard, "
                    f"{b.get('too_easy_pilots_per_1k', 0):.0f} too easy, "
                    f"{b.get('stale_pilots_per_1k', 0):.0f} stale pilots")
        table.add_row(pred.method, f"{pred.informative_groups_per_1k:.1f}", pred.note or rest)
    console.print(table)
    console.print(result.recommendation)


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML.")] = Path("conf/sweep/model-scale.yaml"),
    set_: SetOpt = None,
    dispatch: Annotated[str, typer.Option(help="subflow (here) or deployment (run_deployment to a work pool).")] = "subflow",
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every stage.")] = False,
    parallel_runs: ParallelOpt = None,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated method labels: run these of the experiment's methods only (a sweep "
             "of its own; `pilotcommit study --run-id A --run-id B` reports several as one).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Model configs x methods x seeds, one MLflow child run each, under one parent run."""
    from pilotcommit.config import ConfigError
    from pilotcommit.sweep import cell_configs, load_sweep_config

    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if method_list is not None and not method_list:
        _fail("--methods: name at least one method", EXIT_CONFIG)
    if dispatch not in ("subflow", "deployment"):
        _fail(f"--dispatch {dispatch!r}: use subflow or deployment", EXIT_CONFIG)
    from pilotcommit.dependencies import MissingDependency, check_experiment

    try:
        sweep_cfg = load_sweep_config(config, methods=method_list)
        cfgs = cell_configs(sweep_cfg, list(set_ or []))
        if dispatch == "subflow":  # the cells train here (a deployment's worker checks its own)
            for cfg in cfgs:
                check_experiment(cfg, f"{config}, cell {cfg.cell_label}")
    except (ConfigError, MissingDependency) as err:
        _fail(str(err), EXIT_CONFIG)
    _check_store(runs_dir, tracking_uri)
    _connect_prefect(runs_dir)
    from flows.sweep import sweep_flow

    console.print(f"[bold]{sweep_cfg.name}[/]: cells {[c.cell_label for c in cfgs]} x {list(cfgs[0].methods)} x seeds {cfgs[0].seeds}")
    with TrainingProgress(cfgs, console):
        out = _run_flow(lambda: sweep_flow(
            sweep_config=str(config), overrides=list(set_ or []), dispatch=dispatch,
            runs_dir=str(runs_dir) if runs_dir else None, tracking_uri=tracking_uri, refresh=refresh,
            parallel_runs=parallel_runs, methods=method_list,
        ), verbose)
    for model, summary in out["report"]["summaries"].items():
        _print_report({"summary": summary}, f"{sweep_cfg.name} / {model}")
    console.print(f"scale table: {out['report']['table']}")
    if out["report"].get("study"):
        console.print(f"study report: {out['report']['study']['markdown']} (also `pilotcommit study`)")
    _print_where(out)


@app.command()
def study(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML.")] = Path("conf/sweep/regimes.yaml"),
    run_id: Annotated[list[str] | None, typer.Option(
        "--run-id", help="Parent run of the sweep (default: its latest finished one). Repeat it to report "
                         "several sweeps of the same cells as one (say, one run with `--methods`): a run "
                         "two of them trained must be identical in both, else the merge fails.")] = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <runs-dir>/<sweep>/reports/<run-id>[+<run-id>...]/study[-<candidate>]).")] = None,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
    log: Annotated[bool, typer.Option(help="Also log the report to the sweep's parent run.")] = False,
    candidate: Annotated[str, typer.Option(help="The method whose speed-ups over every other method the report holds.")] = "pilot_commit",
) -> None:
    """The study report of a finished sweep, from MLflow: per cell, the candidate's (Pilot-Commit's
    unless --candidate) speed-ups over every other method with paired bootstrap intervals,
    accuracy at equal budgets, and the probe's prediction against the
    measured informative-group rates (docs/regimes.md)."""
    from mlflow.exceptions import MlflowException

    from pilotcommit import study as study_mod
    from pilotcommit import tracking
    from pilotcommit.config import ConfigError
    from pilotcommit.sweep import cell_configs, load_sweep_config

    try:
        sweep_cfg = load_sweep_config(config)
        cells_cfg = cell_configs(sweep_cfg, [])
        target = cells_cfg[0].target
    except ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
    if candidate not in cells_cfg[0].methods:
        _fail(f"--candidate {candidate!r}: not a method of {config} (have {', '.join(cells_cfg[0].methods)})", EXIT_CONFIG)
    uri = _check_store(runs_dir, tracking_uri)
    client = tracking.mlflow_client(uri)
    run_ids = list(dict.fromkeys(run_id or []))
    if not run_ids:
        experiment = client.get_experiment_by_name(sweep_cfg.name)
        parent = tracking.latest_parent_run(client, experiment.experiment_id, sweep_cfg.name, kind="sweep") if experiment else None
        if parent is None:
            _fail(f"no finished sweep {sweep_cfg.name!r} in {uri}; run `pilotcommit sweep --config {config}` first", EXIT_FAILED)
        run_ids = [parent.info.run_id]
    try:
        inputs = study_mod.load_study_inputs(client, run_ids, target.metric)
        cells = study_mod.study_cells(inputs, target, candidate=candidate, resamples=resamples,
                                      order=[c.cell_label for c in cells_cfg])
    except study_mod.StudyMergeError as err:
        _fail(f"cannot report these sweeps together: {err}", EXIT_FAILED)
    except MlflowException as err:
        _fail(f"--run-id: {err.message}", EXIT_FAILED)
    except ValueError as err:
        _fail(str(err), EXIT_FAILED)
    folder = ("study" if candidate == "pilot_commit" else f"study-{candidate}") + ("-merged" if len(run_ids) > 1 else "")
    out_dir = out or (runs_dir.resolve() if runs_dir else tracking.default_runs_root()) / sweep_cfg.name / "reports" / "+".join(run_ids) / folder
    if not run_id:  # the latest sweep: say so when it ran only some of the file's methods (--methods)
        have = set(inputs.sources[0].get("methods", [])) if inputs.sources else set()
        missing = [m for m in cells_cfg[0].methods if m not in have]
        if have and missing:
            console.print(f"note: the latest sweep {run_ids[0]} ran {', '.join(sorted(have))} only, not "
                          f"{', '.join(missing)}; `--run-id A --run-id B` reports several sweeps as one", markup=False)
    header = study_mod.provenance_text(inputs)
    text = study_mod.markdown_tables(cells, header=header)
    console.print(f"study of sweep {sweep_cfg.name!r}, MLflow parent run(s) {', '.join(run_ids)}\n")
    console.print(text, markup=False, soft_wrap=True)
    if log:  # onto the first sweep's parent run; a merged study beside that sweep's own report
        paths = study_mod.log_study(client, run_ids[0], cells, out_dir, header=header,
                                    artifact_dir=folder, metric_prefix=folder)
    else:
        paths = study_mod.write_study(cells, out_dir, header)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}" + (f"; logged to run {run_ids[0]}" if log else ""))


@app.command()
def nightly(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    accuracy_drop: Annotated[float, typer.Option(
        help="Allowed absolute drop of final accuracy against a single-seed baseline (with "
        "several seeds: the bootstrap half-width of their spread).")] = 0.02,
    rollouts_increase: Annotated[float, typer.Option(help="Allowed relative growth of rollouts to target.")] = 0.25,
    refresh: Annotated[bool, typer.Option(help="Retrain (default) rather than reuse cached runs.")] = True,
    accept: Annotated[bool, typer.Option(help="Make this run the baseline when it passes.")] = False,
    parallel_runs: ParallelOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Rerun a configuration and fail (exit 1) if it regressed against the accepted baseline."""
    path, cfg = _load_config(config, set_)
    _check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    _connect_prefect(runs_dir)
    from flows.nightly import nightly_regression_flow

    with TrainingProgress([cfg], console):
        out = _run_flow(lambda: nightly_regression_flow(
            config_path=str(path), overrides=list(set_ or []), runs_dir=str(runs_dir) if runs_dir else None,
            tracking_uri=tracking_uri, accuracy_drop=accuracy_drop, rollouts_increase=rollouts_increase,
            refresh=refresh, accept=accept, parallel_runs=parallel_runs,
        ), verbose)
    console.print(out["report"])


def _client_and_experiment(config: Path | None, set_: list[str] | None, runs_dir: Path | None, tracking_uri: str | None):
    from pilotcommit import tracking

    _, cfg = _load_config(config, set_, will_run=False)
    uri = _check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    client = tracking.mlflow_client(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name or cfg.name)
    if experiment is None:
        _fail(f"no MLflow experiment {cfg.tracking.experiment_name or cfg.name!r} in {uri}; run `pilotcommit compare` first", EXIT_FAILED)
    return cfg, client, experiment.experiment_id


@app.command()
def report(
    run_id: Annotated[str | None, typer.Option("--run-id", help="Parent run of a comparison (default: the latest of the config).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    log: Annotated[bool, typer.Option(help="Also log the figure and table to the parent run.")] = False,
) -> None:
    """Print the comparison of a finished ``compare`` from MLflow (rollouts to target, speed-ups)."""
    from pilotcommit import report as report_mod
    from pilotcommit import tracking

    cfg, client, experiment_id = _client_and_experiment(config, set_, runs_dir, tracking_uri)
    if run_id is None:
        parent = tracking.latest_parent_run(client, experiment_id, cfg.name)
        if parent is None:
            _fail(f"no finished comparison of {cfg.name!r} in MLflow; run `pilotcommit compare` first", EXIT_FAILED)
        run_id = parent.info.run_id
    try:
        runs = report_mod.load_comparison_runs(client, run_id, cfg.target.metric)
        summary = report_mod.summarize_comparison(runs, cfg.target)
    except ValueError as err:
        _fail(str(err), EXIT_FAILED)
    console.print(f"comparison of MLflow parent run {run_id}")
    _print_summary(summary, cfg.name)
    if log:
        out_dir = (runs_dir.resolve() if runs_dir else tracking.default_runs_root()) / cfg.name / "reports" / run_id
        paths = report_mod.log_comparison(client, run_id, runs, summary, out_dir)
        console.print(f"logged to run {run_id}: {', '.join(str(p) for p in paths.values())}")


@app.command()
def accept(
    run_id: Annotated[str | None, typer.Option("--run-id", help="Parent run to accept (default: the latest comparison of the config).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    note: Annotated[str, typer.Option(help="Why this run is the baseline.")] = "",
) -> None:
    """Mark a comparison as the accepted baseline the nightly regression compares against."""
    from pilotcommit import tracking

    cfg, client, experiment_id = _client_and_experiment(config, set_, runs_dir, tracking_uri)
    if run_id is None:
        parent = tracking.latest_parent_run(client, experiment_id, cfg.name)
        if parent is None:
            _fail(f"no finished comparison of {cfg.name!r} to accept", EXIT_FAILED)
        run_id = parent.info.run_id
    run = client.get_run(run_id)
    if run.data.tags.get(tracking.TAG_CONFIG_NAME) != cfg.name:
        _fail(f"run {run_id} is not a comparison of {cfg.name!r}", EXIT_FAILED)
    tracking.accept_baseline(client, run_id, note)
    console.print(f"run {run_id} is now the accepted baseline of {cfg.name!r}")


@app.command()
def serve(
    runs_dir: RunsDirOpt = None,
    host: Annotated[str, typer.Option(help="Interface the servers bind to.")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    pool: Annotated[str, typer.Option(help="Process work pool the worker polls.")] = "pilotcommit-local",
    deploy: Annotated[bool, typer.Option(help="Run `prefect deploy --all` with prefect.yaml.")] = True,
) -> None:
    """Start an MLflow server, a Prefect server and a process worker on this machine, deploy
    prefect.yaml, and keep them running until Ctrl-C."""
    from pilotcommit import services, tracking

    root = runs_dir.resolve() if runs_dir else tracking.default_runs_root()
    project_dir = Path(__file__).resolve().parent.parent
    if deploy and not (project_dir / "prefect.yaml").is_file():
        _fail(f"no prefect.yaml in {project_dir}; run serve from a clone of the repository, or --no-deploy", EXIT_CONFIG)
    prefect_home = root / "prefect"
    logs = root / "logs"
    stack = services.ServiceStack()
    try:
        with console.status("starting MLflow server"):
            mlflow_srv = stack.add(services.start_mlflow_server(
                f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts", logs / "mlflow.log", host=host, port=mlflow_port
            ))
        with console.status("starting Prefect server"):
            prefect_srv = stack.add(services.start_prefect_server(prefect_home, logs / "prefect-server.log", host=host, port=prefect_port))
        # CLI commands on this runs directory find the server here and use it (_connect_prefect)
        server_file = services.record_prefect_server(prefect_home, prefect_srv.url, prefect_srv.process.pid)
        worker_env = {"MLFLOW_TRACKING_URI": mlflow_srv.url, "PILOTCOMMIT_RUNS_DIR": str(root),
                      "PILOTCOMMIT_REPO_DIR": str(project_dir)}
        with console.status("creating the work pool and deploying prefect.yaml"):
            services.ensure_work_pool(prefect_home, prefect_srv.url, pool)
            if deploy:
                services.deploy_all(prefect_home, prefect_srv.url, project_dir, extra_env=worker_env)
        worker = stack.add(services.start_prefect_worker(
            prefect_home, prefect_srv.url, logs / "prefect-worker.log", pool=pool, cwd=project_dir, extra_env=worker_env
        ))
    except services.ServiceError as err:
        stack.stop()
        _fail(str(err), EXIT_SERVICE)
    console.print(f"MLflow UI     {mlflow_srv.url}")
    console.print(f"Prefect UI    {prefect_srv.url.removesuffix('/api')}")
    console.print(f"work pool     {pool} (process worker, logs in {logs})")
    console.print("in another shell:")
    console.print(f"  export PREFECT_API_URL={prefect_srv.url} MLFLOW_TRACKING_URI={mlflow_srv.url}")
    console.print("  prefect deployment run sweep/model-scale")
    console.print("Ctrl-C stops everything.")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    # a process started in the background by a non-interactive shell inherits SIGINT as
    # *ignored*, and Python then never raises KeyboardInterrupt: make Ctrl-C/SIGINT work anyway
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while not stop["now"]:
            for service in (mlflow_srv, prefect_srv, worker):
                if not service.running:
                    raise services.ServiceError(f"{service.name} exited; log {service.log_path}:\n{service.log_tail()}")
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    except services.ServiceError as err:
        err_console.print(f"[bold red]error:[/] {err}")
    finally:
        server_file.unlink(missing_ok=True)
        with console.status("stopping"):
            stack.stop()
    console.print("stopped")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
