"""The cost of the pipeline itself: Prefect orchestration and MLflow tracking around training.

On a shortened demo (the demo config with ``--set`` overrides, by default one seed and an
8192-rollout budget; the same data, model, warm start and methods), it measures:

1. **Bare loop**: ``pilotcommit.loop.train_run`` of every method with a ``MemoryTracker``,
   in this process, from the cached prepared data and initial policy (wall time, steps).
2. **Tracking cost, isolated**: what the bare runs logged is replayed into a real
   ``MlflowTracker`` on a fresh SQLite store, in two parts (params and per-step metrics;
   evaluation metrics and per-prompt histograms and tables), so that it can be scaled by the
   steps and the evaluations of a full run separately. Reported: the seconds the training
   thread is blocked inside tracker calls (the histogram figures are drawn there) and the CPU
   seconds until everything is delivered (the background writer included). Replaying isolates
   tracking from the training's own run-to-run noise, which on a shared 2-core machine is
   larger than the effect measured.
3. **Through the pipeline**: ``pilotcommit compare`` with the same overrides as a subprocess
   (CLI, imports, ephemeral Prefect, MLflow store, parent and child runs, cached data and
   policy stages, training with ``MlflowTracker``, report stage; ``--parallel-runs 1``: its
   training runs one after another, like the bare loop). Its wall time minus its training runs' own wall time
   (``result.json``) is the orchestration cost.
4. **Fully cached compare**: the same command again (every stage a cache hit), then once more
   against an already running Prefect server (``PREFECT_API_URL``, as after ``pilotcommit
   serve``) instead of the ephemeral server each CLI call starts.
5. **Start-up pieces**: ``import flows.compare``, ``import prefect.server.api.server`` (the
   ephemeral client imports it), the ephemeral server's start and stop, ``pilotcommit --help``.

With ``--full-demo`` it also runs the unshortened demo through ``pilotcommit compare`` (fresh
training runs, cached warm start) and measures the overhead on it directly: its wall time
minus its training runs' own wall time, plus the replayed tracking rates x its steps and
evaluations, as a share of its wall time. ``--full-demo-bare`` also trains the same runs with
the bare loop, one after another: the compare's wall time minus theirs is the pipeline's
wall-time overhead measured directly (tracking work that runs beside the training on the other
core costs nothing there). Without ``--full-demo``, the overhead of a full demo compare is
estimated as: the cached compare's wall time
(start-up and cache checks) + the orchestration per training run beyond it x the demo's runs
+ tracking CPU per step x steps + per evaluation x evaluations; over the demo's training wall
time, runs one after another, taken from a finished ``bench/sample_efficiency.py`` report
(``--demo-report``), else extrapolated from the bare runs.

A unique MLflow experiment name per invocation (``tracking.experiment_name``) gives fresh
training-stage keys while the data and warm-start stages stay cached. Every cache key holds the
code version, so an edit to ``pilotcommit/`` during the run spoils the cached timings: the
script checks and says so. A benchmark, not a test; results and commands are in
docs/benchmarks.md.

    python bench/overhead.py [--set budget.max_rollouts=8192] [--demo-report PATH] [--full-demo [--full-demo-bare]]
    python bench/overhead.py --cached-only 3 [--config conf/experiment/smoke.yaml --set seeds=[0]]
    python bench/overhead.py --config conf/experiment/smoke.yaml --set seeds=[0] --repeats 1   # a quick run of the code

``--cached-only ROUNDS`` measures only item 4, three ways: the ephemeral server, the server of a
``pilotcommit serve`` on the same runs directory as the CLI finds it (its record, no environment
variable), and the same server through ``PREFECT_API_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _common import REPO_ROOT, load_average, print_environment, print_table, quiet_services  # noqa: E402
from _requires import require  # noqa: E402

quiet_services()  # before Prefect and MLflow are imported (the check imports them)
require(__file__, "torch", "transformers", "prefect", "mlflow", "pilotcommit", "flows")

DEFAULT_RUNS_DIR = REPO_ROOT / "runs" / "bench" / "overhead"
DEFAULT_OVERRIDES = ["seeds=[0]", "budget.max_rollouts=8192"]


@dataclass
class BareRun:
    method: str
    seed: int
    wall_s: float
    steps: int
    cumulative_rollouts: int
    median_step_compute_s: float  # generate + learn, median over steps
    tracker: object  # the MemoryTracker with everything the run logged


# --------------------------------------------------------------------------- stages


def prepare(cfg, runs_dir: Path) -> dict:
    """The data and warm-start stages of ``cfg`` under ``runs_dir``, built where missing: the
    same stage keys and folders the compare flow uses (pilotcommit/stages/), so its run finds
    them valid and builds neither again."""
    from pilotcommit.stages.context import make_context
    from pilotcommit.stages.materialise import materialise_data, materialise_policy
    from pilotcommit.stages.table import UpstreamKeys

    ctx = make_context(cfg.tracking.experiment_name or cfg.name, str(runs_dir), cfg.tracking.tracking_uri)
    keys = UpstreamKeys.of(cfg, ctx.code_version)
    prepared = materialise_data(cfg, ctx.layout.data_dir(keys.data))["prepared"]
    policy = materialise_policy(cfg, prepared, ctx.layout.policy_dir(keys.policy))["initial_policy"]
    return {"prepared": prepared, "initial_policy": policy}


def bare_runs(cfg, upstream: dict, work_dir: Path) -> list[BareRun]:
    from pilotcommit.loop import train_run
    from pilotcommit.pipeline import PreparedData
    from pilotcommit.tracking import MemoryTracker

    prepared = PreparedData.from_dict(upstream["prepared"])
    out = []
    for label in cfg.methods:
        for seed in cfg.seeds:
            tracker = MemoryTracker()
            start = time.perf_counter()
            result = train_run(
                cfg,
                label,
                seed,
                prepared=prepared,
                initial_policy=upstream["initial_policy"],
                run_dir=work_dir / f"{label}-seed{seed}",
                tracker=tracker,
                resume=False,
            )
            wall = time.perf_counter() - start
            compute = [m["time/generate_s"] + m["time/learn_s"] for _, m in tracker.metrics]
            out.append(
                BareRun(
                    label,
                    seed,
                    wall,
                    result.steps,
                    result.cumulative_rollouts,
                    statistics.median(compute),
                    tracker,
                )
            )
            print(f"  bare {label} seed {seed}: {result.steps} steps, {wall:.1f} s", flush=True)
    return out


def replay_tracking(run: BareRun, store_dir: Path, part: str) -> dict[str, float]:
    """Replay one bare run's logging into a real MlflowTracker (a new run on ``store_dir``);
    seconds the caller was blocked, and wall and CPU seconds until all was delivered.

    ``part``: ``"steps"`` replays the params and the per-step metrics, ``"evaluations"`` the
    evaluation metrics and per-prompt histograms and tables, so that the cost can be scaled by
    the number of steps and of evaluations of a longer run separately."""
    from pilotcommit import tracking

    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    client = tracking.mlflow_client(uri)
    experiment = tracking.ensure_experiment(client, "overhead-replay", str(store_dir / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    memory = run.tracker
    cpu0, start = time.process_time(), time.perf_counter()
    tracker = tracking.MlflowTracker(run_id, client, skip_logged_steps=False)
    blocked = 0.0

    def timed(call, *args):
        nonlocal blocked
        t = time.perf_counter()
        call(*args)
        blocked += time.perf_counter() - t

    if part == "steps":
        timed(tracker.log_params, memory.params)
    # the loop's order: evaluation 0, then per step metrics and every k steps an evaluation
    evaluations = {step: (rollouts, metrics) for step, rollouts, metrics in memory.evaluations}
    prompt_stats: dict[int, list] = {}
    for step, name, table in memory.prompt_stats:
        prompt_stats.setdefault(step, []).append((name, table))

    def evaluate(step: int) -> None:
        if part != "evaluations":
            return
        if step in evaluations:
            rollouts, metrics = evaluations[step]
            timed(tracker.log_evaluation, metrics, step, rollouts)
        for name, table in prompt_stats.get(step, []):
            timed(tracker.log_prompt_stats, table, step, name)

    evaluate(0)
    for step, metrics in memory.metrics:
        if part == "steps":
            timed(tracker.log_metrics, metrics, step)
        evaluate(step)
    gap = tracker.close(status="FINISHED")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if gap.any:
        raise RuntimeError(f"replay into {uri} lost or delayed metrics: {gap.summary()}")
    return {
        "blocked_s": blocked,
        "delivered_wall_s": wall,
        "cpu_s": cpu,
        "count": len(memory.metrics) if part == "steps" else len(memory.evaluations),
    }


def cli_compare(
    config_path: Path, overrides: list[str], runs_dir: Path, env: dict | None = None
) -> float:
    cmd = [
        shutil.which("pilotcommit") or "pilotcommit",
        "compare",
        "--config",
        str(config_path),
        "--runs-dir",
        str(runs_dir),
        # one run after another, like the bare loop: the overhead is the compare's wall time
        # minus its runs' own wall times (a compare's default trains runs side by side)
        "--parallel-runs",
        "1",
    ]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    env = {**os.environ, **(env or {})}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def cached_compare_with_server(config_path: Path, overrides: list[str], runs_dir: Path) -> float:
    """The fully cached compare against an already running Prefect server (``PREFECT_API_URL``,
    as after ``pilotcommit serve``) instead of the ephemeral one each CLI call starts."""
    from pilotcommit import services

    home = Path(tempfile.mkdtemp(prefix="overhead-prefect-"))
    server = services.start_prefect_server(home, home / "server.log")
    try:
        cli_compare(
            config_path, overrides, runs_dir, services.prefect_env(home, server.url)
        )  # warm
        return cli_compare(config_path, overrides, runs_dir, services.prefect_env(home, server.url))
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def cached_compare_both_ways(config_path: Path, overrides: list[str], runs_dir: Path, rounds: int) -> dict:
    """The fully cached ``pilotcommit compare`` three ways, alternating in ``rounds``: with the
    ephemeral Prefect server the command starts itself; with a server that ``pilotcommit serve``
    would run for this runs directory (started here the same way and recorded in
    ``<runs>/prefect/server.json``; the CLI finds it, no environment variable); with the same
    server named by ``PREFECT_API_URL``. Returns the wall times (s) per way."""
    from pilotcommit import services

    saved = os.environ.pop("PREFECT_API_URL", None)  # the ephemeral and recorded ways must not see it
    home = runs_dir / "prefect"
    server = services.start_prefect_server(home, runs_dir / "logs" / "overhead-prefect-server.log")
    record = home / services.PREFECT_SERVER_FILE
    walls: dict[str, list[float]] = {"ephemeral": [], "serve (recorded)": [], "PREFECT_API_URL": []}
    try:
        for _ in range(rounds):
            record.unlink(missing_ok=True)
            walls["ephemeral"].append(cli_compare(config_path, overrides, runs_dir))
            services.record_prefect_server(home, server.url, server.process.pid)
            walls["serve (recorded)"].append(cli_compare(config_path, overrides, runs_dir))
            record.unlink(missing_ok=True)
            walls["PREFECT_API_URL"].append(
                cli_compare(config_path, overrides, runs_dir, {"PREFECT_API_URL": server.url})
            )
    finally:
        record.unlink(missing_ok=True)
        server.stop()
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
    return walls


def timed_command(cmd: list[str], repeats: int = 3, env: dict | None = None) -> float:
    """The median wall seconds of ``repeats`` runs of ``cmd``; nan for 0 runs (not measured)."""
    if repeats == 0:
        return float("nan")
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def flow_training_walls_all(runs_dir: Path, cfg_name: str, since: float) -> list[dict]:
    """Every ``result.json`` the compare flow wrote after ``since``."""
    paths = (runs_dir / cfg_name / "train").glob("*/result.json")
    return [json.loads(p.read_text()) for p in paths if p.stat().st_mtime >= since]


def flow_training_walls(runs_dir: Path, cfg_name: str, since: float) -> dict[str, dict]:
    """``result.json`` of the training runs the compare flow wrote after ``since``."""
    out = {}
    for path in (runs_dir / cfg_name / "train").glob("*/result.json"):
        if path.stat().st_mtime >= since:
            data = json.loads(path.read_text())
            out[data["method"]] = data
    return out


def demo_size(report_path: Path | None, bare: list[BareRun], demo_cfg) -> dict:
    """Runs, steps, evaluations and summed training wall time of a full demo compare: from a
    finished ``bench/sample_efficiency.py`` report (means per method x the demo's seeds), else
    extrapolated from the bare runs by rollout budget and seeds."""
    seeds = len(demo_cfg.seeds)
    if report_path is not None and Path(report_path).is_file():
        per_method: dict[str, list] = {}
        for r in json.loads(Path(report_path).read_text())["runs"]:
            per_method.setdefault(r["method"], []).append(r)

        def total(value) -> float:
            return sum(statistics.mean(value(r) for r in rs) * seeds for rs in per_method.values())

        return {
            "runs": len(per_method) * seeds,
            "steps": round(total(lambda r: r["steps"])),
            "evaluations": round(total(lambda r: len(r["history"]))),
            "train_wall_s": total(lambda r: r["wall_s"]),
            "how": f"measured ({report_path}: mean per method x {seeds} seeds)",
        }
    if demo_cfg.budget.max_rollouts is not None:
        scale = demo_cfg.budget.max_rollouts / max(
            statistics.mean(b.cumulative_rollouts for b in bare), 1
        )
    else:
        scale = demo_cfg.budget.max_steps / max(statistics.mean(b.steps for b in bare), 1)
    per_seed = seeds / len({b.seed for b in bare})
    return {
        "runs": len(demo_cfg.methods) * seeds,
        "steps": round(sum(b.steps for b in bare) * scale * per_seed),
        "evaluations": round(sum(len(b.tracker.evaluations) for b in bare) * scale * per_seed),
        "train_wall_s": sum(b.wall_s for b in bare) * scale * per_seed,
        "how": f"extrapolated from the bare runs x {scale:.1f} (budget) x {per_seed:g} (seeds)",
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    from pilotcommit.config import demo_config_path, load_experiment_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        help=f"KEY=VALUE override of the demo (default: {' '.join(DEFAULT_OVERRIDES)})",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="experiment YAML (default: the demo)"
    )
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument(
        "--demo-report",
        type=Path,
        default=None,
        help="sample_efficiency.json of a full demo run (its wall times)",
    )
    parser.add_argument(
        "--full-demo",
        action="store_true",
        help="also run the full demo through `pilotcommit compare` (minutes) and measure on it",
    )
    parser.add_argument(
        "--full-demo-bare",
        action="store_true",
        help="with --full-demo: also train every full-demo run with the bare loop (minutes), the "
        "wall-time reference: overhead = compare wall - bare walls",
    )
    parser.add_argument(
        "--cached-only",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="only the fully cached compare, ephemeral Prefect against a running server, "
        "ROUNDS alternating rounds (after one compare that fills the cache)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each start-up piece (item 5), the median is reported; 0 skips them (nan)",
    )
    args = parser.parse_args()

    overrides = args.overrides if args.overrides is not None else list(DEFAULT_OVERRIDES)
    if args.cached_only:
        config_path = args.config or demo_config_path()
        runs_dir = args.runs_dir.resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        load_before = load_average()
        print(f"filling the cache: pilotcommit compare {config_path} {' '.join(overrides)} ...", flush=True)
        first = cli_compare(config_path, overrides, runs_dir)
        walls = cached_compare_both_ways(config_path, overrides, runs_dir, args.cached_only)
        print_table(("fully cached `pilotcommit compare`", "wall s (median)", "all rounds"),
                    [(way, f"{statistics.median(values):.1f}", ", ".join(f"{v:.1f}" for v in values))
                     for way, values in walls.items()],
                    title=f"first compare (trains, ephemeral Prefect): {first:.1f} s")
        print_environment(load_before, libraries=("prefect", "mlflow"))
        return
    config_path = args.config or demo_config_path()
    demo_cfg = load_experiment_config(config_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    overrides = [*overrides, f"tracking.experiment_name=overhead-{stamp}"]
    cfg = load_experiment_config(config_path, overrides)
    runs_dir = args.runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    print(f"shortened demo: {' '.join(overrides)}; runs dir {runs_dir}", flush=True)

    print("1. cached stages (data, warm start) ...", flush=True)
    prepare_start = time.perf_counter()
    upstream = prepare(cfg, runs_dir)
    prepare_s = time.perf_counter() - prepare_start
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    print("2. bare train_run (MemoryTracker) ...", flush=True)
    bare = bare_runs(cfg, upstream, work / "bare")
    print("3. tracking replayed into MLflow ...", flush=True)
    replays = {
        (b.method, part): replay_tracking(
            b, Path(tempfile.mkdtemp(prefix="replay-", dir=work)), part
        )
        for b in bare
        for part in ("steps", "evaluations")
    }
    from pilotcommit.tracking import code_version

    version_before = code_version()
    print("4. pilotcommit compare (first: trains) ...", flush=True)
    since = time.time()
    first = cli_compare(config_path, overrides, runs_dir)
    print(f"   {first:.1f} s", flush=True)
    flow_runs = flow_training_walls(runs_dir, cfg.name, since)
    print("5. pilotcommit compare (second: fully cached) ...", flush=True)
    since_second = time.time()
    second = cli_compare(config_path, overrides, runs_dir)
    print(f"   {second:.1f} s", flush=True)
    # The cache key holds the code version: an edit to pilotcommit/ by anyone in between
    # makes the second call train again, and its time is then not that of a cached compare.
    retrained = flow_training_walls(runs_dir, cfg.name, since_second)
    if retrained or code_version() != version_before:
        print(
            f"   WARNING: not a cache hit (code version {version_before} -> {code_version()}, "
            f"{len(retrained)} runs retrained): rerun when the source tree is quiet",
            flush=True,
        )
    print("6. the same against a running Prefect server ...", flush=True)
    with_server = cached_compare_with_server(config_path, overrides, runs_dir)
    print(f"   {with_server:.1f} s", flush=True)
    print("7. start-up pieces ...", flush=True)
    import_s = timed_command([sys.executable, "-c", "import flows.compare"], args.repeats)
    help_s = timed_command([shutil.which("pilotcommit") or "pilotcommit", "--help"], args.repeats)
    server_import_s = timed_command([sys.executable, "-c", "import prefect.server.api.server"], args.repeats)
    ephemeral_home = tempfile.mkdtemp(prefix="overhead-ephemeral-")
    ephemeral_s = (
        timed_command(
            [
                sys.executable,
                "-c",
                "from prefect.server.api.server import SubprocessASGIServer as S; s = S(); s.start(); s.stop()",
            ],
            args.repeats,
            env={"PREFECT_HOME": ephemeral_home},
        )
        - server_import_s
    )
    shutil.rmtree(ephemeral_home, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    full = None
    if args.full_demo:
        print("8. the full demo through pilotcommit compare (trains every run) ...", flush=True)
        since_full = time.time()
        demo_overrides = [f"tracking.experiment_name=overhead-demo-{stamp}"]
        full_wall = cli_compare(config_path, demo_overrides, runs_dir)
        done = flow_training_walls_all(runs_dir, demo_cfg.name, since_full)
        full = {
            "wall_s": full_wall,
            "runs": len(done),
            "train_wall_s": sum(r["wall_s"] for r in done),
            "steps": sum(r["steps"] for r in done),
            "evaluations": sum(len(r["eval_history"]) for r in done),
        }
        print(f"   {full_wall:.1f} s", flush=True)
        if args.full_demo_bare:
            print("9. the full demo's runs with the bare loop, one after another ...", flush=True)
            bare_dir = Path(tempfile.mkdtemp(prefix="overhead-bare-demo-"))
            upstream_demo = prepare(demo_cfg, runs_dir)
            full["bare_wall_s"] = sum(b.wall_s for b in bare_runs(demo_cfg, upstream_demo, bare_dir))
            shutil.rmtree(bare_dir, ignore_errors=True)

    steps = sum(b.steps for b in bare)
    evaluations = sum(len(b.tracker.evaluations) for b in bare)
    bare_wall = sum(b.wall_s for b in bare)
    flow_train_wall = sum(r["wall_s"] for r in flow_runs.values())
    orchestration = first - flow_train_wall  # start-up, MLflow runs, cache checks, report
    per_run = (orchestration - second) / len(bare)  # beyond what the cached compare also pays

    def replayed(part: str, key: str) -> float:
        return sum(r[key] for (_, p), r in replays.items() if p == part)

    per_step_cpu = replayed("steps", "cpu_s") / steps
    per_eval_cpu = replayed("evaluations", "cpu_s") / evaluations
    demo = demo_size(args.demo_report, bare, demo_cfg)
    demo_fixed = second + per_run * demo["runs"]
    demo_tracking = per_step_cpu * demo["steps"] + per_eval_cpu * demo["evaluations"]
    demo_overhead = demo_fixed + demo_tracking

    method_rows = []
    for b in bare:
        f = flow_runs.get(b.method, {})
        timings = f.get("step_timings", {})
        flow_compute = timings.get("median_generate_s", float("nan")) + timings.get(
            "median_learn_s", float("nan")
        )
        rs, re = replays[(b.method, "steps")], replays[(b.method, "evaluations")]
        method_rows.append(
            (b.method, b.steps, len(b.tracker.evaluations), f"{b.wall_s:.1f}", f"{b.median_step_compute_s:.3f}",
             f"{f.get('wall_s', float('nan')):.1f}", f"{flow_compute:.3f}",
             f"{rs['blocked_s']:.2f} / {rs['cpu_s']:.2f}", f"{re['blocked_s']:.2f} / {re['cpu_s']:.2f}")
        )
    print_table(
        ("method", "steps", "evaluations", "bare wall s", "median step compute s (bare)", "compare: train wall s",
         "median step compute s (compare)", "tracking replay, steps: blocked / CPU s",
         "evaluations: blocked / CPU s"),
        method_rows,
    )
    rows = [
        ("prepare stages s (data + warm start; about 0 when cached)", f"{prepare_s:.1f}"),
        ("training steps / evaluations (all methods)", f"{steps} / {evaluations}"),
        ("bare train_run, sum of wall s", f"{bare_wall:.1f}"),
        ("compare: the training runs' own wall s (result.json)", f"{flow_train_wall:.1f}"),
        (
            "per-step difference (compare - bare) / steps, s (noise-dominated)",
            f"{(flow_train_wall - bare_wall) / steps:+.3f}",
        ),
        (
            "tracking per step: blocked s / CPU s incl. background (replay)",
            f"{replayed('steps', 'blocked_s') / steps:.4f} / {per_step_cpu:.4f}",
        ),
        (
            "tracking per evaluation: blocked s / CPU s incl. background (replay)",
            f"{replayed('evaluations', 'blocked_s') / evaluations:.3f} / {per_eval_cpu:.3f}",
        ),
        ("`pilotcommit compare` wall s (first: trains)", f"{first:.1f}"),
        ("orchestration s (first compare wall - its training runs' wall)", f"{orchestration:.1f}"),
        ("`pilotcommit compare` wall s (second: fully cached)", f"{second:.1f}"),
        ("orchestration per training run beyond the cached compare's, s", f"{per_run:.1f}"),
        (
            "`pilotcommit compare` wall s (fully cached, Prefect server already running)",
            f"{with_server:.1f}",
        ),
        ("`python -c 'import flows.compare'` s", f"{import_s:.1f}"),
        (
            "`import prefect.server.api.server` s (the ephemeral client imports it)",
            f"{server_import_s:.1f}",
        ),
        ("ephemeral Prefect server start + stop s (after that import)", f"{ephemeral_s:.1f}"),
        ("`pilotcommit --help` s", f"{help_s:.1f}"),
        (
            f"full demo compare ({demo['how']}): runs / steps / evaluations",
            f"{demo['runs']} / {demo['steps']} / {demo['evaluations']}",
        ),
        (
            "full demo compare: training wall s, runs one after another",
            f"{demo['train_wall_s']:.0f}",
        ),
        (
            "demo overhead: cached-compare start-up + per-run orchestration x runs, s",
            f"{demo_fixed:.1f}",
        ),
        (
            "demo overhead: tracking CPU (per step x steps + per evaluation x evaluations), s",
            f"{demo_tracking:.1f}",
        ),
        (
            "demo overhead, % of the demo's training wall time",
            f"{100 * demo_overhead / demo['train_wall_s']:.2f}%",
        ),
    ]
    if full is not None:
        measured_orchestration = full["wall_s"] - full["train_wall_s"]
        measured_tracking = per_step_cpu * full["steps"] + per_eval_cpu * full["evaluations"]
        rows += [
            ("full demo `pilotcommit compare` (first: trains), wall s", f"{full['wall_s']:.1f}"),
            (
                "full demo: runs / steps / evaluations",
                f"{full['runs']} / {full['steps']} / {full['evaluations']}",
            ),
            ("full demo: the training runs' own wall s", f"{full['train_wall_s']:.1f}"),
            (
                "full demo: orchestration s (compare wall - training runs' wall)",
                f"{measured_orchestration:.1f}",
            ),
            (
                "full demo: tracking CPU inside the runs (replay rates x its steps, evaluations), s",
                f"{measured_tracking:.1f}",
            ),
            (
                "full demo: pipeline overhead, % of its wall time (tracking CPU counted as serial)",
                f"{100 * (measured_orchestration + measured_tracking) / full['wall_s']:.2f}%",
            ),
        ]
        if "bare_wall_s" in full:
            wall_overhead = full["wall_s"] - full["bare_wall_s"]
            rows += [
                ("full demo: bare train_run of the same runs, sum of walls s", f"{full['bare_wall_s']:.1f}"),
                (
                    "**full demo: wall-time overhead (compare wall - bare walls), % of compare wall**",
                    f"{wall_overhead:.1f} s = {100 * wall_overhead / full['wall_s']:.2f}%",
                ),
            ]
    print_table(("quantity", "value"), rows)
    print_environment(load_before, libraries=("prefect", "mlflow"), torch_threads=cfg.torch_threads,
                      code_version=version_before)


if __name__ == "__main__":
    main()
