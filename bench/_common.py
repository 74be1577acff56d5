"""What the bench scripts share: the repository on ``sys.path``, quiet service logging, the model
shapes they build, a few measurements (RSS, CUDA sync), the markdown table printer and the
environment block printed under every result table.

Only the standard library at import: a script imports this right after ``bench/_requires.py``
(whose dependency check must still speak first when torch or pilotcommit is missing); torch,
transformers and pilotcommit are imported inside the functions that use them.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # flows/ and conf/ when a script runs from anywhere
    sys.path.insert(0, str(REPO_ROOT))

GIB = 1024**3

# --------------------------------------------------------------------------- services

# Prefect, MLflow and the Hub read these at import: their INFO lines and progress bars stay out
# of the tables
QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def quiet_services(prefect_logs: bool = True) -> None:
    """Set :data:`QUIET_ENV` where the environment does not say otherwise (before Prefect,
    MLflow or huggingface_hub is imported); ``prefect_logs=False`` leaves Prefect's logging level
    alone (a measurement of what its INFO lines cost)."""
    for key, value in QUIET_ENV.items():
        if prefect_logs or key != "PREFECT_LOGGING_LEVEL":
            os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- model shapes

# Qwen2.5-Math-1.5B (its config.json): the paper configs' smallest model
QWEN25_MATH_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151_936, tie_word_embeddings=True, rope_theta=10_000.0)
# the embedded demo's policy (conf/model/tiny-arith.yaml), without its vocabulary (the
# character tokenizer's) and positions
DEMO_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=4)


def qwen2_model(shape: dict, *, seed: int = 0, device: str = "cpu", **config):
    """A random-initialised ``Qwen2ForCausalLM`` of ``shape`` (``config`` adds to or overrides
    it), float32, initialised on ``device`` (1.5 B float32 weights are slow to build on a CPU)
    from ``seed`` without touching the caller's CPU random state."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    qwen2_config = Qwen2Config(**{**shape, **config})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            return Qwen2ForCausalLM(qwen2_config)


# --------------------------------------------------------------------------- measuring


def cuda_sync(device) -> None:
    """Wait for the device's queued work (timings of CUDA work); nothing on a CPU."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_bytes(device) -> tuple[int, str]:
    """The peak memory of this process's work on ``device`` and what it is: the CUDA
    allocator's peak on a GPU, the process's peak RSS on a CPU."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device), "GPU max allocated"
    return peak_rss_bytes(), "peak RSS"


# --------------------------------------------------------------------------- tables


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a markdown table (a ``|`` inside a cell becomes ``/``)."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head), *(line(r) for r in rows)]


def print_table(head: Sequence[str], rows: Iterable[Sequence[object]], title: str = "") -> None:
    """A markdown table on stdout, after a blank line (and ``title`` with one more)."""
    print()
    if title:
        print(f"{title}\n")
    print("\n".join(markdown_table(head, rows)), flush=True)


# --------------------------------------------------------------------------- environment

# compared by pilotcommit.fingerprint, shown in this order
_FINGERPRINT_LIBRARIES = ("torch", "transformers", "vllm", "numpy", "pandas", "tokenizers", "math_verify")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def environment_lines(load_before: Sequence[float] | None = None, *, libraries: Sequence[str] = (),
                      **extra: object) -> list[str]:
    """The machine and library versions a result came from (:func:`pilotcommit.fingerprint.
    machine_fingerprint` and its key: results compare only under equal keys), the load average
    (``load_before``: at the start, then now) and ``extra`` (``name=value``, e.g. the thread
    count the children ran with, which replaces this process's ``torch threads``)."""
    from pilotcommit.fingerprint import fingerprint_key, machine_fingerprint

    fp = machine_fingerprint()
    machine = (f"machine: {fp['cpu_model']} ({fp['cpu_id']}), {fp['cpu_count']} cores, ISA {fp['cpu_isa']}, "
               f"torch kernels {fp['torch_cpu_capability']}")
    if fp["kernel_env"] != "none":
        machine += f" ({fp['kernel_env']})"
    machine += f"; GPU {fp['gpu']}; {fp['os']}, python {fp['python']}"
    versions = {name: fp[name] for name in _FINGERPRINT_LIBRARIES}
    versions.update({name: _version(name) for name in libraries})
    settings = {"torch threads": fp["torch_threads"], **{k.replace("_", " "): v for k, v in extra.items()}}
    now = ", ".join(f"{x:.2f}" for x in load_average())
    load = f"load average (1, 5, 15 min) {now}"
    if load_before is not None:
        load = f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}, after {now}"
    return [
        machine,
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; fingerprint {fingerprint_key(fp)}",
        "; ".join([*(f"{k} {v}" for k, v in settings.items()), load]),
    ]


def print_environment(load_before: Sequence[float] | None = None, *, libraries: Sequence[str] = (),
                      **extra: object) -> None:
    """:func:`environment_lines` on stdout, after a blank line."""
    print()
    print("\n".join(environment_lines(load_before, libraries=libraries, **extra)), flush=True)
