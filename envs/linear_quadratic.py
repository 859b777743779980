"""A finite-horizon linear-quadratic control problem: the RL Hamiltonian's test case (THEORY §3).

Deterministic dynamics ``s' = f(s, a) = A s + B a``, reward ``r(s, a) = −(sᵀQ s + aᵀR a)``, terminal
reward ``h(s) = −sᵀQ_f s`` after ``horizon`` steps. The optimal values ``V_k(s) = −sᵀP_k s`` follow from
the Riccati recursion, so Pontryagin's costates ``λ_k = ∇V_k(s_k)`` (Eqs. 13–15) can be checked exactly.

The matrices are drawn from ``numpy.random.default_rng(seed)`` (in the order A, B, Q, R, Q_f):

- ``A`` a standard normal matrix rescaled to spectral norm ``‖A‖₂ = 1.05`` (so its spectral radius is at
  most 1.05: mildly expansive, and the horizon-20 values stay well conditioned);
- ``B`` standard normal;
- ``Q = GGᵀ/d + 0.1·I``, ``R = GGᵀ/m + 0.5·I``, ``Q_f = GGᵀ/d + 0.1·I`` with fresh standard normal ``G``.

Episodes start at ``s_0 ~ Uniform[−1, 1]^d`` (from ``self.np_random``), never terminate, and truncate at
step ``horizon``, whose reward includes ``h(s_horizon)``. Observations are float32 copies of the float64
state ``self.state``. Actions are unbounded (Box(−∞, ∞)): the optimum is unconstrained, so ``check_env``
warns about the infinite bounds.

:meth:`dynamics`, :meth:`reward` and :meth:`terminal_reward` are the same functions on torch tensors —
differentiable, batched over leading dimensions, on the input's device and dtype — for
:mod:`lagrl.hamiltonian`.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from lagrl.envs._checks import check_int

SPECTRAL_NORM = 1.05
"""``‖A‖₂`` after rescaling."""


def _random_spd(rng: np.random.Generator, dim: int, shift: float) -> np.ndarray:
    """``GGᵀ/dim + shift·I`` with ``G`` standard normal: symmetric, eigenvalues ``>= shift``."""
    g = rng.standard_normal((dim, dim))
    return g @ g.T / dim + shift * np.eye(dim)


def _quadratic_form(x: Tensor, matrix: np.ndarray) -> Tensor:
    """``xᵀ M x`` over the last dimension of ``x``, with ``M`` on ``x``'s device and dtype."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    return ((x @ m) * x).sum(-1)


class LinearQuadraticEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """``s' = A s + B a``, ``r = −(sᵀQs + aᵀRa)``, ``h = −sᵀQ_f s``; see the module docstring."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, state_dim: int = 2, action_dim: int = 1, horizon: int = 20, seed: int = 0) -> None:
        self.state_dim = check_int("state_dim", state_dim, minimum=1)
        self.action_dim = check_int("action_dim", action_dim, minimum=1)
        self.horizon = check_int("horizon", horizon, minimum=1)
        rng = np.random.default_rng(check_int("seed", seed, minimum=0))
        a = rng.standard_normal((self.state_dim, self.state_dim))
        self.A: np.ndarray = a * (SPECTRAL_NORM / np.linalg.norm(a, 2))
        self.B: np.ndarray = rng.standard_normal((self.state_dim, self.action_dim))
        self.Q: np.ndarray = _random_spd(rng, self.state_dim, shift=0.1)
        self.R: np.ndarray = _random_spd(rng, self.action_dim, shift=0.5)
        self.Q_f: np.ndarray = _random_spd(rng, self.state_dim, shift=0.1)
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)
        self.action_space = spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32)
        self.state = np.zeros(self.state_dim)
        self.steps = 0

    # ------------------------------------------------------------------ torch (differentiable)
    def dynamics(self, s: Tensor, a: Tensor) -> Tensor:
        """``f(s, a) = A s + B a`` for ``s (..., d)``, ``a (..., m)``."""
        A = torch.as_tensor(self.A, dtype=s.dtype, device=s.device)
        B = torch.as_tensor(self.B, dtype=a.dtype, device=a.device)
        return s @ A.T + a @ B.T

    def reward(self, s: Tensor, a: Tensor) -> Tensor:
        """``r(s, a) = −(sᵀQ s + aᵀR a)``, shape ``(...)``."""
        return -(_quadratic_form(s, self.Q) + _quadratic_form(a, self.R))

    def terminal_reward(self, s: Tensor) -> Tensor:
        """``h(s) = −sᵀQ_f s``, shape ``(...)``."""
        return -_quadratic_form(s, self.Q_f)

    # ------------------------------------------------------------------ Gymnasium (numpy, float64 state)
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``s_0 ~ Uniform[−1, 1]^d`` from ``self.np_random``."""
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1.0, 1.0, size=self.state_dim)
        self.steps = 0
        return self.state.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action``; the last step (``steps == horizon``) truncates and adds ``h(s_horizon)``."""
        if self.steps >= self.horizon:
            raise RuntimeError(f"the episode ended at its horizon ({self.horizon} steps); call reset() first")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ValueError(f"action must have shape ({self.action_dim},), got {a.shape}; pass one action vector")
        s = self.state
        reward = -(s @ self.Q @ s + a @ self.R @ a)
        self.state = self.A @ s + self.B @ a
        self.steps += 1
        truncated = self.steps == self.horizon
        if truncated:
            reward -= self.state @ self.Q_f @ self.state
        return self.state.astype(np.float32), float(reward), False, truncated, {}
