"""The learner's maths: group advantages and the clipped policy-gradient loss (pure functions).

The stateful update (optimizer, micro-batch loop, weight sync) lives beside
these and calls them; nothing here knows which allocation policy built a batch.
"""

from pilotcommit.learner.advantages import group_advantages
from pilotcommit.learner.loss import PolicyLossOutput, masked_mean, policy_loss, token_logprobs

__all__ = [
    "PolicyLossOutput",
    "group_advantages",
    "masked_mean",
    "policy_loss",
    "token_logprobs",
]
