"""Bellman operators and solvers for :class:`~lagrl.mdp.TabularMDP` (batched, any device).

Bellman optimality is the stationarity of the tabular Hamiltonian (THEORY §3, our reading):
``V*(s) = max_a H(s, a; V*)`` with ``H(s, a; λ) = r(s, a) + γ Σ_s' P(s'|s, a) λ(s')``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lagrl.mdp import TabularMDP


def policy_evaluation(mdp: TabularMDP, policy: Tensor) -> Tensor:
    """``V^π = (I − γ P_π)⁻¹ r_π``: the exact value of a stationary policy (one batched linear solve).

    ``policy`` is stochastic ``π[..., s, a]`` or deterministic ``a[..., s]``.
    """
    matrix, rewards = mdp.policy_matrix(policy)
    identity = torch.eye(mdp.num_states, dtype=mdp.dtype, device=mdp.device)
    return torch.linalg.solve(identity - mdp.gamma * matrix, rewards)
