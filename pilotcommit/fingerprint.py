"""The hardware and software a run's numbers came from.

The same commit, config and seeds give different demo numbers on two CPUs of the
same machine kind (docs/embedded_task.md, "Numbers are hardware-specific"): the
data are bit-identical everywhere (their content hash is pinned in a test), but
float kernels (matrix products, reductions) are chosen by CPU vendor and
instruction set and by the thread count, so the warm start's weights differ in
their last bits and every later step amplifies that. A result is therefore
comparable only with results from the same fingerprint.

``machine_fingerprint()`` collects what decides the kernels; every training run
logs it (``env.*`` params) and an accepted baseline carries it (tags), so the
nightly regression can compare like with like or say that it cannot.

Deliberately not here: any decision about what a difference means (that is
``pilotcommit.report``), and anything that would identify a person or a host
(no host name, no user, no paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

# ISA flags of /proc/cpuinfo that select different float kernels in torch, MKL and oneDNN
_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
    "amx_bf16", "amx_tile", "amx_int8", "asimd", "sve",
)
# keys whose values decide the numbers; the others (python, os) are shown but not compared
COMPARED_KEYS = (
    "cpu_model", "cpu_isa", "torch_cpu_capability", "kernel_env", "gpu", "torch", "transformers",
    "vllm", "torch_threads",
)
# environment variables that select other float kernels (MKL's code path, torch's vectorised
# kernels): bench/divergence.py shows each of them changing the warm start's weights
_KERNEL_ENV = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
PARAM_PREFIX = "env."


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return model or platform.processor() or platform.machine(), flags


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_fingerprint() -> dict[str, str]:
    """CPU model and instruction sets, GPU, library versions and thread count, as strings."""
    import torch

    model, flags = _cpuinfo()
    present = set(flags)
    gpu = "none"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpu = f"{torch.cuda.device_count()} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    return {
        "cpu_model": model,
        "cpu_isa": " ".join(f for f in _ISA_FLAGS if f in present) or platform.machine(),
        "cpu_count": str(_cpu_count()),
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "kernel_env": " ".join(f"{k}={os.environ[k]}" for k in _KERNEL_ENV if k in os.environ) or "none",
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "vllm": _version("vllm"),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
    }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 0


def fingerprint_key(fingerprint: Mapping[str, str]) -> str:
    """A short hash of the compared keys: equal keys, comparable numbers."""
    compared = {k: str(fingerprint.get(k, "")) for k in COMPARED_KEYS}
    return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint_differences(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """``"key: a-value vs b-value"`` for every compared key that differs (empty: comparable)."""
    return [
        f"{k}: {a.get(k, '?')!s} vs {b.get(k, '?')!s}"
        for k in COMPARED_KEYS
        if str(a.get(k, "")) != str(b.get(k, ""))
    ]


def as_params(fingerprint: Mapping[str, str]) -> dict[str, str]:
    """The fingerprint as ``env.*`` run parameters, with its key."""
    params = {f"{PARAM_PREFIX}{k}": v for k, v in fingerprint.items()}
    params[f"{PARAM_PREFIX}fingerprint_key"] = fingerprint_key(fingerprint)
    return params


def from_params(params: Mapping[str, str]) -> dict[str, str]:
    """Inverse of :func:`as_params` (the key is dropped: recompute it)."""
    return {
        k[len(PARAM_PREFIX):]: v
        for k, v in params.items()
        if k.startswith(PARAM_PREFIX) and k != f"{PARAM_PREFIX}fingerprint_key"
    }
