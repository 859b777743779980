"""Fisher information (paper Eqs. 23–24): representations, matrix powers ``F^-ρ`` and estimators.

``F(θ) = E[∇θ log p ∇θ log pᵀ] = −E[∇²θ log p]``. The expectation decides the kind:

- *true* Fisher: targets sampled from the model's own predictive distribution (for a policy: actions
  drawn from π);
- *empirical* Fisher: the observed targets;
- *exact*: the true Fisher with the expectation summed over the support of a discrete distribution.

Three representations share one interface (``power``, ``matvec``, ``to_dense``):

- :class:`DiagonalFisher`  ``diag(F)``, elementwise; any parameter shape;
- :class:`DenseFisher`     the full ``P × P`` matrix (small models);
- :class:`KroneckerFisher` a K-FAC block ``A ⊗ G`` of one ``nn.Linear`` layer, with ``A = E[a aᵀ]``
  over the layer's (bias-augmented) inputs and ``G = E[δ δᵀ]`` over the gradients of ``log p`` with
  respect to its outputs. The K-FAC literature writes ``A ⊗ G`` for the column-major ``vec`` of the
  weight; for torch's row-major ``W.flatten()`` of a ``[out, in]`` weight the dense matrix is
  ``G ⊗ A``, which is what :meth:`KroneckerFisher.to_dense` returns.

Powers use damping ``(F + λI)^e``; inverse roots need it wherever ``F`` is singular.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _check_finite(name: str, tensor: Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf; check the gradients it was estimated from")


def _check_exponent(exponent: float, damping: float) -> None:
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if exponent != exponent:  # NaN
        raise ValueError("exponent is NaN")


def spd_power(matrix: Tensor, exponent: float, damping: float = 0.0) -> Tensor:
    """``(M + λI)^e`` for a symmetric positive (semi-)definite ``M`` by symmetric eigendecomposition.

    ``M = U diag(w) Uᵀ`` gives ``(M + λI)^e = U diag((w + λ)^e) Uᵀ``: the symmetric (principal)
    power, so ``e = −½`` is the symmetric inverse root of THEORY §5. A negative exponent needs a
    positive definite ``M + λI``; a positive one needs it positive semi-definite. Batched over
    leading dimensions.
    """
    _check_exponent(exponent, damping)
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    _check_finite("Fisher matrix", matrix)
    scale = matrix.abs().amax().clamp_min(torch.finfo(matrix.dtype).tiny)
    asym = (matrix - matrix.mT).abs().amax() / scale
    if asym > 1e3 * torch.finfo(matrix.dtype).eps:
        raise ValueError(
            f"Fisher matrix is not symmetric (relative asymmetry {float(asym):.2e}); "
            "symmetrise it with (M + M.T) / 2"
        )
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    eigenvalues = eigenvalues + damping
    smallest = float(eigenvalues.amin())
    # Rounding leaves eigenvalues of a singular PSD matrix at about n·eps·max|w| on either side of 0.
    floor = matrix.shape[-1] * torch.finfo(matrix.dtype).eps * float(scale)
    if exponent < 0 and smallest <= floor:
        raise ValueError(
            f"Fisher matrix is not positive definite (smallest eigenvalue {smallest:.3e} after "
            f"damping {damping:g}), so its power {exponent:g} does not exist; add damping, "
            f"e.g. damping={max(1e-6, 1e-3 * float(scale)):.1e}"
        )
    if exponent >= 0 and smallest < -floor:
        raise ValueError(
            f"Fisher matrix is not positive semi-definite (smallest eigenvalue {smallest:.3e}); "
            "a Fisher estimate is PSD by construction, so check how it was built, or add damping"
        )
    powered = eigenvalues.clamp_min(0.0).pow(exponent) if exponent != 0 else torch.ones_like(eigenvalues)
    return (eigenvectors * powered.unsqueeze(-2)) @ eigenvectors.mT


def diagonal_power(diagonal: Tensor, exponent: float, damping: float = 0.0) -> Tensor:
    """``(d + λ)^e`` elementwise: the power of a diagonal Fisher ``diag(d)``."""
    _check_exponent(exponent, damping)
    _check_finite("Fisher diagonal", diagonal)
    damped = diagonal + damping
    smallest = float(damped.amin()) if damped.numel() else 1.0
    if exponent < 0 and smallest <= 0:
        raise ValueError(
            f"diagonal Fisher has an entry {smallest:.3e} <= 0 after damping {damping:g}, so its "
            f"power {exponent:g} does not exist; add damping, e.g. damping=1e-8"
        )
    if exponent >= 0 and smallest < 0:
        raise ValueError(f"diagonal Fisher has a negative entry {smallest:.3e}; a Fisher is PSD")
    return damped.pow(exponent)


@dataclass(frozen=True)
class DiagonalFisher:
    """``F ≈ diag(d)``; ``diagonal`` has the parameter's own shape."""

    diagonal: Tensor

    def power(self, exponent: float, damping: float = 0.0) -> DiagonalFisher:
        """``(diag(d) + λI)^e``."""
        return DiagonalFisher(diagonal_power(self.diagonal, exponent, damping))

    def matvec(self, vector: Tensor) -> Tensor:
        """``F v``, elementwise."""
        return self.diagonal * vector

    def to_dense(self) -> Tensor:
        """The ``P × P`` matrix ``diag(d.flatten())``."""
        return torch.diag(self.diagonal.flatten())


@dataclass(frozen=True)
class DenseFisher:
    """The full ``P × P`` Fisher over flattened parameters."""

    matrix: Tensor

    def power(self, exponent: float, damping: float = 0.0) -> DenseFisher:
        """``(F + λI)^e`` by :func:`spd_power`."""
        return DenseFisher(spd_power(self.matrix, exponent, damping))

    def matvec(self, vector: Tensor) -> Tensor:
        """``F v`` for a flat ``v`` of length ``P``."""
        return self.matrix @ vector

    def to_dense(self) -> Tensor:
        """The matrix itself."""
        return self.matrix


@dataclass(frozen=True)
class KroneckerFisher:
    """K-FAC block of one ``nn.Linear`` layer: ``F ≈ A ⊗ G`` (column-major vec; ``G ⊗ A`` row-major).

    ``input_factor`` ``A`` is ``E[a aᵀ]`` over the layer inputs (with a trailing 1 when the layer
    has a bias), ``output_factor`` ``G`` is ``E[δ δᵀ]`` over ``δ = ∇_s log p`` at the layer outputs.
    The gradient of a layer is the matrix ``[∇W, ∇b]`` of shape ``[out, in (+1)]``.
    """

    input_factor: Tensor
    output_factor: Tensor

    def power(self, exponent: float, damping: float = 0.0) -> KroneckerFisher:
        """``(A ⊗ G)^e = A^e ⊗ G^e``, damped per factor: ``(A + √λ I)^e ⊗ (G + √λ I)^e``.

        The per-factor split is K-FAC's factored Tikhonov damping (Martens & Grosse 2015) with equal
        weights; it damps the product by ``λ`` plus cross terms ``√λ (A ⊗ I + I ⊗ G)``.
        """
        root = damping**0.5
        return KroneckerFisher(
            spd_power(self.input_factor, exponent, root), spd_power(self.output_factor, exponent, root)
        )

    def matvec(self, gradient: Tensor) -> Tensor:
        """``(G ⊗ A) vec(X) = vec(G X A)`` for a ``[out, in (+1)]`` matrix ``X`` (A, G symmetric)."""
        return self.output_factor @ gradient @ self.input_factor

    def to_dense(self) -> Tensor:
        """``G ⊗ A``: the matrix acting on the row-major flattening of ``[out, in (+1)]``."""
        return torch.kron(self.output_factor, self.input_factor)


Fisher = DiagonalFisher | DenseFisher | KroneckerFisher
