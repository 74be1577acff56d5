"""Accepted baselines of the nightly regression: a comparison's parent run marked accepted, with
the machine fingerprint its training runs recorded, and the newest one found again (same
hardware and software first)."""

from __future__ import annotations

import time

from pilotcommit.tracking.runs import child_runs
from pilotcommit.tracking.tags import (
    TAG_ACCEPTED_AT,
    TAG_ACCEPTED_BASELINE,
    TAG_CONFIG_NAME,
    TAG_FINGERPRINT_KEY,
    TAG_FINGERPRINT_PREFIX,
)


def comparison_fingerprint(client, parent_run_id: str) -> dict[str, str]:
    """The machine fingerprint (``pilotcommit.fingerprint``) of a comparison's training runs,
    read from their ``env.*`` params; a value the runs disagree on reads ``mixed: a | b``;
    empty when no run recorded one (runs older than the fingerprint)."""
    from pilotcommit import fingerprint

    parent = client.get_run(parent_run_id)
    values: dict[str, set[str]] = {}
    for run in child_runs(client, parent.info.experiment_id, parent_run_id):
        for key, value in fingerprint.from_params(run.data.params).items():
            values.setdefault(key, set()).add(value)
    return {k: v.pop() if len(v) == 1 else "mixed: " + " | ".join(sorted(v)) for k, v in values.items()}


def baseline_fingerprint(run) -> dict[str, str]:
    """The fingerprint an accepted baseline (a parent run) carries in its tags."""
    return {
        k[len(TAG_FINGERPRINT_PREFIX):]: v
        for k, v in run.data.tags.items()
        if k.startswith(TAG_FINGERPRINT_PREFIX)
    }


def accept_baseline(client, run_id: str, note: str = "") -> None:
    """Mark a comparison's parent run as the accepted baseline of its configuration name, with
    the machine fingerprint its training runs recorded (tags ``pilotcommit.fingerprint.*``)."""
    from pilotcommit import fingerprint

    client.set_tag(run_id, TAG_ACCEPTED_BASELINE, "true")
    client.set_tag(run_id, TAG_ACCEPTED_AT, f"{time.time():.3f}")
    if note:
        client.set_tag(run_id, "pilotcommit.accepted_note", note)
    machine = comparison_fingerprint(client, run_id)
    for key, value in machine.items():
        client.set_tag(run_id, TAG_FINGERPRINT_PREFIX + key, value[:5000])
    if machine:
        client.set_tag(run_id, TAG_FINGERPRINT_KEY, fingerprint.fingerprint_key(machine))


def find_accepted_baseline(
    client, experiment_id: str, config_name: str, exclude_run_id: str | None = None,
    fingerprint_key: str | None = None,
):
    """The most recently accepted baseline of ``config_name`` (a parent run), or ``None``.

    With ``fingerprint_key``, the newest baseline accepted from that hardware and software comes
    first (like with like); only when there is none, the newest from anywhere (the caller then
    says that it came from other hardware)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_ACCEPTED_BASELINE}` = 'true' and tags.`{TAG_CONFIG_NAME}` = '{config_name}'"
        ),
        max_results=1000,
    )
    runs = [r for r in runs if r.info.run_id != exclude_run_id]
    if not runs:
        return None
    same = [r for r in runs if fingerprint_key and r.data.tags.get(TAG_FINGERPRINT_KEY) == fingerprint_key]
    return max(same or runs, key=lambda r: float(r.data.tags.get(TAG_ACCEPTED_AT, "0")))




def accept_comparison(client, run_id: str, config_name: str, note: str = "") -> None:
    """:func:`accept_baseline` after checking that ``run_id`` is a comparison of ``config_name``
    (ValueError otherwise)."""
    if client.get_run(run_id).data.tags.get(TAG_CONFIG_NAME) != config_name:
        raise ValueError(f"run {run_id} is not a comparison of {config_name!r}")
    accept_baseline(client, run_id, note)
