r"""The RL Hamiltonian, costates and Pontryagin's condition (THEORY §3; Guo & Schölkopf, Eqs. 8–20).

Deterministic, differentiable dynamics ``s_{k+1} = f(s_k, a_k)`` over a finite horizon ``n``, rewards
``r(s, a, k)`` and a terminal reward ``h(s_n)``; the return is ``J = Σ_{k<n} r(s_k, a_k, k) + h(s_n)``.

- Hamiltonian (Eq. 10): ``H_k(s, a, λ_{k+1}) = r(s, a, k) + f(s, a)ᵀ λ_{k+1}``.
- Costates (Eqs. 13–14): ``λ_n = ∇h(s_n)`` and ``λ_k = ∂r/∂s(s_k, a_k) + (∂f/∂s)ᵀ λ_{k+1} = ∂H_k/∂s``.
- Action (Eq. 15): ``a_k = argmax_u H_k(s_k, u, λ_{k+1})``, so ``∂H_k/∂a_k = 0`` along the optimal path.
  ``∂H_k/∂a_k`` is also ``∂J/∂a_k`` for the rolled-out return (the adjoint method), which is how
  :func:`pontryagin` reaches the stationarity condition: ascent on ``J``.
- Along the optimal path ``λ_k = ∇_s V_k(s_k)``, which gives Bellman's
  ``V_k(s) = max_u r + V_{k+1}(f(s, u))``; linear-quadratic control checks it against Riccati.

Tabular MDPs (our reading: the multiplier of the Bellman constraint plays the costate; the discounted
infinite horizon is our extension): ``H(s, a; λ) = r(s, a) + γ Σ_s' P(s'|s, a) λ(s')`` — this is ``Q`` —
and Bellman optimality is the fixed point ``λ = max_a H(·, a; λ)``.

Function conventions: ``reward_fn(s, a)`` (or ``reward_fn(s, a, k)`` with ``time_indexed=True``),
``dynamics_fn(s, a)`` and ``terminal_fn(s)`` take ``s (..., d)``, ``a (..., m)``, are batched over the
leading dimensions (no coupling between batch elements) and differentiable by autograd; rewards have
shape ``(...)``. Paths are ``states (..., n+1, d)`` and ``actions (..., n, m)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from lagrl.mdp import TabularMDP

__all__ = [
    "PontryaginResult",
    "bellman_optimality_residual",
    "costates",
    "hamiltonian",
    "pontryagin",
    "rollout",
    "tabular_hamiltonian",
    "total_return",
]

RewardFn = Callable[..., Tensor]
"""``r(s, a) -> (...)``, or ``r(s, a, k) -> (...)`` for time-indexed rewards."""
DynamicsFn = Callable[[Tensor, Tensor], Tensor]
"""``f(s, a) -> s'``, shape ``(..., d)``."""
TerminalFn = Callable[[Tensor], Tensor]
"""``h(s) -> (...)``."""


# ---------------------------------------------------------------------- tabular (our reading)
def tabular_hamiltonian(mdp: TabularMDP, costate: Tensor, t: int | None = None, *, out: Tensor | None = None) -> Tensor:
    """``H(s, a; λ) = r(s, a) + γ Σ_s' P(s'|s, a) λ(s')``, shape ``(..., S, A)`` — the ``Q`` of ``λ``.

    ``costate`` is ``λ[..., s]``; ``t`` picks the step of time-indexed rewards (``mdp.reward_at(t)``).
    Our reading of §3: the multiplier of the Bellman constraint plays the costate.

    The one tabular Hamiltonian of lagrl (the solvers of :mod:`lagrl.bellman`, the flows of
    :mod:`lagrl.flows` and the checks call it). One kernel: a GEMV on the ``(S·A, S)`` rows of
    :meth:`~lagrl.mdp.TabularMDP.transition_rows` (sparse CSR where the MDP chooses it) for one MDP, a
    batched GEMM where ``costate`` has exactly the MDP's batch shape, a broadcasting matmul for other
    leading dimensions. Differentiable in ``costate``, ``r`` and dense ``P`` unless ``out`` is given;
    ``out`` (contiguous, ``(..., S, A)``, the MDP's batch shape) receives it without an allocation.
    """
    _check_costate(mdp, costate)
    rewards = mdp.reward_at(t)
    states, actions, batch = mdp.num_states, mdp.num_actions, mdp.batch_shape
    if costate.shape == batch + (states,):
        if not batch:
            flat_out = None if out is None else out.view(-1)
            q = torch.addmv(rewards.reshape(-1), mdp.transition_rows(), costate, alpha=mdp.gamma, out=flat_out)
        else:
            rows = mdp.transitions.reshape(-1, states * actions, states)
            flat_out = None if out is None else out.view(rows.shape[:2] + (1,))
            flat_rewards = rewards.reshape(rows.shape[:2] + (1,))
            columns = costate.reshape(-1, states, 1)
            q = torch.baddbmm(flat_rewards, rows, columns, alpha=mdp.gamma, out=flat_out)
        return q.view(batch + (states, actions))
    if out is not None:
        raise ValueError(
            f"out= needs a costate of the MDP's batch shape {batch + (states,)}, got {tuple(costate.shape)}; "
            "drop out= to broadcast"
        )
    rows = mdp.transitions.reshape(batch + (states * actions, states))
    next_values = torch.matmul(rows, costate.unsqueeze(-1))
    return torch.add(rewards, next_values.view(next_values.shape[:-2] + (states, actions)), alpha=mdp.gamma)


def bellman_optimality_residual(mdp: TabularMDP, costate: Tensor) -> Tensor:
    """``max_s |λ(s) − max_a H(s, a; λ)|`` per batch element, shape ``(...)``; zero exactly at ``λ = V*``.

    The stationary (discounted, infinite-horizon) fixed point, our extension of the paper's setting.
    """
    if mdp.horizon is not None:
        raise ValueError(
            f"the MDP has a horizon ({mdp.horizon} steps), so V_t changes with t and has no stationary fixed "
            "point; compare V_t with max_a tabular_hamiltonian(mdp, V_{t+1}, t) step by step instead"
        )
    return (costate - tabular_hamiltonian(mdp, costate).amax(-1)).abs().amax(-1)


def _check_costate(mdp: TabularMDP, costate: Tensor) -> None:
    """Reject a costate whose shape, dtype or device does not fit ``mdp``."""
    if costate.ndim == 0 or costate.shape[-1] != mdp.num_states:
        raise ValueError(
            f"costate has shape {tuple(costate.shape)}, but the MDP has {mdp.num_states} states; "
            "pass λ with shape (..., S), one value per state"
        )
    if mdp.is_sparse and costate.ndim != 1:
        raise ValueError(
            f"a sparse MDP takes one costate of shape ({mdp.num_states},), got {tuple(costate.shape)}; "
            "loop over the batch or use dense transitions"
        )
    if costate.dtype != mdp.dtype or costate.device != mdp.device:
        raise ValueError(
            f"costate is {costate.dtype} on {costate.device}, the MDP {mdp.dtype} on {mdp.device}; "
            "convert one of them, e.g. costate.to(mdp.device, mdp.dtype)"
        )


# ---------------------------------------------------------------------- differentiable dynamics (Eq. 10)
def hamiltonian(
    reward_fn: RewardFn,
    dynamics_fn: DynamicsFn,
    s: Tensor,
    a: Tensor,
    costate_next: Tensor,
    k: int | None = None,
) -> Tensor:
    """``H_k(s, a, λ_{k+1}) = r(s, a, k) + f(s, a)ᵀ λ_{k+1}`` (Eq. 10), shape ``(...)``.

    ``reward_fn`` is called as ``r(s, a)`` when ``k`` is ``None``, else as ``r(s, a, k)``.
    """
    return _reward(reward_fn, s, a, k) + (dynamics_fn(s, a) * costate_next).sum(-1)


def _reward(reward_fn: RewardFn, s: Tensor, a: Tensor, k: int | None) -> Tensor:
    """``r(s, a)`` when ``k`` is ``None``, else ``r(s, a, k)``."""
    return reward_fn(s, a) if k is None else reward_fn(s, a, k)


def rollout(dynamics_fn: DynamicsFn, s0: Tensor, actions: Tensor) -> Tensor:
    """``states (..., n+1, d)``: ``s_0 = s0`` and ``s_{k+1} = f(s_k, a_k)`` (differentiable)."""
    states = [s0]
    for k in range(actions.shape[-2]):
        states.append(dynamics_fn(states[-1], actions[..., k, :]))
    return torch.stack(states, -2)


def total_return(
    reward_fn: RewardFn,
    terminal_fn: TerminalFn,
    states: Tensor,
    actions: Tensor,
    *,
    time_indexed: bool = False,
) -> Tensor:
    """``J = Σ_{k<n} r(s_k, a_k, k) + h(s_n)`` along a path, shape ``(...)``."""
    _check_path(states, actions)
    rewards = [
        _reward(reward_fn, states[..., k, :], actions[..., k, :], k if time_indexed else None)
        for k in range(actions.shape[-2])
    ]
    return torch.stack(rewards, -1).sum(-1) + terminal_fn(states[..., -1, :])


def costates(
    reward_fn: RewardFn,
    dynamics_fn: DynamicsFn,
    terminal_fn: TerminalFn,
    states: Tensor,
    actions: Tensor,
    *,
    time_indexed: bool = False,
) -> Tensor:
    """``λ (..., n+1, d)`` by the backward recursion (Eqs. 13–14), each step by autograd:

    ``λ_n = ∇h(s_n)``,  ``λ_k = ∂r/∂s(s_k, a_k) + (∂f/∂s)ᵀ λ_{k+1} = ∂H_k/∂s (s_k, a_k, λ_{k+1})``.

    The result is detached (not differentiable). Along the optimal path ``λ_k = ∇_s V_k(s_k)``.
    """
    return _backward_pass(reward_fn, dynamics_fn, terminal_fn, states, actions, time_indexed)[0]


def _backward_pass(
    reward_fn: RewardFn,
    dynamics_fn: DynamicsFn,
    terminal_fn: TerminalFn,
    states: Tensor,
    actions: Tensor,
    time_indexed: bool,
) -> tuple[Tensor, Tensor]:
    """Costates ``λ (..., n+1, d)`` and the action gradients ``∂H_k/∂a_k (..., n, m)``, detached."""
    _check_path(states, actions)
    with torch.enable_grad():
        s_last = states[..., -1, :].detach().requires_grad_(True)
        (costate,) = _gradients(terminal_fn(s_last), (s_last,))
        path_costates, action_gradients = [costate], []
        for k in reversed(range(actions.shape[-2])):
            s = states[..., k, :].detach().requires_grad_(True)
            a = actions[..., k, :].detach().requires_grad_(True)
            h = hamiltonian(reward_fn, dynamics_fn, s, a, path_costates[-1], k if time_indexed else None)
            costate, action_gradient = _gradients(h, (s, a))
            path_costates.append(costate)
            action_gradients.append(action_gradient)
    return torch.stack(path_costates[::-1], -2), torch.stack(action_gradients[::-1], -2)


def _gradients(output: Tensor, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``∂(Σ output)/∂input`` for each input (batch elements are independent); zeros where unused."""
    if not output.requires_grad:
        return tuple(torch.zeros_like(x) for x in inputs)
    return torch.autograd.grad(output.sum(), inputs, allow_unused=True, materialize_grads=True)


def _check_path(states: Tensor, actions: Tensor) -> None:
    """Reject paths whose states and actions do not line up as ``(..., n+1, d)`` and ``(..., n, m)``."""
    if states.ndim < 2 or actions.ndim < 2 or actions.shape[-2] < 1 or states.shape[-2] != actions.shape[-2] + 1:
        raise ValueError(
            f"states {tuple(states.shape)} and actions {tuple(actions.shape)} do not form a path; pass "
            "states (..., n+1, d) and actions (..., n, m) with n >= 1 (one more state than actions)"
        )
    if states.shape[:-2] != actions.shape[:-2]:
        raise ValueError(
            f"states {tuple(states.shape)} and actions {tuple(actions.shape)} have different batch "
            "dimensions; give both the same leading shape"
        )


# ---------------------------------------------------------------------- Pontryagin (Eq. 15)
_ARMIJO = 1e-4
"""Sufficient-increase fraction of the Newton line search."""
_MAX_HALVINGS = 40
"""Step halvings before the line search gives up."""


class PontryaginResult(NamedTuple):
    """An open-loop path with ``∂H_k/∂a_k ≈ 0`` (Pontryagin's stationarity), all tensors detached.

    ``states (n+1, d)``, ``actions (n, m)``, ``costates (n+1, d)``; ``stationarity = max_k |∂H_k/∂a_k|``
    from the Hamiltonian and the costates; ``converged`` is ``stationarity <= tol``; ``iterations``
    counts Newton steps.
    """

    states: Tensor
    actions: Tensor
    costates: Tensor
    iterations: int
    stationarity: float
    converged: bool


def pontryagin(
    reward_fn: RewardFn,
    dynamics_fn: DynamicsFn,
    terminal_fn: TerminalFn,
    s0: Tensor,
    horizon: int,
    *,
    actions0: Tensor | None = None,
    action_dim: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
    time_indexed: bool = False,
) -> PontryaginResult:
    """Open-loop actions from ``s0 (d,)`` with ``∂H_k/∂a_k = 0`` along the path (Eqs. 13–15).

    ``∂H_k/∂a_k`` with the path's costates equals ``∂J/∂a_k`` of the rolled-out return
    ``J(a_0..a_{n−1})`` (the adjoint method), so the condition is ``∇J = 0`` on the stacked actions.
    Solved by Newton's method: the ``(n·m) × (n·m)`` Hessian of ``J`` by autograd (one vectorised batch of
    Hessian-vector products), its eigenvalues taken in absolute value and floored so that each step
    ascends, and a backtracking (Armijo) line search on ``J``. Gradients, not values, decide convergence,
    so the stationarity reaches round-off (a value-based line search such as L-BFGS's stalls near
    ``√ε``). For concave ``J`` — linear-quadratic control — one full step solves the problem; otherwise
    the result is a stationary point (Pontryagin's condition is necessary, not sufficient). Start from
    ``actions0 (n, m)`` or from zeros of width ``action_dim``. The functions must be twice
    differentiable by autograd, with backward formulas that ``torch.vmap`` supports (all built-in ops).
    """
    if s0.ndim != 1:
        raise ValueError(f"s0 must be one state of shape (d,), got {tuple(s0.shape)}; call pontryagin per start state")
    if actions0 is None:
        if action_dim is None:
            raise ValueError("pontryagin needs the action width: pass actions0 (horizon, m) or action_dim=m")
        actions0 = s0.new_zeros(horizon, action_dim)
    if actions0.ndim != 2 or actions0.shape[0] != horizon or horizon < 1:
        raise ValueError(
            f"actions0 has shape {tuple(actions0.shape)} for horizon {horizon}; pass a horizon >= 1 and "
            "actions0 of shape (horizon, m)"
        )
    s0 = s0.detach()

    def path_return(actions: Tensor) -> Tensor:
        states = rollout(dynamics_fn, s0, actions)
        return total_return(reward_fn, terminal_fn, states, actions, time_indexed=time_indexed)

    def value_and_gradient(actions: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            actions = actions.detach().requires_grad_(True)
            value = path_return(actions)
            return value.detach(), _gradients(value, (actions,))[0]

    actions = actions0.detach().clone()
    value, gradient = value_and_gradient(actions)
    iterations = 0
    while gradient.abs().max() > tol and iterations < max_iter:
        with torch.enable_grad():
            hessian = torch.autograd.functional.hessian(path_return, actions, vectorize=True)
        direction = _ascent_direction(hessian.reshape(gradient.numel(), -1), gradient.flatten()).view_as(actions)
        slack = 8 * torch.finfo(value.dtype).eps * max(1.0, abs(float(value)))
        step = 1.0
        for _ in range(_MAX_HALVINGS):
            trial = actions + step * direction
            trial_value = path_return(trial.detach())
            if trial_value >= value + _ARMIJO * step * (gradient * direction).sum() - slack:
                break
            step /= 2
        else:
            break  # no ascent along the Newton direction: stop, reported as not converged
        actions = trial
        value, gradient = value_and_gradient(actions)
        iterations += 1

    states = rollout(dynamics_fn, s0, actions).detach()
    path_costates, action_gradients = _backward_pass(reward_fn, dynamics_fn, terminal_fn, states, actions, time_indexed)
    stationarity = float(action_gradients.abs().max())
    return PontryaginResult(states, actions, path_costates, iterations, stationarity, stationarity <= tol)


def _ascent_direction(hessian: Tensor, gradient: Tensor) -> Tensor:
    """``M⁻¹ g`` with ``M = V |Λ| Vᵀ`` from ``−hessian = V Λ Vᵀ``, ``|Λ|`` floored at ``√ε·max(max|Λ|, 1)``.

    ``M`` is positive definite, so the direction ascends; where ``J`` is concave ``M = −hessian`` and the
    direction is the Newton step.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(-(hessian + hessian.T) / 2)
    curvature = eigenvalues.abs()
    floor = torch.finfo(curvature.dtype).eps ** 0.5 * curvature.max().clamp_min(1.0)
    return eigenvectors @ ((eigenvectors.T @ gradient) / curvature.clamp_min(floor))
