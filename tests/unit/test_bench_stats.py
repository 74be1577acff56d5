"""The pure statistics of the benchmarks in bench/ (hand cases; milliseconds, no model).

bench/ is not a package: the scripts are loaded from their files. Only their pure functions
are tested here: the bandwidth bound of ``bench/throughput.py --gpu``. (The bootstrap,
interpolation and equal-budget statistics of ``bench/sample_efficiency.py`` are
``pilotcommit.stats``: tests/unit/test_stats.py.)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    environ = dict(os.environ)
    try:
        spec.loader.exec_module(module)
    finally:  # the scripts set Prefect/MLflow logging defaults for themselves: not for other tests
        os.environ.clear()
        os.environ.update(environ)
    return module


throughput = _load("throughput")


# --------------------------------------------------------------------------- bandwidth bound


def test_bandwidth_bound_hand_case():
    # 3.09 GB of weights at 3350 GB/s: 1084 steps/s at most; 256 steps in 2 s is 11.8% of that
    out = throughput.bandwidth_limit_fraction(
        generated_tokens=128 * 256,
        wall_s=2.0,
        decode_steps=256,
        weight_bytes=3_090_000_000,
        bandwidth_gbs=3350.0,
    )
    assert out["limit_steps_per_s"] == pytest.approx(3350e9 / 3.09e9)
    assert out["limit_tokens_per_s"] == pytest.approx(128 * 3350e9 / 3.09e9)
    assert out["tokens_per_s"] == pytest.approx(128 * 256 / 2.0)
    assert out["fraction_of_limit"] == pytest.approx(256 * 3.09e9 / 3350e9 / 2.0)
    assert out["fraction_of_limit"] == pytest.approx(out["steps_per_s"] / out["limit_steps_per_s"])


def test_bandwidth_bound_rejects_empty_measurements():
    with pytest.raises(ValueError, match="positive"):
        throughput.bandwidth_limit_fraction(10, 0.0, 5, 1000, 1.0)
