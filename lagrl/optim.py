"""``torch.optim`` optimizers of the Learning-Lagrangian ρ family (paper §3.3, Eqs. 31–32; THEORY §5).

The flow ``θ̇ = −F^{-ρ} g`` is discretised in four stages, each an estimator choice (the paper derives
none of β1, β2, bias correction or ε; lagrl treats them as the estimator's):

1. gradient estimate  ``m_t = β1 m_{t−1} + (1 − β1) g_t``, ``ĝ = m_t / (1 − β1^t)`` (β1 = 0: ``ĝ = g_t``)
2. Fisher estimate    diagonal ``v_t = β2 v_{t−1} + (1 − β2) g_t²``, ``F̂ = v_t / (1 − β2^t)``;
                      full ``F̂`` from ``g gᵀ``; or K-FAC factors ``A``, ``G`` per ``nn.Linear``
3. precondition       ``u = F̂^{-ρ} ĝ`` with damping ε
4. step               ``θ ← θ − η · u``: ``η = lr`` (``step_rule="lr"``), or a scale from the Lagrangian
                      (``"energy"``: ``½ η² uᵀMu = δ`` per step and param group; ``"trust-region"``:
                      the same steps, the update's displacement held in ``½ DᵀMD ≤ Δ``; ``"graft"``:
                      Adam's step length per block), see :mod:`lagrl.step_size`

ρ = 0 is momentum SGD (no Fisher is kept), ρ = ½ with the diagonal Fisher is Adam (Eq. 32; RMSprop,
Eq. 31, without the first moment and bias correction), ρ = 1 the natural gradient.

Damping placement. Diagonal: ``u = ĝ / (F̂^ρ + ε)``, Adam's placement, which keeps the ρ = ½ preset
bit-identical to ``torch.optim.Adam``. Full and K-FAC: ``u = (F̂ + εI)^{-ρ} ĝ``, K-FAC damped per
factor (:meth:`lagrl.fisher.KroneckerFisher.power`). These matrix forms want a larger ε (≈1e-3).

K-FAC is attached to a model: ``LagrangianOptimizer(model.parameters(), fisher="kfac", model=model)``
or ``opt.attach(model)`` after construction. Forward hooks on each ``nn.Linear`` whose weight the
optimizer holds record the layer inputs and, at backward, the output gradients of the loss being
minimised (an empirical Fisher). The loss is taken as a mean over the batch, so ``G = N Σ δ δᵀ``.
Other parameters (embeddings, log-std, convolutions) use the diagonal path.

``fisher_source="external"`` replaces stage 2 by an estimate the caller supplies with
:meth:`LagrangianOptimizer.set_fisher` (for example the *true* Fisher of a policy, actions drawn from
π, from :func:`lagrl.fisher.fisher`); steps then precondition with the latest supplied estimate, taken
as complete (no EMA, no bias correction), and K-FAC needs no hooks.

:meth:`LagrangianOptimizer.metric` exposes the metric ``M`` of the next step (``M^{-ρ}`` is exactly the
preconditioner it applies, damping included), from which :mod:`lagrl.trajectory` computes the kinetic
energy and the Legendre momentum of the run.

Adam's first moment ``exp_avg`` is a gradient estimate, not the Hamiltonian momentum ``p``
(:mod:`lagrl.legendre`); the state keys keep torch's names so state dicts cross-load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from lagrl.fisher import DenseFisher, DiagonalFisher, Fisher, KroneckerFisher, kfac_inputs, spd_power
from lagrl.step_size import SCALED_RULES, check_step_rule, energy_step_size

FISHER_FORMS = ("diagonal", "full", "kfac")
FISHER_SOURCES = ("gradients", "external")
GRAFT_EPS = 1e-8  # torch.optim.Adam's default ε, for the Adam step whose length "graft" borrows


def fractional_power(values: Tensor, rho: float) -> Tensor:
    """``v^ρ`` elementwise for ``v ≥ 0``, as a new tensor.

    ρ = ½ is ``sqrt`` (Adam's op, kept for bit-identity); any other ρ is ``exp(ρ log v)`` computed in
    one buffer, about twice as fast as ``torch.pow`` on CPU (``log 0 = −inf`` gives ``0^ρ = 0``).
    """
    if rho == 0.5:
        return values.sqrt()
    if rho in (0, 1):
        return torch.ones_like(values) if rho == 0 else values.clone()
    return values.log().mul_(rho).exp_()


def diagonal_metric(fisher: Tensor, rho: float, eps: float) -> DiagonalFisher:
    """The diagonal step's metric ``M = (F̂^ρ + ε)^{1/ρ}``, so that ``M^{-ρ} = 1/(F̂^ρ + ε)`` (Adam's damping)."""
    return DiagonalFisher(fractional_power(fisher, rho).add_(eps).pow_(1.0 / rho))


def _parameter_name(group: dict[str, Any], index: int) -> str:
    """The name of ``group["params"][index]`` (from named parameters), else its index and shape."""
    names = group.get("param_names")
    return names[index] if names else f"#{index} (shape {list(group['params'][index].shape)})"


class MetricBlock(NamedTuple):
    """One block of :meth:`LagrangianOptimizer.metric`: its parameters, ``M`` (``None``: identity), ρ and damping.

    A ``KroneckerFisher`` block acts on ``[W | b]`` of its ``[weight, bias]``, a ``DenseFisher`` on the
    concatenated flat parameters, a ``DiagonalFisher`` on one parameter. The block's metric is
    ``metric`` damped by ``damping`` as its ``power(e, damping)`` damps it (``F + λI``; per factor,
    ``(A + √λI) ⊗ (G + √λI)``, for K-FAC): kept apart so that a power of an ill-conditioned float32
    estimate exists whenever the damping makes it positive definite.
    """

    params: list[Tensor]
    metric: Fisher | None
    rho: float
    damping: float = 0.0


class _Direction(NamedTuple):
    """One block's step before its size is chosen: the step is ``−(η / bc1) · update`` on ``views``.

    ``update`` is ``F̂^{-ρ} m_t`` in the block's layout (``[W | b]`` for K-FAC, flat for full), split
    over ``views`` along ``axis``; ``energy`` is ``updateᵀ M update`` in the step's metric (computed
    for the energy-sized rules only); ``adam`` Adam's step per unit lr (``"graft"`` only); ``key`` the
    parameter whose state holds the block's displacement and ``quadratic`` its ``x ↦ xᵀMx`` on a
    tensor of ``update``'s layout (``"trust-region"`` only).
    """

    views: list[Tensor]
    update: Tensor
    axis: int
    bc1: float
    energy: Tensor
    adam: Tensor | None
    key: Tensor
    quadratic: Callable[[Tensor], Tensor] | None = None

    def parts(self, tensor: Tensor | None = None) -> list[Tensor]:
        """``tensor`` (default ``update``) split over ``views``, each part shaped like its view."""
        tensor = self.update if tensor is None else tensor
        sizes = [view.shape[self.axis] if view.ndim > self.axis else view.numel() for view in self.views]
        parts = [tensor] if len(self.views) == 1 else tensor.split(sizes, dim=self.axis)
        return [part.view_as(view) for view, part in zip(self.views, parts)]


def _step_directions(directions: list[_Direction], etas: list[float]) -> None:
    """``views −= (η / bc1) · update`` for every direction: one fused ``_foreach_add_`` per distinct ``η / bc1``
    (one in all for the energy rule: the blocks of a group share η and, stepping together, bc1)."""
    batches: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for direction, eta in zip(directions, etas):
        views, parts = batches.setdefault(-eta / direction.bc1, ([], []))
        views.extend(direction.views)
        parts.extend(direction.parts())
    for alpha, (views, parts) in batches.items():
        torch._foreach_add_(views, parts, alpha=alpha)


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or inf; no parameter or state was changed by the step that found it."""


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps `step` in this dtype on the CPU; matching it lets state dicts cross-load.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_hyperparameters(lr: float, rho: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise ValueError(
            f"rho must lie in [0, 1], got {rho}: 0 is gradient descent, 0.5 the paper's postulate "
            "(Adam), 1 the natural gradient"
        )
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}; use lr >= 0")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}; use eps >= 0 (the Fisher damping)")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}; use 0 <= beta < 1")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}; use weight_decay >= 0")


class LagrangianOptimizer(torch.optim.Optimizer):
    """Discretised Learning-Lagrangian flow ``θ_{t+1} = θ_t − lr · F̂_t^{-ρ} ĝ_t`` (THEORY §5).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer; named
            parameters (``model.named_parameters()``) make error messages name the parameter.
        lr: step size.
        rho: exponent ρ ∈ [0, 1] of the preconditioner ``F^{-ρ}``.
        betas: EMA coefficients of the gradient estimate (β1) and of the Fisher estimate (β2).
        eps: damping ε of the Fisher (placement: see the module docstring).
        weight_decay: L2 penalty added to the gradient, or, with ``decoupled_weight_decay``,
            the decay ``θ ← θ (1 − lr · weight_decay)`` applied before the step (AdamW).
        bias_correction: divide the EMAs by ``1 − β^t`` (Adam) or not (RMSprop).
        fisher: ``"diagonal"`` (EMA of ``g²``), ``"full"`` (EMA of ``g gᵀ`` over each group's
            flattened parameters: small models only) or ``"kfac"`` (needs ``model``).
        amsgrad: precondition with the running maximum of the diagonal Fisher (diagonal only).
        maximize: ascend instead of descend.
        update_interval: recompute the matrix power of a full or K-FAC Fisher every this many steps.
        model: the module whose ``nn.Linear`` layers K-FAC hooks into (see :meth:`attach`).
        fisher_source: ``"gradients"`` (stage 2 from the gradients the optimizer sees) or
            ``"external"`` (the estimate last given to :meth:`set_fisher`).
        step_rule: ``"lr"`` (``η = lr``), ``"energy"`` (``η = (lr / initial_lr) · sqrt(2δ / uᵀMu)``: each
            step of a param group has kinetic energy ``½ ΔθᵀMΔθ = δ·(lr/initial_lr)²`` in the step's
            metric ``M``, so a schedule on ``lr`` scales the step, not its units), ``"trust-region"``
            (the energy rule's steps, and the group's displacement ``D`` since :meth:`start_update` held
            in ``½ DᵀMD ≤ Δ·(lr/initial_lr)²`` by radial projection) or ``"graft"`` (per block, the
            length of Adam's step ``lr · m̂/(√v̂ + 1e-8)`` with the direction ``u``).
        energy_budget: ``δ`` of the energy-sized rules, per step.
        trust_budget: ``Δ`` of ``step_rule="trust-region"``, per update (``None``: ``energy_budget``).
    """

    fisher_state_key = "exp_avg_sq"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        rho: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        bias_correction: bool = True,
        fisher: str = "diagonal",
        amsgrad: bool = False,
        maximize: bool = False,
        update_interval: int = 1,
        model: nn.Module | None = None,
        fisher_source: str = "gradients",
        step_rule: str = "lr",
        energy_budget: float = 1e-3,
        trust_budget: float | None = None,
    ) -> None:
        _check_hyperparameters(lr, rho, betas, eps, weight_decay)
        check_step_rule(step_rule, energy_budget, trust_budget)
        if fisher not in FISHER_FORMS:
            raise ValueError(f"unknown fisher form {fisher!r}; choose one of {FISHER_FORMS}")
        if fisher_source not in FISHER_SOURCES:
            raise ValueError(f"unknown fisher_source {fisher_source!r}; choose one of {FISHER_SOURCES}")
        if amsgrad and fisher != "diagonal":
            raise ValueError("amsgrad applies to the diagonal Fisher only; use fisher='diagonal'")
        if update_interval < 1:
            raise ValueError(f"update_interval must be a positive integer, got {update_interval}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
            rho=rho,
            bias_correction=bias_correction,
            fisher=fisher,
            update_interval=update_interval,
            fisher_source=fisher_source,
            step_rule=step_rule,
            energy_budget=energy_budget,
            trust_budget=trust_budget,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_step_rule(group["step_rule"], group["energy_budget"], group["trust_budget"])
            if group["step_rule"] in SCALED_RULES:
                group.setdefault("initial_lr", group["lr"])  # torch's LR schedulers use the same key
        self._kfac_layers: dict[Tensor, nn.Linear] = {}
        self._kfac_biases: set[Tensor] = set()
        self._pending_factors: dict[Tensor, tuple[Tensor, Tensor]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        if model is not None:
            self.attach(model)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state dict saved by torch.optim.Adam lacks lagrl's keys: fill them from the defaults.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ------------------------------------------------------------------ K-FAC attachment
    def attach(self, model: nn.Module) -> None:
        """Hook K-FAC into every ``nn.Linear`` of ``model`` whose weight this optimizer holds."""
        owned = {p for group in self.param_groups if group["fisher"] == "kfac" for p in group["params"]}
        hooked = {p for group in self.param_groups if group["fisher_source"] == "gradients" for p in group["params"]}
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight in owned:
                if module.bias is not None and module.bias not in owned:
                    raise ValueError("K-FAC needs a layer's weight and bias in the same optimizer")
                self._kfac_layers[module.weight] = module
                if module.bias is not None:
                    self._kfac_biases.add(module.bias)
                if module.weight in hooked:  # an external Fisher needs the layer, not its activations
                    # A plain function, not a bound method: deep copies of the model do not copy the optimizer.
                    self._hooks.append(module.register_forward_hook(lambda *args: self._record_layer(*args)))
        if not self._kfac_layers:
            raise ValueError("fisher='kfac' found no nn.Linear layer of the model among the optimizer's params")

    def detach(self) -> None:
        """Remove the K-FAC hooks; later steps use the last factors they recorded."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _record_layer(self, module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        activations = kfac_inputs(module, inputs[0])

        def record_output_gradient(grad: Tensor) -> None:
            # Mean-reduced loss: row i of `grad` is ∇ℓ_i / N, so E[∇ℓ ∇ℓᵀ] = N Σ δ δᵀ.
            delta = grad.detach().reshape(-1, module.out_features)
            n = len(delta)
            self._pending_factors[module.weight] = (activations.T @ activations / n, n * delta.T @ delta)

        output.register_hook(record_output_gradient)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of the discretised flow; ``closure`` (optional) re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            self._check_finite(group, params)
            if group["fisher_source"] == "external" and group["rho"] != 0:
                self._check_external(group, params)
            if group["fisher"] == "full":
                self._apply(group, [self._full_direction(group)])
                continue
            layers = self._kfac_layers if group["fisher"] == "kfac" else {}
            if group["fisher"] == "kfac" and not layers:
                raise ValueError("fisher='kfac' needs the model: pass model=... or call attach(model) before step()")
            diagonal = [p for p in params if p not in layers and p not in self._kfac_biases]
            kfac = [p for p in params if p in layers]
            steps = self._advance_steps(diagonal + kfac)
            directions = []
            for param, step in zip(diagonal, steps):
                if group["step_rule"] == "lr":
                    self._diagonal_step(group, param, step)  # Adam's own ops, for bit-identity
                else:
                    directions.append(self._diagonal_direction(group, param, step))
            for param, step in zip(kfac, steps[len(diagonal) :]):
                directions.append(self._kfac_direction(group, layers[param], step))
            self._apply(group, directions)
        return loss

    def _apply(self, group: dict[str, Any], directions: list[_Direction]) -> None:
        """Stage 4: ``θ ← θ − η u`` with ``η`` from the group's ``step_rule`` (see :mod:`lagrl.step_size`)."""
        if not directions:
            return
        rule = group["step_rule"]
        if rule == "lr":
            _step_directions(directions, [group["lr"]] * len(directions))
        elif rule in SCALED_RULES:
            corrections = {d.bc1 for d in directions}
            if len(corrections) == 1:  # one sum, one division: the blocks stepped together
                energy = torch.stack([d.energy for d in directions]).sum().item() / corrections.pop() ** 2
            else:
                energy = torch.stack([d.energy / d.bc1**2 for d in directions]).sum().item()
            eta = energy_step_size(energy, group["energy_budget"])
            # The first step of an update fixes the cap: a gradient that shrinks within the update (PPO's
            # clipping, a converging epoch) shrinks the step instead of being scaled back up to δ.
            cap = group.get("step_size_cap")
            if cap is None and eta > 0:
                group["step_size_cap"] = cap = eta
            eta = eta if cap is None else min(eta, cap)
            initial = group.setdefault("initial_lr", group["lr"])
            scale = group["lr"] / initial if initial > 0 else 0.0
            _step_directions(directions, [scale * eta] * len(directions))
            if rule == "trust-region":
                budget = group["energy_budget"] if group["trust_budget"] is None else group["trust_budget"]
                self._hold_in_trust_region(group, directions, scale * eta, scale**2 * budget)
        else:  # graft: per block, Adam's step length along the direction u
            norms = torch.stack([torch.stack([d.adam.norm(), d.update.norm() / d.bc1]) for d in directions]).tolist()
            etas = [group["lr"] * adam_norm / norm if norm > 0 else 0.0 for adam_norm, norm in norms]
            _step_directions(directions, etas)

    def _hold_in_trust_region(
        self, group: dict[str, Any], directions: list[_Direction], eta: float, budget: float
    ) -> None:
        """``"trust-region"``: ``D ← D − (η/bc1) u`` per block; where ``½ DᵀMD > Δ``, ``θ ← θ₀ + sqrt(2Δ/DᵀMD) · D``.

        ``D`` is the group's displacement since :meth:`start_update` (the sum of its steps); the
        projection is radial in the metric ``M`` of the step. ``group["update_energy"]`` keeps ``½ DᵀMD``.
        """
        displacements = []
        for direction in directions:
            state = self.state[direction.key]
            step = direction.update * (-eta / direction.bc1)
            previous = state.get("displacement")
            state["displacement"] = step if previous is None else previous.add_(step)
            displacements.append(state["displacement"])
        energy = 0.5 * torch.stack([d.quadratic(x) for d, x in zip(directions, displacements)]).sum().item()
        if energy > budget:
            shrink = math.sqrt(budget / energy)
            for direction, displacement in zip(directions, displacements):
                torch._foreach_add_(direction.views, direction.parts(displacement), alpha=shrink - 1.0)
                displacement.mul_(shrink)
            energy = budget
        group["update_energy"] = energy

    def _check_finite(self, group: dict[str, Any], params: list[Tensor]) -> None:
        # One fused reduction: a sum of norms is finite iff every gradient is (barring overflow of a
        # huge finite gradient, which the exact check below then clears).
        if math.isfinite(torch.stack(torch._foreach_norm([p.grad for p in params])).sum().item()):
            return
        for index, param in enumerate(group["params"]):
            if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                raise NonFiniteGradientError(
                    f"gradient of parameter {_parameter_name(group, index)} in param group "
                    f"{self.param_groups.index(group)} "
                    "holds NaN or inf; nothing was updated. Check the loss for NaN/inf (log of 0, "
                    "division by 0, exploding values), lower lr or clip gradients"
                )

    def _advance_steps(self, params: list[Tensor]) -> list[float]:
        """Increment each parameter's ``step`` (torch's 0-dim tensor) in one fused op; return the counts."""
        steps = []
        for param in params:
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            steps.append(state["step"])
        if not steps:
            return []
        torch._foreach_add_(steps, 1.0)
        return torch.stack(steps).tolist()

    def _gradient_estimate(self, group: dict[str, Any], state: dict[str, Any], grad: Tensor) -> Tensor:
        """Stage 1: ``m_t = β1 m_{t−1} + (1 − β1) g_t`` (stored as ``exp_avg``; β1 = 0 keeps none)."""
        beta1 = group["betas"][0]
        if beta1 == 0:
            return grad
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        return state["exp_avg"]

    def _decay(self, group: dict[str, Any], param: Tensor, grad: Tensor) -> Tensor:
        weight_decay = group["weight_decay"]
        if weight_decay == 0:
            return grad
        if group["decoupled_weight_decay"]:
            param.mul_(1 - group["lr"] * weight_decay)
            return grad
        return grad.add(param, alpha=weight_decay)

    def _diagonal_denominator(
        self, group: dict[str, Any], state: dict[str, Any], param: Tensor, grad: Tensor, bc2: float
    ) -> Tensor | None:
        """Stages 2–3 of a diagonal parameter: ``F̂^ρ + ε`` after this step's Fisher update (``None`` where ρ = 0)."""
        rho = group["rho"]
        if rho == 0:
            return None
        key = self.fisher_state_key
        external = group["fisher_source"] == "external"
        if external:
            fisher = state[key]
        else:
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
            fisher = state[key]
            fisher.mul_(group["betas"][1]).addcmul_(grad, grad, value=1 - group["betas"][1])
        if group["amsgrad"]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            fisher = torch.maximum(state["max_exp_avg_sq"], fisher, out=state["max_exp_avg_sq"])
        root = fractional_power(fisher, rho)
        if group["bias_correction"] and not external:
            root.div_(bc2**rho)  # in place: the same values as Adam's `/`, one buffer fewer
        return root.add_(group["eps"])

    def _diagonal_stages(
        self, group: dict[str, Any], param: Tensor, step: float
    ) -> tuple[dict[str, Any], Tensor, Tensor, float, float, Tensor | None]:
        """Stages 1–3 of a diagonal parameter: its state, gradient, ``m_t``, bias corrections and ``F̂^ρ + ε``."""
        state = self.state[param]
        grad = param.grad if not group["maximize"] else -param.grad
        grad = self._decay(group, param, grad)
        direction = self._gradient_estimate(group, state, grad)
        bc1, bc2 = self._bias_corrections(group, step)
        return state, grad, direction, bc1, bc2, self._diagonal_denominator(group, state, param, grad, bc2)

    def _diagonal_step(self, group: dict[str, Any], param: Tensor, step: float) -> None:
        """Diagonal Fisher: ``θ ← θ − lr/(1−β1^t) · m_t / ((v_t/(1−β2^t))^ρ + ε)`` (Eq. 32 at ρ = ½)."""
        _, _, direction, bc1, _, denominator = self._diagonal_stages(group, param, step)
        if denominator is None:
            param.add_(direction, alpha=-group["lr"] / bc1)
        else:
            param.addcdiv_(direction, denominator, value=-group["lr"] / bc1)

    def _diagonal_direction(self, group: dict[str, Any], param: Tensor, step: float) -> _Direction:
        """The diagonal step's ``u = m_t / (F̂^ρ + ε)`` with its energy ``uᵀMu``, ``M = (F̂^ρ + ε)^{1/ρ}``."""
        state, grad, direction, bc1, bc2, denominator = self._diagonal_stages(group, param, step)
        update = direction if denominator is None else direction / denominator
        metric = None if denominator is None else denominator.pow(1.0 / group["rho"])
        energy = update.square()
        if metric is not None:
            energy.mul_(metric)
        quadratic = None
        if group["step_rule"] == "trust-region":
            quadratic = (lambda x: x.square().sum()) if metric is None else (lambda x: (x.square() * metric).sum())
        adam = self._adam(group, state, grad, direction, bc1, bc2)
        return _Direction([param], update, 0, bc1, energy.sum(), adam, param, quadratic)

    def _adam(
        self, group: dict[str, Any], state: dict[str, Any], grad: Tensor, direction: Tensor, bc1: float, bc2: float
    ) -> Tensor | None:
        """For ``step_rule="graft"``: Adam's step per unit lr, ``m̂ / (√v̂ + 1e-8)``, ``v`` the EMA of ``g²`` (β2)."""
        if group["step_rule"] != "graft":
            return None
        if "graft_exp_avg_sq" not in state:
            state["graft_exp_avg_sq"] = torch.zeros_like(grad)
        beta2 = group["betas"][1]
        second = state["graft_exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return (direction / bc1).div_((second / bc2).sqrt_().add_(GRAFT_EPS))

    def _bias_corrections(self, group: dict[str, Any], step: float) -> tuple[float, float]:
        if not group["bias_correction"]:
            return 1.0, 1.0
        beta1, beta2 = group["betas"]
        return 1 - beta1**step, 1 - beta2**step

    def _full_direction(self, group: dict[str, Any]) -> _Direction:
        """Full Fisher over the group's flattened parameters: ``u = (F̂ + εI)^{-ρ} m_t``, ``M = F̂ + εI``."""
        params = group["params"]
        missing = [i for i, p in enumerate(params) if p.grad is None]
        if missing:
            raise ValueError(
                f"parameter {_parameter_name(group, missing[0])} has no gradient, but fisher='full' needs every "
                "parameter's gradient: make the loss depend on it, or leave it out of this param group"
            )
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        grad = -grad if group["maximize"] else grad
        state = self.state[params[0]]
        (step,) = self._advance_steps([params[0]])
        if group["decoupled_weight_decay"]:
            for param in params:
                self._decay(group, param, grad)
        else:
            grad = self._decay(group, torch.cat([p.reshape(-1) for p in params]), grad)
        direction = self._gradient_estimate(group, state, grad)
        bc1, bc2 = self._bias_corrections(group, step)
        if group["rho"] == 0:
            update = direction
        elif group["fisher_source"] == "external":
            update = state["fisher_power"] @ direction
        else:
            beta2 = group["betas"][1]
            if "fisher_matrix" not in state:
                state["fisher_matrix"] = grad.new_zeros(len(grad), len(grad))
            state["fisher_matrix"].mul_(beta2).addr_(grad, grad, alpha=1 - beta2)
            if (int(step) - 1) % group["update_interval"] == 0:
                state["fisher_power"] = spd_power(state["fisher_matrix"] / bc2, -group["rho"], group["eps"])
            update = state["fisher_power"] @ direction
        energy, quadratic = update.new_zeros(()), None
        if group["step_rule"] in SCALED_RULES:
            metric = self._dense_metric(group, state)

            def quadratic(x: Tensor) -> Tensor:
                return x @ (x if metric is None else metric.matvec(x))

            energy = quadratic(update)
        views = [p.view(-1) for p in params]
        adam = self._adam(group, state, grad, direction, bc1, bc2)
        return _Direction(views, update, 0, bc1, energy, adam, params[0], quadratic)

    def _kfac_direction(self, group: dict[str, Any], layer: nn.Linear, step: float) -> _Direction:
        """K-FAC block of one ``nn.Linear``: ``U = (G + √ε)^{-ρ} M̂ (A + √ε)^{-ρ}`` on ``[W | b]``."""
        weight, bias = layer.weight, layer.bias
        if bias is not None and bias.grad is None:
            raise ValueError(f"the bias of K-FAC layer {layer} has no gradient while its weight has one")
        blocks = [weight] if bias is None else [weight, bias.unsqueeze(1)]  # views: in-place ops reach the params
        grad = weight.grad if bias is None else torch.cat([weight.grad, bias.grad.unsqueeze(1)], dim=1)
        grad = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            if group["decoupled_weight_decay"]:
                for block in blocks:
                    self._decay(group, block, grad)
            else:
                grad = self._decay(group, torch.cat(blocks, dim=1), grad)
        state = self.state[weight]
        direction = self._gradient_estimate(group, state, grad)
        bc1, bc2 = self._bias_corrections(group, step)
        rho = group["rho"]
        if rho == 0:
            update = direction
        else:
            if group["fisher_source"] != "external":
                self._update_factors(group, state, weight)
                if (int(step) - 1) % group["update_interval"] == 0:
                    powered = KroneckerFisher(state["input_factor"] / bc2, state["output_factor"] / bc2).power(
                        -rho, group["eps"]
                    )
                    state["input_power"], state["output_power"] = powered.input_factor, powered.output_factor
            update = KroneckerFisher(state["input_power"], state["output_power"]).matvec(direction)
        energy, quadratic = update.new_zeros(()), None
        if group["step_rule"] in SCALED_RULES:
            energy = self._kronecker_energy(group, state, direction, update)
        if group["step_rule"] == "trust-region":

            def quadratic(x: Tensor) -> Tensor:
                return self._kronecker_quadratic(group, state, x)

        adam = self._adam(group, state, grad, direction, bc1, bc2)
        return _Direction(blocks, update, 1, bc1, energy, adam, weight, quadratic)

    def _kronecker_energy(
        self, group: dict[str, Any], state: dict[str, Any], direction: Tensor, update: Tensor
    ) -> Tensor:
        """``uᵀMu`` for ``M = (A + c I) ⊗ (G + c I)``, ``c = √ε``, without forming the damped factors:

        ``tr(Uᵀ(G + cI) U (A + cI)) = ⟨GUA, U⟩ + c (⟨UA, U⟩ + ⟨GU, U⟩) + c² ⟨U, U⟩`` (the identity where ρ = 0).
        Where the power was taken of this very ``M`` (an external Fisher, or factors refreshed every step),
        ``u = M^{-ρ} m`` gives ``uᵀMu = mᵀM^{1−2ρ}m``: ``⟨m, m⟩`` at ρ = ½ and ``⟨u, m⟩`` at ρ = 1, no product.
        """
        rho = group["rho"]
        if (
            rho != 0
            and "input_factor" in state
            and (group["fisher_source"] == "external" or group["update_interval"] == 1)
        ):
            if rho == 0.5:
                return direction.square().sum()
            if rho == 1:
                return (update * direction).sum()
        return self._kronecker_quadratic(group, state, update)

    def _kronecker_quadratic(self, group: dict[str, Any], state: dict[str, Any], x: Tensor) -> Tensor:
        """``xᵀMx = ⟨GXA, X⟩ + c (⟨XA, X⟩ + ⟨GX, X⟩) + c² ⟨X, X⟩`` on ``[W | b]`` (``⟨X, X⟩`` where ρ = 0)."""
        if group["rho"] == 0 or "input_factor" not in state:
            return x.square().sum()
        correction, root = self._fisher_correction(group, state), group["eps"] ** 0.5
        right = x @ state["input_factor"] / correction
        left = state["output_factor"] @ x / correction
        quadratic = (state["output_factor"] @ right / correction * x).sum()
        return quadratic + root * ((right * x).sum() + (left * x).sum()) + root**2 * x.square().sum()

    def _check_external(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Raise, before any state changes, unless every parameter has its supplied Fisher."""
        stepped = set(params)  # tensors hash by identity
        for index, param in enumerate(group["params"]):
            if group["fisher"] == "full":
                key = "fisher_power" if index == 0 else None
            elif param in self._kfac_biases:
                key = None
            elif param in self._kfac_layers and group["fisher"] == "kfac":
                key = "input_power"
            else:
                key = self.fisher_state_key
            if key is not None and (param in stepped or group["fisher"] == "full") and key not in self.state[param]:
                raise ValueError(
                    f"fisher_source='external' but no Fisher estimate was given for parameter "
                    f"{_parameter_name(group, index)}: call optimizer.set_fisher({{param: estimate}}) before step()"
                )

    def start_update(self) -> None:
        """Begin an update (a batch of steps on one estimate, e.g. PPO's epochs on one rollout).

        ``step_rule="energy"``: the first step after this call takes the full budget, ``η₀ =
        sqrt(2δ / u₀ᵀMu₀)``; later steps take ``min(η₀, sqrt(2δ / uᵀMu))``, so their energy is at most δ
        and a shrinking gradient shrinks the step. ``"trust-region"``: the same, and the displacement
        ``D`` starts again from 0 (the ball is centred on the parameters at this call). :meth:`set_fisher`
        calls this.
        """
        for group in self.param_groups:
            group["step_size_cap"] = None
            if group["step_rule"] == "trust-region":
                group["update_energy"] = 0.0
                for param in group["params"]:
                    if param in self.state:
                        self.state[param].pop("displacement", None)

    # ------------------------------------------------------------------ external Fisher, metric
    @torch.no_grad()
    def set_fisher(self, estimates: Mapping[Tensor, Fisher | Tensor], decay: float = 0.0) -> None:
        """Supply stage 2 for ``fisher_source="external"`` groups: ``F̂ ← decay · F̂_prev + (1 − decay) · F_new``.

        Keys are parameters: a ``DiagonalFisher`` (or a tensor of the parameter's shape) for a
        diagonal parameter; a ``KroneckerFisher`` keyed by the weight of an attached ``nn.Linear``
        (its bias is covered by the same block, and the average is taken factor by factor, as K-FAC
        does); a ``DenseFisher`` keyed by the first parameter of a ``fisher="full"`` group. ``decay = 0``
        replaces the previous estimate; the first estimate of a parameter is taken whole. Matrix powers
        ``(F̂ + ε)^{-ρ}`` are computed here, once per estimate.
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")

        def blend(previous: Tensor | None, new: Tensor) -> Tensor:
            return new.detach().clone() if previous is None or decay == 0 else previous.lerp(new, 1 - decay)

        groups = {p: group for group in self.param_groups for p in group["params"]}
        self.start_update()
        for param, estimate in estimates.items():
            group = groups.get(param)
            if group is None:
                raise ValueError(
                    f"set_fisher got a tensor of shape {list(param.shape)} that this optimizer does not hold"
                )
            if group["fisher_source"] != "external":
                raise ValueError("set_fisher applies to param groups with fisher_source='external'")
            state, rho, eps = self.state[param], group["rho"], group["eps"]
            if isinstance(estimate, KroneckerFisher):
                if param not in self._kfac_layers:
                    raise ValueError(
                        "a KroneckerFisher must be keyed by the weight of an attached nn.Linear: call attach(model)"
                    )
                state["input_factor"] = blend(state.get("input_factor"), estimate.input_factor)
                state["output_factor"] = blend(state.get("output_factor"), estimate.output_factor)
                powered = KroneckerFisher(state["input_factor"], state["output_factor"]).power(-rho, eps)
                state["input_power"], state["output_power"] = powered.input_factor, powered.output_factor
            elif isinstance(estimate, DenseFisher):
                if group["fisher"] != "full" or param is not group["params"][0]:
                    raise ValueError("a DenseFisher must be keyed by the first parameter of a fisher='full' group")
                state["fisher_matrix"] = blend(state.get("fisher_matrix"), estimate.matrix)
                state["fisher_power"] = spd_power(state["fisher_matrix"], -rho, eps)
            else:
                diagonal = estimate.diagonal if isinstance(estimate, DiagonalFisher) else estimate
                if diagonal.shape != param.shape:
                    raise ValueError(
                        f"diagonal Fisher of shape {list(diagonal.shape)} for a parameter of shape {list(param.shape)}"
                    )
                state[self.fisher_state_key] = blend(state.get(self.fisher_state_key), diagonal)

    @torch.no_grad()
    def metric(self) -> list[MetricBlock]:
        """The metric ``M`` of the next step, block by block, covering every parameter.

        ``M^{-ρ}`` is exactly the preconditioner the step applies, damping and bias correction
        included: diagonal ``M = (F̂^ρ + ε)^{1/ρ}`` (Adam: ``(√v̂ + ε)²``; damping 0), full ``M = F̂ + εI``
        (``metric`` F̂, ``damping`` ε), K-FAC ``M = (A + √ε I) ⊗ (G + √ε I)`` on ``[W | b]`` (params
        ``[weight, bias]``; ``metric`` A ⊗ G, ``damping`` ε). ``metric=None`` (the identity) where ρ = 0 or
        no Fisher has been estimated yet. For the kinetic energy ``(1/2P) gᵀM⁻¹g`` and the Legendre
        momentum of the run (:mod:`lagrl.trajectory`).
        """
        blocks: list[MetricBlock] = []
        for group in self.param_groups:
            rho, eps = group["rho"], group["eps"]
            if group["fisher"] == "full":
                state = self.state[group["params"][0]]
                matrix = state.get("fisher_matrix")
                correction = self._fisher_correction(group, state)
                metric = None if rho == 0 or matrix is None else DenseFisher(matrix / correction)
                blocks.append(MetricBlock(list(group["params"]), metric, rho, eps))
                continue
            for param in group["params"]:
                if param in self._kfac_biases:
                    continue  # covered by its weight's block
                state = self.state[param]
                layer = self._kfac_layers.get(param) if group["fisher"] == "kfac" else None
                if layer is not None:
                    params = [param] if layer.bias is None else [param, layer.bias]
                    blocks.append(MetricBlock(params, self._kronecker_metric(group, state), rho, eps))
                    continue
                fisher = state.get("max_exp_avg_sq" if group["amsgrad"] else self.fisher_state_key)
                if rho == 0 or fisher is None:
                    blocks.append(MetricBlock([param], None, rho))
                    continue
                corrected = fisher / self._fisher_correction(group, state)
                blocks.append(MetricBlock([param], diagonal_metric(corrected, rho, eps), rho))
        return blocks

    def _dense_metric(self, group: dict[str, Any], state: dict[str, Any]) -> DenseFisher | None:
        """``M = F̂ + εI`` of a ``fisher="full"`` group (``None``, the identity, where ρ = 0 or no F̂ yet)."""
        matrix = state.get("fisher_matrix")
        if group["rho"] == 0 or matrix is None:
            return None
        matrix = matrix / self._fisher_correction(group, state)
        identity = torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)
        return DenseFisher(matrix + group["eps"] * identity)

    def _kronecker_metric(self, group: dict[str, Any], state: dict[str, Any]) -> KroneckerFisher | None:
        """The undamped factors ``A ⊗ G`` of a K-FAC layer (``None``, the identity, where ρ = 0 or no factors yet)."""
        if group["rho"] == 0 or "input_factor" not in state:
            return None
        correction = self._fisher_correction(group, state)
        return KroneckerFisher(state["input_factor"] / correction, state["output_factor"] / correction)

    def _fisher_correction(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        """The bias correction ``1 − β2^t`` of a gradient-sourced EMA Fisher (1 for an external one)."""
        if group["fisher_source"] == "external" or not group["bias_correction"] or "step" not in state:
            return 1.0
        return 1 - group["betas"][1] ** float(state["step"])

    def _update_factors(self, group: dict[str, Any], state: dict[str, Any], weight: Tensor) -> None:
        """Stage 2 for K-FAC: EMA of the layer's factors ``A = E[a aᵀ]`` and ``G = E[δ δᵀ]``."""
        pending = self._pending_factors.pop(weight, None)
        if pending is None:
            if "input_factor" not in state:
                raise ValueError(
                    "a K-FAC layer has a gradient but no recorded activations: run the forward "
                    "pass after attach(model) and with gradients enabled"
                )
            return
        beta2 = group["betas"][1]
        if "input_factor" not in state:
            state["input_factor"] = torch.zeros_like(pending[0])
            state["output_factor"] = torch.zeros_like(pending[1])
        state["input_factor"].mul_(beta2).add_(pending[0], alpha=1 - beta2)
        state["output_factor"].mul_(beta2).add_(pending[1], alpha=1 - beta2)


class LagrangianAdam(LagrangianOptimizer):
    """Adam as the ρ = ½ diagonal-Fisher Lagrangian flow (paper Eq. 32); ``torch.optim.Adam``'s signature.

    Bit-identical to ``torch.optim.Adam`` on its CPU default (single-tensor) path, and its
    ``state_dict`` has Adam's layout (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so
    each loads the other's.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            rho=0.5,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )


class LagrangianRMSprop(LagrangianOptimizer):
    """RMSprop as the ρ = ½ flow without first moment or bias correction (paper Eq. 31).

    Bit-identical to ``torch.optim.RMSprop(momentum=0, centered=False)``; its Fisher estimate is
    stored as ``square_avg``, RMSprop's name.
    """

    fisher_state_key = "square_avg"

    def __init__(
        self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"Invalid alpha value: {alpha}; use 0 <= alpha < 1")
        super().__init__(
            params, lr, rho=0.5, betas=(0.0, alpha), eps=eps, weight_decay=weight_decay, bias_correction=False
        )
