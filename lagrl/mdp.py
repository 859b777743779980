"""The tabular MDP value type: transitions, rewards, discount, start distribution, horizon.

An MDP ``(P, r, γ, μ₀, H)`` with ``P[s, a, s'] = P(s' | s, a)``, expected reward ``r[s, a]`` (or
``r[t, s, a]`` with a horizon), discount ``γ ∈ [0, 1]``, start distribution ``μ₀`` and optional
horizon ``H``. Dense transitions may carry a leading batch dimension (a batch of MDPs on one device);
sparse transitions (a torch sparse ``(S, A, S)`` tensor) serve large ``S``.

Everything the solvers need from the dynamics goes through :meth:`TabularMDP.expected_next`,
``(P V)(s, a) = Σ_s' P(s'|s, a) V(s')``, and :meth:`TabularMDP.policy_matrix`.

:meth:`TabularMDP.from_gymnasium` reads ``env.unwrapped.P`` of Gymnasium's toy-text format. Terminated
transitions lead to one absorbing zero-reward sink state (index ``S``): CliffWalking and Taxi keep
paying rewards in their goal rows, so a model that loops there gets ``V*`` wrong.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy
import torch
from torch import Tensor

ROW_SUM_TOLERANCE = 1e-6

SPARSE_MIN_ENTRIES = 2**15
SPARSE_MAX_DENSITY = 0.05
"""A dense table of at least ``SPARSE_MIN_ENTRIES`` entries, at most ``SPARSE_MAX_DENSITY`` of them nonzero,
is multiplied as sparse CSR (one CPU thread, measured: on Taxi a CSR matrix–vector product costs 1/20 of
the dense one; below ~30k entries the dense one is never slower)."""


def _as_float(tensor: Any, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    tensor = torch.as_tensor(tensor, device=device)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"expected real numbers, got {tensor.dtype}")
    return tensor.to(dtype)


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP (or a batch of them) on one device.

    Args:
        transitions: ``P[..., s, a, s']``, dense with optional leading batch dims, or a torch sparse
            tensor of shape ``(S, A, S)`` (unbatched).
        rewards: expected rewards ``r[..., s, a]``; with a horizon, optionally time-indexed
            ``r[..., t, s, a]`` for ``t < H``.
        gamma: discount in ``[0, 1]``; ``γ = 1`` needs a horizon unless every state can reach an
            absorbing zero-reward state.
        start: start distribution ``μ₀[..., s]`` (default uniform).
        horizon: number of decision steps ``H`` (``None``: infinite horizon).
        dtype, device: of the stored tensors (float64 by default; device of ``transitions``).
    """

    transitions: Tensor
    rewards: Tensor
    gamma: float
    start: Tensor
    horizon: int | None = None

    def __init__(
        self,
        transitions: Any,
        rewards: Any,
        gamma: float,
        start: Any | None = None,
        horizon: int | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        validate: bool = True,
    ) -> None:
        if isinstance(transitions, Tensor) and transitions.is_sparse:
            transitions = transitions.to(device=device, dtype=dtype).coalesce()
        else:
            transitions = _as_float(transitions, dtype, device)
        device = transitions.device
        rewards = _as_float(rewards, dtype, device)
        batch_shape = () if transitions.is_sparse else tuple(transitions.shape[:-3])
        num_states = transitions.shape[-1]
        if start is None:
            start = torch.full(batch_shape + (num_states,), 1.0 / max(num_states, 1), dtype=dtype, device=device)
        start = _as_float(start, dtype, device)
        object.__setattr__(self, "transitions", transitions)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "gamma", float(gamma))
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "horizon", None if horizon is None else int(horizon))
        if validate:
            self.validate()
        if not self.batch_shape:
            self.transition_rows()  # choose the multiplication layout once, at construction

    # ------------------------------------------------------------------ shape
    @property
    def is_sparse(self) -> bool:
        return self.transitions.is_sparse

    @property
    def num_states(self) -> int:
        return self.transitions.shape[-1]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return () if self.is_sparse else tuple(self.transitions.shape[:-3])

    @property
    def time_indexed(self) -> bool:
        """Whether ``rewards`` carries a time axis ``r[..., t, s, a]``."""
        return self.horizon is not None and self.rewards.ndim == len(self.batch_shape) + 3

    @property
    def device(self) -> torch.device:
        return self.transitions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transitions.dtype

    # ------------------------------------------------------------------ operators
    def reward_at(self, t: int | None = None) -> Tensor:
        """``r[..., s, a]`` at step ``t`` (the stationary reward unless time-indexed)."""
        if not self.time_indexed:
            return self.rewards
        if t is None:
            raise ValueError("rewards are time-indexed: pass the step t")
        return self.rewards[..., t, :, :]

    def expected_next(self, values: Tensor) -> Tensor:
        """``(P V)[..., s, a] = Σ_s' P(s' | s, a) V[..., s']`` for ``values[..., s']``.

        For a sparse MDP ``values`` may carry trailing columns ``(S, k)`` → ``(S, A, k)``.
        """
        if self.is_sparse:
            flat = self.transition_rows() @ (values if values.ndim == 2 else values.unsqueeze(-1))
            shape = (self.num_states, self.num_actions) + (() if values.ndim == 1 else values.shape[1:])
            return flat.reshape(shape)
        return torch.einsum("...sat,...t->...sa", self.transitions, values)

    def policy_matrix(self, policy: Tensor) -> tuple[Tensor, Tensor]:
        """``(P_π, r_π)``: ``P_π[s, s'] = Σ_a π(a|s) P(s'|s, a)``, ``r_π[s] = Σ_a π(a|s) r(s, a)``.

        ``policy`` is stochastic ``π[..., s, a]`` or deterministic ``a[..., s]`` (integer actions).
        Dense MDPs give a dense ``P_π``; sparse MDPs a sparse CSR ``P_π``. Stationary rewards only.
        """
        if self.time_indexed:
            raise ValueError("policy_matrix needs stationary rewards; use reward_at(t) for time-indexed ones")
        probabilities = self.policy_probabilities(policy)
        rewards = (probabilities * self.rewards).sum(-1)
        if self.is_sparse:
            rows = self.transition_rows()  # (S·A, S)
            weights = probabilities.reshape(-1)
            crow, col, val = rows.crow_indices(), rows.col_indices(), rows.values()
            row_of_entry = torch.repeat_interleave(torch.arange(len(weights), device=self.device), crow.diff())
            state_of_entry = torch.div(row_of_entry, self.num_actions, rounding_mode="floor")
            indices = torch.stack([state_of_entry, col])
            matrix = torch.sparse_coo_tensor(
                indices, val * weights[row_of_entry], (self.num_states, self.num_states), check_invariants=False
            ).coalesce()
            return matrix.to_sparse_csr(), rewards
        return torch.einsum("...sa,...sat->...st", probabilities, self.transitions), rewards

    def policy_probabilities(self, policy: Tensor) -> Tensor:
        """``π[..., s, a]`` from a stochastic policy or from integer actions ``a[..., s]`` (one-hot)."""
        if policy.is_floating_point():
            return policy.to(self.dtype)
        return torch.nn.functional.one_hot(policy.long(), self.num_actions).to(self.dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TabularMDP:
        """The same MDP on another device or in another dtype (validated already: not checked again).

        ``self`` where neither changes (its cached :meth:`transition_rows` included)."""
        dtype = dtype or self.dtype
        if dtype == self.dtype and (device is None or torch.device(device) == self.device):
            return self
        return TabularMDP(
            self.transitions.to(device=device, dtype=dtype),
            self.rewards,
            self.gamma,
            self.start,
            self.horizon,
            dtype=dtype,
            validate=False,
        )

    def transition_rows(self) -> Tensor:
        """``P`` as the ``(S·A, S)`` matrix whose row ``s·A + a`` is ``P(·|s, a)`` (unbatched), built once.

        Sparse CSR when the MDP is stored sparse, or when a dense table has at least
        :data:`SPARSE_MIN_ENTRIES` entries of which at most :data:`SPARSE_MAX_DENSITY` are nonzero; the
        dense view otherwise. Solvers multiply by it (``H = r + γ P V`` is one GEMV).
        """
        if self.batch_shape:
            raise ValueError("transition_rows is for one MDP; index the batch first")
        cached = self.__dict__.get("_rows")
        if cached is not None:
            return cached
        states, actions = self.num_states, self.num_actions
        if self.is_sparse:
            s, a, t = self.transitions.indices()
            rows = torch.sparse_coo_tensor(
                torch.stack([s * actions + a, t]),
                self.transitions.values(),
                (states * actions, states),
                check_invariants=False,
            )
        else:
            rows = self.transitions.reshape(states * actions, states)
            if rows.numel() < SPARSE_MIN_ENTRIES or rows.count_nonzero() > SPARSE_MAX_DENSITY * rows.numel():
                object.__setattr__(self, "_rows", rows)
                return rows
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            cached = rows.to_sparse_csr()
            if cached.values().numel() < 2**31 and max(cached.shape) < 2**31:
                # int32 indices: the CPU kernel converts int64 ones on every product (Taxi's GEMV: 26 → 19 µs)
                crow, col = cached.crow_indices().int(), cached.col_indices().int()
                cached = torch.sparse_csr_tensor(crow, col, cached.values(), cached.shape, check_invariants=False)
        object.__setattr__(self, "_rows", cached)
        return cached

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming what is wrong with the MDP and how to fix it."""
        transitions, rewards = self.transitions.detach(), self.rewards.detach()  # checks, not part of a graph
        if transitions.ndim < 3:
            raise ValueError(
                f"transitions must have shape (..., S, A, S), got {tuple(transitions.shape)}; "
                "index them as P[s, a, s_next]"
            )
        if transitions.is_sparse and transitions.ndim != 3:
            raise ValueError("sparse transitions must be unbatched with shape (S, A, S)")
        num_states, num_actions = self.num_states, self.num_actions
        if transitions.shape[-3] != num_states:
            raise ValueError(
                f"transitions have {transitions.shape[-3]} source states but {num_states} next states; "
                "P must be (S, A, S)"
            )
        if num_states == 0 or num_actions == 0:
            raise ValueError("an MDP needs at least one state and one action")
        values = transitions.values() if transitions.is_sparse else transitions
        if torch.isnan(values).any():
            raise ValueError("transitions contain NaN; every P[s, a, :] must be a probability distribution")
        if (values < 0).any():
            raise ValueError("transitions contain negative probabilities; every P[s, a, :] must be >= 0")
        row_sums = torch.sparse.sum(transitions, dim=-1).to_dense() if transitions.is_sparse else transitions.sum(-1)
        worst = float((row_sums - 1).abs().amax())
        if worst > ROW_SUM_TOLERANCE:
            index = tuple(int(i) for i in torch.nonzero((row_sums - 1).abs() > ROW_SUM_TOLERANCE)[0])
            raise ValueError(
                f"P[{', '.join(map(str, index))}, :] sums to {float(row_sums[index]):.6g}, not 1 (worst deviation "
                f"{worst:.2e}); normalise each row, e.g. P / P.sum(-1, keepdim=True)"
            )
        expected = self.batch_shape + ((self.horizon,) if self.time_indexed else ()) + (num_states, num_actions)
        if tuple(rewards.shape) != expected:
            raise ValueError(
                f"rewards must have shape {expected} (batch, [horizon,] S, A), got {tuple(rewards.shape)}; "
                "pass the expected reward r[s, a]"
            )
        if not torch.isfinite(rewards).all():
            raise ValueError("rewards contain NaN or inf; pass finite expected rewards r[s, a]")
        if tuple(self.start.shape) != self.batch_shape + (num_states,):
            raise ValueError(f"start must have shape {self.batch_shape + (num_states,)}, got {tuple(self.start.shape)}")
        if torch.isnan(self.start).any() or (self.start < 0).any() or (self.start.sum(-1) - 1).abs().amax() > 1e-6:
            raise ValueError("start must be a probability distribution over states (non-negative, summing to 1)")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be a positive number of steps, got {self.horizon}")
        if self.gamma == 1.0 and self.horizon is None:
            stuck = self._states_that_cannot_terminate()
            if stuck:
                shown = ", ".join(map(str, stuck[:10])) + (", ..." if len(stuck) > 10 else "")
                raise ValueError(
                    f"gamma = 1 without a horizon, but states {shown} cannot reach an absorbing zero-reward "
                    "state, so their values are undefined; use gamma < 1 or pass horizon=..."
                )

    def _states_that_cannot_terminate(self) -> list[int]:
        """States from which no absorbing zero-reward state is reachable (in any batch element).

        A backward search over the edges ``s → s'`` with ``P(s'|s, a) > 0`` for some ``a``, on the
        nonzero entries only, so a sparse MDP is never densified.
        """
        if self.is_sparse:
            members = [(self.transitions.indices(), self.transitions.values(), self.rewards)]
        else:
            dense = self.transitions.reshape((-1,) + tuple(self.transitions.shape[-3:]))
            rewards = self.rewards.reshape((-1,) + tuple(self.rewards.shape[-2:]))
            members = [(p.nonzero().T, p[p != 0], r) for p, r in zip(dense, rewards)]
        stuck: set[int] = set()
        for (source, _, target), probability, reward in members:
            certain_loops = source[(source == target) & (probability == 1)]  # P[s, a, s] = 1
            loops_per_state = torch.bincount(certain_loops, minlength=self.num_states)
            reach = (loops_per_state == self.num_actions) & (reward == 0).all(-1)  # absorbing, zero reward
            source, target = source[probability > 0], target[probability > 0]
            while True:
                grown = reach.clone()
                grown[source[reach[target]]] = True
                if torch.equal(grown, reach):
                    break
                reach = grown
            stuck |= set(torch.nonzero(~reach).flatten().tolist())
        return sorted(stuck)

    # ------------------------------------------------------------------ Gymnasium
    @classmethod
    def from_gymnasium(
        cls,
        env_or_id: Any,
        gamma: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        **make_kwargs: Any,
    ) -> TabularMDP:
        """The MDP of a Gymnasium env exposing ``env.unwrapped.P`` (toy-text format).

        ``P[s][a] = [(prob, next_state, reward, terminated), ...]``: duplicate outcomes are summed, the
        expected reward is ``Σ prob · reward``, and every terminated transition goes to one absorbing
        zero-reward sink appended as state ``S`` (only when some transition terminates). The start
        distribution is the env's ``initial_state_distrib`` where it has one, else uniform.
        """
        env = _make(env_or_id, **make_kwargs)
        table = getattr(env.unwrapped, "P", None)
        name = getattr(getattr(env, "spec", None), "id", None) or type(env.unwrapped).__name__
        if not isinstance(table, dict):
            raise ValueError(
                f"{name} has no transition table env.unwrapped.P (toy-text format P[s][a] = [(prob, next, "
                "reward, terminated), ...]), so it is not a tabular MDP; use a discrete env such as "
                "FrozenLake-v1 or lagrl/Garnet-v0, or an agent for continuous states"
            )
        num_states = len(table)
        num_actions = max(len(actions) for actions in table.values())
        terminates = any(outcome[3] for actions in table.values() for outs in actions.values() for outcome in outs)
        size = num_states + int(terminates)
        transitions = numpy.zeros((size, num_actions, size))
        rewards = numpy.zeros((size, num_actions))
        for state, actions in table.items():
            if set(actions) != set(range(num_actions)):
                raise ValueError(
                    f"{name}: state {state} lists actions {sorted(actions)}, expected 0..{num_actions - 1}"
                )
            for action, outcomes in actions.items():
                for probability, next_state, reward, terminated in outcomes:
                    target = num_states if terminated else int(next_state)
                    transitions[state, action, target] += probability
                    rewards[state, action] += probability * reward
        if terminates:
            transitions[num_states, :, num_states] = 1.0
        start = getattr(env.unwrapped, "initial_state_distrib", None)
        if start is not None:
            start = numpy.concatenate([numpy.asarray(start, dtype=numpy.float64), numpy.zeros(size - num_states)])
            start = start / start.sum()
        return cls(transitions, rewards, gamma, start, dtype=dtype, device=device)


def _make(env_or_id: Any, **make_kwargs: Any) -> Any:
    """``gymnasium.make`` for an id (lagrl's own ids register on import), or the env itself."""
    if not isinstance(env_or_id, str):
        return env_or_id
    import gymnasium

    if env_or_id.startswith("lagrl/"):
        import lagrl.envs  # noqa: F401  (registers the lagrl/ ids)
    return gymnasium.make(env_or_id, **make_kwargs)
