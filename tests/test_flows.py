"""Tests for lagrl.flows: the policy quantities against numpy and autograd, each flow's update against
its definition (torch.optim.Adam for the Adam flow), and every recorded number against a recomputation.
Success is asserted where THEORY §6 expects it (NPG on FrozenLake, the LP gap shrinking, soft Bellman
within its bound); the CliffWalking plateau is printed, not asserted."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from lagrl.bellman import policy_evaluation, policy_iteration
from lagrl.flows import (
    FlowResult,
    diagonal_policy_fisher,
    entropy_regularised_evaluation,
    lp_proximal,
    lp_saddle,
    occupancy,
    policy_gradient,
    soft_bellman,
    softmax_policy_gradient,
)
from lagrl.hamiltonian import tabular_hamiltonian
from lagrl.mdp import TabularMDP

F64 = torch.float64
COMMON_KEYS = {"bellman_residual", "value_error", "mu_value_error", "hamiltonian"}


@pytest.fixture(scope="module")
def frozen_lake() -> TabularMDP:
    return TabularMDP.from_gymnasium("FrozenLake-v1", 0.99)


@pytest.fixture(scope="module")
def garnet() -> TabularMDP:
    return TabularMDP.from_gymnasium("lagrl/Garnet-v0", 0.9, num_states=8, num_actions=3)


def optimum(mdp: TabularMDP) -> torch.Tensor:
    return policy_iteration(mdp).values


def logits_for(mdp: TabularMDP, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(mdp.num_states, mdp.num_actions, generator=generator, dtype=F64).to(mdp.device)


def recorded_numbers(mdp: TabularMDP, values, reference, mu) -> dict[str, float]:
    """The common history entries recomputed from a flow's ``V``."""
    best = tabular_hamiltonian(mdp, values).amax(-1)
    return {
        "bellman_residual": float((best - values).abs().max()),
        "value_error": float((values - reference).abs().max()),
        "mu_value_error": float(mu @ (values - reference).abs()),
        "hamiltonian": float(mu @ best),
    }


def assert_history_shape(result: FlowResult, keys: set[str]) -> None:
    assert set(result.history) == keys
    assert result.points == list(range(result.iterations + 1))
    assert all(len(series) == result.iterations + 1 for series in result.history.values())


# --- policy quantities ----------------------------------------------------------------------------


def test_occupancy_solves_the_flow_constraint(garnet, device):
    mdp = garnet.to(device)
    policy = torch.softmax(logits_for(mdp), -1)
    mu = torch.softmax(logits_for(mdp, 1)[:, 0], -1)
    d = occupancy(mdp, policy, mu).cpu().numpy()
    P = mdp.transitions.cpu().numpy()
    np.testing.assert_allclose(d.sum(-1), mu.cpu().numpy() + mdp.gamma * np.einsum("sat,sa->t", P, d), atol=1e-12)
    assert d.sum() == pytest.approx(1 / (1 - mdp.gamma))
    np.testing.assert_allclose(d / d.sum(-1, keepdims=True), policy.cpu().numpy(), atol=1e-12)


def test_entropy_regularised_evaluation(garnet):
    policy, tau = torch.softmax(logits_for(garnet), -1), 0.2
    torch.testing.assert_close(entropy_regularised_evaluation(garnet, policy, 0.0), policy_evaluation(garnet, policy))
    P_pi = np.einsum("sa,sat->st", policy.numpy(), garnet.transitions.numpy())
    rewards = (policy.numpy() * (garnet.rewards.numpy() - tau * np.log(policy.numpy()))).sum(-1)
    expected = np.linalg.solve(np.eye(garnet.num_states) - garnet.gamma * P_pi, rewards)
    np.testing.assert_allclose(entropy_regularised_evaluation(garnet, policy, tau).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_policy_gradient_closed_form_matches_autograd(garnet, device, tau):
    mdp = garnet.to(device)
    logits, mu = logits_for(mdp), mdp.start
    theta = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(mu @ entropy_regularised_evaluation(mdp, torch.softmax(theta, -1), tau), theta)
    torch.testing.assert_close(softmax_policy_gradient(mdp, logits, mu, tau), expected, rtol=1e-10, atol=1e-12)


# --- policy-gradient flows ------------------------------------------------------------------------


def test_npg_reaches_the_optimal_greedy_policy_on_frozen_lake(frozen_lake, device):
    mdp = frozen_lake.to(device)
    reference = optimum(mdp)
    result = policy_gradient(mdp, reference, method="npg", steps=400)
    assert_history_shape(result, COMMON_KEYS | {"policy_entropy"})
    assert result.greedy_optimal_at is not None and result.greedy_optimal_at <= 400
    assert result.history["value_error"][-1] < result.history["value_error"][0] / 10
    assert result.settings["lr"] == pytest.approx(1 - mdp.gamma)


@pytest.mark.parametrize("method", ["npg", "fisher-sqrt", "adam"])
def test_policy_gradient_history_is_consistent(frozen_lake, method):
    reference = optimum(frozen_lake)
    seen: list[tuple[int, dict[str, float]]] = []
    result = policy_gradient(
        frozen_lake, reference, method=method, steps=30, callback=lambda k, numbers: seen.append((k, numbers))
    )
    assert result.method == method and result.iterations == 30
    assert [k for k, _ in seen] == list(range(31))
    assert {name: [numbers[name] for _, numbers in seen] for name in result.history} == result.history
    values = policy_evaluation(frozen_lake, result.policy)
    torch.testing.assert_close(result.values, values)
    last = {name: series[-1] for name, series in result.history.items()}
    for name, number in recorded_numbers(frozen_lake, values, reference, frozen_lake.start).items():
        assert last[name] == pytest.approx(number, rel=1e-9, abs=1e-12), name
    visitation = (1 - frozen_lake.gamma) * occupancy(frozen_lake, result.policy, frozen_lake.start).sum(-1)
    entropy = -torch.special.xlogy(result.policy, result.policy).sum(-1)
    assert last["policy_entropy"] == pytest.approx(float(visitation @ entropy), rel=1e-9)
    assert result.history["mu_value_error"][-1] < result.history["mu_value_error"][0]  # J improved


def test_fisher_sqrt_step_is_gradient_over_root_fisher(garnet):
    lr, eps = 0.3, 1e-12
    result = policy_gradient(garnet, optimum(garnet), method="fisher-sqrt", steps=1, lr=lr, eps=eps)
    zero = torch.zeros(garnet.num_states, garnet.num_actions, dtype=F64)
    fisher = diagonal_policy_fisher(garnet, zero, garnet.start)
    step = lr * softmax_policy_gradient(garnet, zero, garnet.start) / (fisher + eps).sqrt()
    torch.testing.assert_close(result.policy, torch.softmax(step, -1), rtol=1e-12, atol=1e-14)


def test_adam_flow_is_torch_adam_on_the_exact_gradient(garnet):
    result = policy_gradient(garnet, optimum(garnet), method="adam", steps=5, lr=0.05)
    theta = torch.zeros(garnet.num_states, garnet.num_actions, dtype=F64, requires_grad=True)
    adam = torch.optim.Adam([theta], lr=0.05, maximize=True, foreach=False)
    for _ in range(5):
        theta.grad = softmax_policy_gradient(garnet, theta.detach(), garnet.start)
        adam.step()
    torch.testing.assert_close(result.policy, torch.softmax(theta.detach(), -1), rtol=0, atol=1e-15)


def test_cliff_walking_plateau_is_reported():
    """THEORY §6: softmax policy gradients plateau near the cliff. Printed (pytest -s), not asserted."""
    mdp = TabularMDP.from_gymnasium("CliffWalking-v1", 0.99)
    reference = optimum(mdp)
    result = policy_gradient(mdp, reference, method="adam", steps=300)
    start = int(mdp.start.argmax())
    error_at_start = float(reference[start] - result.values[start])
    print(
        f"\nCliffWalking adam lr=0.1, 300 steps: greedy optimal at {result.greedy_optimal_at}, "
        f"‖V^π − V*‖∞ = {result.history['value_error'][-1]:.3g}, V*(start) − V^π(start) = {error_at_start:.3g}"
    )
    assert result.history["mu_value_error"][-1] == pytest.approx(error_at_start, rel=1e-9)
    assert result.history["value_error"][-1] == pytest.approx(float((result.values - reference).abs().max()))


# --- LP saddle and soft Bellman -------------------------------------------------------------------


def test_lp_saddle_duality_gap_decreases(frozen_lake, device):
    mdp = frozen_lake.to(device)
    reference = optimum(mdp)
    result = lp_saddle(mdp, reference, steps=300)
    assert_history_shape(result, COMMON_KEYS | {"lagrangian", "duality_gap"})
    gaps = result.history["duality_gap"]
    assert min(gaps) >= -1e-12  # a gap between an upper and a lower bound on μᵀV*
    assert max(gaps[-50:]) < gaps[0] / 5
    mu = torch.full_like(reference, 1 / mdp.num_states)
    last = {name: series[-1] for name, series in result.history.items()}
    for name, number in recorded_numbers(mdp, result.values, reference, mu).items():
        assert last[name] == pytest.approx(number, rel=1e-9, abs=1e-12), name
    violation = max(0.0, float((tabular_hamiltonian(mdp, result.values) - result.values[:, None]).max()))
    lower = float(mu @ policy_evaluation(mdp, result.policy))
    assert last["duality_gap"] == pytest.approx(float(mu @ result.values) + violation / 0.01 - lower, rel=1e-9)


@pytest.mark.parametrize(
    "flow",
    [
        lambda mdp, reference, **kw: lp_saddle(mdp, reference, steps=803, **kw),
        lambda mdp, reference, **kw: policy_gradient(mdp, reference, method="adam", steps=503, **kw),
    ],
    ids=["lp-saddle", "adam"],
)
def test_record_every_subsamples_the_full_record(frozen_lake, flow):
    """``record_every=n`` records the full run's points ``0, n, 2n, …`` and the last, and nothing else changes:
    the same iterates, the same first greedy-optimal step (checked at every step), the callback at those points."""
    reference = optimum(frozen_lake)
    full = flow(frozen_lake, reference)
    seen: list[int] = []
    sparse = flow(frozen_lake, reference, record_every=10, callback=lambda k, scalars: seen.append(k))
    assert full.greedy_optimal_at is not None and sparse.greedy_optimal_at == full.greedy_optimal_at
    assert torch.equal(sparse.values, full.values) and torch.equal(sparse.policy, full.policy)
    assert sparse.iterations == full.iterations and sparse.settings["record_every"] == 10
    assert sparse.points == seen == [*range(0, full.iterations + 1, 10), full.iterations]
    assert set(sparse.history) == set(full.history)
    for name, series in sparse.history.items():
        assert series == [full.history[name][k] for k in sparse.points], name


@pytest.mark.parametrize("every", [0, -1, 2.5, True])
def test_record_every_must_be_a_positive_integer(frozen_lake, every):
    with pytest.raises(ValueError, match="record_every"):
        lp_saddle(frozen_lake, optimum(frozen_lake), steps=5, record_every=every)


@pytest.mark.parametrize("method", ["fisher-sqrt", "npg"])
def test_energy_rule_step_holds_the_predicted_kl(garnet, method):
    """One step from uniform π with ``energy=δ``: the closed-form step, and its visitation-weighted KL.

    ``½ ΔθᵀFΔθ`` (full policy Fisher) is the second-order KL, so at δ = 1e-6 the exact
    ``Σ_s d^π(s) KL(π₀(·|s) ‖ π₁(·|s))`` matches it; it is δ itself for NPG, whose metric is that F (the
    ρ = ½ step's metric is the diagonal Fisher).
    """
    mdp, delta = garnet, 1e-6
    mu = torch.full((mdp.num_states,), 1 / mdp.num_states, dtype=F64)
    result = policy_gradient(mdp, optimum(mdp), method=method, steps=1, mu=mu, energy=delta)
    logits = torch.zeros(mdp.num_states, mdp.num_actions, dtype=F64)
    gradient = softmax_policy_gradient(mdp, logits, mu)
    fisher = diagonal_policy_fisher(mdp, logits, mu)
    start = torch.full_like(logits, 1 / mdp.num_actions)
    visitation = (1 - mdp.gamma) * occupancy(mdp, start, mu).sum(-1)
    if method == "fisher-sqrt":
        step = math.sqrt(2 * delta) / float(gradient.norm()) * gradient / (fisher + 1e-12).sqrt()
        assert 0.5 * float((step.square() * (fisher + 1e-12)).sum()) == pytest.approx(delta, rel=1e-12)
    else:
        advantages = tabular_hamiltonian(mdp, policy_evaluation(mdp, start)) - policy_evaluation(mdp, start)[:, None]
        direction = advantages / (1 - mdp.gamma)
        centred = direction - (start * direction).sum(-1, keepdim=True)
        step = math.sqrt(2 * delta / float(visitation @ (start * centred.square()).sum(-1))) * direction
    expected = torch.softmax(step, -1)
    torch.testing.assert_close(result.policy, expected, rtol=1e-10, atol=1e-12)
    kl = float(visitation @ (start * (start.log() - expected.log())).sum(-1))
    centred_step = step - (start * step).sum(-1, keepdim=True)
    full_fisher_energy = 0.5 * float(visitation @ (start * centred_step.square()).sum(-1))  # ½ ΔθᵀF_full Δθ
    assert kl == pytest.approx(full_fisher_energy, rel=1e-2)
    if method == "npg":  # the full Fisher is NPG's own metric: the KL is the budget
        assert kl == pytest.approx(delta, rel=1e-2)
    with pytest.raises(ValueError, match="exact-Fisher methods"):
        policy_gradient(mdp, optimum(mdp), method="adam", energy=delta)


def test_energy_rule_takes_fisher_sqrt_off_the_cliffwalking_plateau():
    """ρ = ½ with the exact Fisher: a fixed rate stalls on CliffWalking (THEORY §6), fixed energy reaches V*."""
    mdp = TabularMDP.from_gymnasium("CliffWalking-v1", 0.99)
    reference = optimum(mdp)
    mu = torch.full((mdp.num_states,), 1 / mdp.num_states, dtype=F64)
    fixed = policy_gradient(mdp, reference, method="fisher-sqrt", steps=100, lr=0.1, mu=mu)
    energy = policy_gradient(mdp, reference, method="fisher-sqrt", steps=100, energy=1e-2, mu=mu)
    assert fixed.history["value_error"][-1] > 1.0 and fixed.greedy_optimal_at is None
    assert energy.greedy_optimal_at is not None
    assert energy.history["value_error"][-1] <= 1e-6 * max(1.0, float(reference.abs().max()))
    assert energy.settings["energy"] == 1e-2 and energy.settings["lr"] is None


def linprog_values(mdp: TabularMDP) -> torch.Tensor:
    """V* of the primal LP ``min μᵀV s.t. V(s) ≥ r(s,a) + γ P(·|s,a)ᵀV`` by scipy's HiGHS (μ uniform)."""
    states, actions = mdp.num_states, mdp.num_actions
    transitions = mdp.transitions.cpu().numpy().reshape(states * actions, states)
    constraint = mdp.gamma * transitions - np.repeat(np.eye(states), actions, axis=0)  # γPV − V(s) ≤ −r
    solution = scipy.optimize.linprog(
        np.full(states, 1.0 / states),
        A_ub=constraint,
        b_ub=-mdp.rewards.cpu().numpy().reshape(-1),
        bounds=[(None, None)] * states,
        method="highs",
    )
    assert solution.status == 0, solution.message
    return torch.tensor(solution.x, dtype=F64, device=mdp.device)


@pytest.mark.parametrize("task", ["FrozenLake-v1", "CliffWalking-v1", "garnet"])
def test_lp_proximal_reaches_the_lp_solution_of_scipy(task, garnet, device):
    """The implicit LP flow ends at HiGHS's LP optimum, greedy-optimal, its certified gap closed."""
    mdp = (garnet if task == "garnet" else TabularMDP.from_gymnasium(task, 0.99)).to(device)
    reference = linprog_values(mdp)
    result = lp_proximal(mdp, reference)
    assert_history_shape(result, COMMON_KEYS | {"lagrangian", "duality_gap", "newton_steps"})
    scale = max(1.0, float(reference.abs().max()))
    assert result.history["value_error"][-1] <= 1e-6 * scale
    assert result.greedy_optimal_at is not None
    assert -1e-9 * scale <= result.history["duality_gap"][-1] <= 1e-6 * scale
    torch.testing.assert_close(result.values, optimum(mdp), rtol=0, atol=1e-6 * scale)


def test_lp_proximal_step_is_the_implicit_euler_step(garnet):
    """One step satisfies the proximal-point equations of the saddle flow, checked on their own:
    ``0 = μ − Kᵀd₁ + (V₁ − V₀)/t`` and ``d₁ = (d₀ + β(H(V₁) − V₁))₊``, with ``Kᵀd = Σ_a d − γPᵀd``."""
    mdp = garnet
    reference = optimum(mdp)
    first = lp_proximal(mdp, reference, steps=1, penalty=30.0, proximal=3.0)
    values = first.values
    largest = float(mdp.rewards.abs().max())
    beta, t = 30.0 * (1 - mdp.gamma) / largest, 3.0 * largest / (1 - mdp.gamma)
    mu = torch.full_like(reference, 1 / mdp.num_states)
    dual0 = occupancy(mdp, torch.full((mdp.num_states, mdp.num_actions), 1 / mdp.num_actions, dtype=F64), mu)
    dual1 = (dual0 + beta * (tabular_hamiltonian(mdp, values) - values[:, None])).clamp_min(0)
    adjoint = dual1.sum(-1) - mdp.gamma * torch.einsum("sa,sat->t", dual1, mdp.transitions)
    stationarity = mu - adjoint + values / t  # V₀ = 0
    assert float(stationarity.abs().max()) < 1e-10
    assert first.history["newton_steps"][1] >= 1


def test_lp_proximal_scale_comes_from_the_rewards(garnet):
    """Rewards ×10 give values ×10 and the same greedy iterates: β and t follow ‖r‖∞, no rate to retune."""
    scaled = TabularMDP(garnet.transitions, 10 * garnet.rewards, garnet.gamma)
    base = lp_proximal(garnet, optimum(garnet), steps=6)
    tenfold = lp_proximal(scaled, optimum(scaled), steps=6)
    torch.testing.assert_close(tenfold.values, 10 * base.values, rtol=1e-8, atol=1e-8)
    assert tenfold.greedy_optimal_at == base.greedy_optimal_at
    with pytest.raises(ValueError, match="penalty and proximal must be positive"):
        lp_proximal(garnet, optimum(garnet), penalty=0.0)


def test_soft_bellman_stays_within_the_legendre_bound(frozen_lake, device):
    mdp = frozen_lake.to(device)
    reference = optimum(mdp)
    result = soft_bellman(mdp, reference)
    assert_history_shape(result, COMMON_KEYS | {"tau", "bound", "policy_entropy", "solver_iterations"})
    history = result.history
    assert history["tau"] == list(result.settings["taus"])
    for tau, bound, error in zip(history["tau"], history["bound"], history["value_error"]):
        assert bound == pytest.approx(tau * math.log(4) / (1 - mdp.gamma))
        assert error <= bound + 1e-9
    assert all(later <= earlier + 1e-9 for earlier, later in zip(history["value_error"], history["value_error"][1:]))
    assert result.greedy_optimal_at is not None
    assert float((result.values - reference).abs().max()) == pytest.approx(history["value_error"][-1])


# --- errors ---------------------------------------------------------------------------------------


def test_flows_name_what_is_wrong(frozen_lake):
    reference = optimum(frozen_lake)
    with pytest.raises(ValueError, match="unknown method 'sgd'; choose one of"):
        policy_gradient(frozen_lake, reference, method="sgd")
    with pytest.raises(ValueError, match="reference must be V"):
        lp_saddle(frozen_lake, reference[:-1])
    with pytest.raises(ValueError, match="strictly decreasing"):
        soft_bellman(frozen_lake, reference, taus=(0.1, 0.2))
    sparse = TabularMDP(frozen_lake.transitions.to_sparse(), frozen_lake.rewards, 0.99)
    with pytest.raises(ValueError, match="dense MDP"):
        policy_gradient(sparse, reference, method="npg")
    with pytest.raises(ValueError, match="mu must be a probability distribution"):
        lp_saddle(frozen_lake, reference, mu=torch.ones(frozen_lake.num_states, dtype=F64))


def test_block_triangular_solves_match_dense_solves():
    """The flows' block-triangular LU (Taxi: nine strongly connected components) against a dense solve."""
    from lagrl.flows import _Model

    mdp = TabularMDP.from_gymnasium("Taxi-v4", 0.99)
    model = _Model(mdp)
    assert len(model.blocks) > 1 and mdp.transition_rows().layout == torch.sparse_csr
    policy = torch.softmax(logits_for(mdp), -1)
    system = model.factor(policy)
    P_pi = torch.einsum("sa,sat->st", policy, mdp.transitions)
    dense = torch.eye(mdp.num_states, dtype=F64) - mdp.gamma * P_pi
    rhs = torch.randn(mdp.num_states, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.solve(system, rhs), torch.linalg.solve(dense, rhs), rtol=1e-10, atol=1e-10)
    adjoint = torch.linalg.solve(dense.T, rhs)
    torch.testing.assert_close(model.solve_adjoint(system, rhs), adjoint, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.hamiltonian(rhs), tabular_hamiltonian(mdp, rhs), rtol=1e-12, atol=1e-12)
