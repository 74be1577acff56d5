"""The machine fingerprint every run records (pilotcommit/fingerprint.py)."""

from __future__ import annotations

import torch

from pilotcommit import fingerprint
from pilotcommit.fingerprint import (
    COMPARED_KEYS,
    as_params,
    fingerprint_differences,
    fingerprint_key,
    from_params,
    machine_fingerprint,
)


def test_this_machine_fingerprint_names_cpu_isa_gpu_versions_and_threads():
    machine = machine_fingerprint()
    assert set(COMPARED_KEYS) <= set(machine)
    assert all(isinstance(v, str) and v for v in machine.values())
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] == str(torch.get_num_threads())
    assert machine["gpu"] == "none" or torch.cuda.is_available()
    # the same machine, the same key; and the params round-trip
    assert fingerprint_key(machine) == fingerprint_key(machine_fingerprint())
    assert from_params(as_params(machine)) == machine
    assert as_params(machine)["env.fingerprint_key"] == fingerprint_key(machine)


def test_cpuinfo_model_and_isa_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu\n"
    )
    model, flags = fingerprint._cpuinfo(path)
    assert model == "Intel(R) Xeon(R) Platinum 8481C"
    assert {"avx512f", "amx_bf16"} <= set(flags)


def test_differences_name_the_fields_that_change_the_numbers():
    amd = {**machine_fingerprint(), "cpu_model": "AMD EPYC", "cpu_isa": "avx2 avx512f"}
    intel = {**amd, "cpu_model": "Intel Xeon", "python": "another"}
    assert fingerprint_differences(amd, amd) == []
    assert fingerprint_differences(amd, intel) == ["cpu_model: AMD EPYC vs Intel Xeon"]
    assert fingerprint_key(amd) != fingerprint_key(intel)
    # a field outside the compared ones (python) does not change the key
    assert fingerprint_key(amd) == fingerprint_key({**amd, "python": "another"})
