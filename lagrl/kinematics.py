r"""Information kinematics (THEORY §1; Guo & Schölkopf, §2, Eq. 1).

For a sequence ``x_1, x_2, …`` predicted one step at a time:

- position      ``I(t) = −log p(x_1..x_t) = Σ_{i≤t} v(i)``
- velocity      ``v(t) = −log p(x_t | x_<t)``
- acceleration  ``a(t) = v(t+1) − v(t)`` (forward difference; Eq. 1 writes the same sequence shifted
  by one index)

For a learning curve the same quantities apply to the loss per observation (loss = negative
log-likelihood, so velocity = loss). "Time" counts observations. Insight 1 of the paper — the expected
velocity is non-increasing and bounded below, i.e. learning decelerates — is a hypothesis, not a
theorem; :func:`check_deceleration` tests it on a given curve.

All functions take time as the LAST dimension, allow any leading batch dimensions, and return results
on the input's device and dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DecelerationReport",
    "Kinematics",
    "check_deceleration",
    "information_acceleration",
    "information_position",
    "information_velocity",
    "kinematics",
]

_LOG_PROB_TOL = 1e-6
"""How far above 0 a log-probability may round before it is rejected."""


class Kinematics(NamedTuple):
    """Information position ``I``, velocity ``v`` and acceleration ``a`` (one step shorter)."""

    position: Tensor
    velocity: Tensor
    acceleration: Tensor


class DecelerationReport(NamedTuple):
    """Result of :func:`check_deceleration`.

    ``violations`` holds the indices where ``a > tol``, shape ``(k, acceleration.ndim)`` as from
    ``torch.nonzero(..., as_tuple=False)``; ``decelerating`` is ``k == 0``.
    """

    decelerating: bool
    violations: Tensor
    max_acceleration: float


def _check_series(x: Tensor, name: str) -> None:
    """Reject a tensor with no or an empty time (last) dimension, or with NaN entries."""
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: the time dimension (the last one) is missing or empty. "
            "Pass at least one time step with time as the last dimension "
            "(an acceleration needs a velocity with at least 2 steps)."
        )
    if torch.isnan(x).any():
        raise ValueError(f"{name} has NaN entries; remove or fix them before computing kinematics.")


def _velocity(x: Tensor, sign: float, name: str, density: bool) -> Tensor:
    """``v = sign · x``, validated; unless ``density``, ``v`` must be ≥ 0 up to a tiny tolerance."""
    _check_series(x, name)
    velocity = sign * x
    if not density and (velocity < -_LOG_PROB_TOL).any():
        raise ValueError(
            f"{name} implies −log p = {velocity.min().item():.4g} < 0, i.e. a probability above 1. "
            "A log-probability of a discrete event cannot exceed 0 and a loss (negative log-likelihood) "
            "cannot be negative: pass log-probabilities, not probabilities or losses, as log_probs, "
            "and losses as losses. For probability densities, which can exceed 1, pass density=True."
        )
    return velocity


def information_velocity(log_probs: Tensor, *, density: bool = False) -> Tensor:
    """Information velocity ``v(t) = −log p(x_t | x_<t)``.

    ``log_probs[..., t]`` is the conditional log-probability of step ``t``. Positive entries are an
    error unless ``density=True`` (densities can exceed 1).
    """
    return _velocity(log_probs, -1.0, "log_probs", density)


def information_position(log_probs: Tensor, *, density: bool = False) -> Tensor:
    """Information position ``I(t) = −log p(x_1..x_t) = Σ_{i≤t} v(i)`` (cumulative sum over time)."""
    return information_velocity(log_probs, density=density).cumsum(dim=-1)


def information_acceleration(velocity: Tensor) -> Tensor:
    """Information acceleration, the forward difference ``a(t) = v(t+1) − v(t)``.

    The result is one step shorter than ``velocity`` on the last dimension. Eq. 1 of the paper writes
    the same sequence shifted by one index (``a(t) = v(t) − v(t−1)``).
    """
    _check_series(velocity, "velocity")
    return velocity.diff(dim=-1)


def kinematics(*, log_probs: Tensor | None = None, losses: Tensor | None = None, density: bool = False) -> Kinematics:
    """Position ``I = Σ v``, velocity ``v`` and acceleration ``a(t) = v(t+1) − v(t)`` of one series.

    Give exactly one of ``log_probs`` (``v = −log_probs``) or ``losses`` (per-observation negative
    log-likelihoods of a learning curve, ``v = losses``).
    """
    if (log_probs is None) == (losses is None):
        raise ValueError(
            "kinematics needs exactly one of log_probs= or losses=, got "
            + ("both" if losses is not None else "neither")
            + "; pass log_probs for per-step log-probabilities or losses for a learning curve."
        )
    if losses is None:
        velocity = information_velocity(log_probs, density=density)
    else:
        velocity = _velocity(losses, 1.0, "losses", density)
    return Kinematics(velocity.cumsum(dim=-1), velocity, information_acceleration(velocity))


def check_deceleration(acceleration: Tensor, tol: float = 0.0) -> DecelerationReport:
    """Find where the information accelerates: the indices with ``a > tol``.

    Insight 1 of the paper (the expected velocity is non-increasing, ``a ≤ 0``) is a hypothesis, not a
    theorem: this reports where a curve breaks it rather than assuming it holds.
    """
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}; pass tol >= 0.")
    _check_series(acceleration, "acceleration")
    violations = torch.nonzero(acceleration > tol, as_tuple=False)
    return DecelerationReport(violations.shape[0] == 0, violations, acceleration.max().item())
