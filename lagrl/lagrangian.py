r"""The Learning Lagrangian (paper §3.3, Eqs. 22–30; THEORY §5).

With ``g = ∇θ loss`` (loss = negative log-likelihood), ``F`` the Fisher information (Eqs. 23–24) and
``P`` the number of trainable parameters:

- kinetic energy  ``T = (1/2P) gᵀ F⁻¹ g``              (Eq. 26; Table 1 drops the 1/P)
- potential       ``V = loss``                         (lagrl's sign convention, THEORY §0)
- Lagrangian      ``L = T − V``, energy ``E = T + V``
- action          ``S = Σ_t L_t Δt``                   (discrete, time = observations)
- Euler–Lagrange  ``Q(θ) = (1/P) E[∇θ·(F⁻¹ ∇θ log p)]`` (Eq. 30, the divergence including ``∇F⁻¹``)

The particle picture (mass ``m = 1/P``, ``θ̇ = −F^{-½} g``) turns ``T`` into ``½ m |θ̇|²``; the maps
between ``θ̇``, the momentum ``p = m θ̇`` and ``g`` live in :mod:`lagrl.legendre`. Fisher arguments
``F`` are a :data:`~lagrl.fisher.Fisher` or a tensor (1-D: diagonal, 2-D: dense), see
:func:`lagrl.legendre.as_fisher`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence
from torch.func import grad, jacrev

from lagrl.fisher import Fisher, seeded
from lagrl.legendre import momentum_from_velocity, velocity_from_gradient

__all__ = [
    "action",
    "energy",
    "euler_lagrange_q",
    "kinetic_energy",
    "learning_lagrangian",
    "particle_kinetic_energy",
]

EXPECTATIONS = ("model", "data")


def kinetic_energy(g: Tensor, F: Fisher | Tensor, num_params: int, *, damping: float = 0.0) -> Tensor:
    """Kinetic term of Eq. 26, ``T = (1/2P) gᵀ (F + λI)⁻¹ g`` (Table 1 of the paper drops the 1/P).

    Computed as ``T = −½ g·p`` with ``p = m θ̇`` the momentum of the natural-gradient velocity
    ``θ̇ = −F⁻¹ g`` (ρ = 1). ``P`` counts all trainable parameters of the model; it exceeds
    ``g.numel()`` when ``g`` is one block (e.g. one layer with a ``KroneckerFisher``) of a
    block-diagonal Fisher, whose kinetic energy is the sum over blocks.
    """
    natural_velocity = velocity_from_gradient(g, F, rho=1.0, damping=damping)
    return -0.5 * (g * momentum_from_velocity(natural_velocity, num_params)).sum()


def particle_kinetic_energy(velocity: Tensor, num_params: int) -> Tensor:
    """``½ m |θ̇|² = ½ p·θ̇`` with mass ``m = 1/P`` (THEORY §5).

    Kinetic matching: for ``θ̇ = −F^{-½} g`` this equals :func:`kinetic_energy` ``(1/2P) gᵀF⁻¹g``.
    """
    return 0.5 * (momentum_from_velocity(velocity, num_params) * velocity).sum()


def learning_lagrangian(
    loss: Tensor | float, g: Tensor, F: Fisher | Tensor, num_params: int, *, damping: float = 0.0
) -> Tensor:
    """The Learning Lagrangian ``L = (1/2P) gᵀ F⁻¹ g − V`` with potential ``V = loss`` (Eq. 26, THEORY §5)."""
    return kinetic_energy(g, F, num_params, damping=damping) - loss


def energy(loss: Tensor | float, g: Tensor, F: Fisher | Tensor, num_params: int, *, damping: float = 0.0) -> Tensor:
    """Total energy ``E = T + V = (1/2P) gᵀ F⁻¹ g + loss``; ``E + L = 2T`` and ``E − L = 2V``.

    An extension: the paper defines the Lagrangian (Eq. 26) but no energy.
    """
    return kinetic_energy(g, F, num_params, damping=damping) + loss


def action(lagrangians: Tensor, dt: Tensor | float = 1.0) -> Tensor:
    """Discrete action ``S = Σ_t L_t Δt_t`` over the last dimension (batched over the leading ones).

    lagrl's discretisation of the action ``S = ∫ L dt`` whose stationary paths the paper postulates
    learning follows. ``dt`` is one step size or a tensor of step sizes broadcastable to ``lagrangians`` (time counts
    observations, THEORY §0).
    """
    if lagrangians.ndim == 0:
        raise ValueError("lagrangians is a scalar; pass a sequence with time as the last dimension")
    dt = torch.as_tensor(dt, dtype=lagrangians.dtype, device=lagrangians.device)
    try:
        torch.broadcast_shapes(lagrangians.shape, dt.shape)
    except RuntimeError:
        raise ValueError(
            f"dt of shape {tuple(dt.shape)} does not broadcast to lagrangians of shape {tuple(lagrangians.shape)}; "
            "pass one step size or one per time step (the last dimension)"
        ) from None
    return (lagrangians * dt).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------
# The Euler–Lagrange quantity (Eqs. 27–30)
# ---------------------------------------------------------------------------------------------------


def _kl_fisher(distribution_fn: Callable[[Tensor], Distribution]) -> Callable[[Tensor], Tensor]:
    """Exact Fisher ``F(θ) = ∇²_θ' KL(p_θ ‖ p_θ')|_{θ'=θ}`` (mean over batch dims), differentiable in θ."""

    def fisher(theta: Tensor) -> Tensor:
        reference = distribution_fn(theta)
        return jacrev(jacrev(lambda other: kl_divergence(reference, distribution_fn(other)).mean()))(theta)

    return fisher


def _inverse_fisher(fisher_fn: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    """``F⁻¹`` and the divergence of its columns, ``c_j = Σ_i ∂(F⁻¹)_ij/∂θ_i`` (the ``∇F⁻¹`` term)."""

    def inverse(t: Tensor) -> tuple[Tensor, Tensor]:
        cholesky, info = torch.linalg.cholesky_ex(fisher_fn(t))
        if int(info) != 0:
            raise ValueError(
                "the Fisher at theta is not positive definite: theta is a degenerate point of the model, "
                "or fisher_fn needs damping"
            )
        value = torch.cholesky_inverse(cholesky)
        return value, value

    jacobian, value = jacrev(inverse, has_aux=True)(theta)  # jacobian[i, j, k] = ∂(F⁻¹)_ij / ∂θ_k
    return value, torch.diagonal(jacobian, dim1=0, dim2=2).sum(dim=-1)


def _chunk_scores_and_hessians(
    distribution_fn: Callable[[Tensor], Distribution], theta: Tensor, chunks: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor]:
    """Per chunk ``b``: the mean score ``s̄_b = ∇θ mean log p`` (``(B, P)``) and its Jacobian ``∇s̄_b`` (``(B, P, P)``).

    Each chunk gets its own copy ``θ_b`` of θ, so ``Σ_b s̄_b`` differentiated with respect to the copies
    gives every chunk's Hessian row at once: ``P`` backward passes instead of ``B·P``.
    """

    def scores(copies: Tensor) -> Tensor:
        return grad(lambda c: sum(distribution_fn(c[b]).log_prob(y).mean() for b, y in enumerate(chunks)))(copies)

    copies = theta.expand(len(chunks), -1)
    hessians = jacrev(lambda c: scores(c).sum(dim=0))(copies)  # [j, b, k] = ∂s̄_bj / ∂θ_bk
    return scores(copies), hessians.permute(1, 0, 2)


def euler_lagrange_q(
    distribution_fn: Callable[[Tensor], Distribution],
    theta: Tensor,
    *,
    expectation: str,
    data: Tensor | None = None,
    num_samples: int = 4096,
    num_batches: int = 32,
    fisher_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Euler–Lagrange quantity of Eq. 30, ``Q(θ) = (1/P) E[∇θ·(F(θ)⁻¹ ∇θ log p(y|θ))]``, and its standard error.

    Sign: Eq. 30 is written with ``ℓ = log p``; in lagrl's loss convention ``g = ∇θ loss = −∇θ log p``,
    so ``Q = −(1/P) E[∇θ·(F⁻¹ g)]`` (the same number). The divergence includes the ``∇F⁻¹`` term:
    for a field ``F⁻¹ s̄`` with ``s̄`` a mean score, ``∇·(F⁻¹ s̄) = c·s̄ + tr(F⁻¹ ∇s̄)`` with
    ``c_j = Σ_i ∂_i (F⁻¹)_ij``, and ``∇s̄`` the Hessian of the mean log-likelihood.

    What it shows (THEORY §5):

    - ``expectation="model"`` (``num_samples`` draws ``y ~ distribution_fn(θ)``, from ``generator``
      if given): ``Q ≡ −1`` at every θ by the Bartlett identities (``E[s] = 0``, ``E[∇s] = −F``), so
      the check is vacuous there — a Monte Carlo test of the machinery, not of learning.
    - ``expectation="data"`` (``data`` of shape ``(n,) + batch_shape + event_shape``, the empirical
      distribution): ``Q = −1`` at the MLE of an exponential family and differs elsewhere.

    ``distribution_fn`` maps a flat θ of length ``P`` to a Distribution, possibly with a batch shape
    (e.g. a conditional model over fixed inputs); ``log p`` and the Fisher are means over the batch
    dims. ``F(θ)`` is by default the exact Fisher, the Hessian of ``θ' ↦ KL(p_θ ‖ p_θ')`` at
    ``θ' = θ``; ``fisher_fn(θ) -> P × P`` overrides it (it must be differentiable in θ, e.g. a
    closed form). The samples are split into ``num_batches`` chunks; by linearity of the divergence,
    the value is the size-weighted mean of the chunk divergences (exactly the sample mean) and the
    standard error is their spread over ``√num_batches``. Returns 0-d tensors on θ's device.
    """
    if expectation not in EXPECTATIONS:
        raise ValueError(
            f"expectation must be 'model' (y from the model: Q ≡ −1, a vacuous check) or 'data' "
            f"(y from data), got {expectation!r}"
        )
    if theta.ndim != 1:
        raise ValueError(f"theta must be a flat parameter vector, got shape {tuple(theta.shape)}; pass theta.flatten()")
    if not isinstance(num_batches, int) or num_batches < 2:
        raise ValueError(f"num_batches must be an int >= 2 for a standard error, got {num_batches!r}")
    theta = theta.detach()
    distribution = distribution_fn(theta)
    if expectation == "model":
        if data is not None:
            raise ValueError("data is used only with expectation='data'; drop data= or set expectation='data'")
        with seeded(theta.device, generator):
            samples = distribution.sample((num_samples,))
    elif data is None:
        raise ValueError("expectation='data' needs the observations; pass data= of shape (n,) + batch + event shape")
    elif data.shape[1:] != distribution.batch_shape + distribution.event_shape:
        raise ValueError(
            f"data must have shape (n,) + batch_shape + event_shape = (n,) + "
            f"{tuple(distribution.batch_shape + distribution.event_shape)}, got {tuple(data.shape)}"
        )
    else:
        samples = data
    if len(samples) < num_batches:
        raise ValueError(f"{len(samples)} samples cannot fill num_batches={num_batches} chunks; pass more samples")
    chunks = samples.tensor_split(num_batches)

    inverse, inverse_divergence = _inverse_fisher(fisher_fn or _kl_fisher(distribution_fn), theta)
    scores, hessians = _chunk_scores_and_hessians(distribution_fn, theta, chunks)
    # ∇·(F⁻¹ s̄_b) = c·s̄_b + tr(F⁻¹ ∇s̄_b)
    divergences = scores @ inverse_divergence + torch.einsum("ij,bji->b", inverse, hessians)
    # Chunk b holds a fraction w_b of the samples: Σ_b w_b d_b is the sample mean, and the variance of
    # that weighted mean is estimated from the chunks' spread (= var/B for equal chunks).
    weights = torch.tensor([len(y) for y in chunks], dtype=theta.dtype, device=theta.device) / len(samples)
    value = (weights * divergences).sum()
    variance = num_batches / (num_batches - 1) * (weights.square() * (divergences - value).square()).sum()
    num_params = theta.numel()
    return value / num_params, variance.sqrt() / num_params
