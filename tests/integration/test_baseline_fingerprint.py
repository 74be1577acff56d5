"""Accepted baselines carry the machine fingerprint of their training runs, and the nightly's
baseline lookup prefers one from the same fingerprint (a real MLflow SQLite store)."""

from __future__ import annotations

import time

from pilotcommit import fingerprint, tracking


def _comparison(client, experiment_id: str, machine: dict[str, str]) -> str:
    parent = client.create_run(experiment_id, tags={tracking.TAG_CONFIG_NAME: "demo"}).info.run_id
    for seed in (0, 1):
        child = client.create_run(
            experiment_id, tags={tracking.PARENT_TAG: parent, "method": "grpo", "seed": str(seed)}
        ).info.run_id
        for key, value in fingerprint.as_params(machine).items():
            client.log_param(child, key, value)
    return parent


def test_accepted_baselines_carry_the_fingerprint_and_like_is_found_for_like(tmp_path):
    client = tracking.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    amd = {**fingerprint.machine_fingerprint(), "cpu_model": "AMD EPYC"}
    intel = {**amd, "cpu_model": "Intel Xeon"}
    on_amd = _comparison(client, experiment_id, amd)
    tracking.accept_baseline(client, on_amd)
    time.sleep(0.01)
    on_intel = _comparison(client, experiment_id, intel)
    tracking.accept_baseline(client, on_intel)  # the newer one

    tags = client.get_run(on_amd).data.tags
    assert tags["pilotcommit.fingerprint.cpu_model"] == "AMD EPYC"
    assert tags[tracking.TAG_FINGERPRINT_KEY] == fingerprint.fingerprint_key(amd)
    assert tracking.baseline_fingerprint(client.get_run(on_intel))["cpu_model"] == "Intel Xeon"
    assert tracking.comparison_fingerprint(client, on_amd) == amd

    def find(key):
        return tracking.find_accepted_baseline(client, experiment_id, "demo", fingerprint_key=key).info.run_id

    assert find(fingerprint.fingerprint_key(amd)) == on_amd  # like with like, although older
    assert find(fingerprint.fingerprint_key(intel)) == on_intel
    assert find("another-machine") == on_intel  # none from there: the newest, reported as foreign
    assert find(None) == on_intel
