"""Which code a result came from: the source hash that goes into every stage's cache key (the
code version) and the git commit every run is tagged with."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

# Sources that do not change any stage's outputs, only how stages are orchestrated, tracked or
# shown (a module, or a folder ending in "/"); editing them must not invalidate cached training
# runs. What computes (the stage functions of pipeline.py, the loop, the allocation policies,
# the learner, engines, rewards, data, models, checkpoints, the configs' schema) is hashed.
ORCHESTRATION_SOURCES = ("cli.py", "terminal.py", "services/", "dependencies.py", "config/sweep.py", "tracking/",
                         "analysis/", "stages/", "runner/")


def _orchestration(rel: str) -> bool:
    return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in ORCHESTRATION_SOURCES)


def source_hash(package_dir: Path | None = None) -> str:
    """Hash of the package's ``*.py`` sources that can change results (16 hex).

    Part of every stage's cache key: a code edit invalidates cached stages even without a
    commit (git sha alone would not see uncommitted edits).
    """
    root = Path(package_dir) if package_dir else Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if _orchestration(rel):
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<source hash>``: the code part of every stage's cache key.

    Computed once per process: the code that runs is the code imported at start, even if the
    files change on disk meanwhile (a later edit belongs to the next process).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("pilotcommit")
    except PackageNotFoundError:
        pkg_version = "0+unknown"
    return f"{pkg_version}+{source_hash()}"


def git_sha(repo_dir: Path | None = None) -> str:
    """The repository's HEAD commit, ``"<sha>-dirty"`` with uncommitted changes, ``"unknown"``
    outside a git checkout (an installed wheel)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha

