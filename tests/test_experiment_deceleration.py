"""experiments/deceleration.py: the exact Bayes velocities against brute-force enumeration of every sequence
(probabilities from the Dirichlet marginal likelihood, a second, independent computation), the verdict rules on
constructed curves, and the quick report against closed forms, Monte Carlo and the Bayes floor."""

import itertools
import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import ROOT, run_quick

sys.path.insert(0, str(ROOT / "experiments"))
import deceleration  # noqa: E402


def log_marginal(counts: list[int], alpha: list[float]) -> float:
    """Dirichlet marginal likelihood of one sequence with symbol counts ``counts``:
    ``log Γ(A)/Γ(A + n) + Σ_j log Γ(α_j + N_j)/Γ(α_j)``."""
    total = sum(alpha)
    value = math.lgamma(total) - math.lgamma(total + sum(counts))
    return value + sum(math.lgamma(a + n) - math.lgamma(a) for a, n in zip(alpha, counts))


def enumerate_categorical(alpha: list[float], horizon: int, theta: list[float] | None) -> list[float]:
    """``E[v(t)]`` by summing over all ``K^t`` sequences: ``v(t) = log m(x_<t) − log m(x_≤t)`` (chain rule of
    the marginal likelihood ``m``), weighted by ``m(x)`` (prior predictive) or ``Π θ_{x_i}`` (fixed θ)."""
    k = len(alpha)
    expected = []
    for t in range(1, horizon + 1):
        total = 0.0
        for x in itertools.product(range(k), repeat=t):
            full = log_marginal([x.count(j) for j in range(k)], alpha)
            before = log_marginal([x[:-1].count(j) for j in range(k)], alpha)
            weight = math.exp(full) if theta is None else math.prod(theta[i] for i in x)
            total += weight * (before - full)
        expected.append(total)
    return expected


def markov_log_marginal(x: tuple[int, ...], states: int, alpha: float) -> float:
    """``log p(x)`` under the prior predictive of Dirichlet(α) rows, first state uniform: ``−log K`` plus one
    Dirichlet marginal likelihood per row over that row's transition counts."""
    counts = Counter(zip(x[:-1], x[1:]))
    rows = [[counts[(s, j)] for j in range(states)] for s in range(states)]
    return -math.log(states) + sum(log_marginal(row, [alpha] * states) for row in rows)


def enumerate_markov(states: int, alpha: float, horizon: int) -> list[float]:
    """``E[v(t)]`` by summing over all ``K^t`` sequences, ``v(t) = log p(x_<t) − log p(x_≤t)``."""
    expected = [math.log(states)]
    for t in range(2, horizon + 1):
        total = 0.0
        for x in itertools.product(range(states), repeat=t):
            full = markov_log_marginal(x, states, alpha)
            total += math.exp(full) * (markov_log_marginal(x[:-1], states, alpha) - full)
        expected.append(total)
    return expected


@pytest.mark.parametrize("alpha", [[1.0, 1.0], [0.5, 2.0], [1.0, 1.0, 1.0], [0.3, 1.0, 2.5]])
def test_categorical_prior_predictive_matches_enumeration(alpha):
    horizon = 7 if len(alpha) == 2 else 5
    exact = deceleration.categorical_velocity_prior(alpha, horizon, "cpu")
    assert exact.tolist() == pytest.approx(enumerate_categorical(alpha, horizon, None), abs=1e-12)


@pytest.mark.parametrize(
    ("alpha", "theta"), [([1.0, 1.0], [0.5, 0.5]), ([0.5, 2.0], [0.9, 0.1]), ([1.0, 1.0, 1.0], [0.7, 0.2, 0.1])]
)
def test_categorical_fixed_theta_matches_enumeration(alpha, theta):
    horizon = 7 if len(alpha) == 2 else 5
    exact = deceleration.categorical_velocity_fixed(theta, alpha, horizon, "cpu")
    assert exact.tolist() == pytest.approx(enumerate_categorical(alpha, horizon, theta), abs=1e-12)


@pytest.mark.parametrize(("states", "alpha", "horizon"), [(2, 1.0, 8), (2, 0.5, 7), (3, 1.0, 5)])
def test_markov_dynamic_programming_matches_enumeration(states, alpha, horizon):
    exact = deceleration.markov_velocity_prior(states, alpha, horizon)
    assert exact == pytest.approx(enumerate_markov(states, alpha, horizon), abs=1e-12)


def test_bayes_scorers_follow_the_chain_rule_of_the_marginal_likelihood():
    """Summed over t, each scorer's log p(x_t|x_<t) is the log marginal likelihood of the whole sequence."""
    rng = np.random.default_rng(3)
    x = deceleration.sample_markov(20, 12, 3, 1.0, rng)
    log_p, entropy = deceleration.markov_bayes(torch.as_tensor(x), 3, 1.0)
    for row, sequence in zip(log_p.sum(dim=1).tolist(), x.tolist()):
        assert row == pytest.approx(markov_log_marginal(tuple(sequence), 3, 1.0), abs=1e-10)
    assert torch.allclose(entropy[:, :2], torch.full((20, 2), math.log(3), dtype=torch.float64))
    alpha = [0.5, 1.0, 2.0]
    x = deceleration.sample_categorical(20, 10, None, alpha, rng)
    log_p = deceleration.categorical_bayes_log_p(torch.as_tensor(x), alpha)
    for row, sequence in zip(log_p.sum(dim=1).tolist(), x.tolist()):
        assert row == pytest.approx(log_marginal([sequence.count(j) for j in range(3)], alpha), abs=1e-10)


def test_measured_check_sees_a_rise_and_passes_a_decrease():
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(1, 65, dtype=torch.float64)
    noise = 0.3 * torch.randn(4000, 64, generator=generator, dtype=torch.float64)
    falling = deceleration.measured_check(1 + 1 / t + noise)
    assert falling["decelerating"]
    rising = deceleration.measured_check(1 + 1 / t + 0.002 * t + noise)  # a slow rise, only seen by octaves
    assert not rising["decelerating"] and rising["block_rises_into"]


def test_training_events_on_constructed_curves():
    """A noisy power law decelerates; a plateau then a sudden drop is found; a rising loss fails."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 2001)
    noise = 0.01 * rng.standard_normal(2000)
    smooth = deceleration.training_events((1 + 2 * steps**-0.5 + noise).tolist(), 100)
    assert smooth["verdict"] == "holds" and smooth["sudden_drops"] == 0
    assert not smooth["log_time_sudden_drops_at_observations"] and not smooth["plateaus"]
    plateau = 1 + 0.5 / (1 + np.exp((steps - 600) / 20)) + noise  # flat at 1.5 until step ≈ 600, then a drop
    events = deceleration.training_events(plateau.tolist(), 100)
    assert events["verdict"] == "mixed" and events["sudden_drops"] >= 1 and events["plateaus"] >= 1
    assert any(40_000 <= at <= 80_000 for at in events["sudden_drops_at_observations"])
    assert any(40_000 <= at <= 80_000 for at in events["log_time_sudden_drops_at_observations"])
    assert events["plateaus_at_observations"][0][1] <= 60_000  # the plateau ends where the drop begins
    rising = deceleration.training_events((1 + 1e-4 * steps + noise).tolist(), 100)
    assert rising["verdict"] == "fails" and rising["rises_at_observations"]


def test_deceleration_quick(tmp_path):
    report = run_quick("deceleration", tmp_path)
    assert (tmp_path / "deceleration_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers, settings = report["numbers"], report["settings"]
    exact = numbers["exact"]
    # Beta(1,1)-Bernoulli under its prior predictive: the count before t is uniform on 0..t-1, so
    # E[v(t)] = (1/t) Σ_k H((k+1)/(t+1)) with H the binary entropy.
    binary = lambda q: -q * math.log(q) - (1 - q) * math.log(1 - q)  # noqa: E731
    closed = [sum(binary((k + 1) / (t + 1)) for k in range(t)) / t for t in range(1, settings["exact_horizon"] + 1)]
    assert exact["bernoulli_prior_predictive"]["velocity"] == pytest.approx(closed, abs=1e-12)
    # The fair coin: v(1) = log 2, then after one flip the predictive is 2/3 on the seen side, 1/3 on the other.
    fair = exact["bernoulli_fair_coin"]
    assert fair["velocity"][:2] == pytest.approx([math.log(2), 0.5 * math.log(1.5) + 0.5 * math.log(3)])
    assert fair["rises_at_t"][0] == 1 and not fair["decelerating"]
    assert 0.5 in exact["bernoulli_theta_grid"]["not_decelerating"]
    for name in ("bernoulli_prior_predictive", "categorical_prior_predictive", "markov_K2_prior_predictive"):
        assert exact[name]["decelerating"]  # the prior-predictive readings
    # Every exact curve against plain Monte Carlo (sampled data, realised code lengths): within 4.5 SE.
    for name, row in exact.items():
        if "monte_carlo" in row:
            assert row["monte_carlo"]["max_abs_z"] < 4.5, name
    k3 = exact["markov_K3_prior_predictive"]
    assert k3["rao_blackwell_vs_exact"]["max_abs_z"] < 4.5
    assert k3["exact_first_steps"][:2] == pytest.approx([math.log(3)] * 2)  # an unseen row predicts uniformly
    # The transformer is not below the Bayes floor beyond a few SE, anywhere or on average.
    b = numbers["markov_transformer"]
    assert b["gap_min_z"] > -4.5
    assert b["gap_average"] > -3 * b["gap_average_se"]
    # The realised Bayes code length on the test chains agrees with its Rao-Blackwellised expectation.
    for realised, floor, se in zip(b["bayes_on_same_chains"], b["floor_expected"], b["bayes_on_same_chains_se"]):
        assert abs(realised - floor) < 5 * se + 1e-12
    # The char model's unigram reference, recounted here from the text.
    text = deceleration.english_text()
    cut = int(0.9 * len(text))
    alphabet = sorted(set(text))
    counts = Counter(text[:cut])
    norm = cut + 0.5 * len(alphabet)
    unigram = -sum(math.log((counts[c] + 0.5) / norm) for c in text[cut:]) / (len(text) - cut)
    assert numbers["char_transformer"]["references"]["unigram_add_half"] == pytest.approx(unigram, rel=1e-9)
    # The agent's velocity: one row per rollout of n_envs × n_steps environment steps, code lengths ≥ 0.
    per = settings["agent_envs"] * settings["agent_ppo"]["n_steps"]
    assert list(numbers["agent"]) == settings["agent_presets"]
    for agent in numbers["agent"].values():
        updates = settings["agent_steps"] // per
        assert agent["env_steps"] == [per * (i + 1) for i in range(updates)]
        assert len(agent["loss_velocity"]) == updates
        assert all(value >= 0 for value in agent["code_length"])
        assert agent["code_length"][0] == pytest.approx(math.log(2), abs=0.02)  # SB3's initial policy is near uniform
    table = numbers["verdicts"]
    held = [value == "holds" for value in table.values()]
    assert report["verdict"] == ("holds" if all(held) else "fails" if not any(held) else "mixed")
    assert table["bernoulli_fair_coin"] == "fails" and table["bernoulli_prior_predictive"] == "holds"
    assert numbers["wall_seconds"] > 0
