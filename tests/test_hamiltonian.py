"""Tests for lagrl.hamiltonian against independent references.

- Tabular: loops over ``r(s, a) + γ Σ_s' P(s'|s, a) λ(s')`` in numpy, and ``V*`` from a plain numpy
  value iteration.
- Differentiable dynamics: linear-quadratic control, where the Riccati recursion (numpy, float64)
  gives ``V_k(s) = −sᵀP_k s``, the optimal feedback ``a = −K_k s`` and so the costates
  ``λ_k = ∇V_k(s_k) = −2 P_k s_k``; torch autograd of a rolled-out return for the adjoint identity
  ``∂J/∂a_k = ∂H_k/∂a_k``; scipy's BFGS on a nonlinear problem.
"""

import numpy as np
import pytest
import scipy.optimize
import torch

from lagrl.envs.linear_quadratic import LinearQuadraticEnv
from lagrl.hamiltonian import (
    bellman_optimality_residual,
    costates,
    hamiltonian,
    pontryagin,
    rollout,
    tabular_hamiltonian,
    total_return,
)
from lagrl.mdp import TabularMDP

F64 = torch.float64


# ---------------------------------------------------------------------- tabular references
def random_mdp(num_states: int, num_actions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    transitions = rng.uniform(size=(num_states, num_actions, num_states)) ** 3
    transitions /= transitions.sum(-1, keepdims=True)
    return transitions, rng.normal(size=(num_states, num_actions))


def loop_hamiltonian(transitions, rewards, gamma, costate) -> np.ndarray:
    num_states, num_actions = rewards.shape
    out = np.zeros((num_states, num_actions))
    for s in range(num_states):
        for a in range(num_actions):
            out[s, a] = rewards[s, a] + gamma * sum(transitions[s, a, t] * costate[t] for t in range(num_states))
    return out


def numpy_value_iteration(transitions, rewards, gamma) -> np.ndarray:
    values = np.zeros(rewards.shape[0])
    while True:
        new = (rewards + gamma * transitions @ values).max(-1)
        if np.abs(new - values).max() < 1e-15:
            return new
        values = new


def test_tabular_hamiltonian_matches_loops(device):
    transitions, rewards = random_mdp(5, 3, seed=0)
    mdp = TabularMDP(transitions, rewards, 0.9, device=device)
    costate = np.random.default_rng(1).normal(size=5)
    out = tabular_hamiltonian(mdp, torch.tensor(costate, device=device))
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out.cpu().numpy(), loop_hamiltonian(transitions, rewards, 0.9, costate), atol=1e-13)


def test_tabular_hamiltonian_batched_mdps_and_costates(device):
    mdps = [random_mdp(4, 2, seed) for seed in (2, 3)]
    mdp = TabularMDP(np.stack([m[0] for m in mdps]), np.stack([m[1] for m in mdps]), 0.8, device=device)
    costate = np.random.default_rng(4).normal(size=(2, 4))
    out = tabular_hamiltonian(mdp, torch.tensor(costate, device=device)).cpu().numpy()
    for i, (transitions, rewards) in enumerate(mdps):
        np.testing.assert_allclose(out[i], loop_hamiltonian(transitions, rewards, 0.8, costate[i]), atol=1e-13)


def test_tabular_hamiltonian_time_indexed_rewards(device):
    transitions, _ = random_mdp(4, 2, seed=5)
    rewards = np.random.default_rng(6).normal(size=(3, 4, 2))
    mdp = TabularMDP(transitions, rewards, 1.0, horizon=3, device=device)
    costate = np.random.default_rng(7).normal(size=4)
    out = tabular_hamiltonian(mdp, torch.tensor(costate, device=device), t=1)
    np.testing.assert_allclose(out.cpu().numpy(), loop_hamiltonian(transitions, rewards[1], 1.0, costate), atol=1e-13)
    with pytest.raises(ValueError, match="time-indexed"):
        tabular_hamiltonian(mdp, torch.tensor(costate, device=device))


def test_tabular_hamiltonian_every_layout_against_loops(device):
    """The one kernel's paths: CSR rows (a large sparse table), broadcast leading dims, ``out=``."""
    rng = np.random.default_rng(11)
    states, actions = 200, 4  # 160,000 entries, 1 % nonzero: transition_rows() is CSR
    transitions = np.zeros((states, actions, states))
    for s in range(states):
        for a in range(actions):
            targets = rng.choice(states, size=2, replace=False)
            transitions[s, a, targets] = rng.dirichlet(np.ones(2))
    rewards = rng.normal(size=(states, actions))
    mdp = TabularMDP(transitions, rewards, 0.95, device=device)
    assert mdp.transition_rows().layout == torch.sparse_csr
    costate = rng.normal(size=states)
    expected = loop_hamiltonian(transitions, rewards, 0.95, costate)
    out = torch.empty(states, actions, dtype=F64, device=device)
    result = tabular_hamiltonian(mdp, torch.tensor(costate, device=device), out=out)
    assert result.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-12)
    several = rng.normal(size=(3, states))  # leading dims the MDP does not have: broadcast
    batch = tabular_hamiltonian(mdp, torch.tensor(several, device=device)).cpu().numpy()
    for row, costate_row in zip(batch, several):
        np.testing.assert_allclose(row, loop_hamiltonian(transitions, rewards, 0.95, costate_row), atol=1e-12)
    with pytest.raises(ValueError, match="out= needs a costate of the MDP's batch shape"):
        tabular_hamiltonian(mdp, torch.tensor(several, device=device), out=torch.empty(3, states, actions))


@pytest.mark.parametrize("batched", [False, True])
def test_tabular_hamiltonian_gradients_are_p_transposed_and_lambda(device, batched):
    """∂(wᵀH)/∂λ = γ Σ_{s,a} w(s,a) P(·|s,a), ∂/∂r = w, ∂/∂P(s'|s,a) = γ w(s,a) λ(s') (closed forms)."""
    rng = np.random.default_rng(12)
    shape = (2,) if batched else ()
    transitions = np.stack([random_mdp(5, 3, seed)[0] for seed in range(2)]) if batched else random_mdp(5, 3, 0)[0]
    leaf = torch.tensor(transitions, device=device, requires_grad=True)
    mdp = TabularMDP(leaf, rng.normal(size=shape + (5, 3)), 0.9)
    costate = torch.tensor(rng.normal(size=shape + (5,)), device=device, requires_grad=True)
    weights = torch.tensor(rng.normal(size=shape + (5, 3)), device=device)
    (tabular_hamiltonian(mdp, costate) * weights).sum().backward()
    expected = 0.9 * torch.einsum("...sa,...sat->...t", weights, leaf.detach())
    torch.testing.assert_close(costate.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        leaf.grad, 0.9 * weights.unsqueeze(-1) * costate.detach()[..., None, None, :], rtol=1e-12, atol=1e-12
    )


def test_bellman_residual_is_zero_exactly_at_the_optimal_value(device):
    gamma = 0.9
    transitions, rewards = random_mdp(6, 3, seed=8)
    mdp = TabularMDP(transitions, rewards, gamma, device=device)
    v_star = torch.tensor(numpy_value_iteration(transitions, rewards, gamma), device=device)
    assert bellman_optimality_residual(mdp, v_star) < 1e-12
    # λ = V* + c gives max_a H = V* + γc, so the residual is (1 − γ)|c|; any other λ is off the fixed point.
    shifted = torch.stack([v_star + 1.0, v_star - 2.0, v_star + torch.linspace(0, 1, 6, device=device, dtype=F64)])
    residual = bellman_optimality_residual(mdp, shifted)
    assert residual.shape == (3,)
    np.testing.assert_allclose(residual[:2].cpu().numpy(), [(1 - gamma) * 1.0, (1 - gamma) * 2.0], atol=1e-12)
    assert residual[2] > 1e-3


def test_tabular_errors(device):
    transitions, rewards = random_mdp(4, 2, seed=9)
    mdp = TabularMDP(transitions, rewards, 0.9, device=device)
    with pytest.raises(ValueError, match="4 states"):
        tabular_hamiltonian(mdp, torch.zeros(5, dtype=F64, device=device))
    with pytest.raises(ValueError, match="convert one of them"):
        tabular_hamiltonian(mdp, torch.zeros(4, dtype=torch.float32, device=device))
    finite = TabularMDP(transitions, rewards, 1.0, horizon=5, device=device)
    with pytest.raises(ValueError, match="no stationary fixed point"):
        bellman_optimality_residual(finite, torch.zeros(4, dtype=F64, device=device))


# ---------------------------------------------------------------------- linear-quadratic references
def riccati(env: LinearQuadraticEnv, horizon: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``P_k`` (k = 0..n) with ``V_k(s) = −sᵀP_k s`` and gains ``K_k`` with optimal ``a = −K_k s``."""
    A, B, Q, R = env.A, env.B, env.Q, env.R
    P, K = [env.Q_f], []
    for _ in range(horizon):
        gain = np.linalg.solve(R + B.T @ P[0] @ B, B.T @ P[0] @ A)
        P.insert(0, Q + A.T @ P[0] @ A - A.T @ P[0] @ B @ gain)
        K.insert(0, gain)
    return P, K


def lq(state_dim: int, action_dim: int, seed: int) -> LinearQuadraticEnv:
    return LinearQuadraticEnv(state_dim, action_dim, horizon=20, seed=seed)


def start_state(env: LinearQuadraticEnv, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, env.state_dim)


@pytest.mark.parametrize(("state_dim", "action_dim", "seed"), [(2, 1, 0), (3, 2, 1), (4, 4, 2)])
def test_pontryagin_matches_riccati(device, state_dim, action_dim, seed):
    env, n = lq(state_dim, action_dim, seed), 20
    P, K = riccati(env, n)
    s0 = start_state(env, seed)
    states, actions = [s0], []
    for k in range(n):
        actions.append(-K[k] @ states[-1])
        states.append(env.A @ states[-1] + env.B @ actions[-1])
    result = pontryagin(
        env.reward, env.dynamics, env.terminal_reward, torch.tensor(s0, device=device), n, action_dim=action_dim
    )
    assert result.converged and result.stationarity <= 1e-8
    assert result.iterations <= 2  # the return is a concave quadratic in the actions: Newton is exact
    np.testing.assert_allclose(result.actions.cpu().numpy(), np.stack(actions), rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.states.cpu().numpy(), np.stack(states), rtol=0, atol=1e-8)
    grad_values = np.stack([-2 * P[k] @ states[k] for k in range(n + 1)])  # λ_k = ∇V_k(s_k)
    np.testing.assert_allclose(result.costates.cpu().numpy(), grad_values, rtol=0, atol=1e-8)
    optimal_return = total_return(env.reward, env.terminal_reward, result.states, result.actions)
    assert float(optimal_return) == pytest.approx(-s0 @ P[0] @ s0, rel=1e-12)  # V_0(s_0)


def test_costates_follow_eqs_13_14_on_any_path(device):
    env, n = lq(3, 2, seed=3), 7
    gen = torch.Generator().manual_seed(0)
    actions = torch.randn(n, 2, generator=gen, dtype=F64).to(device)
    s0 = torch.tensor(start_state(env, 3), device=device)
    states = rollout(env.dynamics, s0, actions)
    lam = costates(env.reward, env.dynamics, env.terminal_reward, states, actions).cpu().numpy()
    s = states.cpu().numpy()
    expected = [-2 * env.Q_f @ s[n]]  # λ_n = ∇h(s_n)
    for k in reversed(range(n)):  # λ_k = ∂r/∂s + Aᵀ λ_{k+1}
        expected.insert(0, -2 * env.Q @ s[k] + env.A.T @ expected[0])
    np.testing.assert_allclose(lam, np.stack(expected), rtol=1e-12, atol=1e-12)


def test_costates_batched_and_with_a_constant_terminal_reward(device):
    env, n = lq(3, 2, seed=7), 4
    gen = torch.Generator().manual_seed(2)
    actions = torch.randn(2, n, 2, generator=gen, dtype=F64).to(device)
    states = rollout(env.dynamics, torch.randn(2, 3, generator=gen, dtype=F64).to(device), actions)
    batched = costates(env.reward, env.dynamics, env.terminal_reward, states, actions)
    for i in range(2):
        single = costates(env.reward, env.dynamics, env.terminal_reward, states[i], actions[i])
        torch.testing.assert_close(batched[i], single, rtol=1e-14, atol=1e-14)
    no_terminal = costates(env.reward, env.dynamics, lambda s: s.new_zeros(s.shape[:-1]), states, actions)
    assert (no_terminal[:, n] == 0).all()  # λ_n = ∇h = 0, then λ_{n−1} = ∂r/∂s(s_{n−1}) = −2Q s_{n−1}
    q = torch.tensor(env.Q, device=device)
    torch.testing.assert_close(no_terminal[:, n - 1], -2 * states[:, n - 1] @ q, rtol=1e-13, atol=1e-13)


def test_return_gradient_equals_hamiltonian_action_gradient(device):
    """The adjoint identity ``∂J/∂a_k = ∂H_k/∂a (s_k, a_k, λ_{k+1})`` and ``∂J/∂s_0 = λ_0`` at random actions."""
    env, n = lq(3, 2, seed=4), 9
    gen = torch.Generator().manual_seed(1)
    actions = torch.randn(n, 2, generator=gen, dtype=F64).to(device).requires_grad_(True)
    s0 = torch.tensor(start_state(env, 4), device=device).requires_grad_(True)
    state, ret = s0, 0.0
    for k in range(n):  # the test's own rollout of J
        ret = ret + env.reward(state, actions[k])
        state = env.dynamics(state, actions[k])
    ret = ret + env.terminal_reward(state)
    grad_actions, grad_s0 = torch.autograd.grad(ret, (actions, s0))

    states = rollout(env.dynamics, s0.detach(), actions.detach())
    lam = costates(env.reward, env.dynamics, env.terminal_reward, states, actions.detach())
    a = actions.detach().clone().requires_grad_(True)
    h = hamiltonian(env.reward, env.dynamics, states[:-1], a, lam[1:])
    (grad_h,) = torch.autograd.grad(h.sum(), a)
    torch.testing.assert_close(grad_h, grad_actions, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lam[0], grad_s0, rtol=1e-12, atol=1e-12)
    assert grad_actions.abs().max() > 0.1  # a non-optimal path: the identity is not 0 = 0


def test_hamiltonian_is_reward_plus_costate_times_dynamics(device):
    env = lq(3, 2, seed=5)
    rng = np.random.default_rng(0)
    s, a, lam = rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), rng.normal(size=(4, 3))
    out = hamiltonian(env.reward, env.dynamics, *(torch.tensor(x, device=device) for x in (s, a, lam)))
    expected = [-(s[i] @ env.Q @ s[i] + a[i] @ env.R @ a[i]) + (env.A @ s[i] + env.B @ a[i]) @ lam[i] for i in range(4)]
    np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-13)


def test_time_indexed_rewards_reach_every_function(device):
    """A discounted LQ reward ``r_k = γ^k r(s, a)``: the costates obey ``λ_k = γ^k ∂r/∂s + Aᵀλ_{k+1}``."""
    env, n, gamma = lq(2, 1, seed=6), 5, 0.7

    def discounted(s, a, k):
        return gamma**k * env.reward(s, a)

    actions = torch.linspace(-1, 1, n, dtype=F64, device=device)[:, None]
    s0 = torch.tensor(start_state(env, 6), device=device)
    states = rollout(env.dynamics, s0, actions)
    lam = costates(discounted, env.dynamics, env.terminal_reward, states, actions, time_indexed=True).cpu().numpy()
    s, expected = states.cpu().numpy(), [-2 * env.Q_f @ states[-1].cpu().numpy()]
    for k in reversed(range(n)):
        expected.insert(0, -2 * gamma**k * env.Q @ s[k] + env.A.T @ expected[0])
    np.testing.assert_allclose(lam, np.stack(expected), rtol=1e-12, atol=1e-12)
    result = pontryagin(discounted, env.dynamics, env.terminal_reward, s0, n, action_dim=1, time_indexed=True)
    assert result.converged and result.stationarity <= 1e-10


def test_pontryagin_on_nonlinear_dynamics_agrees_with_scipy(device):
    """A damped pendulum with a non-quadratic action cost: Newton steps against scipy's BFGS."""

    def dynamics(s, a):
        return s + 0.1 * torch.stack([s[..., 1], -torch.sin(s[..., 0]) - 0.1 * s[..., 1] + a[..., 0]], -1)

    def reward(s, a):
        return -(s**2).sum(-1) - 0.1 * (a**2).sum(-1) - 0.05 * torch.cosh(a).sum(-1)

    def terminal(s):
        return -5 * (s**2).sum(-1)

    n, s0 = 12, torch.tensor([1.0, -0.5], dtype=F64, device=device)
    result = pontryagin(reward, dynamics, terminal, s0, n, action_dim=1)
    assert result.converged and result.stationarity <= 1e-10

    def negative_return(flat):
        a = torch.tensor(flat.reshape(n, 1), requires_grad=True)
        value = total_return(reward, terminal, rollout(dynamics, s0.cpu(), a), a)
        (grad,) = torch.autograd.grad(value, a)
        return -float(value.detach()), -grad.numpy().ravel()

    reference = scipy.optimize.minimize(negative_return, np.zeros(n), jac=True, method="BFGS", tol=1e-12)
    found = float(total_return(reward, terminal, result.states, result.actions))
    assert found == pytest.approx(-reference.fun, rel=1e-12)
    np.testing.assert_allclose(result.actions.cpu().numpy().ravel(), reference.x, atol=1e-6)


def test_path_and_argument_errors(device):
    env = lq(2, 1, seed=0)
    s = torch.zeros(4, 2, dtype=F64, device=device)
    with pytest.raises(ValueError, match="one more state than actions"):
        costates(env.reward, env.dynamics, env.terminal_reward, s, torch.zeros(4, 1, dtype=F64, device=device))
    with pytest.raises(ValueError, match="action_dim=m"):
        pontryagin(env.reward, env.dynamics, env.terminal_reward, s[0], 3)
    with pytest.raises(ValueError, match="one state of shape"):
        pontryagin(env.reward, env.dynamics, env.terminal_reward, s, 3, action_dim=1)
    with pytest.raises(ValueError, match="actions0 of shape"):
        pontryagin(env.reward, env.dynamics, env.terminal_reward, s[0], 3, actions0=s)
