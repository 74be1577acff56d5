"""The reuse decision for a training run found on disk (pilotcommit/stages/reuse.py), case by case."""

from __future__ import annotations

import pytest

from pilotcommit.stages.reuse import Reuse, RunOnDisk, decide_reuse


def found(**changes) -> RunOnDisk:
    base = dict(finished_run_id="r1", target_run_id="r1", target_finished=True, source_exists=False,
                attempt="t1", recorded_attempt=None)
    return RunOnDisk(**{**base, **changes})


@pytest.mark.parametrize("case, fresh, expected", [
    # finished into this very MLflow run, which is FINISHED: hand it back
    (found(), False, Reuse.REUSE),
    # finished into this run, but the run never got its final status: the loop resumes (and ends)
    (found(target_finished=False), False, Reuse.RESUME),
    # finished into another comparison's run that still exists: copy it into this one
    (found(target_run_id="r2", target_finished=False, source_exists=True), False, Reuse.COPY),
    # finished into another run whose MLflow data is gone: retrain, or this run would have no metrics
    (found(target_run_id="r2", target_finished=False, source_exists=False), False, Reuse.RETRAIN),
    # nothing finished on disk: train, resuming from a checkpoint if there is one
    (found(finished_run_id=None, target_finished=False), False, Reuse.RESUME),
    # a refresh retrains whatever is on disk
    (found(), True, Reuse.RETRAIN),
    (found(finished_run_id=None), True, Reuse.RETRAIN),
    # a Prefect retry of the task run that retired the old outputs continues its new run
    (found(finished_run_id=None, recorded_attempt="t1"), True, Reuse.RESUME),
    # ... and a retry that finds the new run finished hands it back
    (found(recorded_attempt="t1"), True, Reuse.REUSE),
    # another task run's marker does not count; no task run (no id) never matches
    (found(recorded_attempt="t0"), True, Reuse.RETRAIN),
    (found(attempt="", recorded_attempt=""), True, Reuse.RETRAIN),
])
def test_decision(case, fresh, expected):
    assert decide_reuse(case, fresh=fresh) is expected
