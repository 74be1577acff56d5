"""Rollout allocation policies: which prompts get how many rollouts, and which are trained on.

Pure Python and numpy: no model, engine, Prefect or MLflow. Policies are
entries of one registry keyed by method name; build one with
:func:`make_policy`.
"""

from pilotcommit.allocation.base import (
    POLICIES,
    AllocationError,
    AllocationPolicy,
    RoundsExhaustedError,
    make_policy,
)
from pilotcommit.allocation.buffer import ReplayBuffer, select_max_variance_pilots
from pilotcommit.allocation.dapo import DAPOPolicy
from pilotcommit.allocation.greso import GRESOPolicy
from pilotcommit.allocation.grpo import GRPOPolicy
from pilotcommit.allocation.pilot_commit import PilotCommitPolicy
from pilotcommit.allocation.speed_rl import SpeedRLPolicy
from pilotcommit.allocation.stream import PromptStream

__all__ = [
    "POLICIES",
    "AllocationError",
    "AllocationPolicy",
    "DAPOPolicy",
    "GRESOPolicy",
    "GRPOPolicy",
    "PilotCommitPolicy",
    "PromptStream",
    "ReplayBuffer",
    "RoundsExhaustedError",
    "SpeedRLPolicy",
    "make_policy",
    "select_max_variance_pilots",
]
