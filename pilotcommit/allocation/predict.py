"""Predict, from a pass-rate histogram, how many informative groups each method buys per rollout.

A group is *informative* when its 0/1 rewards are not all equal: only those carry a gradient
(ALGORITHMS.md, "Why variance"). Given, for each training prompt, how often the initial policy
solved it in ``K`` probe samples, this module computes in closed form, per method, the expected
number of informative groups trained per 1,000 sampled rollouts, and where the other rollouts
go:

- **GRPO**: every group of ``n`` is trained; it is informative unless all ``n`` rewards are
  equal, which happens with probability ``P(0 of n) + P(n of n)``.
- **DAPO**: rounds of ``gen_batch_size`` prompts x ``n`` rollouts; zero-variance groups are
  dropped, kept groups fill the batch of ``train_batch_size``, the surplus of the last round is
  discarded. With ``q`` the chance that a group is kept, the number of rounds ``R`` of a step is
  the first ``r`` with ``Binomial(r * gen_batch_size, q) >= train_batch_size``; a step samples
  ``E[R] * gen_batch_size * n`` rollouts for ``train_batch_size`` informative groups.
- **Pilot-Commit**: ``n_pilot`` pilots per new prompt; the pilot pass rate classifies it as
  informative, too hard or too easy (``PilotCommitConfig.verdict``, the policy's own rule); each informative prompt is committed ``n_commit`` more rollouts, and its
  group (the reused pilots plus the commits) is trained. In the steady state a step runs
  ``R = max(1, train_batch_size / (gen_batch_size * P(informative pilot)))`` rounds on average
  and samples ``R * gen_batch_size * n_pilot + train_batch_size * n_commit`` rollouts; when one
  round finds more informative prompts than a step commits, the surplus ages out of the buffer.
- **GRESO**: in its first epoch no prompt has a history, so it skips nothing and is exactly
  DAPO (docs/algorithms.md, "GRESO"); the prediction is DAPO's with GRESO's sizes, and says so.
  The skip acts from the second epoch on, on the histories training produces: not predicted.
- **SPEED-RL**: ``n_screen`` screening rollouts per new prompt; a prompt qualifies with
  probability ``q = P(0 < k < n_screen)``, and every qualified prompt's group (screens plus
  ``n_continue`` continuations) is trained and informative (its screens hold both outcomes).
  Completed groups are never discarded (the surplus waits for the next step), so in the steady
  state a trained group costs ``n_screen / q + n_continue`` rollouts.

A prompt's pass rate is not known, only ``k`` successes of ``K`` samples. Taking ``k / K`` at
face value (``estimator="plug_in"``) calls a prompt seen at 0 of 16 hopeless, although a true
pass rate of 3% gives a group of 64 at least one success 86% of the time. The default,
``estimator="empirical_bayes"``, fits one ``Beta(a, b)`` to the whole probe (maximum marginal
likelihood of the beta-binomial) and gives each prompt its posterior
``Beta(a + k, b + K - k)``: a prompt at 0 of 16 borrows from how many prompts of this data set
are truly unsolvable. ``estimator="jeffreys"`` uses ``Beta(1/2, 1/2)`` for every prompt
instead. Group outcomes are then beta-binomial. Each is exact for what it assumes; the study in
docs/regimes.md checks them against measured rates.

One consequence of several epochs is checked, because it ends a run: Pilot-Commit **evicts** a
prompt whose pilots were all correct (``p >= p_evict``) at the end of the epoch. On a small,
saturated training set the pool can shrink below one round of ``gen_batch_size`` prompts before
the budget is spent, and training stops with an error (the regime study's saturated mix did:
docs/regimes.md). :func:`pool_exhaustion` follows each prompt's survival, ``(1 - e_j)^k`` after
``k`` epochs with ``e_j`` its chance of an all-correct pilot outcome, and a prediction whose pool
runs out within the budget says so; :func:`recommend` never recommends it.

What this deliberately leaves out otherwise: learning during training (the histogram is the
initial policy's), several epochs (deferral; eviction beyond the check above), pilots wasted by the replay buffer's
staleness limit or the end of an epoch, and the value of a group beyond "informative or not".
Those are why a prediction is a screening tool and the study is the measurement.

Pure numpy and the config models: no model, engine, Prefect or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from pilotcommit.config import DAPOConfig, GRESOConfig, GRPOConfig, PilotCommitConfig, SpeedRLConfig

Estimator = Literal["empirical_bayes", "jeffreys", "plug_in"]
PER_ROLLOUTS = 1000  # the unit of every rate here: per 1,000 sampled rollouts
_JEFFREYS = 0.5


@dataclass(frozen=True)
class PassRateCounts:
    """Probe outcome: ``successes[j]`` correct of ``samples[j]`` rollouts for training prompt ``j``."""

    successes: np.ndarray  # [P] int
    samples: np.ndarray  # [P] int

    def __post_init__(self) -> None:
        s, k = np.asarray(self.successes), np.asarray(self.samples)
        if s.shape != k.shape or s.ndim != 1 or len(s) == 0:
            raise ValueError("successes and samples must be non-empty 1-d arrays of one length")
        if (k < 1).any() or (s < 0).any() or (s > k).any():
            raise ValueError("each prompt needs 0 <= successes <= samples and samples >= 1")
        object.__setattr__(self, "successes", s.astype(np.int64))
        object.__setattr__(self, "samples", k.astype(np.int64))

    @classmethod
    def from_pass_rates(cls, pass_rates: Sequence[float], samples: int) -> "PassRateCounts":
        rates = np.asarray(pass_rates, dtype=float)
        return cls(np.rint(rates * samples).astype(np.int64), np.full(len(rates), samples))

    @property
    def pass_rates(self) -> np.ndarray:
        return self.successes / self.samples

    def spread(self) -> dict[str, float]:
        """Fractions of prompts at pass rate 0, strictly between, and at 1."""
        p = self.pass_rates
        at_zero, at_one = float(np.mean(p == 0.0)), float(np.mean(p == 1.0))
        return {"at_0": at_zero, "between": 1.0 - at_zero - at_one, "at_1": at_one}


_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_lgamma(a) + _lgamma(b) - _lgamma(a + b)).astype(float)


def fit_beta_prior(counts: PassRateCounts) -> tuple[float, float]:
    """``(a, b)`` of the ``Beta`` prior that maximises the probe's beta-binomial likelihood.

    A grid over log a, log b in [-4, 4] (step 0.1), refined once around the best point: the
    likelihood is smooth and two-dimensional, so this is exact to well under the probe's noise.
    """
    pairs_U2, weight_U = np.unique(np.stack([counts.successes, counts.samples], axis=1), axis=0,
                                   return_counts=True)
    k_U, n_U = pairs_U2[:, 0].astype(float), pairs_U2[:, 1].astype(float)

    def log_likelihood(log_a_G: np.ndarray, log_b_G: np.ndarray) -> np.ndarray:
        a_GU = np.exp(log_a_G)[:, None] + 0 * k_U
        b_GU = np.exp(log_b_G)[:, None] + 0 * k_U
        per_pair_GU = _log_beta(a_GU + k_U, b_GU + n_U - k_U) - _log_beta(a_GU, b_GU)
        return per_pair_GU @ weight_U

    best = (0.0, 0.0)
    for half_width, step in ((4.0, 0.1), (0.1, 0.005)):
        axis = np.arange(-half_width, half_width + step / 2, step)
        la, lb = np.meshgrid(best[0] + axis, best[1] + axis, indexing="ij")
        ll = log_likelihood(la.ravel(), lb.ravel())
        i = int(np.argmax(ll))
        best = (float(la.ravel()[i]), float(lb.ravel()[i]))
    return math.exp(best[0]), math.exp(best[1])


def outcome_pmf(counts: PassRateCounts, m: int, estimator: Estimator = "empirical_bayes",
                extra_successes: np.ndarray | None = None,
                extra_failures: np.ndarray | None = None) -> np.ndarray:
    """``[P, m + 1]``: the probability that ``m`` new rollouts of each prompt have ``i`` successes.

    ``extra_successes`` / ``extra_failures`` ([P]) condition on further observed rollouts (the
    pilots, when predicting the commits of the same prompt); the plug-in estimate ignores them.
    """
    i_M = np.arange(m + 1)
    log_choose_M = np.array([math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in i_M])
    if estimator == "plug_in":
        p_P1 = counts.pass_rates[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            pmf_PM = np.exp(log_choose_M[None, :]) * p_P1**i_M * (1 - p_P1) ** (m - i_M)
        return pmf_PM
    if estimator == "jeffreys":
        prior_a = prior_b = _JEFFREYS
    elif estimator == "empirical_bayes":
        prior_a, prior_b = fit_beta_prior(counts)
    else:
        raise ValueError(f"estimator must be one of empirical_bayes, jeffreys, plug_in; not {estimator!r}")
    zeros = np.zeros(len(counts.successes))
    a_P = counts.successes + prior_a + (zeros if extra_successes is None else extra_successes)
    b_P = counts.samples - counts.successes + prior_b + (zeros if extra_failures is None else extra_failures)
    # many prompts share (a, b): compute each distinct posterior once
    ab_U2, inverse_P = np.unique(np.stack([a_P, b_P], axis=1), axis=0, return_inverse=True)
    a_U, b_U = ab_U2[:, 0], ab_U2[:, 1]
    a_UM = a_U[:, None] + i_M[None, :]
    b_UM = b_U[:, None] + (m - i_M)[None, :]
    log_pmf_UM = log_choose_M[None, :] + _log_beta(a_UM, b_UM) - _log_beta(a_U, b_U)[:, None]
    return np.exp(log_pmf_UM)[inverse_P.reshape(-1)]


@dataclass(frozen=True)
class MethodPrediction:
    """Expected outcome of one method's sampling on the histogram, per 1,000 sampled rollouts."""

    method: str  # the config's label
    kind: str  # grpo | dapo | pilot_commit | greso | speed_rl
    informative_groups_per_1k: float
    breakdown: dict[str, float] = field(default_factory=dict)  # other per-1,000 rates and notes
    note: str = ""


def predict_grpo(label: str, cfg: GRPOConfig, counts: PassRateCounts,
                 estimator: Estimator = "empirical_bayes") -> MethodPrediction:
    pmf_PM = outcome_pmf(counts, cfg.n, estimator)
    zero_variance = float(np.mean(pmf_PM[:, 0] + pmf_PM[:, -1]))
    groups_per_1k = PER_ROLLOUTS / cfg.n
    return MethodPrediction(
        label, "grpo", groups_per_1k * (1.0 - zero_variance),
        {"trained_groups_per_1k": groups_per_1k,
         "zero_variance_groups_per_1k": groups_per_1k * zero_variance,
         "zero_variance_fraction": zero_variance,
         "rollouts_per_step": float(cfg.train_batch_size * cfg.n),
         "informative_share": 1.0 - zero_variance},
    )


def expected_rounds(kept_probability: float, train_batch_size: int, gen_batch_size: int,
                    max_rounds: int) -> tuple[float, float]:
    """``(E[R | the step fills], P(the step fails))`` for DAPO-style filling of a batch.

    ``R`` is the first round after which ``Binomial(R * gen_batch_size, q)`` reaches
    ``train_batch_size``; a step that is still short after ``max_rounds`` fails.
    """
    q = float(np.clip(kept_probability, 0.0, 1.0))
    survival = [1.0]  # P(R > r) for r = 0 .. max_rounds
    for r in range(1, max_rounds + 1):
        draws = r * gen_batch_size
        # P(Binomial(draws, q) < train_batch_size), summed in log space for stability
        if q == 0.0:
            short = 1.0
        elif q == 1.0:
            short = 0.0 if draws >= train_batch_size else 1.0
        else:
            ks = np.arange(min(train_batch_size, draws + 1))
            log_terms = np.array([
                math.lgamma(draws + 1) - math.lgamma(k + 1) - math.lgamma(draws - k + 1)
                + k * math.log(q) + (draws - k) * math.log1p(-q) for k in ks
            ])
            short = float(np.exp(log_terms).sum()) if len(ks) else 0.0
        survival.append(min(short, 1.0))
    fail = survival[-1]
    if fail >= 1.0:
        return math.inf, 1.0
    # E[R | R <= max] = sum_{r=1..max} r P(R = r) / (1 - fail)
    mass = [survival[r - 1] - survival[r] for r in range(1, max_rounds + 1)]
    mean = sum(r * p for r, p in zip(range(1, max_rounds + 1), mass)) / (1.0 - fail)
    return mean, fail


def predict_dapo(label: str, cfg: DAPOConfig, counts: PassRateCounts,
                 estimator: Estimator = "empirical_bayes") -> MethodPrediction:
    pmf_PM = outcome_pmf(counts, cfg.n, estimator)
    kept = float(np.mean(1.0 - pmf_PM[:, 0] - pmf_PM[:, -1]))
    rounds, fail = expected_rounds(kept, cfg.train_batch_size, cfg.gen_batch_size, cfg.max_num_gen_batches)
    if not math.isfinite(rounds):
        return MethodPrediction(label, "dapo", 0.0, {"kept_fraction": kept, "step_failure_probability": 1.0},
                                note="no group has reward variance: every step fails")
    sampled_groups = rounds * cfg.gen_batch_size
    scale = PER_ROLLOUTS / (sampled_groups * cfg.n)
    return MethodPrediction(
        label, "dapo", cfg.train_batch_size * scale,
        {"dropped_groups_per_1k": sampled_groups * (1.0 - kept) * scale,
         "discarded_groups_per_1k": (sampled_groups * kept - cfg.train_batch_size) * scale,
         "kept_fraction": kept, "rounds_per_step": rounds, "step_failure_probability": fail,
         "rollouts_per_step": sampled_groups * cfg.n, "informative_share": 1.0},
    )


def predict_pilot_commit(label: str, cfg: PilotCommitConfig, counts: PassRateCounts,
                         estimator: Estimator = "empirical_bayes") -> MethodPrediction:
    n_p = cfg.n_pilot
    pilot_pmf_PM = outcome_pmf(counts, n_p, estimator)
    classes = [cfg.verdict(i / n_p) for i in range(n_p + 1)]
    share = {c: float(pilot_pmf_PM[:, [i for i, ci in enumerate(classes) if ci == c]].sum(axis=1).mean())
             for c in ("informative", "too_hard", "too_easy")}
    evicted = float(pilot_pmf_PM[:, [i for i in range(n_p + 1) if cfg.evicts(i / n_p)]].sum(axis=1).mean())
    # P(the trained group is informative | pilot outcome i in the band): certain when the reused
    # pilots hold both outcomes, else it needs a commit that differs from them.
    informative_trained = np.zeros(len(counts.successes))
    for i, c in enumerate(classes):
        if c != "informative":
            continue
        kept = cfg.pilots_in_group
        correct_kept = min(max(kept // 2, kept - (n_p - i)), i)  # buffer.select_max_variance_pilots
        if 0 < correct_kept < kept:
            p_group = np.ones(len(counts.successes))
        else:
            commit_pmf_PM = outcome_pmf(counts, cfg.n_commit, estimator,
                                        extra_successes=np.full(len(counts.successes), i),
                                        extra_failures=np.full(len(counts.successes), n_p - i))
            same = commit_pmf_PM[:, -1] if correct_kept == kept else commit_pmf_PM[:, 0]
            p_group = 1.0 - same
        informative_trained += pilot_pmf_PM[:, i] * p_group
    p_band = share["informative"]
    if p_band <= 0.0:
        return MethodPrediction(label, "pilot_commit", 0.0, {"informative_pilot_fraction": 0.0},
                                note="no pilot outcome falls in the pass band: every step fails")
    # Steady state: a round pilots gen_batch_size prompts, a step commits train_batch_size of the
    # informative ones. When one round finds more than a step commits, a step is one round and
    # the surplus ages out of the buffer (max_off_steps); otherwise the buffer carries the
    # remainder to the next step, so a step averages B / (G * p_band) rounds.
    b, g = cfg.train_batch_size, cfg.gen_batch_size
    rounds = max(1.0, b / (g * p_band))
    rollouts_per_step = rounds * g * n_p + b * cfg.n_commit
    scale = PER_ROLLOUTS / rollouts_per_step
    informative_given_band = float(informative_trained.mean()) / p_band
    return MethodPrediction(
        label, "pilot_commit", b * informative_given_band * scale,
        {"piloted_prompts_per_1k": rounds * g * scale,
         "informative_pilots_per_1k": rounds * g * p_band * scale,
         "stale_pilots_per_1k": max(rounds * g * p_band - b, 0.0) * scale,
         "too_hard_pilots_per_1k": rounds * g * share["too_hard"] * scale,
         "too_easy_pilots_per_1k": rounds * g * share["too_easy"] * scale,
         "evicted_pilots_per_1k": rounds * g * evicted * scale,
         "informative_pilot_fraction": p_band,
         "rounds_per_step": rounds,
         "rounds_exceed_limit": float(rounds > cfg.max_num_gen_batches),
         "pilot_share_of_rollouts": rounds * g * n_p / rollouts_per_step,
         "rollouts_per_step": rollouts_per_step, "informative_share": informative_given_band},
    )


def predict_greso(label: str, cfg: GRESOConfig, counts: PassRateCounts,
                  estimator: Estimator = "empirical_bayes") -> MethodPrediction:
    """GRESO's first epoch, which is DAPO's dynamic sampling (no prompt has a history yet)."""
    as_dapo = DAPOConfig(n=cfg.n, train_batch_size=cfg.train_batch_size,
                         gen_batch_size=cfg.gen_batch_size, max_num_gen_batches=cfg.max_num_gen_batches)
    dapo = predict_dapo(label, as_dapo, counts, estimator)
    note = "first epoch = DAPO's dynamic sampling; the later skip is not predicted"
    return MethodPrediction(label, "greso", dapo.informative_groups_per_1k, dapo.breakdown,
                            note=f"{dapo.note}; {note}" if dapo.note else note)


def predict_speed_rl(label: str, cfg: SpeedRLConfig, counts: PassRateCounts,
                     estimator: Estimator = "empirical_bayes") -> MethodPrediction:
    pmf_PM = outcome_pmf(counts, cfg.n_screen, estimator)
    qualified = float(np.mean(1.0 - pmf_PM[:, 0] - pmf_PM[:, -1]))
    if qualified <= 0.0:
        return MethodPrediction(label, "speed_rl", 0.0, {"qualified_fraction": 0.0},
                                note="no screening outcome lies strictly between 0 and 1: every step fails")
    rollouts_per_group = cfg.n_screen / qualified + cfg.n_continue
    scale = PER_ROLLOUTS / rollouts_per_group
    return MethodPrediction(
        label, "speed_rl", scale,
        {"screened_prompts_per_1k": scale / qualified,
         "rejected_screens_per_1k": scale * (1.0 - qualified) / qualified,
         "qualified_fraction": qualified,
         # a step's rounds on average (below 1: some steps train carried-over groups only)
         "rounds_per_step": cfg.train_batch_size / (cfg.gen_batch_size * qualified),
         "screen_share_of_rollouts": cfg.n_screen / qualified / rollouts_per_group,
         "rollouts_per_step": cfg.train_batch_size * rollouts_per_group, "informative_share": 1.0},
    )


_PREDICTORS = {"grpo": predict_grpo, "dapo": predict_dapo, "pilot_commit": predict_pilot_commit,
               "greso": predict_greso, "speed_rl": predict_speed_rl}


MAX_EPOCHS = 1000  # pool_exhaustion looks no further


@dataclass(frozen=True)
class PoolExhaustion:
    """When Pilot-Commit's evictions leave fewer prompts than one round needs."""

    epochs: int  # full epochs completed before the pool is too small
    rollouts: float  # expected sampled rollouts by then
    remaining: float  # expected prompts left
    pool: int


def pool_exhaustion(cfg: PilotCommitConfig, counts: PassRateCounts, pool_size: int,
                    budget_rollouts: float | None, estimator: Estimator = "empirical_bayes") -> PoolExhaustion | None:
    """Whether evictions exhaust a pool of ``pool_size`` training prompts (distributed like the
    probed ones) before ``budget_rollouts`` (None: look ``MAX_EPOCHS`` ahead); None if not.

    Each epoch pilots every remaining prompt (``n_pilot`` rollouts) and commits the informative
    ones (``n_commit``); a prompt whose pilots are all correct is evicted at the epoch's end with
    its chance ``e_j``, so ``pool * mean_j (1 - e_j)^k`` prompts remain after ``k`` epochs
    (learning, which changes ``e_j``, is left out)."""
    n_p = cfg.n_pilot
    pilot_pmf_PM = outcome_pmf(counts, n_p, estimator)
    evicting = [i for i in range(n_p + 1) if cfg.evicts(i / n_p)]
    informative = [i for i in range(n_p + 1) if cfg.verdict(i / n_p) == "informative"]
    evict_P = pilot_pmf_PM[:, evicting].sum(axis=1)
    band_P = pilot_pmf_PM[:, informative].sum(axis=1)
    survive_P = np.ones(len(evict_P))
    spent = 0.0
    for epoch in range(MAX_EPOCHS):
        remaining = pool_size * float(survive_P.mean())
        if remaining < cfg.gen_batch_size:
            return PoolExhaustion(epoch, spent, remaining, pool_size)
        committed = float((survive_P * band_P).sum() / survive_P.sum())
        spent += remaining * (n_p + committed * cfg.n_commit)
        if budget_rollouts is not None and spent >= budget_rollouts:
            return None
        survive_P = survive_P * (1.0 - evict_P)
    return None


def predict_methods(methods: Mapping[str, object], counts: PassRateCounts,
                    estimator: Estimator = "empirical_bayes", *, pool_size: int | None = None,
                    budget_rollouts: float | None = None, budget_steps: int | None = None) -> list[MethodPrediction]:
    """One prediction per configured method (keyed by the config's labels), in config order.
    With ``pool_size`` (the training prompts a run draws from), a Pilot-Commit prediction whose
    evictions exhaust the pool within the budget (``budget_rollouts``, and ``budget_steps`` at the
    predicted rollouts per step) carries ``pool_exhausted_after_rollouts`` in its breakdown and a
    note saying so."""
    predictions = []
    for label, cfg in methods.items():
        kind = getattr(cfg, "name", None)
        if kind not in _PREDICTORS:
            raise ValueError(f"method {label!r}: no predictor for kind {kind!r}; known: {sorted(_PREDICTORS)}")
        pred = _PREDICTORS[kind](label, cfg, counts, estimator)
        if kind == "pilot_commit" and pool_size and pred.breakdown.get("piloted_prompts_per_1k"):
            budget = budget_rollouts
            if budget_steps is not None:
                per_step = (PER_ROLLOUTS * pred.breakdown["rounds_per_step"] * cfg.gen_batch_size
                            / pred.breakdown["piloted_prompts_per_1k"])
                budget = min(budget or math.inf, budget_steps * per_step)
            out = pool_exhaustion(cfg, counts, pool_size, budget, estimator)
            if out is not None:
                note = (f"evictions leave ~{out.remaining:.0f} of {out.pool} prompts after {out.epochs} "
                        f"epoch(s), ~{out.rollouts:,.0f} rollouts: fewer than a round's {cfg.gen_batch_size}, "
                        "so training stops there")
                pred = replace(pred, breakdown={**pred.breakdown, "pool_exhausted_after_rollouts": out.rollouts},
                               note=f"{pred.note}; {note}" if pred.note else note)
        predictions.append(pred)
    return predictions


CLEAR_EDGE = 1.10  # a method must predict >= 10% more informative groups per rollout to be recommended


def recommend(predictions: Sequence[MethodPrediction], spread: Mapping[str, float]) -> str:
    """One line: the method with the most informative groups per rollout, and why.

    Within ``CLEAR_EDGE`` of the runner-up the line says there is no clear winner and keeps the
    simplest method (uniform allocation, GRPO, when it is configured): this count ignores
    effects that cost the selective methods (stale pilots, fewer optimizer steps per rollout),
    so a small predicted edge is not a reason to switch.
    """
    if not predictions:
        raise ValueError("no predictions to recommend from")
    exhausted = [p for p in predictions if "pool_exhausted_after_rollouts" in p.breakdown]
    if exhausted and len(exhausted) < len(predictions):
        line = recommend([p for p in predictions if p not in exhausted], spread)
        return line + "".join(f"; not {p.method}: {p.note}" for p in exhausted)
    ranked = sorted(predictions, key=lambda p: -p.informative_groups_per_1k)
    best, rest = ranked[0], ranked[1:]
    collapsed = spread["at_0"] + spread["at_1"]
    reason = (f"{collapsed:.0%} of the probed prompts are at pass rate 0 or 1 "
              f"({spread['at_0']:.0%} at 0, {spread['at_1']:.0%} at 1)")
    if not rest:
        return f"{best.method}: {best.informative_groups_per_1k:.1f} informative groups per 1,000 rollouts; {reason}"
    second = rest[0]
    if best.informative_groups_per_1k <= 0:
        return f"no method gets informative groups on these prompts; {reason}"
    if best.informative_groups_per_1k < CLEAR_EDGE * second.informative_groups_per_1k:
        simplest = next((p for p in ranked if p.kind == "grpo"), best)
        return (f"no clear winner: {best.method} {best.informative_groups_per_1k:.1f} and {second.method} "
                f"{second.informative_groups_per_1k:.1f} informative groups per 1,000 rollouts (within "
                f"{CLEAR_EDGE - 1:.0%}); keep the simpler {simplest.method}; {reason}")
    margin = (f"{best.informative_groups_per_1k / second.informative_groups_per_1k:.2f}x "
              f"{second.method}'s {second.informative_groups_per_1k:.1f}" if second.informative_groups_per_1k > 0
              else f"{second.method} gets none")
    return (f"use {best.method}: {best.informative_groups_per_1k:.1f} informative groups per 1,000 "
            f"rollouts, {margin}; {reason}")
