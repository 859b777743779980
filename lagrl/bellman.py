"""Bellman operators and solvers for :class:`~lagrl.mdp.TabularMDP` (batched, any device).

Bellman optimality is the stationarity of the tabular Hamiltonian (THEORY §3, our reading):
``V*(s) = max_a H(s, a; V*)`` with ``H(s, a; λ) = r(s, a) + γ Σ_s' P(s'|s, a) λ(s')``.

- :func:`bellman_backup`        ``(q, max_a q)`` with ``q = H(·, ·; V)`` (differentiable);
- :func:`policy_evaluation`     ``V^π = (I − γP_π)⁻¹ r_π`` (LU; GMRES for sparse MDPs; differentiable);
- :func:`value_iteration`       ``V ← max_a H(·, a; V)`` until ``γδ/(1−γ) ≤ tol``, ``δ = ‖V_{k+1} − V_k‖∞``;
- :func:`policy_iteration`      exact evaluation, greedy improvement, ties kept;
- :func:`backward_induction`    finite horizon: ``V_H = 0``, ``V_t = max_a r_t + γ P V_{t+1}``;
- :func:`soft_value_iteration`  the Legendre-smoothed operator ``V ← τ log Σ_a exp(H(·, a; V)/τ)`` (THEORY §4);
- :func:`soft_policy_iteration` the same fixed point by softmax improvement and exact evaluation;
- :func:`solve`                 the fastest certified route for the MDP at hand (rule in its docstring).

The solvers are batched over the MDP's leading batch dims, run on ``mdp.device`` in ``mdp.dtype`` with
one host sync per sweep or step (the convergence check), and return :class:`Solution` tensors without
an autograd graph. :func:`solve` and :func:`policy_iteration` run dense CPU MDPs on zero-copy numpy
views (:class:`_HostDynamics`; the returned tensors share the numpy arrays' memory).

Certificates. ``T`` (hard or soft) is monotone and ``T(V + c·1) = TV + γc·1``, so for any ``V`` with
``d = TV − V``: ``V + min(d)/(1−γ) ≤ V* ≤ V + max(d)/(1−γ)`` elementwise (Puterman, Thm 6.6.3). Hence
``‖V − V*‖∞ ≤ ‖TV − V‖∞/(1−γ)`` (policy iteration's bound) and, for ``V = T V_k``,
``‖V − V*‖∞ ≤ γ‖V − V_k‖∞/(1−γ)`` (value iteration's stopping rule).

``γ = 1``: :class:`~lagrl.mdp.TabularMDP` accepts it without a horizon when every state reaches an
absorbing zero-reward state, but ``T`` is then no sup-norm contraction, so none of the bounds above
holds and ``I − P_π`` is singular at absorbing states. The infinite-horizon solvers therefore require
``γ < 1``; with a horizon, :func:`backward_induction` (and :func:`solve`) handle ``γ = 1`` exactly.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy
import torch
from torch import Tensor

from lagrl.hamiltonian import tabular_hamiltonian
from lagrl.mdp import TabularMDP

GMRES_RESTART = 32
"""Krylov dimension of one restarted-GMRES cycle in sparse policy evaluation."""

GMRES_MAX_CYCLES = 200
"""Restart cycles after which sparse policy evaluation gives up (it warns and returns its best iterate)."""

EVALUATION_RTOL = 1e-11
"""Sparse policy evaluation stops at ``‖(I − γP_π)V − r_π‖∞ ≤ EVALUATION_RTOL · max(‖r_π‖∞, 1)``."""

CHECK_EVERY = 4
"""Sweeps between two checks in :func:`solve`'s value-iteration phase (each check is a host sync)."""

SPARSE_SWEEPS = 64
"""Sweeps :func:`solve` always tries on a sparse MDP: about the cost of one GMRES policy evaluation."""

MAX_SWEEPS = 1024
"""Upper limit on :func:`solve`'s value-iteration phase."""


class Solution(NamedTuple):
    """The result of a solver (leading dims are the MDP's batch dims).

    Attributes:
        values: ``(..., S)`` optimal values; finite horizon ``(..., H+1, S)`` with
            ``values[..., t, :] = V_t`` and ``V_H = 0``.
        policy: ``(..., S)`` greedy actions (int64); finite horizon ``(..., H, S)``.
        q_values: ``(..., S, A)`` the tabular Hamiltonian ``H(s, a; V) = r + γ P V`` at the returned
            values (soft value iteration: the soft ``Q``); finite horizon ``(..., H, S, A)``.
        iterations: sweeps / policy evaluations done (the maximum over the batch).
        error_bound: ``(...)`` certified bound on ``max_s |values − V*|`` (soft value iteration: on
            the distance to the soft optimum ``V_τ*``); 0 for backward induction.
    """

    values: Tensor
    policy: Tensor
    q_values: Tensor
    iterations: int
    error_bound: Tensor


# ---------------------------------------------------------------------------------------- the Hamiltonian
class _Dynamics:
    """One MDP's arrays laid out for the solvers' contractions, built once per solver call.

    :func:`solve` and :func:`policy_iteration` are written against ``xp`` (``torch`` here, ``numpy`` in
    :class:`_HostDynamics`) and the methods both classes share (``hamiltonian``, ``maximum``, ``extremes``,
    ``evaluate``, ``first_rows``, ``zeros``, and ``array``/``tensor`` to convert at the boundary).

    The Hamiltonian is :func:`~lagrl.hamiltonian.tabular_hamiltonian` (one GEMV, or one batched GEMM);
    dense ``P`` is viewed as ``(B·S·A, S)`` rows, so ``P_π`` of integer actions is a gather of rows ``s·A + π(s)``.
    On small MDPs per-call overhead, not arithmetic, is the cost: these layouts keep a sweep to three
    kernel calls and a policy-iteration step to about fifteen.
    """

    xp = torch

    def __init__(self, mdp: TabularMDP) -> None:
        self.mdp = mdp
        states, actions = mdp.num_states, mdp.num_actions
        self.value_shape = mdp.batch_shape + (states,)
        self.q_shape = mdp.batch_shape + (states, actions)
        self.batched = bool(mdp.batch_shape)
        if not mdp.is_sparse:
            self.flat_rows = mdp.transitions.reshape(-1, states)  # (B·S·A, S)
        flat_shape = (-1, states * actions) if self.batched else (states * actions,)
        self.flat_rewards = None if mdp.time_indexed else mdp.rewards.reshape(flat_shape)

    @functools.cached_property
    def identity(self) -> Tensor:
        return torch.eye(self.mdp.num_states, dtype=self.mdp.dtype, device=self.mdp.device)

    @functools.cached_property
    def first_rows(self) -> Tensor:
        """Flat index ``(b·S + s)·A`` of ``P[b, s, 0, :]`` in the ``(B·S·A, S)`` rows, shaped ``(..., S)``."""
        size = math.prod(self.value_shape)
        return (torch.arange(size, device=self.mdp.device) * self.mdp.num_actions).view(self.value_shape)

    def zeros(self, *shape: int) -> Tensor:
        return torch.zeros(shape, dtype=self.mdp.dtype, device=self.mdp.device)

    @staticmethod
    def array(tensor: Tensor) -> Tensor:
        return tensor

    @staticmethod
    def tensor(array: Tensor) -> Tensor:
        return array

    @staticmethod
    def maximum(q: Tensor, out: Tensor) -> Tensor:
        """``out = max_a q``."""
        return torch.amax(q, -1, out=out)

    @staticmethod
    def extremes(x: Tensor) -> tuple[Tensor, Tensor]:
        """``(min, max)`` over the last axis."""
        return torch.aminmax(x, dim=-1)

    def hamiltonian(self, values: Tensor, t: int | None = None, out: Tensor | None = None) -> Tensor:
        """:func:`~lagrl.hamiltonian.tabular_hamiltonian` (``out``: written in place, no allocation)."""
        return tabular_hamiltonian(self.mdp, values, t, out=out)

    def evaluate(self, policy: Tensor, values: Tensor | None = None, changed: Tensor | None = None) -> Tensor:
        """``V^π = (I − γP_π)⁻¹ r_π``: LU for dense MDPs, GMRES (warm-started at ``values``) for sparse ones.

        ``changed`` (batch mask) restricts a batched dense solve to the members whose policy changed; the
        others keep ``values``.
        """
        mdp = self.mdp
        if mdp.is_sparse:
            return self._gmres_evaluation(mdp.policy_probabilities(policy), values)
        if policy.is_floating_point():
            return self._lu_solve(*mdp.policy_matrix(policy))
        rows = policy + self.first_rows  # flat rows of P[b, s, π(s)]
        if changed is None:
            return self._lu_solve(*self._policy_system(rows))
        values = values.clone()
        values[changed] = self._lu_solve(*self._policy_system(rows[changed]))
        return values

    def _policy_system(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``(P_π, r_π)``, ``(..., S, S)`` and ``(..., S)``, from flat row indices ``(..., S)``."""
        matrix = self.flat_rows.index_select(0, rows.flatten()).view(rows.shape + rows.shape[-1:])
        return matrix, torch.take(self.mdp.rewards, rows)

    def _lu_solve(self, matrix: Tensor, rewards: Tensor) -> Tensor:
        """``(I − γ P_π)⁻¹ r_π``, batched; ``I − γP_π`` is strictly diagonally dominant for ``γ < 1``.

        ``matrix`` is a fresh ``P_π``: unless it needs a gradient, it is overwritten by ``I − γP_π`` and
        then by its LU factors (a batch of 256 64-state systems factors twice as fast in place).
        LAPACK works on column-major matrices, and a row-major ``M`` is a column-major ``Mᵀ``: factoring
        ``Mᵀ`` and solving with its transpose (``adjoint=True``) needs no transposing copy.
        """
        gamma = self.mdp.gamma
        if matrix.requires_grad:  # autograd has no out= forms
            factors, pivots, _ = torch.linalg.lu_factor_ex(torch.sub(self.identity, matrix, alpha=gamma).mT)
        else:
            system = torch.sub(self.identity, matrix, alpha=gamma, out=matrix).mT
            pivots = torch.empty(system.shape[:-1], dtype=torch.int32, device=system.device)
            info = torch.empty(system.shape[:-2], dtype=torch.int32, device=system.device)
            factors, pivots, _ = torch.linalg.lu_factor_ex(system, out=(system, pivots, info))
        return torch.linalg.lu_solve(factors, pivots, rewards.unsqueeze(-1), adjoint=True).squeeze(-1)

    def _gmres_evaluation(self, probabilities: Tensor, values: Tensor | None) -> Tensor:
        """Sparse ``V^π``: GMRES on ``(I − γP_π) V = r_π`` with ``P_π V = Σ_a π(a|s) (P V)(s, a)``."""
        mdp = self.mdp
        rewards = (probabilities * mdp.rewards).sum(-1)

        def operator(x: Tensor) -> Tensor:
            return x - mdp.gamma * (mdp.expected_next(x) * probabilities).sum(-1)

        start = torch.zeros_like(rewards) if values is None else values
        return _gmres(operator, rewards, start, EVALUATION_RTOL * max(float(rewards.abs().amax()), 1.0))


class _HostDynamics:
    """A dense CPU MDP's arrays as zero-copy numpy views: :class:`_Dynamics`'s interface on numpy arrays.

    Measured with one thread (tabular_bench.py, FrozenLake8x8 and a batch of 256 (64, 4) MDPs): a numpy
    call costs 1–3 µs against torch's 5–9 µs, most of a small table's sweep; the batch sweeps in 3.7 ms
    by ``einsum`` against 6.9 ms by ``baddbmm`` and solves its policy systems in 8 ms by
    ``numpy.linalg.solve`` against 16 ms by ``lu_factor_ex`` + ``lu_solve`` (one 65-state system: 50–70 µs
    against 100–130 µs).
    """

    xp = numpy

    def __init__(self, mdp: TabularMDP) -> None:
        self.mdp, batch = mdp, mdp.batch_shape
        states, actions = mdp.num_states, mdp.num_actions
        self.value_shape = batch + (states,)
        self.q_shape = self.value_shape + (actions,)
        self.batched = bool(batch)
        # The (B·S·A, S) rows: of ``γP`` unbatched (a copy that spares each sweep a pass over ``q``), of
        # ``P`` itself for a batch (where a copy costs more than it saves).
        self.flat_rows = mdp.transitions.detach().numpy().reshape(-1, states)
        if not self.batched:
            self.flat_rows = mdp.gamma * self.flat_rows
        self.rows = self.flat_rows.reshape(-1, states * actions, states)
        self.flat_rewards = mdp.rewards.detach().numpy().reshape(self.rows.shape[:2] if self.batched else -1)
        self.first_rows = (numpy.arange(self.rows.shape[0] * states) * actions).reshape(self.value_shape)

    def zeros(self, *shape: int) -> numpy.ndarray:
        return numpy.zeros(shape, dtype=self.flat_rewards.dtype)

    @staticmethod
    def array(tensor: Tensor) -> numpy.ndarray:
        return tensor.detach().cpu().numpy()

    @staticmethod
    def tensor(array: numpy.ndarray | numpy.generic) -> Tensor:
        """The tensor sharing ``array``'s memory (``torch.from_numpy``: 2 µs against ``torch.as_tensor``'s 6)."""
        return torch.from_numpy(numpy.asarray(array))

    @staticmethod
    def extremes(x: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
        """``(min, max)`` over the last axis, by ``ufunc.reduce`` (half the cost of ``numpy.amin``'s wrapper)."""
        return numpy.minimum.reduce(x, -1), numpy.maximum.reduce(x, -1)

    def hamiltonian(self, values: numpy.ndarray, out: numpy.ndarray | None = None) -> numpy.ndarray:
        """``H(s, a; V) = r + γ P V`` → ``(..., S, A)``: one GEMV (unbatched) or one ``einsum``, into ``out``."""
        q = numpy.empty(self.q_shape, dtype=self.flat_rewards.dtype) if out is None else out
        flat = q.reshape(self.flat_rewards.shape)
        if self.batched:
            numpy.einsum("bij,bj->bi", self.rows, values.reshape(self.rows.shape[0], -1), out=flat)
            flat *= self.mdp.gamma
        else:
            numpy.dot(self.rows[0], values, out=flat)
        flat += self.flat_rewards
        return q

    @staticmethod
    def maximum(q: numpy.ndarray, out: numpy.ndarray) -> numpy.ndarray:
        """``out = max_a q`` by ``numpy.maximum`` over the action columns: numpy's reduction over a short
        last axis costs 2–3× as much on a 65-state table and 14× on the batch (measured)."""
        numpy.maximum(q[..., 0], q[..., -1], out=out)
        for action in range(1, q.shape[-1] - 1):
            numpy.maximum(out, q[..., action], out=out)
        return out

    def evaluate(
        self, policy: numpy.ndarray, values: numpy.ndarray | None = None, changed: numpy.ndarray | None = None
    ) -> numpy.ndarray:
        """``V^π`` from ``(γP_π − I) V = −r_π``, ``γP_π`` gathered from the rows (times ``γ`` for a batch).
        ``changed`` as in :class:`_Dynamics`.
        """
        rows = policy + self.first_rows
        if changed is not None:
            rows = rows[changed]
        states = self.mdp.num_states
        matrix = self.flat_rows[rows]  # a fresh (..., S, S) copy
        if self.batched:
            matrix *= self.mdp.gamma
        matrix.reshape(rows.shape[:-1] + (states * states,))[..., :: states + 1] -= 1.0
        solution = numpy.linalg.solve(matrix, -self.flat_rewards.reshape(-1)[rows][..., None])[..., 0]
        if changed is None:
            return solution
        values = values.copy()
        values[changed] = solution
        return values


def _dynamics(mdp: TabularMDP) -> _Dynamics | _HostDynamics:
    """:class:`_HostDynamics` for a dense MDP on the CPU, :class:`_Dynamics` otherwise (and for CSR rows)."""
    if mdp.device.type == "cpu" and not mdp.is_sparse:
        if mdp.batch_shape or mdp.transition_rows().layout == torch.strided:
            return _HostDynamics(mdp)
    return _Dynamics(mdp)


def _tie_bonus(dynamics: _Dynamics | _HostDynamics) -> Tensor | numpy.ndarray:
    """``(..., 1)``: how much better an action must look to replace the current one.

    Evaluation errors relative to ``‖V‖∞ ≤ ‖r‖∞/(1 − γ)``: an LU solve is backward stable,
    ``≈ ε cond(I − γP_π) ≤ 2ε/(1 − γ)``; GMRES stops at ``‖residual‖∞ ≤ EVALUATION_RTOL‖r_π‖∞`` with
    ``‖r_π‖∞ ≤ (1 + γ)‖V‖∞``, so ``‖V − V^π‖∞ ≤ 2 EVALUATION_RTOL‖V‖∞/(1 − γ)``. Gains below twice the
    error of ``q`` are noise: keeping the current action there makes every switch a true
    improvement, so ties cannot make policy iteration cycle.
    """
    mdp = dynamics.mdp
    noise = (64 * torch.finfo(mdp.dtype).eps + (4 * EVALUATION_RTOL if mdp.is_sparse else 0.0)) / (1.0 - mdp.gamma)
    largest_reward = dynamics.xp.amax(abs(dynamics.flat_rewards), -1)
    return (largest_reward * (noise / (1.0 - mdp.gamma)) + noise).reshape(mdp.batch_shape + (1,))


def bellman_backup(mdp: TabularMDP, values: Tensor, t: int | None = None) -> tuple[Tensor, Tensor]:
    """One Bellman optimality backup: ``(q, max_a q)`` with ``q = H(·, ·; V) = r_t + γ P V``.

    ``values[..., s]`` with the MDP's batch dims (extra leading dims broadcast); ``t`` selects
    time-indexed rewards ``r_t``.
    """
    if values.shape[-1:] != (mdp.num_states,):
        raise ValueError(f"values must end in the state dimension S={mdp.num_states}, got {tuple(values.shape)}")
    q = _Dynamics(mdp).hamiltonian(values.to(device=mdp.device, dtype=mdp.dtype), t)
    return q, q.amax(-1)


# ---------------------------------------------------------------------------------------- value iteration
@torch.no_grad()
def value_iteration(
    mdp: TabularMDP, tol: float = 1e-6, *, values: Tensor | None = None, max_iterations: int = 1_000_000
) -> Solution:
    """``V_{k+1} = max_a H(·, a; V_k)`` from ``values`` (default 0) until ``γ δ/(1−γ) ≤ tol``.

    ``δ = ‖V_{k+1} − V_k‖∞``; ``T`` is a γ-contraction, so ``‖V_{k+1} − V*‖∞ ≤ γδ/(1−γ)``: the returned
    ``V_{k+1}`` is within ``tol`` of ``V*`` for every MDP of the batch, and ``error_bound`` is that
    certificate. Needs ``γ < 1`` and no horizon (use :func:`backward_induction` for finite horizons).
    """
    return _iterate(mdp, lambda q: q.amax(-1), tol, values, max_iterations, "value_iteration")


@torch.no_grad()
def soft_value_iteration(
    mdp: TabularMDP,
    tau: float,
    tol: float = 1e-6,
    *,
    values: Tensor | None = None,
    max_iterations: int = 1_000_000,
) -> Solution:
    """Soft value iteration ``V ← τ log Σ_a exp(H(·, a; V)/τ)`` to the soft optimum ``V_τ*``.

    The soft maximum is the convex conjugate of ``τ``·(negative entropy) (THEORY §4): monotone and
    ``γ``-contracting, so the stopping rule and ``error_bound`` are value iteration's, relative to
    ``V_τ*``; and ``0 ≤ V_τ* − V* ≤ τ log|A|/(1−γ)``. ``q_values`` is the soft ``Q = H(·, ·; V_τ)``, which
    the Legendre map sends to the softmax policy ``softmax(q/τ)``; ``policy`` is its argmax.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}; tau → 0 is value_iteration")
    return _iterate(
        mdp, lambda q: tau * torch.logsumexp(q / tau, dim=-1), tol, values, max_iterations, "soft_value_iteration"
    )


@torch.no_grad()
def soft_policy_iteration(
    mdp: TabularMDP,
    tau: float,
    tol: float = 1e-6,
    *,
    values: Tensor | None = None,
    max_iterations: int = 100,
) -> Solution:
    """Soft policy iteration to ``V_τ*``: the same fixed point as :func:`soft_value_iteration`, in few steps.

    ``π ← softmax(H(·, ·; V)/τ)`` (the Legendre map), then exact entropy-regularised evaluation
    ``V ← (I − γP_π)⁻¹ (r_π − τ Σ_a π log π)`` (one LU per step; dense MDPs). Each step improves
    ``V`` monotonically (Newton's method on the soft Bellman equation). It stops once one soft backup
    ``W = T_τ V`` certifies ``‖W − V_τ*‖∞ ≤ γ‖W − V‖∞/(1−γ) ≤ tol`` and returns ``W``; if round-off stalls
    the steps first, soft value iteration finishes from ``W``. ``error_bound`` is that certificate.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}; tau → 0 is policy_iteration")
    _check_discounted(mdp, "soft_policy_iteration", tol)
    if mdp.is_sparse:
        return soft_value_iteration(mdp, tau, tol, values=values)
    dynamics = _Dynamics(mdp)
    values = torch.zeros(dynamics.value_shape, dtype=mdp.dtype, device=mdp.device) if values is None else values
    factor = mdp.gamma / (1.0 - mdp.gamma)
    previous = math.inf
    for iteration in range(1, max_iterations + 1):
        log_policy = torch.log_softmax(dynamics.hamiltonian(values) / tau, dim=-1)
        policy = log_policy.exp()
        matrix, rewards = mdp.policy_matrix(policy)
        values = dynamics._lu_solve(matrix, rewards - tau * (policy * log_policy).sum(-1))
        q = dynamics.hamiltonian(values)
        backed_up = tau * torch.logsumexp(q / tau, dim=-1)
        delta = float((backed_up - values).abs().amax())  # the one host sync per step
        if delta * factor <= tol:
            bound = torch.full(mdp.batch_shape, delta * factor, dtype=mdp.dtype, device=mdp.device)
            q = dynamics.hamiltonian(backed_up)
            return Solution(backed_up, q.argmax(-1), q, iteration, bound)
        if delta > 0.5 * previous:  # round-off stalls Newton's steps: let the contraction finish
            break
        previous = delta
    solution = soft_value_iteration(mdp, tau, tol, values=backed_up)
    return solution._replace(iterations=solution.iterations + iteration)


def _iterate(
    mdp: TabularMDP,
    backup: Callable[[Tensor], Tensor],
    tol: float,
    values: Tensor | None,
    max_iterations: int,
    name: str,
) -> Solution:
    """``V ← backup(H(·, ·; V))`` until ``γ‖V_{k+1} − V_k‖∞/(1−γ) ≤ tol`` for the whole batch."""
    _check_discounted(mdp, name, tol)
    dynamics = _Dynamics(mdp)
    expected = dynamics.value_shape
    if values is None:
        values = torch.zeros(expected, dtype=mdp.dtype, device=mdp.device)
    elif tuple(values.shape) != expected:
        raise ValueError(f"values must have shape {expected} (batch, S), got {tuple(values.shape)}")
    values = values.to(device=mdp.device, dtype=mdp.dtype)
    factor = mdp.gamma / (1.0 - mdp.gamma)
    delta = torch.full(mdp.batch_shape, math.inf, dtype=mdp.dtype, device=mdp.device)
    iteration = 0
    while iteration < max_iterations:
        new_values = backup(dynamics.hamiltonian(values))
        delta = (new_values - values).abs().amax(-1)
        values, iteration = new_values, iteration + 1
        if float(delta.max()) * factor <= tol:  # the one host sync per sweep
            break
    else:
        warnings.warn(f"{name}: max_iterations={max_iterations} reached before the bound met tol={tol}")
    q = dynamics.hamiltonian(values)
    return Solution(values, q.argmax(-1), q, iteration, factor * delta)


# ---------------------------------------------------------------------------------------- policy iteration
@torch.no_grad()
def policy_iteration(mdp: TabularMDP, *, policy: Tensor | None = None, max_iterations: int = 10_000) -> Solution:
    """Howard's policy iteration: exact evaluation ``V^π = (I − γP_π)⁻¹ r_π``, then greedy improvement.

    Starts from ``policy`` (integer actions ``(..., S)``; default greedy in the immediate reward) and
    stops when no action beats the current one by more than the evaluation's round-off, so ties never
    make it cycle. Dense MDPs solve by LU (batched); sparse ones by restarted GMRES to a relative
    residual of ``EVALUATION_RTOL``. ``error_bound = ‖TV − V‖∞/(1−γ)``. Needs ``γ < 1`` and no horizon.
    """
    _check_discounted(mdp, "policy_iteration")
    if policy is None:
        policy = mdp.rewards.argmax(-1)
    _check_policy(mdp, policy)
    dynamics = _dynamics(mdp)
    return _policy_iteration(dynamics, dynamics.array(policy.to(mdp.device, torch.int64)), None, max_iterations, 0)


def _policy_iteration(
    dynamics: _Dynamics | _HostDynamics, policy, values, max_iterations: int, iterations: int
) -> Solution:
    """Policy iteration from ``policy`` (``values`` warm-starts sparse evaluation; ``iterations`` so far).

    Arrays of ``dynamics.xp``. Improvement switches a state to its greedy action only where that beats
    the current action's ``q`` by more than the tie bonus. Batched dense MDPs re-solve only the members
    whose policy changed.
    """
    mdp, xp = dynamics.mdp, dynamics.xp
    bonus = _tie_bonus(dynamics)
    values = dynamics.evaluate(policy, values)
    for _ in range(max_iterations):
        iterations += 1
        q = dynamics.hamiltonian(values)
        flat, best = q.reshape(-1), q.argmax(-1)
        greedy = flat[best + dynamics.first_rows]
        improved = xp.where(greedy - flat[policy + dynamics.first_rows] > bonus, best, policy)
        stays = improved == policy
        if bool(stays.all()):  # the one host sync per step
            break
        changed = ~stays.all(-1) if dynamics.batched else None
        policy = improved
        values = dynamics.evaluate(policy, values, changed)
    else:
        warnings.warn(f"policy_iteration: max_iterations={max_iterations} reached with the policy still changing")
    bound = xp.amax(abs(greedy - values), -1) / (1.0 - mdp.gamma)
    return Solution(*map(dynamics.tensor, (values, policy, q)), iterations, dynamics.tensor(bound))


def policy_evaluation(mdp: TabularMDP, policy: Tensor) -> Tensor:
    """``V^π = (I − γ P_π)⁻¹ r_π``: the value of a stationary policy.

    ``policy`` is stochastic ``π[..., s, a]`` or deterministic ``a[..., s]``. Dense MDPs: one batched LU
    solve (exact up to round-off). Sparse MDPs: restarted GMRES on ``(I − γP_π) V = r_π`` with
    ``P_π V = Σ_a π(a|s) (P V)(s, a)``, to ``‖(I − γP_π)V − r_π‖∞ ≤ EVALUATION_RTOL · max(‖r_π‖∞, 1)``,
    hence ``‖V − V^π‖∞ ≤`` that over ``1 − γ``. Needs ``γ < 1`` and no horizon.
    """
    _check_discounted(mdp, "policy_evaluation")
    if policy.is_floating_point():
        expected = mdp.batch_shape + (mdp.num_states, mdp.num_actions)
        if tuple(policy.shape) != expected:
            raise ValueError(f"a stochastic policy must have shape {expected}, got {tuple(policy.shape)}")
    else:
        _check_policy(mdp, policy)
        policy = policy.to(torch.int64)
    return _Dynamics(mdp).evaluate(policy.to(mdp.device))


def _gmres(operator: Callable[[Tensor], Tensor], rhs: Tensor, start: Tensor, atol: float) -> Tensor:
    """Restarted GMRES (Saad & Schultz 1986) for ``A x = b`` until ``‖b − A x‖∞ ≤ atol``.

    Each cycle builds an orthonormal basis ``Q`` of the Krylov space ``K_m(A, r₀)`` (Arnoldi, classical
    Gram–Schmidt applied twice) with ``A Q_m = Q_{m+1} H``, then ``x ← x + Q_m y``,
    ``y = argmin ‖β e₁ − H y‖₂``. One host sync per cycle (the residual check).
    """
    size, options = GMRES_RESTART, {"dtype": rhs.dtype, "device": rhs.device}
    tiny = torch.finfo(rhs.dtype).tiny
    x = start
    for _ in range(GMRES_MAX_CYCLES):
        residual = rhs - operator(x)
        if float(residual.abs().amax()) <= atol:
            return x
        beta = torch.linalg.vector_norm(residual)
        basis = torch.zeros((size + 1,) + tuple(rhs.shape), **options)
        hessenberg = torch.zeros(size + 1, size, **options)
        basis[0] = residual / beta
        for j in range(size):
            w = operator(basis[j])
            known = basis[: j + 1]
            h = known @ w
            w = w - h @ known
            correction = known @ w  # the second Gram–Schmidt pass restores orthogonality
            w = w - correction @ known
            norm = torch.linalg.vector_norm(w)
            hessenberg[: j + 1, j] = h + correction
            hessenberg[j + 1, j] = norm
            basis[j + 1] = w / norm.clamp_min(tiny)  # a zero norm (exact solution found) keeps H full rank
        target = torch.zeros(size + 1, 1, **options)
        target[0, 0] = beta
        x = x + torch.linalg.lstsq(hessenberg, target).solution.squeeze(-1) @ basis[:size]
    warnings.warn(f"policy evaluation: GMRES did not reach ‖residual‖∞ ≤ {atol:.1e} in {GMRES_MAX_CYCLES} cycles")
    return x


# ---------------------------------------------------------------------------------------- finite horizon
@torch.no_grad()
def backward_induction(mdp: TabularMDP) -> Solution:
    """Finite-horizon dynamic programming: ``V_H = 0``, ``V_t = max_a r_t + γ P V_{t+1}`` for ``t < H``.

    Pontryagin's costate recursion in tabular form (THEORY §3: the costate ``λ_{t+1}`` is ``V_{t+1}``);
    time-indexed rewards ``r[..., t, s, a]`` and any ``γ ∈ [0, 1]`` are allowed. Exact up to round-off
    (``error_bound`` is 0).
    """
    if mdp.horizon is None:
        raise ValueError("backward_induction needs a finite horizon: build the MDP with horizon=H")
    dynamics, horizon, batch = _Dynamics(mdp), mdp.horizon, mdp.batch_shape
    options = {"dtype": mdp.dtype, "device": mdp.device}
    values = torch.zeros(batch + (horizon + 1, mdp.num_states), **options)
    policy = torch.empty(batch + (horizon, mdp.num_states), dtype=torch.int64, device=mdp.device)
    q_values = torch.empty(batch + (horizon, mdp.num_states, mdp.num_actions), **options)
    for t in reversed(range(horizon)):
        q = dynamics.hamiltonian(values[..., t + 1, :], t)
        q_values[..., t, :, :] = q
        values[..., t, :], policy[..., t, :] = q.max(-1)
    return Solution(values, policy, q_values, horizon, torch.zeros(batch, **options))


# ---------------------------------------------------------------------------------------- solve
@torch.no_grad()
def solve(mdp: TabularMDP, tol: float = 1e-6) -> Solution:
    """``V*`` within ``tol`` by the fastest certified route (measured in experiments/benchmarks/tabular_bench.py).

    Rule:

    1. a horizon → :func:`backward_induction` (exact);
    2. otherwise value-iteration sweeps from ``V = 0`` (the first is ``max_a r``, with no product by
       ``P``) with the two-sided certificate, checked every
       ``CHECK_EVERY`` sweeps: for ``d = TV − V``, ``V' = V + (max d + min d)/(2(1−γ))`` has
       ``‖V' − V*‖∞ ≤ span(d)/(2(1−γ))``; return ``V'`` once that is ``≤ tol``. Sweeping goes on while
       the number of states whose value still changes keeps moving: growing (values spreading out from
       the rewards) or shrinking (values settling exactly, as in deterministic MDPs with short optimal
       paths: CliffWalking, Taxi). Once it stalls (stochastic dynamics: every reached state keeps
       changing), switch. Sparse MDPs sweep at least ``SPARSE_SWEEPS`` times first, since their
       policy evaluations are iterative and cost as much; fast-mixing sparse MDPs certify within them;
    3. then policy iteration warm-started from the last greedy policy: batched LU for dense MDPs,
       GMRES evaluation for sparse ones; value iteration polishes in the unlikely case that the final
       bound ``‖TV − V‖∞/(1−γ)`` is still above ``tol``.

    Dense MDPs on the CPU run on numpy views of their tensors (:class:`_HostDynamics`): there per-call
    overhead, not arithmetic, is the cost of small tables, and numpy's is a third of torch's; sparse
    MDPs, CSR rows and other devices run on torch. Measured with one CPU thread (tabular_bench.py): on
    small dense MDPs a sweep costs a few calls and an LU step about ten sweeps, so settling MDPs
    finish in the sweeps, stochastic ones (FrozenLake) after a few policy-iteration steps, and a batch
    of fast-mixing random MDPs switches at the first check, where one batched LU (8 ms for 256
    64-state systems) beats the five or six remaining sweeps (4–5 ms each). ``iterations`` counts
    sweeps plus policy evaluations.
    """
    if mdp.horizon is not None:
        return backward_induction(mdp)
    _check_discounted(mdp, "solve", tol)
    dynamics, scale = _dynamics(mdp), 0.5 / (1.0 - mdp.gamma)
    xp = dynamics.xp
    q = dynamics.zeros(*dynamics.q_shape)  # buffers reused by every sweep
    values, new_values = dynamics.zeros(2, *dynamics.value_shape)
    dynamics.maximum(dynamics.flat_rewards.reshape(dynamics.q_shape), values)  # first sweep, from V = 0: H = r
    minimum = SPARSE_SWEEPS if mdp.is_sparse else 0
    changing = math.prod(dynamics.value_shape)  # so that a first check with every state changing switches at once
    for sweeps in range(2, MAX_SWEEPS + 1):
        dynamics.maximum(dynamics.hamiltonian(values, out=q), new_values)
        if sweeps % CHECK_EVERY == 0:
            difference = new_values - values
            low, high = dynamics.extremes(difference)
            if float((high - low).max()) * scale <= tol:
                shift = scale * (high + low)
                values += shift[..., None]
                q += (mdp.gamma * shift)[..., None, None]
                result = (values, q.argmax(-1), q)
                return Solution(*map(dynamics.tensor, result), sweeps, dynamics.tensor(scale * (high - low)))
            still_changing = int(xp.count_nonzero(difference))
            if still_changing == changing and sweeps >= minimum:
                break
            changing = still_changing
        values, new_values = new_values, values
    solution = _policy_iteration(dynamics, q.argmax(-1), values, 10_000, sweeps)
    if float(solution.error_bound.max()) <= tol:
        return solution
    polished = value_iteration(mdp, tol, values=solution.values)
    return polished._replace(iterations=solution.iterations + polished.iterations)


# ---------------------------------------------------------------------------------------- checks
def _check_discounted(mdp: TabularMDP, name: str, tol: float | None = None) -> None:
    """Raise unless the MDP is infinite-horizon with ``γ < 1`` (and ``tol``, where given, is positive)."""
    if mdp.horizon is not None:
        raise ValueError(
            f"{name} solves the infinite-horizon problem, but the MDP has horizon={mdp.horizon}; "
            "use backward_induction (or solve)"
        )
    if mdp.gamma >= 1.0:
        raise ValueError(
            f"{name} needs gamma < 1 (at gamma = 1 the Bellman operator is no contraction and no error bound "
            "holds); use gamma < 1, or give the MDP a horizon and use backward_induction"
        )
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def _check_policy(mdp: TabularMDP, policy: Tensor) -> None:
    """Raise unless ``policy`` holds integer actions of shape ``(..., S)`` in ``0..A-1``."""
    expected = mdp.batch_shape + (mdp.num_states,)
    if policy.is_floating_point() or tuple(policy.shape) != expected:
        raise ValueError(
            f"policy must be integer actions of shape {expected}, got {policy.dtype} {tuple(policy.shape)}"
        )
    if bool(((policy < 0) | (policy >= mdp.num_actions)).any()):
        raise ValueError(f"policy actions must lie in 0..{mdp.num_actions - 1}")
