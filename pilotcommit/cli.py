"""The ``pilotcommit`` command line (typer): compare, train, probe, sweep, study, nightly, report, accept,
serve. Argument parsing and printing only: the work is the flows' (flows/) and the library's.

Every command checks its configuration, the tracking store and Prefect before any compute: a
config error (or a missing optional package a setting needs) exits 2, an unreachable store or an
unusable Prefect database exits 3, without a traceback. The first line says which Prefect runs
the flows (pilotcommit/services.py, ``choose_prefect``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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

from pilotcommit.terminal import (  # noqa: E402
    TrainingProgress,
    console,
    print_probe,
    print_services,
    print_summary,
    print_sweep,
    print_where,
)

app = typer.Typer(
    help="Budget-aware RL post-training: GRPO, DAPO, Pilot-Commit, GRESO and SPEED-RL as a reproducible pipeline.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
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
    from rich.markup import escape  # messages hold paths and commands ('pilotcommit[vllm]'): unwrapped

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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


def _runs_root(runs_dir: Path | None) -> Path:
    from pilotcommit.tracking import default_runs_root

    return runs_dir.resolve() if runs_dir else default_runs_root()


def _check_store(runs_dir: Path | None, uri: str | None) -> str:
    from pilotcommit import tracking

    tracking.configure_mlflow_http()
    resolved = tracking.resolve_tracking_uri(uri, _runs_root(runs_dir))
    try:
        tracking.check_tracking_server(resolved)
    except tracking.TrackingUnavailable as err:
        _fail(str(err), EXIT_SERVICE)
    return resolved


def _connect_prefect(runs_dir: Path | None) -> str | None:
    """Point this command's flows at a running Prefect server, or an ephemeral one with its run
    history in ``<runs>/prefect`` (services.choose_prefect); say which; the URL (None: ephemeral)."""
    from pilotcommit import services

    try:
        choice = services.choose_prefect(_runs_root(runs_dir))
    except services.PrefectDatabaseError as err:
        _fail(str(err), EXIT_SERVICE)
    console.print(choice.line)
    return choice.url


def _run_flow(call, verbose: bool):
    """Run a flow; print a failure's message (not Prefect's traceback) and exit 1."""
    from pilotcommit.runner.progress import interrupt
    from pilotcommit.services import quiet_prefect_console

    quiet_prefect_console(verbose)
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: runs are marked FAILED, the last
    # checkpoint stays, Prefect's ephemeral server is stopped; rerunning resumes.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        return call()
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoints", 130)
    except Exception as err:
        if verbose:
            raise
        _fail(f"{type(err).__name__}: {err}", EXIT_FAILED)


def _optional_dir(runs_dir: Path | None) -> str | None:
    return str(runs_dir) if runs_dir else None


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
    from pilotcommit.analysis.reads import EARLY_STEPS
    from pilotcommit.analysis.render import prediction_check_table
    from pilotcommit.runner.outcomes import CompareOutcome

    started = time.perf_counter()
    console.print(f"[bold]{cfg.name}[/]: {', '.join(cfg.methods)} x seeds {cfg.seeds} on {cfg.model.label}")
    with TrainingProgress([cfg], console):
        out = CompareOutcome.from_dict(_run_flow(lambda: compare_flow(
            config_path=str(path), overrides=list(set_ or []), runs_dir=_optional_dir(runs_dir),
            tracking_uri=tracking_uri, refresh=refresh, parallel_runs=parallel_runs), verbose))
    print_summary(out.report.summary, cfg.name)
    if out.probe and out.informative_measured:
        console.print(prediction_check_table(out.probe, out.informative_measured, EARLY_STEPS))
    for run in out.runs:
        if run.tracking_gap and run.tracking_gap != "no tracking outage":
            console.print(f"[yellow]tracking gap[/] {run.method} seed {run.seed}: {run.tracking_gap}")
    print_where(out.tracking_uri, out.experiment_id, out.parent_run_id, [r.mlflow_run_id for r in out.runs])
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
    from pilotcommit.analysis.render import final_metrics_table

    seed = cfg.seeds[0] if seed is None else seed
    with TrainingProgress([cfg], console):
        out = _run_flow(lambda: train_flow(
            method=method, seed=seed, config_path=str(path), overrides=list(set_ or []),
            runs_dir=_optional_dir(runs_dir), tracking_uri=tracking_uri, resume=resume), verbose)
    console.print(final_metrics_table(f"{method} seed {seed}: final metrics", out["final_metrics"]))
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
            config_path=str(path), overrides=list(set_ or []), runs_dir=_optional_dir(runs_dir),
            tracking_uri=tracking_uri, prompts=prompts, samples=samples, seed=seed, estimator=estimator), verbose)
    print_probe(ProbeResult.from_dict(out["probe"]))
    console.print(f"MLflow run [bold]{out['mlflow_run_id']}[/] in {out['tracking_uri']}")


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML.")] = Path("conf/sweep/model-scale.yaml"),
    set_: SetOpt = None,
    dispatch: Annotated[str, typer.Option(help="subflow (here) or deployment (run_deployment to a work pool).")] = "subflow",
    runs_dir: RunsDirOpt = None,
    tracking_uri: UriOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every stage.")] = False,
    parallel_runs: ParallelOpt = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated method labels: run only these (a sweep of "
                                                     "its own; `pilotcommit study` reports several as one).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Model configs x methods x seeds, one MLflow child run each, under one parent run."""
    from pilotcommit.config import ConfigError, cell_configs, load_sweep_config
    from pilotcommit.dependencies import MissingDependency, check_experiment

    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if method_list is not None and not method_list:
        _fail("--methods: name at least one method", EXIT_CONFIG)
    if dispatch not in ("subflow", "deployment"):
        _fail(f"--dispatch {dispatch!r}: use subflow or deployment", EXIT_CONFIG)
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
    from pilotcommit.analysis.publish import SweepReport

    console.print(f"[bold]{sweep_cfg.name}[/]: cells {[c.cell_label for c in cfgs]} x {list(cfgs[0].methods)} x seeds {cfgs[0].seeds}")
    with TrainingProgress(cfgs, console):
        out = _run_flow(lambda: sweep_flow(
            sweep_config=str(config), overrides=list(set_ or []), dispatch=dispatch, runs_dir=_optional_dir(runs_dir),
            tracking_uri=tracking_uri, refresh=refresh, parallel_runs=parallel_runs, methods=method_list), verbose)
    print_sweep(SweepReport.from_dict(out["report"]), sweep_cfg.name)
    print_where(out["tracking_uri"], out["experiment_id"], out["parent_run_id"], [])


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
    """The study report of a finished sweep, from MLflow: per cell, the candidate's speed-ups over every
    other method with paired bootstrap intervals, and the probe's prediction (docs/regimes.md)."""
    from mlflow.exceptions import MlflowException

    from pilotcommit import tracking
    from pilotcommit.analysis.publish import study_of_sweeps
    from pilotcommit.analysis.study import StudyMergeError
    from pilotcommit.config import ConfigError, load_sweep_config

    try:
        sweep_cfg = load_sweep_config(config)
    except ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
    uri = _check_store(runs_dir, tracking_uri)
    try:
        report = study_of_sweeps(tracking.mlflow_client(uri), sweep_cfg, list(run_id or []), _runs_root(runs_dir),
                                 candidate=candidate, resamples=resamples, out=out, log=log, where=str(config))
    except ConfigError as err:
        _fail(str(err), EXIT_CONFIG)
    except LookupError:
        _fail(f"no finished sweep {sweep_cfg.name!r} in {uri}; run `pilotcommit sweep --config {config}` first", EXIT_FAILED)
    except StudyMergeError as err:
        _fail(f"cannot report these sweeps together: {err}", EXIT_FAILED)
    except MlflowException as err:
        _fail(f"--run-id: {err.message}", EXIT_FAILED)
    except ValueError as err:
        _fail(str(err), EXIT_FAILED)
    if report.note:
        console.print(report.note, markup=False)
    console.print(f"study of sweep {sweep_cfg.name!r}, MLflow parent run(s) {', '.join(report.run_ids)}\n")
    console.print(report.text, markup=False, soft_wrap=True)
    console.print(f"written: {', '.join(str(p) for p in report.paths.values())}"
                  + (f"; logged to run {report.run_ids[0]}" if log else ""))


@app.command()
def nightly(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    accuracy_drop: Annotated[float, typer.Option(help="Allowed absolute drop of final accuracy against a "
                                                 "single-seed baseline (several: their bootstrap spread).")] = 0.02,
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
            config_path=str(path), overrides=list(set_ or []), runs_dir=_optional_dir(runs_dir),
            tracking_uri=tracking_uri, accuracy_drop=accuracy_drop, rollouts_increase=rollouts_increase,
            refresh=refresh, accept=accept, parallel_runs=parallel_runs), verbose)
    console.print(out["report"])


def _client(config: Path | None, set_: list[str] | None, runs_dir: Path | None, tracking_uri: str | None):
    from pilotcommit import tracking

    _, cfg = _load_config(config, set_, will_run=False)
    return cfg, tracking.mlflow_client(_check_store(runs_dir, tracking_uri or cfg.tracking.tracking_uri))


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
    from pilotcommit.analysis.publish import comparison_of

    cfg, client = _client(config, set_, runs_dir, tracking_uri)
    try:
        run_id, summary, paths = comparison_of(client, cfg, run_id, _runs_root(runs_dir), log=log)
    except (LookupError, ValueError) as err:
        _fail(str(err.args[0]), EXIT_FAILED)
    console.print(f"comparison of MLflow parent run {run_id}")
    print_summary(summary, cfg.name)
    if log:
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

    cfg, client = _client(config, set_, runs_dir, tracking_uri)
    try:
        run_id = tracking.resolve_parent_run(client, cfg.tracking.experiment_name or cfg.name, cfg.name, run_id)
        tracking.accept_comparison(client, run_id, cfg.name, note)
    except (LookupError, ValueError) as err:
        _fail(str(err.args[0]), EXIT_FAILED)
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
    from pilotcommit import services

    project_dir = Path(__file__).resolve().parent.parent
    if deploy and not (project_dir / "prefect.yaml").is_file():
        _fail(f"no prefect.yaml in {project_dir}; run serve from a clone of the repository, or --no-deploy", EXIT_CONFIG)
    try:
        local = services.start_local_services(_runs_root(runs_dir), project_dir, host=host, mlflow_port=mlflow_port,
                                              prefect_port=prefect_port, pool=pool, deploy=deploy, status=console.status)
    except services.ServiceError as err:
        _fail(str(err), EXIT_SERVICE)
    print_services(local)
    try:
        local.serve_until_stopped()  # Ctrl-C, SIGTERM, or a service that exits
    except services.ServiceError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    finally:
        with console.status("stopping"):
            local.stop()
    console.print("stopped")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
