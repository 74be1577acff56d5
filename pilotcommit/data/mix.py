"""Which training prompts RL sees: a level mix drawn from the prepared training split.

The warm start (and so the initial policy) always uses the whole training split; a mix only
selects the prompts the RL methods train on. That is what lets the regime study
(docs/regimes.md) change the pass-rate spread of the RL prompts while the initial policy, the
evaluation set and every method setting stay those of the demo.

    level_counts(shares, prompts)     exact per-level counts (largest remainder, sum = prompts)
    apply_train_mix(table, mix, ...)  the selected rows, in the split's order

Pure pandas/numpy; the config model is :class:`pilotcommit.config.TrainMixConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


class TrainMixError(ValueError):
    """The training split cannot supply the mix; the message names the level and the file."""


def level_counts(shares: Mapping[str, float], prompts: int) -> dict[str, int]:
    """Prompts per level for ``shares`` (summing to 1) of ``prompts``: floors, then the largest
    remainders get one more (ties to the earlier level), so the counts sum to ``prompts``."""
    raw = {level: share * prompts for level, share in shares.items()}
    counts = {level: int(np.floor(value)) for level, value in raw.items()}
    short = prompts - sum(counts.values())
    by_remainder = sorted(raw, key=lambda level: -(raw[level] - counts[level]))
    for level in by_remainder[:short]:
        counts[level] += 1
    return counts


def apply_train_mix(table: pd.DataFrame, mix, origin: str = "the training split") -> pd.DataFrame:
    """The rows of ``table`` that ``mix`` (a TrainMixConfig, or None: all rows) selects.

    Each level's rows are drawn without replacement with ``numpy.random.default_rng(mix.seed)``
    in the order of ``mix.level_shares``; the result keeps the split's row order.
    """
    if mix is None:
        return table
    if "level" not in table.columns:
        raise TrainMixError(f"{origin}: train_mix needs a `level` column, and this table has none")
    rng = np.random.default_rng(mix.seed)
    levels = table["level"].astype(str)
    chosen: list[np.ndarray] = []
    for level, count in level_counts(mix.level_shares, mix.prompts).items():
        rows = np.flatnonzero((levels == level).to_numpy())
        if len(rows) < count:
            raise TrainMixError(
                f"{origin}: train_mix.level_shares[{level!r}] needs {count} prompts of level {level}, "
                f"the split has {len(rows)}; lower train_mix.prompts or that level's share"
            )
        chosen.append(rng.choice(rows, size=count, replace=False))
    return table.iloc[np.sort(np.concatenate(chosen))]
