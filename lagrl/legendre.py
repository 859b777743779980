r"""Legendre transforms (THEORY §4–§5): velocity ↔ momentum ↔ gradient, and convex conjugates.

Mechanics, for a Lagrangian ``L(q, q̇)`` strictly convex in ``q̇``:

- momentum      ``p = ∂L/∂q̇(q, q̇)``
- Hamiltonian   ``H(q, p) = p·q̇ − L(q, q̇)`` with ``q̇ = q̇(q, p)`` the inverse of the momentum map,
  which exists (and is unique) where ``∂²L/∂q̇²`` is positive definite.

The learning particle (§3.3 of the paper; THEORY §5): mass ``m = 1/P`` (``P`` parameters) and the
flow family ``θ̇ = −F^{-ρ} g`` with ``g = ∇θ loss``. ρ = 0 is gradient descent, ρ = ½ the paper's
postulate (the only exponent for which ``½ m |θ̇|²`` is the kinetic term ``(1/2P) gᵀF⁻¹g`` of Eq. 26)
and ρ = 1 natural gradient. The Legendre map of the particle is ``p = m θ̇``, hence the
momentum → gradient map ``g = −P F^{ρ} p``. The exponent ρ ≠ ½ is lagrl's extension.

Reinforcement learning (THEORY §4): the convex conjugate of ``τ Σ_a π_a log π_a`` on the simplex is the
soft maximum ``τ log Σ_a exp(q_a/τ)``, whose gradient (the Legendre map) is the softmax policy
``softmax(q/τ)``; as τ → 0 the soft maximum tends to ``max_a q_a``.

Fisher arguments ``F`` are a :data:`~lagrl.fisher.Fisher` or a tensor (see :func:`as_fisher`).
Nothing here is Adam's first moment: ``p`` is the Hamiltonian momentum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lagrl.fisher import DenseFisher, DiagonalFisher, Fisher

__all__ = [
    "as_fisher",
    "gradient_from_momentum",
    "hamiltonian",
    "hamiltonian_function",
    "momentum",
    "momentum_from_velocity",
    "negative_entropy",
    "soft_maximum",
    "softmax_policy",
    "velocity",
    "velocity_from_gradient",
]

Lagrangian = Callable[[Tensor, Tensor], Tensor]
"""``L(q, q̇) -> scalar`` for 1-D tensors ``q`` and ``q̇``."""


# ---------------------------------------------------------------------------------------------------
# Mechanics: p = ∂L/∂q̇, H = p·q̇ − L, q̇(p)
# ---------------------------------------------------------------------------------------------------


def _evaluate(L: Lagrangian, q: Tensor, qdot: Tensor) -> Tensor:
    value = L(q, qdot)
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"L(q, q̇) must return a scalar tensor, got {shape}; sum or reduce it to one number")
    return value.reshape(())


def momentum(L: Lagrangian, q: Tensor, qdot: Tensor) -> Tensor:
    """Canonical momentum ``p = ∂L/∂q̇(q, q̇)`` by autograd.

    The graph is kept (``create_graph``), so ``p`` can be differentiated further with respect to
    ``q`` and, where it requires grad, ``q̇``.
    """
    with torch.enable_grad():
        qdot = qdot if qdot.requires_grad else qdot.detach().requires_grad_()
        (p,) = torch.autograd.grad(_evaluate(L, q, qdot), qdot, create_graph=True, materialize_grads=True)
    return p


def hamiltonian(L: Lagrangian, q: Tensor, qdot: Tensor) -> Tensor:
    """Hamiltonian at a velocity: ``H = p·q̇ − L(q, q̇)`` with ``p = ∂L/∂q̇``."""
    return (momentum(L, q, qdot) * qdot).sum() - _evaluate(L, q, qdot)


def velocity(
    L: Lagrangian, q: Tensor, p: Tensor, *, qdot0: Tensor | None = None, tol: float = 1e-12, max_iter: int = 50
) -> Tensor:
    """Inverse Legendre map ``q̇(q, p)``: solve ``∂L/∂q̇(q, q̇) = p`` by Newton's method.

    Newton step ``q̇ ← q̇ − (∂²L/∂q̇²)⁻¹ (∂L/∂q̇ − p)`` from ``qdot0`` (default 0), until the step is at
    most ``tol · (1 + max|q̇|)`` (``tol`` is floored at 16 machine epsilons of the dtype). Strict
    convexity (a positive definite Hessian) is checked at every iterate. One last Newton step is taken
    on the autograd graph, so the result carries the implicit derivatives ``∂q̇/∂p = (∂²L/∂q̇²)⁻¹``
    and ``∂q̇/∂q`` to first order.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    tol = max(tol, 16 * torch.finfo(p.dtype).eps)
    q_fixed, p_fixed = q.detach(), p.detach()
    qdot = (torch.zeros_like(p_fixed) if qdot0 is None else qdot0.detach().to(p_fixed)).clone()
    for _ in range(max_iter):
        hessian = torch.autograd.functional.hessian(lambda v: _evaluate(L, q_fixed, v), qdot)
        cholesky, info = torch.linalg.cholesky_ex(hessian)
        if int(info) != 0:
            raise ValueError(
                f"L is not strictly convex in q̇ at q̇ = {qdot.tolist()} (∂²L/∂q̇² is not positive definite); "
                "the Legendre transform needs strict convexity"
            )
        residual = momentum(L, q_fixed, qdot).detach() - p_fixed
        step = torch.cholesky_solve(residual.unsqueeze(-1), cholesky).squeeze(-1)
        qdot = qdot - step
        if float(step.abs().max()) <= tol * (1.0 + float(qdot.abs().max())):
            return qdot - torch.cholesky_solve((momentum(L, q, qdot) - p).unsqueeze(-1), cholesky).squeeze(-1)
    raise ValueError(
        f"Newton's method for q̇(p) did not converge in {max_iter} iterations (last step "
        f"{float(step.abs().max()):.3e}); raise max_iter or pass a starting point qdot0 closer to the solution"
    )


def hamiltonian_function(L: Lagrangian) -> Callable[[Tensor, Tensor], Tensor]:
    """The Legendre transform of ``L``: ``H(q, p) = p·q̇(p) − L(q, q̇(p))`` with ``q̇(p)`` from :func:`velocity`.

    Differentiable in ``q`` and ``p``, so Hamilton's equations ``q̇ = ∂H/∂p``, ``∂H/∂q = −∂L/∂q`` hold
    under autograd.
    """

    def H(q: Tensor, p: Tensor) -> Tensor:
        qdot = velocity(L, q, p)
        return (p * qdot).sum() - _evaluate(L, q, qdot)

    return H


# ---------------------------------------------------------------------------------------------------
# The learning particle: m = 1/P, θ̇ = −F^{-ρ} g, p = m θ̇, g = −P F^{ρ} p
# ---------------------------------------------------------------------------------------------------


def as_fisher(F: Fisher | Tensor) -> Fisher:
    """A Fisher representation from a :data:`~lagrl.fisher.Fisher` or a tensor.

    A 1-D tensor is a diagonal ``diag(F)`` (:class:`~lagrl.fisher.DiagonalFisher`), a 2-D tensor the
    dense ``P × P`` matrix (:class:`~lagrl.fisher.DenseFisher`). For a parameter-shaped diagonal of a
    matrix parameter, pass ``DiagonalFisher(d)`` explicitly.
    """
    if isinstance(F, Fisher):
        return F
    if not isinstance(F, Tensor):
        raise TypeError(f"F must be a DiagonalFisher, DenseFisher, KroneckerFisher or a Tensor, got {type(F).__name__}")
    if F.ndim == 1:
        return DiagonalFisher(F)
    if F.ndim == 2:
        return DenseFisher(F)
    raise ValueError(
        f"a tensor F must be 1-D (a diagonal) or 2-D (a dense P × P matrix), got shape {tuple(F.shape)}; "
        "wrap a parameter-shaped diagonal in DiagonalFisher"
    )


def _precondition(F: Fisher | Tensor, exponent: float, vector: Tensor, damping: float, name: str) -> Tensor:
    """``(F + λI)^e v`` after checking that ``v`` has the shape ``F`` acts on."""
    F = as_fisher(F)
    if isinstance(F, DiagonalFisher):
        expected, form = tuple(F.diagonal.shape), "the diagonal's shape"
    elif isinstance(F, DenseFisher):
        expected, form = (F.matrix.shape[-1],), "a flat vector of length P (flatten and concatenate the parameters)"
    else:
        expected = (F.output_factor.shape[-1], F.input_factor.shape[-1])
        form = "the layer's [out, in (+1)] matrix [∇W, ∇b]"
    if tuple(vector.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(vector.shape)} but {type(F).__name__} acts on shape {expected}: "
            f"pass {name} as {form}"
        )
    return F.power(exponent, damping).matvec(vector)


def _check_rho(rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise ValueError(
            f"rho must lie in [0, 1], got {rho}: 0 is gradient descent, ½ the paper's postulate, 1 natural gradient"
        )


def _check_num_params(num_params: int) -> None:
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 1:
        raise ValueError(
            f"num_params must be a positive int (the number P of trainable parameters), got {num_params!r}"
        )


def velocity_from_gradient(g: Tensor, F: Fisher | Tensor, *, rho: float = 0.5, damping: float = 0.0) -> Tensor:
    """Velocity of the ρ-flow, ``θ̇ = −(F + λI)^{-ρ} g`` (THEORY §5; ρ = ½ is the paper's postulate).

    ``g`` is flat (length ``P``) for a dense ``F``, has the diagonal's shape for a ``DiagonalFisher``
    and is the ``[out, in (+1)]`` layer gradient for a ``KroneckerFisher``.
    """
    _check_rho(rho)
    return -_precondition(F, -rho, g, damping, "g")


def momentum_from_velocity(v: Tensor, num_params: int) -> Tensor:
    """Legendre map of the learning particle, ``p = m θ̇`` with mass ``m = 1/P`` (THEORY §5)."""
    _check_num_params(num_params)
    return v / num_params


def gradient_from_momentum(
    p: Tensor, F: Fisher | Tensor, num_params: int, *, rho: float = 0.5, damping: float = 0.0
) -> Tensor:
    """Momentum → gradient, ``g = −P (F + λI)^{ρ} p``: the inverse of ``p = −(1/P)(F + λI)^{-ρ} g``.

    ρ = ½ gives ``g = −P F^{½} p``, the paper's postulate (THEORY §5); other ρ are lagrl's extension.
    """
    _check_rho(rho)
    _check_num_params(num_params)
    return -num_params * _precondition(F, rho, p, damping, "p")


# ---------------------------------------------------------------------------------------------------
# Convex conjugates on the simplex: τ·(negative entropy) ↔ soft maximum
# ---------------------------------------------------------------------------------------------------


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}; the hard maximum is the limit tau → 0, take q.amax(dim)")


def soft_maximum(q: Tensor, tau: float, dim: int = -1) -> Tensor:
    """Soft maximum ``V_τ = τ log Σ_a exp(q_a/τ)``: the convex conjugate of ``τ Σ_a π_a log π_a``.

    ``max_a q_a ≤ V_τ ≤ max_a q_a + τ log|A|``, so τ → 0 gives the hard maximum (THEORY §4).
    """
    _check_tau(tau)
    return tau * torch.logsumexp(q / tau, dim=dim)


def negative_entropy(pi: Tensor, tau: float, dim: int = -1) -> Tensor:
    """``τ Σ_a π_a log π_a`` on the probability simplex along ``dim`` (with ``0 log 0 = 0``).

    Its convex conjugate is :func:`soft_maximum`: ``V_τ(q) = max_π ⟨π, q⟩ − τ Σ_a π_a log π_a``
    (Fenchel–Young), attained at :func:`softmax_policy`.
    """
    _check_tau(tau)
    if bool((pi < 0).any()):
        raise ValueError(f"pi has a negative entry ({float(pi.min()):.3e}); a policy is a probability vector")
    deviation = float((pi.sum(dim=dim) - 1).abs().max()) if pi.numel() else 0.0
    if deviation > torch.finfo(pi.dtype).eps ** 0.5:
        raise ValueError(
            f"pi does not sum to 1 along dim={dim} (off by up to {deviation:.3e}); normalise it, "
            "e.g. pi / pi.sum(dim, keepdim=True), or check dim"
        )
    return tau * torch.special.xlogy(pi, pi).sum(dim=dim)


def softmax_policy(q: Tensor, tau: float, dim: int = -1) -> Tensor:
    """Softmax policy ``π = softmax(q/τ) = ∇_q V_τ(q)``: the Legendre map of :func:`soft_maximum` (THEORY §4)."""
    _check_tau(tau)
    return torch.softmax(q / tau, dim=dim)
