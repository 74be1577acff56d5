"""pilotcommit: budget-aware rollout allocation (GRPO, DAPO, Pilot-Commit) for RL post-training."""

__version__ = "0.1.0"
