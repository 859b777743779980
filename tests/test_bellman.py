"""Bellman solvers against independent references: published values, pymdptoolbox, an LP, plain loops."""

import functools
import math

import mdptoolbox.mdp as toolbox
import numpy
import pytest
import torch
from scipy.optimize import linprog

from helpers import F64
from lagrl import bellman
from lagrl.bellman import (
    Solution,
    backward_induction,
    bellman_backup,
    policy_evaluation,
    policy_iteration,
    soft_policy_iteration,
    soft_value_iteration,
    solve,
    value_iteration,
)
from lagrl.hamiltonian import tabular_hamiltonian
from lagrl.mdp import TabularMDP

GAMMA = 0.99
REFERENCES = {  # V* at gamma = 0.99: (state, value); state None: the expectation over mdp.start
    "FrozenLake-v1": (0, 0.542026),
    "FrozenLake8x8-v1": (0, 0.414640),
    "CliffWalking-v1": (36, -12.247898),
    "Taxi-v4": (None, 6.327464),
}
TINY_TAU = 1e-9  # soft value iteration with τ log|A|/(1−γ) < 2e-7


@functools.cache
def gym_mdp(env_id: str) -> TabularMDP:
    return TabularMDP.from_gymnasium(env_id, GAMMA)


@functools.cache
def toolbox_values(env_id: str) -> torch.Tensor:
    return toolbox_policy_iteration(gym_mdp(env_id))


def toolbox_policy_iteration(mdp: TabularMDP) -> torch.Tensor:
    """pymdptoolbox ``PolicyIteration`` on the same arrays: ``P`` as ``(A, S, S)``, ``R`` as ``(S, A)``."""
    solver = toolbox.PolicyIteration(
        mdp.transitions.cpu().permute(1, 0, 2).numpy(), mdp.rewards.cpu().numpy(), mdp.gamma
    )
    solver.run()
    return torch.tensor(solver.V, dtype=F64)


def linear_program_values(mdp: TabularMDP) -> torch.Tensor:
    """``argmin μᵀV`` s.t. ``V(s) ≥ r(s, a) + γ Σ_s' P(s'|s, a) V(s')`` (μ uniform), by HiGHS."""
    states, actions = mdp.num_states, mdp.num_actions
    transitions = mdp.transitions.cpu().reshape(states * actions, states).numpy()
    choose_state = numpy.repeat(numpy.eye(states), actions, axis=0)  # row (s, a) picks V(s)
    result = linprog(
        numpy.full(states, 1.0 / states),
        A_ub=mdp.gamma * transitions - choose_state,
        b_ub=-mdp.rewards.cpu().reshape(-1).numpy(),
        bounds=(None, None),
        method="highs",
    )
    assert result.status == 0, result.message
    return torch.tensor(result.x, dtype=F64)


def random_mdp(
    *batch: int,
    states: int = 6,
    actions: int = 3,
    gamma: float = 0.9,
    successors: int | None = None,
    horizon: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> TabularMDP:
    """Random transitions (``successors`` nonzero entries per row if given) and rewards in [-1, 1)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch + (states, actions, states), generator=generator, dtype=F64)
    if successors is not None:
        kept = torch.rand(weights.shape, generator=generator).argsort(-1) < successors
        weights = weights * kept
    reward_shape = batch + ((horizon,) if horizon else ()) + (states, actions)
    rewards = 2 * torch.rand(reward_shape, generator=generator, dtype=F64) - 1
    return TabularMDP(weights / weights.sum(-1, keepdim=True), rewards, gamma, horizon=horizon, device=device)


def sparse_copy(mdp: TabularMDP) -> TabularMDP:
    return TabularMDP(mdp.transitions.to_sparse(), mdp.rewards, mdp.gamma, mdp.start, mdp.horizon)


def hamiltonian(mdp: TabularMDP, values: torch.Tensor, t: int | None = None) -> torch.Tensor:
    """``r + γ P V`` by an explicit einsum over dense ``P``."""
    transitions = mdp.transitions.to_dense() if mdp.is_sparse else mdp.transitions
    return mdp.reward_at(t) + mdp.gamma * torch.einsum("...sat,...t->...sa", transitions, values)


def members(mdp: TabularMDP) -> list[TabularMDP]:
    """The unbatched MDPs of a batch, in row-major order."""
    transitions = mdp.transitions.reshape((-1,) + tuple(mdp.transitions.shape[-3:]))
    rewards = mdp.rewards.reshape((transitions.shape[0],) + tuple(mdp.rewards.shape[len(mdp.batch_shape) :]))
    return [TabularMDP(p, r, mdp.gamma, horizon=mdp.horizon) for p, r in zip(transitions, rewards)]


def assert_consistent(mdp: TabularMDP, solution: Solution) -> None:
    """``q_values`` is the Hamiltonian at ``values``; greedy policies; shapes and dtypes."""
    torch.testing.assert_close(solution.q_values, hamiltonian(mdp, solution.values), rtol=0, atol=1e-10)
    assert solution.policy.dtype == torch.int64 and isinstance(solution.iterations, int)
    assert solution.values.shape == mdp.batch_shape + (mdp.num_states,)
    assert solution.error_bound.shape == mdp.batch_shape
    chosen = solution.q_values.gather(-1, solution.policy.unsqueeze(-1)).squeeze(-1)
    assert (chosen >= solution.q_values.amax(-1) - 1e-9).all()


# ---------------------------------------------------------------------------------------- references
SOLVERS = {
    "solve": lambda mdp: solve(mdp, 1e-8),
    "policy_iteration": policy_iteration,
    "value_iteration": lambda mdp: value_iteration(mdp, 1e-8),
    "soft_value_iteration": lambda mdp: soft_value_iteration(mdp, TINY_TAU, 1e-8),
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("env_id", REFERENCES)
def test_optimal_values_match_published_references(device, env_id, solver):
    mdp = gym_mdp(env_id).to(device)
    solution = SOLVERS[solver](mdp)
    state, reference = REFERENCES[env_id]
    value = solution.values[state] if state is not None else mdp.start @ solution.values
    assert value.item() == pytest.approx(reference, abs=1e-6)
    torch.testing.assert_close(solution.values.cpu(), toolbox_values(env_id), rtol=0, atol=1e-6)
    assert_consistent(mdp, solution)


@pytest.mark.parametrize("env_id", REFERENCES)
def test_exact_routes_match_pymdptoolbox_policy_iteration(device, env_id):
    mdp = gym_mdp(env_id).to(device)
    for solution in (solve(mdp, 1e-10), policy_iteration(mdp)):
        torch.testing.assert_close(solution.values.cpu(), toolbox_values(env_id), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_random_mdps_match_pymdptoolbox_and_the_linear_program(device, seed):
    mdp = random_mdp(states=12, actions=4, gamma=[0.5, 0.9, 0.99][seed], seed=seed, device=device)
    exact = policy_iteration(mdp).values.cpu()
    torch.testing.assert_close(exact, toolbox_policy_iteration(mdp), rtol=0, atol=1e-9)
    torch.testing.assert_close(exact, linear_program_values(mdp), rtol=0, atol=1e-6)
    torch.testing.assert_close(solve(mdp, 1e-10).values.cpu(), exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1"])
def test_gymnasium_values_solve_the_linear_program(env_id):
    mdp = gym_mdp(env_id)
    torch.testing.assert_close(solve(mdp, 1e-10).values, linear_program_values(mdp), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- certificates
@pytest.mark.parametrize("tol", [1e-1, 1e-3, 1e-5, 1e-8])
def test_value_iteration_certificate_holds(device, tol):
    for mdp in (gym_mdp("FrozenLake8x8-v1").to(device), random_mdp(4, states=10, gamma=0.95, device=device)):
        exact = policy_iteration(mdp).values
        solution = value_iteration(mdp, tol)
        error = (solution.values - exact).abs().amax(-1)
        assert (error <= solution.error_bound + 1e-12).all() and (solution.error_bound <= tol).all()
        assert_consistent(mdp, solution)


@pytest.mark.parametrize("tol", [1e-2, 1e-6, 1e-10])
def test_solve_and_policy_iteration_bounds_hold(device, tol):
    for mdp in (
        gym_mdp("FrozenLake-v1").to(device),  # policy iteration after the sweeps
        gym_mdp("CliffWalking-v1").to(device),  # settles within the sweeps
        random_mdp(8, states=10, gamma=0.99, device=device),  # batched, fast mixing
        sparse_copy(random_mdp(states=40, successors=3, gamma=0.95, seed=3)).to(device),
    ):
        exact = value_iteration(mdp, 1e-13).values
        for solution in (solve(mdp, tol), policy_iteration(mdp)):
            error = (solution.values - exact).abs().amax(-1)
            assert (error <= solution.error_bound + 1e-11).all()
            assert_consistent(mdp, solution)
        assert (solve(mdp, tol).error_bound <= tol).all()


def test_solve_polishes_an_inexact_policy_iteration_with_value_iteration(device, monkeypatch):
    """Sloppy sparse evaluations leave policy iteration's bound above tol: value iteration must finish."""
    monkeypatch.setattr(bellman, "EVALUATION_RTOL", 1e-4)
    polishes = []
    monkeypatch.setattr(bellman, "value_iteration", lambda *a, **k: polishes.append(1) or value_iteration(*a, **k))
    mdp = sparse_copy(gym_mdp("FrozenLake8x8-v1")).to(device)  # slow mixing: the sweeps do not certify
    solution = solve(mdp, 1e-9)
    assert polishes and float(solution.error_bound) <= 1e-9
    torch.testing.assert_close(solution.values.cpu(), toolbox_values("FrozenLake8x8-v1"), rtol=0, atol=1e-9)


def test_sparse_evaluation_warns_when_gmres_stops_short(device, monkeypatch):
    monkeypatch.setattr(bellman, "GMRES_RESTART", 2)
    monkeypatch.setattr(bellman, "GMRES_MAX_CYCLES", 1)
    mdp = sparse_copy(gym_mdp("FrozenLake-v1")).to(device)
    with pytest.warns(UserWarning, match="GMRES did not reach"):
        policy_evaluation(mdp, torch.full((17,), 2, device=device))  # right: it reaches the goal


def test_value_iteration_warm_start_and_iteration_limit(device):
    mdp = gym_mdp("FrozenLake8x8-v1").to(device)
    exact = policy_iteration(mdp)
    warm = value_iteration(mdp, 1e-8, values=exact.values)
    assert warm.iterations == 1 and float(warm.error_bound) < 1e-12
    with pytest.warns(UserWarning, match="max_iterations=3 reached"):
        stopped = value_iteration(mdp, 1e-8, max_iterations=3)
    assert stopped.iterations == 3 and float(stopped.error_bound) > 1e-8
    assert float((stopped.values - exact.values).abs().max()) <= float(stopped.error_bound)


# ---------------------------------------------------------------------------------------- agreement
def test_every_solver_agrees(device):
    mdp = random_mdp(3, states=9, actions=4, gamma=0.95, seed=5, device=device)
    exact = policy_iteration(mdp)
    assert_consistent(mdp, exact)
    soft_slack = TINY_TAU * math.log(mdp.num_actions) / (1 - mdp.gamma)
    for solution, slack in (
        (solve(mdp, 1e-9), 0.0),
        (value_iteration(mdp, 1e-9), 0.0),
        (soft_value_iteration(mdp, TINY_TAU, 1e-9), soft_slack),
    ):
        assert (solution.values - exact.values).abs().max() <= 1e-9 + slack
        assert torch.equal(solution.policy, exact.policy)  # no ties in a random MDP
        assert_consistent(mdp, solution)


@pytest.mark.parametrize(
    "solver",
    [
        lambda mdp: solve(mdp, 1e-9),
        policy_iteration,
        lambda mdp: value_iteration(mdp, 1e-9),
        lambda mdp: soft_value_iteration(mdp, 0.3, 1e-9),
    ],
    ids=["solve", "policy_iteration", "value_iteration", "soft_value_iteration"],
)
def test_batched_results_equal_per_mdp_results(device, solver):
    mdp = random_mdp(2, 3, states=7, actions=3, gamma=0.9, seed=7, device=device)
    batched = solver(mdp)
    for index, member in enumerate(members(mdp)):
        alone = solver(member)
        position = divmod(index, 3)
        torch.testing.assert_close(batched.values[position], alone.values, rtol=0, atol=2e-9)
        torch.testing.assert_close(batched.q_values[position], alone.q_values, rtol=0, atol=2e-9)
        assert torch.equal(batched.policy[position], alone.policy)
        assert batched.iterations >= alone.iterations


def test_batched_backward_induction_and_evaluation_equal_per_mdp(device):
    finite = random_mdp(2, 3, states=5, horizon=4, gamma=1.0, seed=8, device=device)
    batched = backward_induction(finite)
    discounted = random_mdp(2, 3, states=5, seed=8, device=device)
    actions = torch.randint(0, 3, (2, 3, 5), generator=torch.Generator().manual_seed(0)).to(device)
    evaluated = policy_evaluation(discounted, actions)
    for index, (member, alone) in enumerate(zip(members(finite), members(discounted))):
        position = divmod(index, 3)
        torch.testing.assert_close(batched.values[position], backward_induction(member).values)
        torch.testing.assert_close(evaluated[position], policy_evaluation(alone, actions[position]))


def test_sparse_equals_dense(device):
    dense = random_mdp(states=40, actions=3, successors=4, gamma=0.97, seed=11, device=device)
    sparse = sparse_copy(dense)
    assert sparse.is_sparse
    for solver in (lambda m: solve(m, 1e-10), policy_iteration, lambda m: value_iteration(m, 1e-10)):
        torch.testing.assert_close(solver(sparse).values, solver(dense).values, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        soft_value_iteration(sparse, 0.1, 1e-10).values,
        soft_value_iteration(dense, 0.1, 1e-10).values,
        rtol=0,
        atol=1e-9,
    )
    stochastic = torch.softmax(torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=F64), -1)
    for policy in (stochastic.to(device), stochastic.argmax(-1).to(device)):
        torch.testing.assert_close(
            policy_evaluation(sparse, policy), policy_evaluation(dense, policy), rtol=0, atol=1e-9
        )
    values = torch.randn(40, dtype=F64, device=device)
    torch.testing.assert_close(bellman_backup(sparse, values)[0], bellman_backup(dense, values)[0])
    finite = random_mdp(states=30, successors=3, horizon=6, gamma=1.0, seed=12, device=device)
    torch.testing.assert_close(backward_induction(sparse_copy(finite)).values, backward_induction(finite).values)


# ---------------------------------------------------------------------------------------- numpy and torch routes
def test_dense_cpu_mdps_take_the_numpy_route():
    assert isinstance(bellman._dynamics(gym_mdp("FrozenLake8x8-v1")), bellman._HostDynamics)
    assert isinstance(bellman._dynamics(random_mdp(3, states=4)), bellman._HostDynamics)
    assert isinstance(bellman._dynamics(gym_mdp("Taxi-v4")), bellman._Dynamics)  # CSR rows
    assert isinstance(bellman._dynamics(sparse_copy(random_mdp(states=5, successors=2))), bellman._Dynamics)


@pytest.mark.parametrize("route", ["numpy", "torch"])
def test_solve_and_policy_iteration_at_gamma_zero_take_the_best_reward(monkeypatch, route):
    if route == "torch":
        monkeypatch.setattr(bellman, "_dynamics", bellman._Dynamics)
    for mdp in (random_mdp(states=6, gamma=0.0), random_mdp(3, states=6, gamma=0.0)):
        for solution in (solve(mdp, 1e-8), policy_iteration(mdp)):
            torch.testing.assert_close(solution.values, mdp.rewards.amax(-1), rtol=0, atol=1e-15)
            assert torch.equal(solution.policy, mdp.rewards.argmax(-1))


@pytest.mark.parametrize("batch", [(), (3,)])
def test_numpy_route_hamiltonian_is_tabular_hamiltonian(batch):
    """The host route keeps its own numpy GEMV (cheaper per call on small tables): the same numbers as the
    one torch kernel, lagrl.hamiltonian.tabular_hamiltonian."""
    mdp = random_mdp(*batch, states=7, actions=4, seed=21)
    values = torch.randn(batch + (7,), generator=torch.Generator().manual_seed(22), dtype=F64)
    host = bellman._HostDynamics(mdp).hamiltonian(values.numpy())
    numpy.testing.assert_allclose(host, tabular_hamiltonian(mdp, values).numpy(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("actions", [1, 2, 3, 6])
def test_numpy_route_maximum_is_the_max_over_actions(actions):
    q = torch.randn(2, 7, actions, generator=torch.Generator().manual_seed(actions), dtype=F64).numpy()
    out = numpy.empty((2, 7))
    assert bellman._HostDynamics.maximum(q, out) is out
    numpy.testing.assert_array_equal(out, q.max(-1))


@pytest.mark.parametrize("route", ["numpy", "torch"])
@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "FrozenLake8x8-v1", "CliffWalking-v1"])
def test_both_routes_match_pymdptoolbox(monkeypatch, env_id, route):
    """The torch route (CUDA's) run on the CPU, and the numpy route, against pymdptoolbox."""
    if route == "torch":
        monkeypatch.setattr(bellman, "_dynamics", bellman._Dynamics)
    mdp = gym_mdp(env_id)
    for solution in (solve(mdp, 1e-10), policy_iteration(mdp)):
        assert all(isinstance(x, torch.Tensor) and x.device == mdp.device for x in solution[:3] + solution[4:])
        torch.testing.assert_close(solution.values, toolbox_values(env_id), rtol=0, atol=1e-9)
        assert float(solution.error_bound) <= 1e-10
        assert_consistent(mdp, solution)


@pytest.mark.parametrize("route", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("actions", "gamma", "tol"),  # γ = 0.5: certified within the sweeps; the others: by policy iteration
    [(1, 0.9, 1e-8), (2, 0.99, 1e-6), (3, 0.5, 1e-3), (4, 0.99, 1e-8), (5, 0.95, 1e-10)],
)
def test_solve_certifies_random_batches_against_pymdptoolbox(monkeypatch, route, actions, gamma, tol):
    """``error_bound`` bounds the distance to an independent ``V*``, member by member, and is ``≤ tol``."""
    if route == "torch":
        monkeypatch.setattr(bellman, "_dynamics", bellman._Dynamics)
    mdp = random_mdp(3, 5, states=24, actions=actions, gamma=gamma, seed=actions)
    solution = solve(mdp, tol)
    assert_consistent(mdp, solution)
    assert (solution.error_bound <= tol).all()
    for index, member in enumerate(members(mdp)):
        position = divmod(index, 5)
        error = (solution.values[position] - toolbox_policy_iteration(member)).abs().max()
        assert error <= solution.error_bound[position] + 1e-12
    exact = policy_iteration(mdp)
    torch.testing.assert_close(exact.values, solution.values, rtol=0, atol=2 * tol)
    assert (exact.error_bound <= 1e-10).all()


# ---------------------------------------------------------------------------------------- finite horizon
@pytest.mark.parametrize("gamma", [1.0, 0.8, 0.0])
def test_backward_induction_matches_plain_loops(device, gamma):
    states, actions, horizon = 4, 3, 5
    mdp = random_mdp(states=states, actions=actions, horizon=horizon, gamma=gamma, seed=13, device=device)
    transitions, rewards = mdp.transitions.tolist(), mdp.rewards.tolist()
    values = [[0.0] * states for _ in range(horizon + 1)]
    policy = [[0] * states for _ in range(horizon)]
    for t in reversed(range(horizon)):
        for s in range(states):
            q = [
                rewards[t][s][a] + gamma * sum(transitions[s][a][n] * values[t + 1][n] for n in range(states))
                for a in range(actions)
            ]
            values[t][s] = max(q)
            policy[t][s] = q.index(max(q))
    solution = backward_induction(mdp)
    torch.testing.assert_close(solution.values.cpu(), torch.tensor(values, dtype=F64), rtol=0, atol=1e-12)
    assert solution.policy.tolist() == policy and solution.iterations == horizon
    assert float(solution.error_bound) == 0.0
    for t in range(horizon):
        torch.testing.assert_close(solution.q_values[t], hamiltonian(mdp, solution.values[t + 1], t))
    torch.testing.assert_close(solve(mdp).values, solution.values)


# ---------------------------------------------------------------------------------------- soft values
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_soft_values_lie_within_the_entropy_bound(device, tau):
    for mdp in (gym_mdp("FrozenLake-v1").to(device), random_mdp(2, states=8, actions=4, gamma=0.9, device=device)):
        hard = policy_iteration(mdp).values
        soft = soft_value_iteration(mdp, tau, 1e-10)
        gap = soft.values - hard  # within the certificate of V_τ*: 0 ≤ V_τ* − V* ≤ τ log|A|/(1−γ)
        slack = soft.error_bound.unsqueeze(-1) + 1e-10
        assert (gap >= -slack).all()
        assert (gap <= tau * math.log(mdp.num_actions) / (1 - mdp.gamma) + slack).all()
        soft_backup = tau * torch.logsumexp(soft.q_values / tau, dim=-1)  # V_τ = τ log Σ_a exp(Q_τ/τ)
        torch.testing.assert_close(soft_backup, soft.values, rtol=0, atol=1e-9)
        assert_consistent(mdp, soft)


@pytest.mark.parametrize("tau", [0.001, 0.01, 1.0])
def test_soft_policy_iteration_reaches_soft_value_iterations_fixed_point(device, tau):
    """Both routes land within their certificates of V_τ*; a tight soft VI is the reference."""
    cases = (
        gym_mdp("FrozenLake-v1").to(device),
        gym_mdp("CliffWalking-v1").to(device),
        random_mdp(3, states=8, actions=4, gamma=0.95, device=device),
    )
    for mdp in cases:
        reference = soft_value_iteration(mdp, tau, 1e-12)
        solution = soft_policy_iteration(mdp, tau, 1e-9)
        assert (solution.error_bound <= 1e-9).all()
        error = (solution.values - reference.values).abs().amax(-1)
        assert (error <= solution.error_bound + reference.error_bound + 1e-12).all()
        assert solution.iterations < reference.iterations
        assert_consistent(mdp, solution)


def test_soft_policy_iteration_on_a_sparse_mdp_falls_back_to_sweeps():
    dense = random_mdp(states=12, actions=3, gamma=0.9, seed=5)
    sparse = TabularMDP(dense.transitions.to_sparse(), dense.rewards, dense.gamma)
    torch.testing.assert_close(
        soft_policy_iteration(sparse, 0.1, 1e-10).values, soft_policy_iteration(dense, 0.1, 1e-10).values
    )
    with pytest.raises(ValueError, match="tau must be > 0"):
        soft_policy_iteration(dense, 0.0)


# ---------------------------------------------------------------------------------------- policy iteration
@pytest.mark.parametrize("start_action", [0, 1])
def test_policy_iteration_keeps_the_current_action_on_ties(device, start_action):
    single = random_mdp(states=6, actions=1, gamma=0.95, seed=17)
    twin = TabularMDP(single.transitions.repeat(1, 2, 1), single.rewards.repeat(1, 2), 0.95, device=device)
    start = torch.full((6,), start_action, device=device)
    solution = policy_iteration(twin, policy=start)
    assert torch.equal(solution.policy, start) and solution.iterations == 1
    torch.testing.assert_close(solution.values, policy_iteration(single.to(device)).values)


def test_policy_iteration_from_any_start_reaches_the_optimum(device):
    mdp = random_mdp(states=10, actions=4, gamma=0.99, seed=19, device=device)
    exact = policy_iteration(mdp)
    for seed in range(3):
        start = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
        solution = policy_iteration(mdp, policy=start.to(device))
        torch.testing.assert_close(solution.values, exact.values, rtol=0, atol=1e-10)


def test_policy_evaluation_against_the_explicit_inverse(device):
    mdp = random_mdp(2, states=6, actions=3, gamma=0.9, seed=23, device=device)
    actions = torch.randint(0, 3, (2, 6), generator=torch.Generator().manual_seed(2)).to(device)
    one_hot = torch.nn.functional.one_hot(actions, 3).to(F64)
    matrix = mdp.transitions.gather(-2, actions[..., None, None].expand(2, 6, 1, 6)).squeeze(-2)
    rewards = mdp.rewards.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    explicit = (torch.linalg.inv(torch.eye(6, dtype=F64, device=device) - 0.9 * matrix) @ rewards.unsqueeze(-1))[..., 0]
    torch.testing.assert_close(policy_evaluation(mdp, actions), explicit)
    torch.testing.assert_close(policy_evaluation(mdp, one_hot), explicit)


def test_policy_evaluation_is_differentiable_in_a_stochastic_policy(device):
    mdp = random_mdp(states=4, actions=3, gamma=0.8, seed=29, device=device)
    logits = torch.randn(4, 3, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: policy_evaluation(mdp, torch.softmax(x, -1)), (logits,))


# ---------------------------------------------------------------------------------------- backup
def test_bellman_backup_is_the_hamiltonian_and_broadcasts(device):
    mdp = random_mdp(2, states=5, actions=3, seed=31, device=device)
    values = torch.randn(4, 2, 5, dtype=F64, device=device)  # an extra leading dim
    q, best = bellman_backup(mdp, values)
    torch.testing.assert_close(q, hamiltonian(mdp, values))
    torch.testing.assert_close(best, q.amax(-1))
    finite = random_mdp(states=5, horizon=3, seed=31, device=device)
    shared = values[0, 0]  # one value vector for the whole batch
    torch.testing.assert_close(bellman_backup(mdp, shared)[0], hamiltonian(mdp, shared.expand(2, 5)))
    q, _ = bellman_backup(finite, shared, t=2)
    torch.testing.assert_close(q, hamiltonian(finite, shared, 2))


# ---------------------------------------------------------------------------------------- errors
def test_infinite_horizon_solvers_reject_a_horizon(device):
    mdp = random_mdp(states=3, horizon=4, device=device)
    for solver in (
        lambda m: value_iteration(m),
        lambda m: policy_iteration(m),
        lambda m: soft_value_iteration(m, 0.1),
        lambda m: policy_evaluation(m, torch.zeros(3, dtype=torch.int64, device=device)),
    ):
        with pytest.raises(ValueError, match="has horizon=4; use backward_induction"):
            solver(mdp)


def test_infinite_horizon_solvers_reject_gamma_one(device):
    transitions = torch.zeros(2, 1, 2, dtype=F64)
    transitions[:, 0, 1] = 1.0
    mdp = TabularMDP(transitions, torch.tensor([[1.0], [0.0]]), 1.0, device=device)
    for solver in (solve, value_iteration, policy_iteration):
        with pytest.raises(ValueError, match="needs gamma < 1"):
            solver(mdp)


def test_argument_errors(device):
    mdp = random_mdp(states=3, device=device)
    with pytest.raises(ValueError, match="tol must be > 0"):
        value_iteration(mdp, 0.0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        solve(mdp, -1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        soft_value_iteration(mdp, 0.0)
    with pytest.raises(ValueError, match=r"values must have shape \(3,\)"):
        value_iteration(mdp, values=torch.zeros(4))
    with pytest.raises(ValueError, match=r"policy must be integer actions of shape \(3,\)"):
        policy_iteration(mdp, policy=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"policy actions must lie in 0..2"):
        policy_iteration(mdp, policy=torch.tensor([0, 3, 1], device=device))
    with pytest.raises(ValueError, match=r"a stochastic policy must have shape \(3, 3\)"):
        policy_evaluation(mdp, torch.full((3, 2), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="backward_induction needs a finite horizon"):
        backward_induction(mdp)
    with pytest.raises(ValueError, match="values must end in the state dimension S=3"):
        bellman_backup(mdp, torch.zeros(2))
