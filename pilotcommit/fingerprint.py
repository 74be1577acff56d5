"""The hardware and software a run's numbers came from.

The same commit, config and seeds give different demo numbers on two CPUs of the
same machine kind (docs/embedded_task.md, "Numbers are hardware-specific"): the
data are bit-identical everywhere (their content hash is pinned in a test), but
float kernels (matrix products, reductions) are chosen by CPU vendor and
instruction set and by the thread count, so the warm start's weights differ in
their last bits and every later step amplifies that. The CPU model name alone
does not tell them apart ("AMD EPYC" names several generations), so ``cpu_id`` adds the vendor,
family, model and stepping. Library versions are in it too (torch, transformers, numpy, ...):
on this project's machine the demo's warm start and probe came out bit-identical under
transformers 5.19, 5.24 and 5.25 (issue 23), but nothing promises that, so a library change
counts as a hardware change. A result is therefore comparable only with results from the same
fingerprint.

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
    "cpu_model", "cpu_id", "cpu_isa", "torch_cpu_capability", "kernel_env", "gpu", "torch", "transformers",
    "vllm", "torch_threads", *(name.replace("-", "_") for name in ("numpy", "pandas", "tokenizers", "math-verify")),
)
# environment variables that select other float kernels (MKL's code path, torch's vectorised
# kernels): bench/divergence.py shows each of them changing the warm start's weights
_KERNEL_ENV = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
PARAM_PREFIX = "env."


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str], str]:
    """``(model name, ISA flags, cpu id)`` of the first processor; the id is vendor, family,
    model and stepping (``AuthenticAMD family 25 model 17 stepping 1``: a Zen 4 EPYC), which
    tell apart CPUs that share a model name."""
    model, flags, ids = "", [], {}
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or platform.machine(), [], "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key in ("vendor_id", "cpu family", "model", "stepping", "cpu implementer", "cpu part",
                     "cpu variant", "cpu revision") and key not in ids:
            ids[key] = value.strip()
    cpu_id = " ".join(f"{k.removeprefix('cpu ')} {v}" if k != "vendor_id" else v for k, v in ids.items())
    return model or platform.processor() or platform.machine(), flags, cpu_id or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_fingerprint() -> dict[str, str]:
    """CPU model and instruction sets, GPU, library versions and thread count, as strings."""
    import torch

    model, flags, cpu_id = _cpuinfo()
    present = set(flags)
    gpu = "none"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpu = f"{torch.cuda.device_count()} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    return {
        "cpu_model": model,
        "cpu_id": cpu_id,
        "cpu_isa": " ".join(f for f in _ISA_FLAGS if f in present) or platform.machine(),
        "cpu_count": str(_cpu_count()),
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "kernel_env": " ".join(f"{k}={os.environ[k]}" for k in _KERNEL_ENV if k in os.environ) or "none",
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "vllm": _version("vllm"),
        # the other libraries whose version can move the numbers: the allocation's generators,
        # the evaluation set's draw, a pretrained model's tokens, the math reward's verdicts
        **{name.replace("-", "_"): _version(name) for name in ("numpy", "pandas", "tokenizers", "math-verify")},
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
