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

import math
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call, grad, vmap


def _check_finite(name: str, tensor: Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf; check the gradients it was estimated from")


def _check_exponent(exponent: float, damping: float) -> None:
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if exponent != exponent:  # NaN
        raise ValueError("exponent is NaN")


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``M = U diag(w) Uᵀ`` in float64, with one shifted retry where LAPACK fails to converge.

    Float64 for accuracy: K-FAC factors span many orders of magnitude, and a float32 decomposition
    loses every eigenvalue below ``eps32 · max|w|``, which the damped inverse root then amplifies.
    The retry decomposes ``(M + Mᵀ)/2 + δI``, ``δ = √eps · max|M|``: it has ``M``'s eigenvectors and
    eigenvalues ``w + δ`` exactly, so ``w`` is recovered to float64 rounding, while the shift changes
    the solver's rounding path (exact zeros, on which LAPACK's divide-and-conquer can fail, become
    ``δ``); a ``RuntimeWarning`` says it happened.
    """
    work = matrix.to(torch.float64)
    try:
        return torch.linalg.eigh(work)
    except torch.linalg.LinAlgError as error:
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("Fisher matrix contains NaN or inf; check the gradients it was estimated from") from error
    shift = math.sqrt(torch.finfo(torch.float64).eps) * max(float(work.abs().amax()), torch.finfo(torch.float64).tiny)
    warnings.warn(
        f"eigh of a {tuple(matrix.shape)} Fisher matrix failed to converge in float64; retrying on the "
        f"symmetrised matrix shifted by {shift:.2e}·I (same eigenvectors, eigenvalues shifted back)",
        RuntimeWarning,
        stacklevel=4,
    )
    identity = torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh((work + work.mT) / 2 + shift * identity)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            f"the eigendecomposition of a {tuple(matrix.shape)} Fisher matrix failed to converge, in float64 and "
            "after a shift; the matrix is too degenerate for LAPACK: use a diagonal Fisher for this layer"
        ) from error
    return eigenvalues - shift, eigenvectors


def spd_power(matrix: Tensor, exponent: float, damping: float = 0.0) -> Tensor:
    """``(M + λI)^e`` for a symmetric positive (semi-)definite ``M`` by symmetric eigendecomposition.

    ``M = U diag(w) Uᵀ`` gives ``(M + λI)^e = U diag((w + λ)^e) Uᵀ``: the symmetric (principal)
    power, so ``e = −½`` is the symmetric inverse root of THEORY §5. A negative exponent needs a
    positive definite ``M + λI``; a positive one needs it positive semi-definite. Batched over
    leading dimensions. The decomposition runs in float64 (:func:`_eigh`) and the result is returned
    in ``M``'s dtype.

    Exactly zero rows and columns of a single matrix (the K-FAC input factor of one-hot observations
    has one per unvisited state; dead units give them too) are split off first: up to a permutation
    ``M = M_LL ⊕ 0``, so ``(M + λI)^e = (M_LL + λI)^e ⊕ λ^e I``. Besides being cheaper, this removes
    what made ``torch.linalg.eigh`` fail to converge on such factors (LAPACK's divide-and-conquer,
    ``ssyevd`` and even ``dsyevd``, on a large exactly degenerate zero eigenspace coupled through the
    bias row).

    Rounding: ``M`` is known to its own dtype's precision, so eigenvalues within
    ``n · eps(M.dtype) · max|w|`` of 0 are rounding noise of a PSD matrix and are taken as
    ``max(w, 0)``: with ``λ > 0`` every negative power of a PSD ``M`` then exists, however singular or
    ill-conditioned ``M`` is; ``λ = 0`` needs ``w_min`` above that floor.
    """
    _check_exponent(exponent, damping)
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise TypeError(f"expected a floating-point matrix, got {matrix.dtype}; convert it with .double()")
    if matrix.shape[-1] == 0:
        return matrix.clone()
    if matrix.ndim == 2 and (damping > 0 or exponent >= 0):  # else a zero row makes the power not exist
        live = (matrix != 0).any(dim=0) | (matrix != 0).any(dim=1)
        if not bool(live.all()):
            return _split_power(matrix, live.nonzero().squeeze(1), exponent, damping)
    return _eigen_power(matrix, exponent, damping)


def _split_power(matrix: Tensor, live: Tensor, exponent: float, damping: float) -> Tensor:
    """``(M_LL + λI)^e`` on the rows and columns ``L`` (``live``), ``λ^e`` on the rest of the diagonal."""
    result = torch.diag(diagonal_power(matrix.new_zeros(len(matrix)), exponent, damping))
    block = live.unsqueeze(1), live.unsqueeze(0)
    result[block] = spd_power(matrix[block], exponent, damping)
    return result


def _eigen_power(matrix: Tensor, exponent: float, damping: float) -> Tensor:
    """:func:`spd_power` by the eigendecomposition of the whole (batch of) matrices."""
    eigenvalues, eigenvectors = _eigh(matrix)  # reads the lower triangle only
    lowest, highest = torch.aminmax(eigenvalues)
    # One host sync for all checks; NaN or inf anywhere in M makes one of these NaN.
    asym, lowest, highest = torch.stack([(matrix - matrix.mT).abs().amax().double(), lowest, highest]).tolist()
    scale = max(abs(lowest), abs(highest), torch.finfo(matrix.dtype).tiny)
    if not math.isfinite(asym + lowest + highest):
        raise ValueError("Fisher matrix contains NaN or inf; check the gradients it was estimated from")
    if asym > 1e3 * torch.finfo(matrix.dtype).eps * scale:
        raise ValueError(
            f"Fisher matrix is not symmetric (relative asymmetry {asym / scale:.2e}); symmetrise it with (M + M.T) / 2"
        )
    # Rounding leaves eigenvalues of a singular PSD matrix at about n·eps·max|w| on either side of 0.
    floor = matrix.shape[-1] * torch.finfo(matrix.dtype).eps * scale
    psd = lowest >= -floor
    smallest = (max(lowest, 0.0) if psd else lowest) + damping
    # A PSD M plus λ > 0 is positive definite exactly; otherwise M + λI must clear the rounding floor.
    if exponent < 0 and smallest <= floor and not (psd and damping > 0):
        raise ValueError(
            f"Fisher matrix is not positive definite (smallest eigenvalue {smallest:.3e} after "
            f"damping {damping:g}), so its power {exponent:g} does not exist; add damping, "
            f"e.g. damping={max(1e-6, 1e-3 * scale):.1e}"
        )
    if exponent >= 0 and smallest < -floor:
        raise ValueError(
            f"Fisher matrix is not positive semi-definite (smallest eigenvalue {smallest:.3e}); "
            "a Fisher estimate is PSD by construction, so check how it was built, or add damping"
        )
    eigenvalues = torch.where(eigenvalues >= -floor, eigenvalues.clamp_min(0.0), eigenvalues) + damping
    powered = eigenvalues.clamp_min(0.0).pow(exponent) if exponent != 0 else torch.ones_like(eigenvalues)
    return ((eigenvectors * powered.unsqueeze(-2)) @ eigenvectors.mT).to(matrix.dtype)


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
        _check_exponent(exponent, damping)
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


def kfac_inputs(layer: nn.Linear, inputs: Tensor) -> Tensor:
    """Rows ``a`` of K-FAC's input factor ``A = E[a aᵀ]``: ``(N, in)``, plus a trailing 1 where ``layer`` has a bias."""
    rows = inputs.detach().reshape(-1, layer.in_features)
    return rows if layer.bias is None else torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1)


# ---------------------------------------------------------------------------------------------------
# Estimators (Eqs. 23–24)
# ---------------------------------------------------------------------------------------------------

KINDS = ("true", "empirical", "exact")
FORMS = ("diagonal", "full", "kfac")


@contextmanager
def _validation_off() -> Iterator[None]:
    """Disable ``torch.distributions`` argument validation (data-dependent checks break ``vmap``)."""
    old = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)


@contextmanager
def seeded(device: torch.device, generator: torch.Generator | None) -> Iterator[None]:
    """Run the body on global RNGs seeded from ``generator``, restoring their state afterwards.

    ``Distribution.sample`` takes no generator, so a seed is drawn from ``generator`` and the CPU RNG
    (and the RNG of ``device`` if it is an accelerator) is forked and seeded with it. Without a
    generator the body runs on the global RNGs unchanged.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    module = None if device.type == "cpu" else torch.get_device_module(device.type)
    index = [] if module is None else [module.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=index, device_type=None if module is None else device.type):
        torch.default_generator.manual_seed(seed)
        if module is not None:
            with module.device(index[0]):
                module.manual_seed(seed)
        yield


def _predict(
    model: Callable[[Tensor], Any], inputs: Tensor, distribution: Callable[[Tensor], Distribution] | None
) -> Distribution:
    """The model's predictive distribution for a batch, with ``batch_shape`` ``(len(inputs), ...)``."""
    output = model(inputs)
    if isinstance(output, Distribution):
        if distribution is not None:
            raise TypeError("model already returns a Distribution; drop the distribution= argument")
        dist = output
    elif isinstance(output, Tensor) and distribution is not None:
        dist = distribution(output)
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"distribution(output) must return a torch.distributions.Distribution, got {type(dist).__name__}"
            )
    else:
        raise TypeError(
            f"model returned {type(output).__name__}; it must return a torch.distributions.Distribution, "
            "or a Tensor together with distribution=<callable mapping that Tensor to a Distribution>"
        )
    if dist.batch_shape[:1] != inputs.shape[:1]:
        raise ValueError(
            f"the model's distribution has batch_shape {tuple(dist.batch_shape)} for {len(inputs)} inputs; "
            "it must map a batch (N, ...) to a distribution with batch_shape (N, ...)"
        )
    return dist


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True); the Fisher would be empty")
    return params


def _selected(model: nn.Module, names: Collection[str] | None) -> dict[str, Tensor]:
    """The trainable parameters named in ``names`` (all of them for ``None``), in ``named_parameters()`` order."""
    params = _trainable(model)
    if names is None:
        return params
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise ValueError(f"params {unknown} are not trainable parameters of the model; it has {list(params)}")
    if not names:
        raise ValueError("params is empty; the Fisher would be empty")
    return {name: p for name, p in params.items() if name in names}


def _check_lengths(inputs: Tensor, targets: Tensor) -> None:
    if len(inputs) != len(targets):
        raise ValueError(
            f"inputs and targets differ in length ({len(inputs)} vs {len(targets)}); pass one target per input row"
        )


def per_sample_grads(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    distribution: Callable[[Tensor], Distribution] | None = None,
    params: Collection[str] | None = None,
) -> dict[str, Tensor]:
    """Per-sample scores ``∇θ log p(y_i | x_i; θ)``, the factors of Eqs. 23–24.

    Each input row is one sample: the model is called (under ``torch.func.vmap``) on ``x_i`` with a
    leading batch dimension of 1, and ``log p`` is summed over the distribution's remaining batch and
    event dimensions. Returns one ``(N, *param.shape)`` tensor per trainable parameter, in
    ``named_parameters()`` order; frozen parameters are excluded. ``params`` (names) restricts the
    scores to those parameters, the others held at their values (memory is ``N ×`` their size). Distribution
    argument validation is switched off while tracing (its data-dependent checks break ``vmap``); dropout
    must be off (eval mode).
    """
    _check_lengths(inputs, targets)
    params = {name: p.detach() for name, p in _selected(model, params).items()}

    def log_prob(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        dist = _predict(lambda z: functional_call(model, theta, (z,)), x.unsqueeze(0), distribution)
        return dist.log_prob(y.unsqueeze(0)).sum()

    with _validation_off():
        grads = vmap(grad(log_prob), in_dims=(None, 0, 0))(params, inputs, targets)
    for name, g in grads.items():
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"the gradient of log p w.r.t. parameter '{name}' contains NaN or inf")
    return grads


def sample_targets(
    model: nn.Module,
    inputs: Tensor,
    *,
    distribution: Callable[[Tensor], Distribution] | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Targets ``y ~ p(· | x; θ)`` from the model's own predictive distribution (no gradient).

    Returns shape ``(num_samples * N, ...)``, row ``s·N + i`` drawn for input ``i``: aligned with
    ``inputs.repeat(num_samples, 1, ...)``. With ``generator``, a seed drawn from it seeds forked
    global RNGs (``Distribution.sample`` has no generator argument), so the global RNG state is left
    unchanged and equal generators give equal targets.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    with torch.no_grad(), seeded(inputs.device, generator):
        return _predict(model, inputs, distribution).sample((num_samples,)).flatten(0, 1)


def _weighted_samples(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None,
    kind: str,
    distribution: Callable[[Tensor], Distribution] | None,
    num_samples: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs, targets, weights)`` with ``F = Σ_m w_m ∇log p(y_m|x_m) ∇log p(y_m|x_m)ᵀ``.

    empirical: the given targets, ``w = 1/N``; true: ``num_samples`` model draws per input,
    ``w = 1/(S·N)``; exact: every support point ``y_k`` per input, ``w = p(y_k|x_i)/N``.
    """
    n, dtype = len(inputs), next(iter(_trainable(model).values())).dtype
    if n == 0:
        raise ValueError("inputs is empty; the Fisher is a mean over at least one sample")
    if kind == "empirical":
        if targets is None:
            raise ValueError("kind='empirical' needs the observed targets; pass targets=")
        _check_lengths(inputs, targets)
        return inputs, targets, torch.full((n,), 1.0 / n, dtype=dtype, device=inputs.device)
    if targets is not None:
        raise ValueError(f"kind={kind!r} takes its targets from the model; pass targets only with kind='empirical'")
    if kind == "true":
        targets = sample_targets(model, inputs, distribution=distribution, num_samples=num_samples, generator=generator)
        weights = torch.full((len(targets),), 1.0 / len(targets), dtype=dtype, device=inputs.device)
    else:
        with torch.no_grad():
            dist = _predict(model, inputs, distribution)
            if not dist.has_enumerate_support:
                raise ValueError(
                    f"kind='exact' enumerates the support, which {type(dist).__name__} does not have "
                    "(has_enumerate_support is False); use kind='true' for continuous distributions"
                )
            if dist.batch_shape[1:].numel() != 1:
                raise ValueError(
                    f"kind='exact' needs one discrete variable per sample, but batch_shape is "
                    f"{tuple(dist.batch_shape)}; use kind='true'"
                )
            support = dist.enumerate_support()  # (K, N, ...)
            weights = dist.log_prob(support).reshape(-1).exp().to(dtype) / n
        targets = support.flatten(0, 1)
    return inputs.repeat(len(targets) // n, *[1] * (inputs.ndim - 1)), targets, weights


def _weighted_gram(rows: Tensor, weights: Tensor) -> Tensor:
    """``Σ_m w_m r_m r_mᵀ`` (symmetric by construction) for rows ``r_m`` and weights ``w_m ≥ 0``."""
    scaled = rows * weights.sqrt().unsqueeze(1)
    return scaled.mT @ scaled


def _kfac(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    weights: Tensor,
    distribution: Callable[[Tensor], Distribution] | None,
) -> dict[str, KroneckerFisher]:
    """K-FAC ``A = Σ w a aᵀ``, ``G = Σ w δ δᵀ`` per trainable ``nn.Linear`` (one forward and backward)."""
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters())
    }
    if not layers:
        raise ValueError(
            "form='kfac' needs an nn.Linear layer with trainable parameters; use form='diagonal' or 'full'"
        )
    acts: dict[str, Tensor] = {}
    outs: dict[str, Tensor] = {}

    def capture(name: str) -> Callable[..., None]:
        def hook(module: nn.Linear, args: tuple[Tensor, ...], output: Tensor) -> None:
            if name in acts:
                raise ValueError(f"form='kfac': layer '{name}' is called more than once per forward")
            if args[0].shape != (len(inputs), module.in_features):
                raise ValueError(
                    f"form='kfac' needs each nn.Linear applied to (N, in) rows; layer '{name}' got "
                    f"{tuple(args[0].shape)}; use form='diagonal' or 'full'"
                )
            acts[name], outs[name] = args[0].detach(), output

        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            log_prob = _predict(model, inputs, distribution).log_prob(targets).sum()
            unused = sorted(set(layers) - set(outs))
            if unused:
                raise ValueError(f"form='kfac': trainable nn.Linear layers {unused} are not called in forward")
            # autograd.grad w.r.t. the outputs instead of .backward(): row i is δ_i, no .grad is touched
            grads = torch.autograd.grad(log_prob, list(outs.values()), materialize_grads=True)
            deltas = dict(zip(outs, grads, strict=True))  # outs is in call order, not module order
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for name, layer in layers.items():
        a, delta = kfac_inputs(layer, acts[name]), deltas[name]
        if not bool(torch.isfinite(delta).all()):
            raise ValueError(f"the gradient of log p w.r.t. the output of layer '{name}' contains NaN or inf")
        result[name] = KroneckerFisher(_weighted_gram(a, weights), _weighted_gram(delta, weights))
    return result


def fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    kind: str = "true",
    form: str = "diagonal",
    distribution: Callable[[Tensor], Distribution] | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    params: Collection[str] | None = None,
) -> dict[str, DiagonalFisher] | DenseFisher | dict[str, KroneckerFisher]:
    """Estimate ``F(θ) = E[∇θ log p(y|x) ∇θ log p(y|x)ᵀ]`` (Eqs. 23–24) over the rows of ``inputs``.

    ``kind``: ``"empirical"`` (the given ``targets``), ``"true"`` (``num_samples`` targets per input
    drawn from the model, see :func:`sample_targets` for ``generator``) or ``"exact"`` (the true
    Fisher, the expectation over ``y`` summed over the support of a discrete distribution with the
    model's probabilities as weights). The inputs ``x`` are averaged uniformly.

    ``form``: ``"diagonal"`` → ``{parameter name: DiagonalFisher}``; ``"full"`` → one
    :class:`DenseFisher` over all trainable parameters flattened in ``named_parameters()`` order;
    ``"kfac"`` → ``{module name: KroneckerFisher}`` for each ``nn.Linear`` with trainable parameters,
    ``A = E_x[a aᵀ]`` (bias-augmented layer inputs) and ``G = E_x E_y[δ δᵀ]``, ``δ = ∇_s log p`` at the
    layer output ``s``. Results are on the inputs' device in the model's dtype.

    ``params`` (``"diagonal"`` and ``"full"`` only): the names of the trainable parameters to estimate
    the Fisher of, the others held fixed (default: all), e.g. the parameters a K-FAC pass did not cover.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")
    if form == "kfac" and params is not None:
        raise ValueError("params= selects parameters for form='diagonal' or 'full'; form='kfac' covers every nn.Linear")
    inputs, targets, weights = _weighted_samples(model, inputs, targets, kind, distribution, num_samples, generator)
    if form == "kfac":
        return _kfac(model, inputs, targets, weights, distribution)
    grads = per_sample_grads(model, inputs, targets, distribution=distribution, params=params)
    if form == "diagonal":
        return {name: DiagonalFisher(torch.einsum("m,m...->...", weights, g.square())) for name, g in grads.items()}
    scores = torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)
    return DenseFisher(_weighted_gram(scores, weights))
