"""The informative-groups predictor (pilotcommit/allocation/predict.py) on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pilotcommit.allocation.predict import (
    PassRateCounts,
    expected_rounds,
    fit_beta_prior,
    outcome_pmf,
    pool_exhaustion,
    predict_dapo,
    predict_greso,
    predict_grpo,
    predict_methods,
    predict_pilot_commit,
    predict_speed_rl,
    recommend,
)
from pilotcommit.config import DAPOConfig, GRESOConfig, GRPOConfig, PilotCommitConfig, SpeedRLConfig


def _half(prompts: int = 10, samples: int = 16) -> PassRateCounts:
    return PassRateCounts.from_pass_rates([0.5] * prompts, samples)


def test_spread_counts_prompts_at_zero_between_and_one():
    counts = PassRateCounts(np.array([0, 0, 3, 16]), np.array([16, 16, 16, 16]))
    assert counts.spread() == {"at_0": 0.5, "between": 0.25, "at_1": 0.25}


@pytest.mark.parametrize("bad", [([1, 2], [2]), ([3], [2]), ([-1], [2]), ([0], [0]), ([], [])])
def test_counts_reject_impossible_probe_outcomes(bad):
    with pytest.raises(ValueError):
        PassRateCounts(np.array(bad[0]), np.array(bad[1]))


def test_plug_in_pmf_is_the_binomial():
    pmf = outcome_pmf(PassRateCounts.from_pass_rates([0.25], 4), 3, "plug_in")[0]
    expected = [math.comb(3, i) * 0.25**i * 0.75 ** (3 - i) for i in range(4)]
    np.testing.assert_allclose(pmf, expected, rtol=1e-12)


def test_beta_pmf_of_a_never_solved_prompt_leaves_room_for_success():
    # Jeffreys posterior after 0 of 16: Beta(1/2, 16.5). P(64 new rollouts all fail) is the
    # beta-binomial's P(0) = prod_j (b + j) / (a + b + j), computed here independently.
    a, b, m = 0.5, 16.5, 64
    all_fail = math.prod((b + j) / (a + b + j) for j in range(m))
    pmf = outcome_pmf(PassRateCounts(np.array([0]), np.array([16])), m, "jeffreys")[0]
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert pmf[0] == pytest.approx(all_fail, rel=1e-10)
    assert 1 - pmf[0] > 0.05  # far from the plug-in's certainty of failure
    assert outcome_pmf(PassRateCounts(np.array([0]), np.array([16])), m, "plug_in")[0][0] == 1.0


def test_beta_pmf_approaches_the_binomial_with_many_samples():
    beta = outcome_pmf(PassRateCounts(np.array([50_000]), np.array([100_000])), 8, "jeffreys")[0]
    binomial = outcome_pmf(PassRateCounts(np.array([1]), np.array([2])), 8, "plug_in")[0]
    np.testing.assert_allclose(beta, binomial, atol=1e-4)


def test_empirical_bayes_recovers_the_population_and_shrinks_unsolved_prompts():
    # 4,000 prompts with pass rates from Beta(0.3, 0.6) (U-shaped, like real data), 16 samples each
    rng = np.random.default_rng(0)
    rates = rng.beta(0.3, 0.6, size=4000)
    counts = PassRateCounts(rng.binomial(16, rates), np.full(4000, 16))
    a, b = fit_beta_prior(counts)
    assert a == pytest.approx(0.3, rel=0.15) and b == pytest.approx(0.6, rel=0.15)
    # P(a group of 64 of a prompt seen at 0 of 16 has a success), against simulation of the truth
    at_zero = counts.successes == 0
    truth = np.mean(1 - (1 - rates[at_zero]) ** 64)
    eb = 1 - outcome_pmf(counts, 64)[at_zero][0, 0]
    assert eb == pytest.approx(truth, abs=0.03)
    jeffreys = 1 - outcome_pmf(counts, 64, "jeffreys")[at_zero][0, 0]
    assert abs(jeffreys - truth) > abs(eb - truth)


def test_grpo_hand_case():
    # p = 1/2, n = 4: P(all equal) = 2 / 16; 250 groups per 1,000 rollouts.
    pred = predict_grpo("grpo", GRPOConfig(n=4, train_batch_size=8), _half(), "plug_in")
    assert pred.informative_groups_per_1k == pytest.approx(250 * 14 / 16)
    assert pred.breakdown["zero_variance_groups_per_1k"] == pytest.approx(250 * 2 / 16)


def test_expected_rounds_geometric_hand_case():
    # One prompt per round, one group per step, kept with probability 1/2: R is geometric,
    # truncated at 10 rounds.
    mean, fail = expected_rounds(0.5, train_batch_size=1, gen_batch_size=1, max_rounds=10)
    expected = sum(r * 0.5**r for r in range(1, 11)) / (1 - 0.5**10)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert fail == pytest.approx(0.5**10, rel=1e-12)


def test_expected_rounds_when_every_group_is_kept():
    assert expected_rounds(1.0, train_batch_size=10, gen_batch_size=4, max_rounds=10) == (3.0, 0.0)
    assert expected_rounds(0.0, train_batch_size=1, gen_batch_size=4, max_rounds=3) == (math.inf, 1.0)


def test_dapo_hand_case_drops_and_discards():
    # p = 1/2, n = 2: a group is kept with q = 1/2. B = 1, G = 1, limit 10: E[R] as above.
    pred = predict_dapo("dapo", DAPOConfig(n=2, train_batch_size=1, gen_batch_size=1, max_num_gen_batches=10),
                        _half(), "plug_in")
    rounds = sum(r * 0.5**r for r in range(1, 11)) / (1 - 0.5**10)
    assert pred.informative_groups_per_1k == pytest.approx(1000 / (2 * rounds))
    assert pred.breakdown["dropped_groups_per_1k"] == pytest.approx(1000 * rounds * 0.5 / (2 * rounds))
    # a round of 3 prompts with every group kept: 3 sampled, 1 trained, 2 discarded
    always = predict_dapo("dapo", DAPOConfig(n=16, train_batch_size=1, gen_batch_size=3),
                          _half(samples=2), "plug_in")
    assert always.breakdown["kept_fraction"] == pytest.approx(1 - 2 * 0.5**16)
    assert always.informative_groups_per_1k == pytest.approx(1000 / (3 * 16), rel=1e-3)


def test_pilot_commit_hand_case():
    # p = 1/2, 2 pilots: 0 of 2 (1/4) too hard, 1 of 2 (1/2) informative, 2 of 2 (1/4) too easy
    # and evicted. B = 4, G = 12: one round finds 6 informative prompts, a step commits 4:
    # 12 * 2 + 4 * 2 = 32 rollouts per step for 4 informative groups; 2 pilots age out.
    cfg = PilotCommitConfig(n_pilot=2, n_commit=2, train_batch_size=4, gen_batch_size=12)
    pred = predict_pilot_commit("pc", cfg, _half(), "plug_in")
    assert pred.informative_groups_per_1k == pytest.approx(1000 * 4 / 32)
    assert pred.breakdown["stale_pilots_per_1k"] == pytest.approx(1000 * 2 / 32)
    assert pred.breakdown["too_hard_pilots_per_1k"] == pytest.approx(1000 * 3 / 32)
    assert pred.breakdown["evicted_pilots_per_1k"] == pytest.approx(1000 * 3 / 32)
    assert pred.breakdown["rounds_per_step"] == 1.0


def test_pilot_commit_needs_several_rounds_when_informative_prompts_are_rare():
    # 2 pilots, pass rate 1/2: only 1 of 2 (probability 1/2) is in the band. B = 4, G = 2: a
    # round finds 1 informative prompt on average, a step needs 4: R = 4 rounds,
    # 4 * 2 * 2 + 4 * 2 = 24 rollouts per step for 4 informative groups.
    cfg = PilotCommitConfig(n_pilot=2, n_commit=2, train_batch_size=4, gen_batch_size=2)
    pred = predict_pilot_commit("pc", cfg, _half(), "plug_in")
    assert pred.breakdown["rounds_per_step"] == pytest.approx(4.0)
    assert pred.informative_groups_per_1k == pytest.approx(1000 * 4 / 24)
    # Reusing 1 pilot: the balanced choice keeps the wrong one (buffer.select_max_variance_pilots
    # rounds correct ones down), so the group is informative only if a commit succeeds: 1 - 1/4.
    one = PilotCommitConfig(n_pilot=2, n_commit=2, n_pilot_effective=1, train_batch_size=4, gen_batch_size=2)
    pred_one = predict_pilot_commit("pc", one, _half(), "plug_in")
    assert pred_one.informative_groups_per_1k == pytest.approx(1000 * 4 * 0.75 / 24)


def test_collapsed_histograms_predict_nothing_informative():
    never = PassRateCounts.from_pass_rates([0.0] * 5, 16)
    methods = {"grpo": GRPOConfig(n=4, train_batch_size=2),
               "dapo": DAPOConfig(n=4, train_batch_size=2, gen_batch_size=6),
               "pilot_commit": PilotCommitConfig(n_pilot=2, n_commit=2, train_batch_size=2, gen_batch_size=6)}
    predictions = predict_methods(methods, never, "plug_in")
    assert [p.informative_groups_per_1k for p in predictions] == [0.0, 0.0, 0.0]
    assert "fails" in predictions[1].note and "fails" in predictions[2].note


def test_pilot_commit_beats_grpo_on_polarised_data_and_loses_on_mid_range_data():
    methods = {"grpo": GRPOConfig(n=16, train_batch_size=32),
               "pilot_commit": PilotCommitConfig(n_pilot=4, n_commit=12, train_batch_size=32, gen_batch_size=96)}
    polarised = PassRateCounts.from_pass_rates([0.0] * 40 + [1.0] * 40 + [0.5] * 20, 16)
    mid = PassRateCounts.from_pass_rates([0.5] * 100, 16)
    by_label = lambda preds: {p.method: p.informative_groups_per_1k for p in preds}  # noqa: E731
    polar = by_label(predict_methods(methods, polarised, "plug_in"))
    middle = by_label(predict_methods(methods, mid, "plug_in"))
    assert polar["pilot_commit"] > polar["grpo"]
    assert middle["pilot_commit"] < middle["grpo"]
    line = recommend(predict_methods(methods, polarised, "plug_in"), polarised.spread())
    assert line.startswith("use pilot_commit:") and "80% of the probed prompts" in line


def test_predict_methods_uses_the_configs_labels_and_rejects_unknown_kinds():
    preds = predict_methods({"uniform-16": GRPOConfig(n=16)}, _half())
    assert preds[0].method == "uniform-16" and preds[0].kind == "grpo"

    class Other:
        name = "mystery"

    with pytest.raises(ValueError, match="mystery"):
        predict_methods({"x": Other()}, _half())


def test_recommendation_keeps_the_simplest_method_without_a_clear_edge():
    from pilotcommit.allocation.predict import MethodPrediction

    spread = {"at_0": 0.3, "between": 0.6, "at_1": 0.1}
    close = [MethodPrediction("pc", "pilot_commit", 41.7), MethodPrediction("uniform", "grpo", 41.6),
             MethodPrediction("dapo", "dapo", 20.8)]
    line = recommend(close, spread)
    assert line.startswith("no clear winner: pc 41.7 and uniform 41.6") and "keep the simpler uniform" in line
    clear = [MethodPrediction("pc", "pilot_commit", 50.0), MethodPrediction("uniform", "grpo", 41.6)]
    assert recommend(clear, spread).startswith("use pc: 50.0 informative groups per 1,000 rollouts, 1.20x uniform's")
    assert recommend([MethodPrediction("g", "grpo", 0.0), MethodPrediction("d", "dapo", 0.0)],
                     spread).startswith("no method gets informative groups")


# --------------------------------------------------------------------------- GRESO, SPEED-RL


def test_greso_is_predicted_as_dapo_its_first_epoch_and_says_so():
    counts = PassRateCounts.from_pass_rates([0.0, 0.1, 0.5, 0.9, 1.0] * 20, 16)
    greso = predict_greso("greso", GRESOConfig(n=16, train_batch_size=32, gen_batch_size=96), counts)
    dapo = predict_dapo("dapo", DAPOConfig(n=16, train_batch_size=32, gen_batch_size=96), counts)
    assert greso.kind == "greso" and greso.informative_groups_per_1k == dapo.informative_groups_per_1k
    assert greso.breakdown == dapo.breakdown and "first epoch = DAPO" in greso.note


def test_speed_rl_hand_case_with_plug_in_rates():
    # pass rate .5, 4 screens: q = 1 - 2 / 16 = 7/8; a trained group costs 4 / q + 12 rollouts
    cfg = SpeedRLConfig(n_screen=4, n_continue=12, train_batch_size=32, gen_batch_size=96)
    half = predict_speed_rl("s", cfg, PassRateCounts.from_pass_rates([0.5] * 8, 16), "plug_in")
    assert half.informative_groups_per_1k == pytest.approx(1000 / (4 / (7 / 8) + 12))
    # half the prompts never solved: q = 7/16
    mixed = predict_speed_rl("s", cfg, PassRateCounts.from_pass_rates([0.0, 0.5] * 4, 16), "plug_in")
    assert mixed.breakdown["qualified_fraction"] == pytest.approx(7 / 16)
    assert mixed.informative_groups_per_1k == pytest.approx(1000 / (4 / (7 / 16) + 12))
    assert mixed.breakdown["rounds_per_step"] == pytest.approx(32 / (96 * 7 / 16))
    none = predict_speed_rl("s", cfg, PassRateCounts.from_pass_rates([0.0, 1.0], 16), "plug_in")
    assert none.informative_groups_per_1k == 0.0 and "every step fails" in none.note


def test_speed_rl_prediction_matches_the_policy_on_scripted_rewards():
    """The closed form against SpeedRLPolicy itself, rewards drawn from the true pass rates."""
    from pilotcommit.allocation import SpeedRLPolicy
    from tests.unit.allocation_sim import Scorer, prompt_ids, run_steps

    ids = prompt_ids(6000)
    rates = {p: [0.0, 0.05, 0.3, 0.6, 0.95, 1.0][i % 6] for i, p in enumerate(ids)}
    cfg = SpeedRLConfig(n_screen=4, n_continue=12, train_batch_size=16, gen_batch_size=48)
    records = run_steps(SpeedRLPolicy(cfg, ids, seed=0), Scorer(rates, seed=0), 100)
    batches = [r.batch for r in records if r.batch is not None]
    assert all(b.metrics["alloc/epoch"] == 0 for b in batches)  # one pass: no revisits
    measured = 1000 * sum(b.metrics["reward/informative_groups"] for b in batches) / \
        batches[-1].metrics["rollouts/cumulative"]
    predicted = predict_speed_rl("s", cfg, PassRateCounts.from_pass_rates(list(rates.values()), 100_000),
                                 "plug_in").informative_groups_per_1k
    assert measured == pytest.approx(predicted, rel=0.05)


def test_predict_methods_covers_all_five_kinds():
    counts = PassRateCounts.from_pass_rates([0.2, 0.5, 0.8] * 10, 16)
    methods = {"grpo": GRPOConfig(), "dapo": DAPOConfig(), "pilot_commit": PilotCommitConfig(),
               "greso": GRESOConfig(), "speed_rl": SpeedRLConfig()}
    predictions = predict_methods(methods, counts)
    assert [(p.method, p.kind) for p in predictions] == [(k, k) for k in methods]
    assert all(p.informative_groups_per_1k > 0 for p in predictions)


def _pc96() -> PilotCommitConfig:
    return PilotCommitConfig(n_pilot=4, n_commit=12, train_batch_size=32, gen_batch_size=96)


def test_pool_exhaustion_of_a_saturated_pool_hand_case():
    # every prompt at pass rate 1 (plug-in): every pilot outcome is 4 of 4, every prompt evicted
    # after the first epoch, which spends 200 x 4 pilots and commits none
    counts = PassRateCounts.from_pass_rates([1.0] * 20, 16)
    out = pool_exhaustion(_pc96(), counts, pool_size=200, budget_rollouts=None, estimator="plug_in")
    assert (out.epochs, out.remaining, out.pool) == (1, 0.0, 200)
    assert out.rollouts == pytest.approx(200 * 4)
    # a pool smaller than one round is exhausted before the first epoch
    assert pool_exhaustion(_pc96(), counts, pool_size=50, budget_rollouts=None, estimator="plug_in").epochs == 0


def test_pool_exhaustion_follows_each_prompts_survival_and_stops_at_the_budget():
    # half at pass rate 1 (evicted after epoch 1), half at 1/2: 4 of 4 with 1/16 (evicted), in
    # the band [0.125, 0.75] (1, 2 or 3 of 4) with 14/16. Pool 400: after k >= 1 epochs
    # 200 (15/16)^k remain; below 96 first at k = 12
    counts = PassRateCounts.from_pass_rates([1.0] * 10 + [0.5] * 10, 16)
    out = pool_exhaustion(_pc96(), counts, pool_size=400, budget_rollouts=None, estimator="plug_in")
    assert out.epochs == 12
    assert out.remaining == pytest.approx(200 * (15 / 16) ** 12)
    first = 400 * (4 + 0.5 * 14 / 16 * 12)  # epoch 0: all 400 piloted, the informative half committed
    later = sum(200 * (15 / 16) ** k * (4 + 14 / 16 * 12) for k in range(1, 12))
    assert out.rollouts == pytest.approx(first + later)
    # the budget is spent in epoch 1 (3,700 + 2,719 rollouts > 5,000): no exhaustion within it
    assert pool_exhaustion(_pc96(), counts, 400, budget_rollouts=5000, estimator="plug_in") is None
    assert pool_exhaustion(_pc96(), counts, 400, budget_rollouts=first + later + 1, estimator="plug_in") is not None


def test_a_method_that_exhausts_its_pool_is_never_recommended():
    counts = PassRateCounts.from_pass_rates([1.0] * 12 + [0.5] * 8, 16)
    methods = {"grpo": GRPOConfig(n=16, train_batch_size=32), "pilot_commit": _pc96()}
    free = predict_methods(methods, counts, "plug_in")
    assert recommend(free, counts.spread()).startswith("use pilot_commit")  # no pool given: not checked
    small = predict_methods(methods, counts, "plug_in", pool_size=300, budget_rollouts=40_000)
    pc = small[1]
    assert pc.informative_groups_per_1k == free[1].informative_groups_per_1k
    assert pc.breakdown["pool_exhausted_after_rollouts"] > 0 and "training stops there" in pc.note
    line = recommend(small, counts.spread())
    assert line.startswith("grpo:") and "not pilot_commit: evictions leave" in line
    # a pool large enough for the budget: recommended as before
    big = predict_methods(methods, counts, "plug_in", pool_size=100_000, budget_rollouts=40_000)
    assert "pool_exhausted_after_rollouts" not in big[1].breakdown
    assert recommend(big, counts.spread()).startswith("use pilot_commit")


def test_a_step_budget_bounds_the_pool_check():
    # every prompt at 1/2; pool 400 lasts 15 epochs of Pilot-Commit, far more than 3 steps
    counts = PassRateCounts.from_pass_rates([0.5] * 20, 16)
    methods = {"pilot_commit": _pc96()}
    assert "pool_exhausted_after_rollouts" in predict_methods(methods, counts, "plug_in", pool_size=400)[0].breakdown
    (short,) = predict_methods(methods, counts, "plug_in", pool_size=400, budget_steps=3)
    assert "pool_exhausted_after_rollouts" not in short.breakdown
