"""The cost of the pipeline itself: Prefect orchestration and MLflow tracking around training.

On a shortened demo (the demo config with ``--set`` overrides, by default one seed and a
smaller rollout budget; the same data, model, warm start and methods), it measures:

1. **Bare loop**: ``pilotcommit.loop.train_run`` of every method with a ``MemoryTracker``,
   in this process, from the cached prepared data and initial policy (wall time and steps).
2. **Tracking cost, isolated**: everything the bare runs logged (params, per-step metrics,
   evaluations, per-prompt histograms and tables) is replayed into a real ``MlflowTracker``
   on a fresh SQLite store. Reported: the seconds the training thread is blocked inside
   tracker calls (the histogram figures are drawn there), and the wall and CPU seconds until
   everything is delivered (the background writer thread included). Replaying the logged
   calls isolates tracking from the training's own run-to-run noise, which on a shared
   2-core machine is far larger than the effect measured.
3. **Through the pipeline**: ``pilotcommit compare`` with the same overrides as a subprocess
   (CLI start-up, imports, ephemeral Prefect, MLflow store, parent and child runs, cached
   data and policy stages, training with ``MlflowTracker``, report stage). Its wall time
   minus the training runs' own wall time (``result.json``) is the fixed orchestration cost;
   the training runs' wall time minus the bare runs' is the per-step cost, as a difference
   of two noisy numbers (shown, with the steps' median compute, for what it is worth).
4. **Fully cached compare**: the same command again; every stage is a cache hit.
5. **Start-up**: ``python -c "import flows.compare"`` and ``pilotcommit --help``.

The overhead is then expressed as a share of a full demo run: the fixed cost (once per
``compare``) plus the tracking cost per step times the demo's steps, over the demo's wall
time, taken from a finished ``bench/sample_efficiency.py`` report (``--demo-report``) when
given, else extrapolated from the bare runs by rollout budget and seeds.

A unique MLflow experiment name per invocation (``tracking.experiment_name``) gives fresh
training-stage keys while the data and warm-start stages stay cached. A benchmark, not a
test; results and commands are in docs/benchmarks.md.

    python bench/overhead.py [--set budget.max_rollouts=8192] [--demo-report PATH]
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

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

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


def prepare(cfg, runs_dir: Path, reuse_from: Path | None) -> dict:
    """The cached data and warm-start stages of ``cfg`` under ``runs_dir`` (the same stage
    keys and directories the compare flow uses, so its run hits them)."""
    from prefect import flow

    from flows import stages
    from flows.compare import prepare_stages

    if reuse_from is not None:
        # a finished warm start of the same config elsewhere: copy its stage directories
        # (their stage.json files point at the originals, which stay in place)
        for sub in ("data", "policies"):
            for src in (reuse_from / sub).glob("*"):
                dst = runs_dir / sub / src.name
                if src.is_dir() and (src / "stage.json").is_file() and not dst.exists():
                    shutil.copytree(src, dst)

    @flow(name="overhead-prepare")
    def prepare_flow() -> dict:
        ctx = stages.make_context(cfg.name, str(runs_dir), None)
        return prepare_stages(ctx, cfg)

    return prepare_flow()


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


def replay_tracking(run: BareRun, store_dir: Path) -> dict[str, float]:
    """Replay one bare run's logging into a real MlflowTracker; seconds blocked and to deliver."""
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

    timed(tracker.log_params, memory.params)
    # the loop's order: evaluation 0, then per step metrics and every k steps an evaluation
    evaluations = {step: (rollouts, metrics) for step, rollouts, metrics in memory.evaluations}
    prompt_stats: dict[int, list] = {}
    for step, name, table in memory.prompt_stats:
        prompt_stats.setdefault(step, []).append((name, table))

    def evaluate(step: int) -> None:
        if step in evaluations:
            rollouts, metrics = evaluations[step]
            timed(tracker.log_evaluation, metrics, step, rollouts)
        for name, table in prompt_stats.get(step, []):
            timed(tracker.log_prompt_stats, table, step, name)

    evaluate(0)
    for step, metrics in memory.metrics:
        timed(tracker.log_metrics, metrics, step)
        evaluate(step)
    gap = tracker.close(status="FINISHED")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if gap.any:
        raise RuntimeError(f"replay into {uri} lost or delayed metrics: {gap.summary()}")
    return {"blocked_s": blocked, "delivered_wall_s": wall, "cpu_s": cpu}


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
    ]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
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


def timed_command(cmd: list[str], repeats: int = 3, env: dict | None = None) -> float:
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


def flow_training_walls(runs_dir: Path, cfg_name: str, since: float) -> dict[str, dict]:
    """``result.json`` of the training runs the compare flow wrote after ``since``."""
    out = {}
    for path in (runs_dir / cfg_name / "train").glob("*/result.json"):
        if path.stat().st_mtime >= since:
            data = json.loads(path.read_text())
            out[data["method"]] = data
    return out


def demo_wall_s(args, bare: list[BareRun], demo_cfg) -> tuple[float, int, str]:
    """The wall time and total steps of a full demo compare, measured or extrapolated."""
    if args.demo_report and Path(args.demo_report).is_file():
        data = json.loads(Path(args.demo_report).read_text())
        runs = data["runs"]
        per_method: dict[str, list] = {}
        for r in runs:
            per_method.setdefault(r["method"], []).append(r)
        # the demo compare runs len(demo seeds) seeds of each method
        seeds = len(demo_cfg.seeds)
        wall = sum(statistics.mean(x["wall_s"] for x in rs) * seeds for rs in per_method.values())
        steps = sum(
            round(statistics.mean(x["steps"] for x in rs) * seeds) for rs in per_method.values()
        )
        return wall, steps, f"measured: mean run wall time of {args.demo_report} x {seeds} seeds"
    if demo_cfg.budget.max_rollouts is not None:
        scale = demo_cfg.budget.max_rollouts / max(
            statistics.mean(b.cumulative_rollouts for b in bare), 1
        )
    else:
        scale = demo_cfg.budget.max_steps / max(statistics.mean(b.steps for b in bare), 1)
    # bare holds every method once per bench seed; the demo runs each method for its seeds
    per_seed = len(demo_cfg.seeds) / len({b.seed for b in bare})
    wall = sum(b.wall_s for b in bare) * scale * per_seed
    steps = round(sum(b.steps for b in bare) * scale * per_seed)
    seeds = len(demo_cfg.seeds)
    return wall, steps, f"extrapolated from the bare runs x {scale:.1f} (budget) x {seeds} seeds"


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
        "--reuse-stages-from",
        type=Path,
        default=None,
        help="a runs dir holding the demo's finished data and warm-start stages",
    )
    parser.add_argument(
        "--demo-report",
        type=Path,
        default=None,
        help="sample_efficiency.json of a full demo run (its wall times)",
    )
    args = parser.parse_args()

    overrides = args.overrides if args.overrides is not None else list(DEFAULT_OVERRIDES)
    config_path = args.config or demo_config_path()
    demo_cfg = load_experiment_config(config_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    overrides = [*overrides, f"tracking.experiment_name=overhead-{stamp}"]
    cfg = load_experiment_config(config_path, overrides)
    runs_dir = args.runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"shortened demo: {' '.join(overrides)}; runs dir {runs_dir}", flush=True)

    print("1. cached stages (data, warm start) ...", flush=True)
    upstream = prepare(cfg, runs_dir, args.reuse_stages_from)
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    print("2. bare train_run (MemoryTracker) ...", flush=True)
    bare = bare_runs(cfg, upstream, work / "bare")
    print("3. tracking replayed into MLflow ...", flush=True)
    replays = {
        b.method: replay_tracking(b, Path(tempfile.mkdtemp(prefix="replay-", dir=work)))
        for b in bare
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
    import_s = timed_command([sys.executable, "-c", "import flows.compare"])
    help_s = timed_command([shutil.which("pilotcommit") or "pilotcommit", "--help"])
    server_import_s = timed_command([sys.executable, "-c", "import prefect.server.api.server"])
    ephemeral_home = tempfile.mkdtemp(prefix="overhead-ephemeral-")
    ephemeral_s = (
        timed_command(
            [
                sys.executable,
                "-c",
                "from prefect.server.api.server import SubprocessASGIServer as S; s = S(); s.start(); s.stop()",
            ],
            env={"PREFECT_HOME": ephemeral_home},
        )
        - server_import_s
    )
    shutil.rmtree(ephemeral_home, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)

    steps = sum(b.steps for b in bare)
    bare_wall = sum(b.wall_s for b in bare)
    flow_train_wall = sum(r["wall_s"] for r in flow_runs.values())
    fixed = first - flow_train_wall
    blocked = sum(r["blocked_s"] for r in replays.values())
    cpu = sum(r["cpu_s"] for r in replays.values())
    demo_wall, demo_steps, demo_how = demo_wall_s(args, bare, demo_cfg)
    per_step_cpu = cpu / steps
    demo_overhead = fixed + per_step_cpu * demo_steps

    print(
        "\n| method | steps | bare wall s | median step compute s (bare) | through compare: train wall s "
        "| median step compute s (compare) | tracking replay: blocked s | delivered wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for b in bare:
        f = flow_runs.get(b.method, {})
        timings = f.get("step_timings", {})
        flow_compute = timings.get("median_generate_s", float("nan")) + timings.get(
            "median_learn_s", float("nan")
        )
        r = replays[b.method]
        print(
            f"| {b.method} | {b.steps} | {b.wall_s:.1f} | {b.median_step_compute_s:.3f} | {f.get('wall_s', float('nan')):.1f} "
            f"| {flow_compute:.3f} | {r['blocked_s']:.2f} | {r['delivered_wall_s']:.2f} | {r['cpu_s']:.2f} |"
        )
    print("\n| quantity | value |")
    print("|---|---|")
    print(f"| training steps (all methods) | {steps} |")
    print(f"| bare train_run, sum of wall s | {bare_wall:.1f} |")
    print(f"| compare: training runs' own wall s | {flow_train_wall:.1f} |")
    print(
        f"| per-step difference (compare - bare) / steps, s | {(flow_train_wall - bare_wall) / steps:+.3f} (noise) |"
    )
    print(f"| tracking per step, blocked s (replay) | {blocked / steps:.4f} |")
    print(f"| tracking per step, CPU s incl. background (replay) | {per_step_cpu:.4f} |")
    print(f"| `pilotcommit compare` wall s (first, trains) | {first:.1f} |")
    print(f"| fixed orchestration s (compare wall - training wall) | {fixed:.1f} |")
    print(f"| `pilotcommit compare` wall s (second, fully cached) | {second:.1f} |")
    print(
        f"| `pilotcommit compare` wall s (fully cached, running Prefect server) | {with_server:.1f} |"
    )
    print(f"| `python -c 'import flows.compare'` s | {import_s:.1f} |")
    print(
        f"| `import prefect.server.api.server` s (the ephemeral client imports it) | {server_import_s:.1f} |"
    )
    print(f"| ephemeral Prefect server start + stop s (after that import) | {ephemeral_s:.1f} |")
    print(f"| `pilotcommit --help` s | {help_s:.1f} |")
    print(f"| full demo compare: wall s ({demo_how}) | {demo_wall:.0f} |")
    print(f"| full demo compare: steps | {demo_steps} |")
    print(
        f"| pipeline overhead on the demo: fixed + per-step tracking CPU x steps, s | {demo_overhead:.1f} |"
    )
    print(
        f"| pipeline overhead, % of the demo's wall time | {100 * demo_overhead / demo_wall:.2f}% |"
    )
    print(
        f"\nload average before {', '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores; torch threads {cfg.torch_threads}"
    )


if __name__ == "__main__":
    main()
