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
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8481C\nstepping\t: 8\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu\n"
    )
    model, flags, cpu_id = fingerprint._cpuinfo(path)
    assert model == "Intel(R) Xeon(R) Platinum 8481C"
    assert {"avx512f", "amx_bf16"} <= set(flags)
    assert cpu_id == "GenuineIntel family 6 model 143 stepping 8"


def test_two_cpus_with_one_model_name_differ_by_their_id_and_library_versions_count():
    """Two "AMD EPYC" of different generations (Zen 3, Zen 4) are other hardware; so is a newer
    transformers on the same CPU (the nightly then says the baseline came from elsewhere)."""
    zen4 = {**machine_fingerprint(), "cpu_model": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 17 stepping 1"}
    zen3 = {**zen4, "cpu_id": "AuthenticAMD family 25 model 1 stepping 1"}
    assert fingerprint_differences(zen4, zen3) == [f"cpu_id: {zen4['cpu_id']} vs {zen3['cpu_id']}"]
    newer = {**zen4, "transformers": "5.25.0", "numpy": "2.4.6"}
    assert [d.split(":")[0] for d in fingerprint_differences({**zen4, "transformers": "5.19.0", "numpy": "2.3.5"},
                                                             newer)] == ["transformers", "numpy"]


def test_differences_name_the_fields_that_change_the_numbers():
    amd = {**machine_fingerprint(), "cpu_model": "AMD EPYC", "cpu_isa": "avx2 avx512f"}
    intel = {**amd, "cpu_model": "Intel Xeon", "python": "another"}
    assert fingerprint_differences(amd, amd) == []
    assert fingerprint_differences(amd, intel) == ["cpu_model: AMD EPYC vs Intel Xeon"]
    assert fingerprint_key(amd) != fingerprint_key(intel)
    # a field outside the compared ones (python) does not change the key
    assert fingerprint_key(amd) == fingerprint_key({**amd, "python": "another"})
