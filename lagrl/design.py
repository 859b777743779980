r"""Fermat's least-time data path for linear regression (THEORY §2; Guo & Schölkopf §3.1, Insight 2).

Linear regression ``y = xᵀβ + noise`` with noise variance ``σ²``, ``n`` unit-norm design rows ``x_i ∈ R^p``
(the rows of ``X``) and a test point uniform on the unit sphere, so ``E[x xᵀ] = I/p``:

- :func:`prediction_error` ``ε(X) = σ²(1 + tr((XᵀX)⁻¹)/p)`` for ``n ≥ p`` (least squares; the expected
  squared error of a prediction at the test point, noise included);
- :func:`error_bound` ``σ²(1 + p/n)``: ``ε(X)`` is at least this, with equality iff ``XᵀX = (n/p)I``
  (a tight frame: ``tr(XᵀX) = n`` fixes the eigenvalues' sum, and ``tr(M⁻¹)`` is least when they are equal);
- :func:`samples_needed` ``ceil(pσ²/(δ − σ²))``: the fewest observations whose bound reaches a target
  ``δ ∈ (σ², 2σ²]`` (``2σ²`` is the bound at ``n = p``, the least ``n`` with an error at all);
- :func:`tight_frame` ``n`` unit rows with ``XᵀX = (n/p)I`` for every ``n ≥ p``;
- data paths grown one observation at a time (each prefix is the data seen so far):
  :func:`greedy_path` (A-optimal greedy from candidate rows), :func:`tight_path` (planned nested tight
  blocks: orthonormal blocks of ``p`` rows, tight at every multiple of ``p``; THEORY §2: no single unit
  row keeps a tight design tight, so nesting fails in between) and :func:`random_path` (i.i.d. uniform on
  the sphere).

"Time" is the number of observations (our reading of the paper's least-time principle for data).
Inputs may be numpy arrays or torch tensors; paths are float64 torch tensors on ``device``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "error_bound",
    "greedy_path",
    "prediction_error",
    "random_path",
    "samples_needed",
    "tight_frame",
    "tight_path",
]


def _noise(noise_var: float) -> float:
    if not (noise_var > 0 and math.isfinite(noise_var)):
        raise ValueError(f"noise_var must be positive and finite, got {noise_var}")
    return float(noise_var)


def _dimensions(n: int, p: int) -> None:
    if not (isinstance(p, int) and p >= 1 and isinstance(n, int) and n >= p):
        raise ValueError(f"need whole numbers n >= p >= 1 (least squares needs at least p rows), got n={n}, p={p}")


def _path(n: int, p: int) -> None:
    if not (isinstance(n, int) and n >= 1 and isinstance(p, int) and p >= 1):
        raise ValueError(f"a data path needs whole numbers n >= 1 rows in p >= 1 dimensions, got n={n}, p={p}")


def prediction_error(X: Any, noise_var: float) -> float:
    """``ε(X) = σ²(1 + tr((XᵀX)⁻¹)/p)`` for a design ``X`` of shape ``(n, p)``, ``n ≥ p``, full column rank."""
    design = torch.as_tensor(X, dtype=torch.float64)
    if design.ndim != 2:
        raise ValueError(f"X must be a (n, p) design matrix, got shape {tuple(design.shape)}")
    n, p = design.shape
    _dimensions(n, p)
    gram = design.T @ design
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise ValueError(
            f"XᵀX is singular (rank {int(torch.linalg.matrix_rank(gram))} < p = {p}): add rows in new directions"
        )
    trace = float(torch.cholesky_inverse(factor).diagonal().sum())
    return _noise(noise_var) * (1.0 + trace / p)


def error_bound(n: int, p: int, noise_var: float) -> float:
    """``σ²(1 + p/n)``: the least ``ε(X)`` over unit-row designs with ``n`` rows, attained by tight frames."""
    _dimensions(n, p)
    return _noise(noise_var) * (1.0 + p / n)


def samples_needed(delta: float, p: int, noise_var: float) -> int:
    """``ceil(pσ²/(δ − σ²))``: the fewest rows whose bound ``σ²(1 + p/n)`` is at most ``δ ∈ (σ², 2σ²]``."""
    sigma2 = _noise(noise_var)
    if not (sigma2 < delta <= 2 * sigma2):
        raise ValueError(
            f"delta = {delta} is outside (σ², 2σ²] = ({sigma2}, {2 * sigma2}]: no design beats the noise floor σ², "
            "and every design with n >= p rows is already within 2σ²"
        )
    _dimensions(p, p)
    # The exact ratio, then guard the ceiling against round-off (p σ²/(δ − σ²) may be an integer).
    needed = math.ceil(p * sigma2 / (delta - sigma2))
    while needed > p and error_bound(needed - 1, p, sigma2) <= delta:
        needed -= 1
    return max(p, needed)


def tight_frame(n: int, p: int, *, device: torch.device | str | None = None) -> Tensor:
    """``n`` unit rows in ``R^p`` with ``XᵀX = (n/p)I``, for every ``n ≥ p``: a real harmonic frame.

    ``n = p``: the identity. Otherwise row ``k`` is ``sqrt(2/p)(cos(2πjk/n), sin(2πjk/n))`` over the
    frequencies ``j = 1 … ⌊p/2⌋`` (all below ``n/2``, so the columns are orthogonal with squared norm
    ``n/2``), plus a constant ``sqrt(1/p)`` column when ``p`` is odd.
    """
    _dimensions(n, p)
    if n == p:
        return torch.eye(p, dtype=torch.float64, device=device)
    k = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(-1)
    j = torch.arange(1, p // 2 + 1, dtype=torch.float64, device=device)
    angles = 2 * math.pi * k * j / n
    columns = [torch.cos(angles), torch.sin(angles)]
    frame = math.sqrt(2.0 / p) * torch.stack(columns, dim=-1).reshape(n, 2 * (p // 2))
    if p % 2:
        frame = torch.cat([torch.full((n, 1), math.sqrt(1.0 / p), dtype=torch.float64, device=device), frame], dim=-1)
    return frame


def random_path(n: int, p: int, *, seed: int = 0, device: torch.device | str | None = None) -> Tensor:
    """``n`` rows i.i.d. uniform on the unit sphere of ``R^p`` (normalised Gaussians, ``seed``)."""
    _path(n, p)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, p, generator=generator, dtype=torch.float64)
    return (rows / rows.norm(dim=-1, keepdim=True)).to(device)


def tight_path(n: int, p: int, *, seed: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Planned nested tight blocks: consecutive orthonormal bases of ``R^p`` (the identity, or random
    rotations drawn from ``seed``), so every prefix of ``kp`` rows has ``XᵀX = kI``."""
    _dimensions(max(n, p), p)
    blocks = -(-n // p)
    if seed is None:
        bases = torch.eye(p, dtype=torch.float64).expand(blocks, p, p)
    else:
        generator = torch.Generator().manual_seed(seed)
        bases = torch.linalg.qr(torch.randn(blocks, p, p, generator=generator, dtype=torch.float64)).Q
    return bases.reshape(blocks * p, p)[:n].to(device)


def greedy_path(n: int, candidates: Any, *, ridge: float = 1e-6) -> Tensor:
    """A-optimal greedy: each row the candidate that most lowers ``tr((XᵀX + ridge·I)⁻¹)`` (with replacement).

    Sherman–Morrison: adding ``x`` to ``M`` lowers ``tr(M⁻¹)`` by ``xᵀM⁻²x/(1 + xᵀM⁻¹x)``. The ``ridge``
    (relative to a unit row) makes the first ``p`` choices defined; ties (to round-off) go to the lowest index.
    """
    pool = torch.as_tensor(candidates, dtype=torch.float64)
    if pool.ndim != 2 or len(pool) == 0:
        raise ValueError(f"candidates must be a non-empty (m, p) array of rows, got shape {tuple(pool.shape)}")
    if not ridge > 0:
        raise ValueError(f"ridge must be positive (it makes the first p choices defined), got {ridge}")
    p = pool.shape[1]
    _path(n, p)
    inverse = torch.eye(p, dtype=torch.float64, device=pool.device) / ridge
    chosen = []
    for _ in range(n):
        projected = pool @ inverse  # rows x M⁻¹
        gains = (projected * projected).sum(-1) / (1 + (projected * pool).sum(-1))
        best = int(torch.nonzero(gains >= gains.max() * (1 - 1e-12))[0])  # ties (to round-off): lowest index
        chosen.append(best)
        column = inverse @ pool[best]
        inverse = inverse - torch.outer(column, column) / (1 + pool[best] @ column)
    return pool[chosen]
