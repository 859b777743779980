"""Tests for the exact checks of THEORY §6 (lagrl.equivalence, tabular part), against independent
references: scipy's LP solver, pymdptoolbox's policy iteration, numpy solves and pseudo-inverses, and
central finite differences."""

import math

import mdptoolbox.mdp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from lagrl.bellman import policy_evaluation, policy_iteration, value_iteration
from lagrl.equivalence import (
    ExactCheck,
    exact_checks,
    fisher_sqrt_policy_gradient,
    lp_duality_checks,
    npg_policy_iteration_check,
    soft_bellman_check,
    soft_policy_iteration_check,
    stationarity_check,
)
from lagrl.flows import natural_policy_gradient_step, occupancy, softmax_policy_gradient
from lagrl.mdp import TabularMDP

F64 = torch.float64


def random_mdp(num_states: int = 6, num_actions: int = 3, gamma: float = 0.9, seed: int = 0, device="cpu"):
    """A dense random MDP: transitions ``∝ U(0,1)³`` (some near 0), rewards ``U(−1, 1)``."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_states, num_actions, num_states, generator=generator, dtype=F64) ** 3
    rewards = 2 * torch.rand(num_states, num_actions, generator=generator, dtype=F64) - 1
    return TabularMDP(weights / weights.sum(-1, keepdim=True), rewards, gamma, device=device)


def random_logits(mdp: TabularMDP, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(mdp.num_states, mdp.num_actions, generator=generator, dtype=F64).to(mdp.device)


def uniform(mdp: TabularMDP) -> torch.Tensor:
    return torch.full((mdp.num_states,), 1.0 / mdp.num_states, dtype=F64, device=mdp.device)


@pytest.fixture(scope="module")
def frozen_lake() -> TabularMDP:
    return TabularMDP.from_gymnasium("FrozenLake-v1", 0.99)


# --- every check passes on the real thing ---------------------------------------------------------


def test_exact_checks_pass_on_frozen_lake(frozen_lake, device):
    rows = exact_checks(frozen_lake.to(device))
    assert len(rows) == 11
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_checks_pass_on_random_mdp(seed, device):
    rows = exact_checks(random_mdp(seed=seed, device=device), tau=0.05)
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]


def test_exact_checks_pass_with_a_single_action():
    rows = exact_checks(random_mdp(num_actions=1, seed=8))
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]


def test_exact_check_passed_property():
    assert ExactCheck("x", 1e-12, 1e-10).passed
    assert not ExactCheck("x", 1e-9, 1e-10).passed
    assert not ExactCheck("x", math.nan, 1e-10).passed


def test_exact_checks_take_the_callers_solutions_and_refuse_a_loose_one(frozen_lake):
    """Handed-over solutions (lagrl verify's) give the same checks as solving inside; a too-loose VI is refused."""
    optimum = policy_iteration(frozen_lake)
    strict = value_iteration(frozen_lake, 1e-9)
    own = exact_checks(frozen_lake)
    handed = exact_checks(frozen_lake, optimum=optimum, value_solution=strict)
    assert [row.name for row in handed] == [row.name for row in own]
    assert all(row.passed for row in handed)
    for mine, theirs in zip(own[1:], handed[1:]):  # row 0 is value iteration's: a stricter run, a smaller residual
        assert mine.residual == pytest.approx(theirs.residual, rel=1e-9, abs=1e-15)
    with pytest.raises(ValueError, match="value_solution certifies"):
        exact_checks(frozen_lake, value_solution=value_iteration(frozen_lake, 1e-2))
    with pytest.raises(ValueError, match="optimum must be policy_iteration"):
        exact_checks(frozen_lake, optimum=optimum._replace(values=optimum.values[:3]))


def test_exact_checks_reject_what_they_cannot_check(frozen_lake):
    with pytest.raises(ValueError, match="gamma < 1"):
        exact_checks(TabularMDP(frozen_lake.transitions, frozen_lake.rewards, 0.9, horizon=5))
    with pytest.raises(ValueError, match="tau must be > 0"):
        exact_checks(frozen_lake, tau=0.0)


# --- and fails on wrong inputs --------------------------------------------------------------------


def test_stationarity_fails_for_a_wrong_optimum(frozen_lake):
    values = policy_iteration(frozen_lake).values
    assert stationarity_check(frozen_lake, values, solver="PI", tolerance=1e-10).passed
    wrong = values.clone()
    wrong[3] += 1e-4
    assert not stationarity_check(frozen_lake, wrong, solver="PI", tolerance=1e-6).passed


def test_lp_checks_fail_for_wrong_values_or_occupancy():
    mdp = random_mdp(seed=2)
    optimum = policy_iteration(mdp)
    mu = uniform(mdp)
    d_star = occupancy(mdp, optimum.policy, mu)
    names = [row.name.split(" ")[1] for row in lp_duality_checks(mdp, optimum.values, d_star, mu)]
    assert names == ["primal", "dual", "duality", "complementary"]
    assert all(row.passed for row in lp_duality_checks(mdp, optimum.values, d_star, mu))

    def failed(values, d):
        return [not row.passed for row in lp_duality_checks(mdp, values, d, mu)]

    assert failed(optimum.values + 1e-3, d_star) == [False, False, True, True]  # feasible, not minimal
    assert failed(optimum.values - 1e-3, d_star)[0]  # infeasible
    perturbed = d_star.clone()
    perturbed[0, optimum.policy[0]] *= 1 + 1e-6
    assert failed(optimum.values, perturbed)[1]  # flow constraint broken
    suboptimal = (optimum.policy + 1) % mdp.num_actions
    assert failed(optimum.values, occupancy(mdp, suboptimal, mu))[2:] == [True, True]  # feasible d, not optimal


def test_soft_bellman_check_fails_outside_the_bound(frozen_lake):
    values = policy_iteration(frozen_lake).values
    bound = 0.1 * math.log(4) / (1 - 0.99)
    assert soft_bellman_check(frozen_lake, values + bound / 2, values, 0.1, tolerance=1e-9).passed
    assert not soft_bellman_check(frozen_lake, values - 1e-3, values, 0.1, tolerance=1e-9).passed
    assert not soft_bellman_check(frozen_lake, values + bound + 1e-3, values, 0.1, tolerance=1e-9).passed


# --- independent references -----------------------------------------------------------------------


def test_optimum_matches_scipy_linprog_and_pymdptoolbox():
    """V* (primal) and d* (the LP's dual multipliers) from HiGHS; V* from pymdptoolbox's PI."""
    mdp = random_mdp(num_states=7, num_actions=3, seed=3)
    P, r, gamma = mdp.transitions.numpy(), mdp.rewards.numpy(), mdp.gamma
    S, A = r.shape
    mu = np.full(S, 1.0 / S)
    # min μᵀV  s.t.  γ P[s,a]·V − V(s) ≤ −r(s,a)
    constraints = gamma * P.reshape(S * A, S) - np.repeat(np.eye(S), A, axis=0)
    lp = scipy.optimize.linprog(mu, A_ub=constraints, b_ub=-r.reshape(-1), bounds=(None, None), method="highs")
    assert lp.status == 0
    optimum = policy_iteration(mdp)
    d_star = occupancy(mdp, optimum.policy, torch.as_tensor(mu))
    np.testing.assert_allclose(optimum.values.numpy(), lp.x, atol=1e-9)
    np.testing.assert_allclose(d_star.numpy().reshape(-1), -lp.ineqlin.marginals, atol=1e-8)
    assert float(torch.as_tensor(mu) @ optimum.values) == pytest.approx(lp.fun, abs=1e-10)
    toolbox = mdptoolbox.mdp.PolicyIteration(np.transpose(P, (1, 0, 2)), r, gamma)
    toolbox.run()
    np.testing.assert_allclose(optimum.values.numpy(), np.array(toolbox.V), atol=1e-9)


def _numpy_soft_value(P, r, gamma, tau, policy):
    """``V_τ^π = (I − γP_π)⁻¹(r_π − τ Σ π log π)`` in numpy."""
    P_pi = np.einsum("sa,sat->st", policy, P)
    rewards = (policy * (r - tau * np.log(policy))).sum(-1)
    return np.linalg.solve(np.eye(len(r)) - gamma * P_pi, rewards)


def test_soft_gradient_matches_finite_differences_and_literal_npg_step_is_soft_pi():
    mdp, tau = random_mdp(num_states=5, num_actions=3, seed=4), 0.3
    P, r, gamma = mdp.transitions.numpy(), mdp.rewards.numpy(), mdp.gamma
    theta = random_logits(mdp).numpy()
    mu = np.full(mdp.num_states, 1.0 / mdp.num_states)

    def objective(logits):
        return mu @ _numpy_soft_value(P, r, gamma, tau, scipy.special.softmax(logits, axis=-1))

    step = 1e-6
    finite_difference = np.zeros_like(theta)
    for index in np.ndindex(theta.shape):
        shift = np.zeros_like(theta)
        shift[index] = step
        finite_difference[index] = (objective(theta + shift) - objective(theta - shift)) / (2 * step)
    gradient = softmax_policy_gradient(mdp, torch.as_tensor(theta), torch.as_tensor(mu), tau).numpy()
    np.testing.assert_allclose(gradient, finite_difference, atol=1e-8)

    policy = scipy.special.softmax(theta, axis=-1)
    P_pi = np.einsum("sa,sat->st", policy, P)
    visitation = (1 - gamma) * np.linalg.solve((np.eye(len(mu)) - gamma * P_pi).T, mu)
    fisher = scipy.linalg.block_diag(*[d * (np.diag(p) - np.outer(p, p)) for d, p in zip(visitation, policy)])
    eta = (1 - gamma) / tau
    literal = scipy.special.softmax(
        theta + eta * (np.linalg.pinv(fisher) @ gradient.reshape(-1)).reshape(theta.shape), -1
    )
    q_soft = r + gamma * P @ _numpy_soft_value(P, r, gamma, tau, policy)
    np.testing.assert_allclose(literal, scipy.special.softmax(q_soft / tau, axis=-1), atol=1e-10)
    closed_form = torch.softmax(natural_policy_gradient_step(mdp, torch.as_tensor(theta), eta, tau), -1).numpy()
    np.testing.assert_allclose(closed_form, literal, atol=1e-10)
    check = soft_policy_iteration_check(mdp, torch.as_tensor(theta), torch.as_tensor(mu), tau)
    assert check.passed and check.residual < 1e-12


def test_npg_with_huge_step_is_a_policy_iteration_step():
    mdp = random_mdp(num_states=8, num_actions=4, seed=5)
    logits = random_logits(mdp)
    policy = torch.softmax(logits, -1)
    P, r = mdp.transitions.numpy(), mdp.rewards.numpy()
    P_pi = np.einsum("sa,sat->st", policy.numpy(), P)
    values = np.linalg.solve(np.eye(8) - mdp.gamma * P_pi, (policy.numpy() * r).sum(-1))
    greedy = np.eye(4)[(r + mdp.gamma * P @ values).argmax(-1)]
    stepped = torch.softmax(natural_policy_gradient_step(mdp, logits, 1e8), -1).numpy()
    np.testing.assert_allclose(stepped, greedy, atol=1e-10)
    assert npg_policy_iteration_check(mdp, logits).passed


def test_npg_check_fails_for_a_finite_step():
    """At η of order 1 the NPG step is not yet greedy: the check can fail."""
    mdp = random_mdp(seed=6)
    logits = random_logits(mdp)
    stepped = natural_policy_gradient_step(mdp, logits, 0.01)
    policy = torch.softmax(stepped, -1)
    q = mdp.rewards + mdp.gamma * mdp.expected_next(policy_evaluation(mdp, torch.softmax(logits, -1)))
    assert float((q.amax(-1) - (policy * q).sum(-1)).amax()) > 1e-3


def test_fisher_sqrt_gradient_is_gradient_over_root_fisher():
    mdp = random_mdp(seed=7)
    logits, mu = random_logits(mdp), uniform(mdp)
    policy = torch.softmax(logits, -1)
    visitation = (1 - mdp.gamma) * occupancy(mdp, policy, mu).sum(-1)
    naive = softmax_policy_gradient(mdp, logits, mu) / (visitation[:, None] * policy * (1 - policy)).sqrt()
    torch.testing.assert_close(fisher_sqrt_policy_gradient(mdp, logits, mu), naive, rtol=1e-10, atol=1e-14)
    # near-greedy logits: π underflows to 0 or 1 and g/√F turns 0/0; the stable form stays finite
    sharp = 800 * logits
    policy = torch.softmax(sharp, -1)
    visitation = (1 - mdp.gamma) * occupancy(mdp, policy, mu).sum(-1)
    naive = softmax_policy_gradient(mdp, sharp, mu) / (visitation[:, None] * policy * (1 - policy)).sqrt()
    assert not bool(torch.isfinite(naive).all())
    assert bool(torch.isfinite(fisher_sqrt_policy_gradient(mdp, sharp, mu)).all())
