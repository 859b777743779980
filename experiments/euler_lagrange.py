"""Open question 3: which discrete updates satisfy a discrete Euler–Lagrange equation, of which Lagrangian, and does
an update derived from the Learning Lagrangian (Eq. 26) beat SGD on identical tasks?

**Discrete mechanics** (variational integrators; Marsden & West 2001). A discrete Lagrangian ``L_d^k(q_k, q_{k+1})``
makes the discrete action ``S_d = Σ_k L_d^k`` stationary along a path iff the discrete Euler–Lagrange equation (DEL)
``D2 L_d^{k−1}(q_{k−1}, q_k) + D1 L_d^k(q_k, q_{k+1}) = 0`` holds at every interior ``k``. With ``Δ_k = q_k − q_{k−1}``,
``g_k = ∇V(q_k)`` and the rectangle rule ``L_d^k = β^{−k} [½ Δ_{k+1}ᵀ M Δ_{k+1} − c V(q_k)]`` (``c = h²/m``,
``β = e^{−γh}``) for ``L = e^{γt}(½ m θ̇ᵀ M θ̇ − V)``, the DEL multiplied by ``−β^k`` is

    r_k = [M(q_k) Δ_{k+1} − ½ ∇_q(Δ_{k+1}ᵀ M(q) Δ_{k+1})|_{q_k}] − β M(q_{k−1}) Δ_k + c g_k = 0.

**Candidate Lagrangians** (the columns; our operationalisation):

- *Eq. 26 as written*, ``L(θ) = (1/2P) gᵀF⁻¹g − V`` with the true Fisher: it has no velocity, so its Euler–Lagrange
  equation is ``∇_θ L = 0`` at every step, ``r_k = ∇T(q_k) − g_k`` (no constants). (The paper's own Euler–Lagrange
  check, Eq. 30, ``lagrl.lagrangian.euler_lagrange_q``, is a field equation at one θ: for these GLMs, whose true
  Fisher is the Hessian, it holds at the MLE whichever path reached it, so it cannot tell updates apart.)
- *conservative*, ``½ m|θ̇|² − V`` (``M = I``, ``β = 1``; Störmer–Verlet): fitted ``c``. With ``m = 1/P`` this is
  the paper's particle picture: its kinetic term is Eq. 26's ``T`` along the postulated ``θ̇ = −F^{-½} g``, and ``F``
  drops out of the Lagrangian.
- *damped, Euclidean* (Caldirola–Kanai), ``e^{γt}(½ m|θ̇|² − V)``: fitted ``β, c``; heavy ball with ``β = e^{−γh}``.
- *damped, metric* ``M = (F + εI)^ρ`` for ρ ∈ {½, 1} and the true or empirical Fisher of the task, position
  dependent (so the ``∇M`` term is kept and varied): fitted ``β, c``. The ρ flow ``θ̇ = −F^{-ρ}g`` is its overdamped
  limit (``β → 0``); with ``M = F`` the kinetic energy ``½ m θ̇ᵀFθ̇`` equals Eq. 26's ``T`` along the natural gradient.
- *damped, Adam metric* ``M_k = (1 − β1^{k+1}) (√v̂_k + ε)`` (diagonal; ``v̂`` the bias-corrected EMA of ``g²`` along
  the tested path, Adam's β1 = 0.9, β2 = 0.999, ε = 1e-8): a function of time, frozen along the path (not varied:
  it depends on the path's past), so no ``∇M`` term: fitted ``β, c``.

The constants are fitted by least squares (``min ‖r‖`` over all interior steps, float64) with ``β ∈ [0, 1]`` (the
unconstrained optimum if it lies there, else the better edge). The relative residual is
``‖r‖ / (‖inertia‖ + ‖friction‖ + ‖force‖)`` over the whole path, the three physical terms of the DEL: inertia
``A_k − B_k``, friction ``(1 − β) B_k``, force ``c g_k`` (``A_k``, ``B_k`` the two brackets above; for Eq. 26 the
terms ``∇T`` and ``g``). By the triangle inequality it lies in [0, 1]: 0 means the terms cancel exactly, 1 that
they do not cancel at all. Labels: "exact" ≤ 1e-9 (rounding), "approximate" ≤ 1e-1, else "no", worst case over the
task instances. A fit is *admissible* when ``c > 0`` (positive mass) and the force carries at least 1 % of the terms
(else V does not enter: a free particle, which any straight path at geometric speed satisfies); ``β = 0`` is the
overdamped limit ``γ → ∞``, not a regular Lagrangian. It is *not identifiable* when ``B`` and ``g`` are collinear
(the natural gradient on a quadratic moves on a straight line): then a line of ``(β, c)`` fits equally.
Exact identities: heavy ball satisfies the damped Euclidean DEL with ``β`` = momentum, ``c`` = lr; Adam the
Adam-metric DEL with ``β = β1``, ``c = lr (1 − β1)``; plain SGD the damped DEL only at ``β = 0``; the ρ flows their
own metric's DEL at ``β = 0``, ``c`` = lr where ``F`` is constant (the quadratic), to first order in the step where
it is not.

**Updates** (the rows), full batch, float64, from θ₀ = 0 on identical tasks: SGD (``torch.optim.SGD``, i.e. gradient
descent), momentum SGD (``torch.optim.SGD``, momentum 0.9), Adam (``torch.optim.Adam``, defaults), the ρ flow
``lagrl.optim.LagrangianOptimizer`` (β1 = 0, the full exact Fisher supplied at every step with ``set_fisher``,
ε = 1e-8) with ρ ∈ {½, 1} and the true or empirical Fisher, and three updates **derived from the Learning Lagrangian
by its variational integrator** (the DEL above solved for ``q_{k+1}``, from rest; implemented here, not library API):

- *LL particle (Störmer–Verlet)*: the paper's particle ``½ (1/P)|θ̇|² − V``, ``q_{k+1} = 2q_k − q_{k−1} − lr·g_k``
  (lr = ``P h²``);
- *LL Fisher metric*: ``½ m θ̇ᵀ F(θ) θ̇ − V`` (true Fisher + εI), β = 1, the implicit DEL solved by fixed-point
  iteration to 1e-13 (a step size at which it does not converge is dropped, like a diverged one);
- *LL Fisher metric + friction* (our extension, the Caldirola–Kanai factor ``e^{γt}`` with β = e^{−γh} = 0.9,
  momentum SGD's value): the paper's Lagrangian has no dissipation.

**Tasks**: Gaussian linear regression (σ² = 1; V is a quadratic whose Hessian is the true Fisher ``XᵀX/n``) and
logistic regression (true Fisher = Hessian), n = 200, P = 8, feature scales 1 … 10^1.5 (Hessian condition ≈ 10³),
several seeds each; V = mean negative log-likelihood (the Gaussian's ½ log 2π dropped), V* by least squares or
Newton's method. The residual table uses each update's trajectory at its best step size.

**Comparison and verdict** (our operationalisation). Each update runs ``steps`` steps at every step size of one
shared log grid (momentum SGD and the friction extension at β = 0.9, not tuned). Its score is the mean relative excess
loss ``(V − V*)/(V₀ − V*)`` over the second half of the steps, floored at 1e-12 (rounding): the loss an update
reaches *and keeps*. (A conservative integrator conserves energy: its loss oscillates, and at a tuned step size it
crosses the minimum at the last step — a first try, scoring the last quarter, let it win that way. The score at the
last step alone is reported beside the verdict, ``comparison_final_step``.) The best step size minimises the score;
an update *beats* SGD on a task when its best score is strictly lower. Verdict on the Learning Lagrangian as
written (no dissipation; the better of its two kinetic matchings, LL particle and LL Fisher metric, per task):
"holds" if it beats SGD on every task, "fails" if on none, "mixed" otherwise. The friction extension gets its own
verdict by the same rule (``extension_verdict``), and every row its count of wins (``wins_over_sgd``).

    python experiments/euler_lagrange.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Writes ``DIR/euler_lagrange.json`` (claim, verdict, settings, numbers) and ``DIR/euler_lagrange.png``: the residual
heat maps (update × Lagrangian, one per task kind) and the loss curves against steps, with the closed-form
gradient-descent curve of the quadratic drawn beside the measured SGD one. Needs the ``experiments`` extra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from claims import parse_arguments, plt, save_figure, write_report
from torch import Tensor

from lagrl.fisher import DenseFisher, spd_power
from lagrl.optim import LagrangianOptimizer

CLAIM = (
    "Open question 3: an update derived from the Learning Lagrangian (Eq. 26) by its variational integrator "
    "reaches lower loss than SGD on identical tasks (and: which updates satisfy which discrete Euler–Lagrange "
    "equation)."
)
F64 = torch.float64
KINDS = ("linear", "logistic")
SAMPLES, PARAMS, LOG10_CONDITION = 200, 8, 1.5  # feature scales 1 … 10^1.5, Hessian condition ≈ 10³
MOMENTUM = 0.9  # momentum SGD's β and the friction extension's β = e^{−γh}
ADAM_BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults; EPS also damps every Fisher power
FLOOR = 1e-12  # relative excess loss counted as converged (rounding)
EXACT, APPROXIMATE = 1e-9, 1e-1  # residual labels
FIXED_POINT_TOL, FIXED_POINT_ITERATIONS = 1e-13, 100
IDENTIFIABLE = 1e-6  # smallest singular-value ratio of the (column-normalised) fit for β and c to be determined
MIN_FORCE_SHARE = 1e-2  # share of the DEL's terms the force c·g must carry (else V does not enter: a free particle)


# ---------------------------------------------------------------------------------------------------------------
# Tasks: V(θ) = mean negative log-likelihood, exact gradient and Fisher, batched over leading dims of θ
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    kind: str  # "linear" (Gaussian, σ² = 1) or "logistic"
    seed: int
    inputs: Tensor  # (n, P)
    targets: Tensor  # (n,)
    theta0: Tensor  # (P,), the start of every update
    theta_star: Tensor  # (P,), the minimiser of V
    loss0: float
    loss_star: float


def make_task(kind: str, seed: int, device: str) -> Task:
    """Random design ``X = Z diag(s)``, ``s`` log-spaced over ``10^[0, 1.5]``; targets from the model at a random θ."""
    generator = torch.Generator().manual_seed(1000 * KINDS.index(kind) + seed)
    scales = torch.logspace(0, LOG10_CONDITION, PARAMS, dtype=F64)
    inputs = torch.randn(SAMPLES, PARAMS, generator=generator, dtype=F64) * scales
    direction = torch.randn(PARAMS, generator=generator, dtype=F64) / scales
    if kind == "linear":
        targets = inputs @ direction + torch.randn(SAMPLES, generator=generator, dtype=F64)
    else:
        logits = inputs @ (1.5 / math.sqrt(PARAMS) * direction)
        targets = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    inputs, targets = inputs.to(device), targets.to(device)
    theta0 = torch.zeros(PARAMS, dtype=F64, device=device)
    draft = Task(kind, seed, inputs, targets, theta0, theta0, 0.0, 0.0)
    theta_star = minimiser(draft)
    return Task(
        kind, seed, inputs, targets, theta0, theta_star, float(loss(draft, theta0)), float(loss(draft, theta_star))
    )


def loss(task: Task, theta: Tensor) -> Tensor:
    """``V(θ) = (1/n) Σ ½(y − xᵀθ)²`` (linear) or ``(1/n) Σ softplus(xᵀθ) − y xᵀθ`` (logistic); θ of shape (..., P)."""
    logits = theta @ task.inputs.T
    if task.kind == "linear":
        return 0.5 * (task.targets - logits).square().mean(-1)
    return (torch.nn.functional.softplus(logits) - task.targets * logits).mean(-1)


def gradient(task: Task, theta: Tensor, *, create_graph: bool = False) -> Tensor:
    """``g = ∇V(θ)`` by autograd, batched over the leading dims of θ (each row its own V)."""
    with torch.enable_grad():
        theta = theta if theta.requires_grad else theta.detach().requires_grad_()
        (g,) = torch.autograd.grad(loss(task, theta).sum(), theta, create_graph=create_graph)
    return g


def fisher_weights(task: Task, theta: Tensor, fisher: str) -> Tensor:
    """Weights ``w_i`` of ``F = (1/n) Σ w_i x_i x_iᵀ``: true ``1`` or ``p(1 − p)``, empirical ``(y − μ)²``."""
    logits = theta @ task.inputs.T
    mean = logits if task.kind == "linear" else torch.sigmoid(logits)
    if fisher == "empirical":
        return (task.targets - mean).square()
    return torch.ones_like(logits) if task.kind == "linear" else mean * (1 - mean)


def fisher_matrix(task: Task, theta: Tensor, fisher: str) -> Tensor:
    """The exact Fisher ``F(θ) = (1/n) Xᵀ diag(w(θ)) X`` (Eqs. 23–24), differentiable in θ, shape (..., P, P).

    Closed form rather than ``lagrl.fisher.fisher`` (which detaches θ): the metric DELs need ``∇_θ F``; the test
    checks it against ``lagrl.fisher.fisher`` and the Hessian.
    """
    weights = fisher_weights(task, theta, fisher)
    return torch.einsum("...n,ni,nj->...ij", weights, task.inputs, task.inputs) / len(task.inputs)


def fisher_quadratic_gradient(task: Task, theta: Tensor, delta: Tensor, fisher: str) -> Tensor:
    """``½ ∇_θ (Δᵀ F(θ) Δ) = (1/2n) Σ_i (∂w_i/∂z_i) (x_iᵀΔ)² x_i`` in closed form (``z = Xθ``), batched."""
    logits = theta @ task.inputs.T
    if task.kind == "linear":
        slope = torch.zeros_like(logits) if fisher == "true" else -2 * (task.targets - logits)
    else:
        p = torch.sigmoid(logits)
        slope = p * (1 - p) * ((1 - 2 * p) if fisher == "true" else -2 * (task.targets - p))
    return 0.5 * (slope * (delta @ task.inputs.T).square()) @ task.inputs / len(task.inputs)


def minimiser(task: Task) -> Tensor:
    """``argmin V``: least squares (linear) or Newton's method with halving steps (logistic), to rounding."""
    if task.kind == "linear":
        return torch.linalg.lstsq(task.inputs, task.targets.unsqueeze(1)).solution.squeeze(1)
    theta = task.theta0.clone()
    for _ in range(100):
        step = torch.linalg.solve(fisher_matrix(task, theta, "true"), gradient(task, theta))
        scale = 1.0
        while loss(task, theta - scale * step) > loss(task, theta) and scale > 1e-8:
            scale /= 2
        theta = theta - scale * step
        if float(step.abs().max()) < 1e-15 * (1 + float(theta.abs().max())):
            break
    return theta


# ---------------------------------------------------------------------------------------------------------------
# Updates: each run is batched over the step sizes (one param group or one row per step size)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    name: str
    family: str  # "torch" (a torch.optim optimizer) or "integrator" (the Learning-Lagrangian DEL solved here)
    make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None
    fisher: str | None = None  # the Fisher an external-Fisher ρ flow is given each step
    metric: str | None = None  # integrators: "euclidean" or "fisher" (true Fisher + ε)
    beta: float = 1.0  # integrators: e^{−γh}; 1 is conservative


def rho_flow(rho: float) -> Callable[[list[dict[str, Any]]], torch.optim.Optimizer]:
    """``θ_{k+1} = θ_k − lr (F_k + εI)^{-ρ} g_k``: ``LagrangianOptimizer`` with β1 = 0 and an exact external Fisher."""
    return lambda groups: LagrangianOptimizer(
        groups, rho=rho, betas=(0.0, 0.999), eps=EPS, fisher="full", fisher_source="external"
    )


UPDATES = (
    Update("SGD", "torch", lambda groups: torch.optim.SGD(groups)),
    Update("momentum SGD", "torch", lambda groups: torch.optim.SGD(groups, momentum=MOMENTUM)),
    Update("Adam", "torch", lambda groups: torch.optim.Adam(groups, betas=ADAM_BETAS, eps=EPS)),
    Update("ρ=½ true F", "torch", rho_flow(0.5), fisher="true"),
    Update("ρ=½ empirical F", "torch", rho_flow(0.5), fisher="empirical"),
    Update("ρ=1 true F", "torch", rho_flow(1.0), fisher="true"),
    Update("ρ=1 empirical F", "torch", rho_flow(1.0), fisher="empirical"),
    Update("LL particle (Störmer–Verlet)", "integrator", metric="euclidean"),
    Update("LL Fisher metric", "integrator", metric="fisher"),
    Update("LL Fisher metric + friction", "integrator", metric="fisher", beta=MOMENTUM),
)
LITERAL = ("LL particle (Störmer–Verlet)", "LL Fisher metric")
EXTENSION = "LL Fisher metric + friction"


def diverged(values: Tensor, task: Task) -> Tensor:
    """A run is dropped once its loss is not finite or exceeds ``V* + 10³ (V₀ − V*)``."""
    return ~torch.isfinite(values) | (values > task.loss_star + 1e3 * (task.loss0 - task.loss_star))


def run_torch(task: Task, update: Update, lrs: list[float], steps: int) -> Tensor:
    """Trajectories ``(L, steps + 1, P)`` of a torch optimizer, one param group per step size (NaN once diverged)."""
    params = [task.theta0.clone().requires_grad_() for _ in lrs]
    optimizer = update.make([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    alive = torch.ones(len(lrs), dtype=torch.bool, device=task.inputs.device)
    path = [torch.stack([p.detach().clone() for p in params])]
    for _ in range(steps):
        optimizer.zero_grad()
        values = loss(task, torch.stack(params))
        alive &= ~diverged(values.detach(), task)
        torch.where(alive, values, 0.0).sum().backward()
        live = [p for p, keep in zip(params, alive.tolist()) if keep]
        for p, keep in zip(params, alive.tolist()):
            if not keep:
                p.grad = None  # skipped by the optimizer from now on
        if update.fisher is not None and live:
            optimizer.set_fisher({p: DenseFisher(fisher_matrix(task, p.detach(), update.fisher)) for p in live})
        optimizer.step()
        current = torch.stack([p.detach().clone() for p in params])
        path.append(torch.where(alive.unsqueeze(1), current, torch.nan))
    return torch.stack(path, dim=1)


def metric_correction(metric: Callable[[Tensor], Tensor], theta: Tensor, delta: Tensor) -> Tensor:
    """``½ ∇_q (Δᵀ M(q) Δ)|_{q=θ}`` per row by autograd (zero where M does not depend on q)."""
    with torch.enable_grad():
        theta = theta.detach().requires_grad_()
        energy = 0.5 * torch.einsum("...i,...ij,...j->...", delta, metric(theta), delta).sum()
        if not energy.requires_grad:
            return torch.zeros_like(theta)
        (correction,) = torch.autograd.grad(energy, theta)
    return correction


def run_integrator(task: Task, update: Update, lrs: list[float], steps: int) -> Tensor:
    """Variational integrator of ``L_d^k = β^{−k}[½ Δᵀ M(q_k) Δ − lr V(q_k)]``, all step sizes at once (NaN: diverged).

    Each step solves the DEL ``M(q_k)Δ_{k+1} − ½∇(Δ_{k+1}ᵀ M Δ_{k+1}) = β M(q_{k−1})Δ_k − lr g_k`` for ``Δ_{k+1}`` by
    fixed-point iteration (one solve where ``M`` is constant), from rest (``Δ_0 = 0``); a step size whose iteration
    does not converge is dropped, like a diverged one.
    """
    identity = torch.eye(PARAMS, dtype=F64, device=task.inputs.device)
    fisher = update.metric == "fisher"

    def metric(theta: Tensor) -> Tensor:  # M = I, or M(θ) = F_true(θ) + εI
        return fisher_matrix(task, theta, "true") + EPS * identity if fisher else identity.expand(len(theta), -1, -1)

    rates = torch.tensor(lrs, dtype=F64, device=task.inputs.device).unsqueeze(1)
    theta = task.theta0.expand(len(lrs), PARAMS).clone()
    delta = torch.zeros_like(theta)
    previous_metric = metric(theta)
    alive = torch.ones(len(lrs), dtype=torch.bool, device=theta.device)
    path = [theta.clone()]
    for _ in range(steps):
        alive &= ~diverged(loss(task, theta), task)
        safe = torch.where(alive.unsqueeze(1), theta, task.theta0)
        current_metric = metric(safe)
        rhs = update.beta * (previous_metric @ delta.unsqueeze(-1)).squeeze(-1) - rates * gradient(task, safe)
        step = torch.linalg.solve(current_metric, rhs)
        for _ in range(FIXED_POINT_ITERATIONS if fisher else 0):
            new = torch.linalg.solve(current_metric, rhs + fisher_quadratic_gradient(task, safe, step, "true"))
            change = (new - step).norm(dim=1)
            step = new
            if bool((~alive | (change <= FIXED_POINT_TOL * new.norm(dim=1))).all()):
                break
        if fisher:
            alive &= change <= 1e3 * FIXED_POINT_TOL * step.norm(dim=1)
        alive &= torch.isfinite(step).all(dim=1)
        delta = torch.where(alive.unsqueeze(1), step, 0.0)
        theta, previous_metric = safe + delta, current_metric
        path.append(torch.where(alive.unsqueeze(1), theta, torch.nan))
    return torch.stack(path, dim=1)


def run(task: Task, update: Update, lrs: list[float], steps: int) -> Tensor:
    return (run_torch if update.family == "torch" else run_integrator)(task, update, lrs, steps)


# ---------------------------------------------------------------------------------------------------------------
# Discrete Euler–Lagrange residuals along a trajectory q_0 … q_K
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lagrangian:
    name: str
    metric: str  # "eq26", "euclidean", "fisher" or "adam"
    conservative: bool = False
    fisher: str = "true"
    rho: float = 1.0


LAGRANGIANS = (
    Lagrangian("Eq. 26 as written (no θ̇)", "eq26"),
    Lagrangian("conservative ½m|θ̇|²−V", "euclidean", conservative=True),
    Lagrangian("damped, Euclidean", "euclidean"),
    Lagrangian("damped, M=F^½ true", "fisher", fisher="true", rho=0.5),
    Lagrangian("damped, M=F true", "fisher", fisher="true", rho=1.0),
    Lagrangian("damped, M=F^½ empirical", "fisher", fisher="empirical", rho=0.5),
    Lagrangian("damped, M=F empirical", "fisher", fisher="empirical", rho=1.0),
    Lagrangian("damped, Adam M_k", "adam"),
)


def adam_metric(gradients: Tensor) -> Tensor:
    """Adam's time-dependent diagonal metric ``M_k = (1 − β1^{k+1})(√(v_{k+1}/(1 − β2^{k+1})) + ε)`` from ``g_0 … g_k``.

    ``v_{t} = β2 v_{t−1} + (1 − β2) g_{t−1}²`` (torch's 1-based step ``t = k + 1``): Adam's step from ``q_k`` is
    ``Δ_{k+1} = −lr m_{k+1} / M_k`` with ``m_{t} = β1 m_{t−1} + (1 − β1) g_{t−1}``, whence its DEL with ``β = β1``.
    """
    beta1, beta2 = ADAM_BETAS
    second, rows = torch.zeros_like(gradients[0]), []
    for k, g in enumerate(gradients):
        second = beta2 * second + (1 - beta2) * g.square()
        rows.append((1 - beta1 ** (k + 1)) * ((second / (1 - beta2 ** (k + 1))).sqrt() + EPS))
    return torch.stack(rows)


def del_terms(task: Task, path: Tensor, lagrangian: Lagrangian) -> tuple[Tensor, Tensor, Tensor]:
    """``A_k = M(q_k)Δ_{k+1} − ½∇(Δ_{k+1}ᵀMΔ_{k+1})``, ``B_k = M(q_{k−1})Δ_k`` and ``g_k`` for ``k = 1 … K−1``."""
    points, deltas = path[:-1], path[1:] - path[:-1]  # q_k and Δ_{k+1} for k = 0 … K−1
    gradients = gradient(task, points)
    if lagrangian.metric == "euclidean":
        moved = deltas
        correction = torch.zeros_like(deltas)
    elif lagrangian.metric == "adam":
        moved = adam_metric(gradients) * deltas
        correction = torch.zeros_like(deltas)
    elif lagrangian.rho == 1:  # M = F + εI: the ∇M term in closed form
        identity = torch.eye(PARAMS, dtype=F64, device=path.device)
        moved = ((fisher_matrix(task, points, lagrangian.fisher) + EPS * identity) @ deltas.unsqueeze(-1)).squeeze(-1)
        correction = fisher_quadratic_gradient(task, points, deltas, lagrangian.fisher)
    else:  # M = (F + εI)^ρ by eigendecomposition, the ∇M term by autograd through it

        def metric(theta: Tensor) -> Tensor:
            return spd_power(fisher_matrix(task, theta, lagrangian.fisher), lagrangian.rho, EPS)

        moved = (metric(points) @ deltas.unsqueeze(-1)).squeeze(-1)
        correction = metric_correction(metric, points, deltas)
    return (moved - correction)[1:], moved[:-1], gradients[1:]


def fit_del(task: Task, path: Tensor, lagrangian: Lagrangian) -> dict[str, Any]:
    """Least-squares ``β ∈ [0, 1]`` (1 if conservative) and ``c`` of ``r = A − βB + cG``, and the relative residual
    ``‖r‖ / (‖A − B‖ + ‖(1 − β)B‖ + ‖cG‖)``; admissible if ``c > 0`` and the force carries ``MIN_FORCE_SHARE``."""
    if lagrangian.metric == "eq26":
        return eq26_residual(task, path)
    moving, previous, force = (t.reshape(-1) for t in del_terms(task, path, lagrangian))
    candidates = [(1.0, least_squares_force(moving - previous, force))]
    identifiable = True
    if not lagrangian.conservative:
        candidates.append((0.0, least_squares_force(moving, force)))
        design = torch.stack([-previous, force], dim=1)
        norms = design.norm(dim=0).clamp_min(torch.finfo(F64).tiny)
        singular = torch.linalg.svdvals(design / norms)
        identifiable = float(singular[-1] / singular[0]) > IDENTIFIABLE
        beta, c = (torch.linalg.pinv(design / norms, rtol=1e-10) @ (-moving) / norms).tolist()
        if 0.0 <= beta <= 1.0:
            candidates.append((beta, c))
    beta, c = min(candidates, key=lambda bc: float((moving - bc[0] * previous + bc[1] * force).norm()))
    residual = moving - beta * previous + c * force
    inertia, friction, pull = (moving - previous).norm(), abs(1 - beta) * previous.norm(), abs(c) * force.norm()
    relative = float(residual.norm() / (inertia + friction + pull))
    force_share = float(pull / (inertia + friction + pull))
    return {
        "relative": relative,
        "beta": beta,
        "c": c,
        "force_share": force_share,
        "identifiable": identifiable,
        "admissible": c > 0 and force_share >= MIN_FORCE_SHARE,
        "label": label(relative),
    }


def least_squares_force(target: Tensor, force: Tensor) -> float:
    """``argmin_c ‖target + c·force‖``."""
    return -float(target @ force / (force @ force))


def eq26_residual(task: Task, path: Tensor) -> dict[str, Any]:
    """Eq. 26 has no θ̇: its Euler–Lagrange equation is ``∇L = ∇T − g = 0``, ``T = (1/2P) gᵀF⁻¹g`` (true F).

    Relative residual ``‖∇T − g‖ / (‖∇T‖ + ‖g‖)`` over ``q_0 … q_{K−1}``; for the quadratic (F constant, = Hessian)
    ``∇T = g/P``, so it is ``(P − 1)/(P + 1)`` on every path.
    """
    with torch.enable_grad():
        points = path[:-1].detach().requires_grad_()
        g = gradient(task, points, create_graph=True)
        kinetic = 0.5 * (g * torch.linalg.solve(fisher_matrix(task, points, "true"), g)).sum(-1) / PARAMS
        (kinetic_gradient,) = torch.autograd.grad(kinetic.sum(), points)
    g = g.detach()
    relative = float((kinetic_gradient - g).norm() / (kinetic_gradient.norm() + g.norm()))
    return {
        "relative": relative,
        "beta": None,
        "c": None,
        "force_share": float(g.norm() / (kinetic_gradient.norm() + g.norm())),
        "identifiable": True,
        "admissible": True,
        "label": label(relative),
    }


def label(relative: float) -> str:
    return "exact" if relative <= EXACT else "approximate" if relative <= APPROXIMATE else "no"


# ---------------------------------------------------------------------------------------------------------------
# Scores, the closed-form reference and the verdict
# ---------------------------------------------------------------------------------------------------------------


def excess_curve(task: Task, path: Tensor) -> Tensor:
    """Relative excess loss ``(V(q_k) − V*)/(V₀ − V*)`` along each trajectory (inf where diverged)."""
    values = (loss(task, path) - task.loss_star) / (task.loss0 - task.loss_star)
    return torch.where(torch.isfinite(values), values, torch.inf)


def scores(curves: Tensor) -> Tensor:
    """The score: mean relative excess loss over the second half of the steps, floored at ``FLOOR``."""
    return curves[..., curves.shape[-1] // 2 :].mean(-1).clamp_min(FLOOR)


def final_scores(curves: Tensor) -> Tensor:
    """The alternative score: relative excess loss at the last step, floored at ``FLOOR``."""
    return curves[..., -1].clamp_min(FLOOR)


def gd_closed_form(task: Task, lr: float, steps: int) -> Tensor:
    """Gradient descent on the quadratic in the Hessian's eigenbasis ``A = U diag(λ) Uᵀ``:
    ``V_k − V* = ½ Σ_j λ_j (1 − lr λ_j)^{2k} (Uᵀ(θ₀ − θ*))_j²``, relative to ``V₀ − V*``."""
    eigenvalues, eigenvectors = torch.linalg.eigh(fisher_matrix(task, task.theta_star, "true"))
    start = eigenvectors.T @ (task.theta0 - task.theta_star)
    k = torch.arange(steps + 1, dtype=F64, device=start.device).unsqueeze(1)
    excess = 0.5 * (eigenvalues * (1 - lr * eigenvalues) ** (2 * k) * start.square()).sum(1)
    return excess / (task.loss0 - task.loss_star)


def grid_verdict(wins: list[bool]) -> str:
    return "holds" if all(wins) else "fails" if not any(wins) else "mixed"


def compare(task: Task, lrs: list[float], steps: int) -> dict[str, Any]:
    """Every update at every step size on one task: best step size, its score and its trajectory."""
    result = {}
    for update in UPDATES:
        paths = run(task, update, lrs, steps)
        curves = excess_curve(task, paths)
        score, final = scores(curves), final_scores(curves)
        best, best_final = int(torch.argmin(score)), int(torch.argmin(final))  # the smallest step size among ties
        result[update.name] = {
            "lr": lrs[best],
            "score": float(score[best]),
            "final_lr": lrs[best_final],
            "final_score": float(final[best_final]),
            "path": paths[best],
            "curve": curves[best],
        }
    return result


def residual_table(task: Task, runs: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """DEL fits of every Lagrangian along every update's best trajectory."""
    return {
        update.name: {
            lagrangian.name: fit_del(task, runs[update.name]["path"], lagrangian) for lagrangian in LAGRANGIANS
        }
        for update in UPDATES
    }


def summarise(tables: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Worst case over instances: the largest relative residual, admissible on all instances, and its label."""
    summary = {}
    for update in UPDATES:
        summary[update.name] = {}
        for lagrangian in LAGRANGIANS:
            cells = [table[update.name][lagrangian.name] for table in tables]
            worst = max(cell["relative"] for cell in cells)
            summary[update.name][lagrangian.name] = {
                "relative_max": worst,
                "label": label(worst),
                "admissible_all": all(cell["admissible"] for cell in cells),
                "identifiable_all": all(cell["identifiable"] for cell in cells),
            }
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------------------------

CURVE_STYLE = {
    "SGD": ("tab:blue", "-"),
    "momentum SGD": ("tab:cyan", "-"),
    "ρ=1 true F": ("tab:gray", "-"),
    "LL particle (Störmer–Verlet)": ("tab:orange", "-"),
    "LL Fisher metric": ("tab:red", ":"),
    "LL Fisher metric + friction": ("tab:red", "-"),
}


def plot(summaries: dict[str, Any], examples: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(18, 13))
    for axis, kind in zip(axes[0], KINDS):
        values = torch.tensor(
            [[summaries[kind][u.name][lag.name]["relative_max"] for lag in LAGRANGIANS] for u in UPDATES]
        )
        image = axis.imshow(values.clamp_min(1e-17).log10(), cmap="viridis_r", vmin=-16, vmax=0, aspect="auto")
        for i, update in enumerate(UPDATES):
            for j, lagrangian in enumerate(LAGRANGIANS):
                cell = summaries[kind][update.name][lagrangian.name]
                mark = ("" if cell["admissible_all"] else "†") + ("" if cell["identifiable_all"] else "*")
                axis.text(j, i, f"{cell['relative_max']:.0e}{mark}", ha="center", va="center", fontsize=8.5,
                          color="black" if values[i, j] < 1e-6 else "white")  # fmt: skip
        axis.set_xticks(range(len(LAGRANGIANS)), [lag.name for lag in LAGRANGIANS], rotation=35, ha="right")
        axis.set_yticks(range(len(UPDATES)), [u.name for u in UPDATES])
        axis.set_xlabel("Lagrangian whose discrete Euler–Lagrange equation is tested")
        axis.set_title(
            f"{kind} regression: relative DEL residual, worst over seeds\n"
            "(† inadmissible fit: c ≤ 0 or force < 1 %; * β, c not identifiable: straight path)"
        )
        figure.colorbar(image, ax=axis, label="log10 relative residual (0 = terms do not cancel)")
    for axis, kind in zip(axes[1], KINDS):
        example = examples[kind]
        for name, (color, style) in CURVE_STYLE.items():
            run_ = example["runs"][name]
            axis.semilogy(run_["curve"].cpu(), color=color, linestyle=style, label=f"{name} (lr {run_['lr']:.2g})")
        if kind == "linear":
            reference = example["gd_closed_form"]
            axis.semilogy(reference.cpu(), "k--", linewidth=1, label="gradient descent, closed form (reference)")
        axis.axhline(FLOOR, color="k", linewidth=0.6, linestyle=":", label=f"floor {FLOOR:g} (rounding; V* reached)")
        steps = len(example["runs"]["SGD"]["curve"]) - 1
        axis.axvspan(steps // 2, steps, alpha=0.1, color="gray", label="score window: mean over the second half")
        axis.set_ylim(1e-17, 10)
        axis.set_xlabel("step k (full batch of n = 200 observations per step)")
        axis.set_ylabel("relative excess loss (V − V*) / (V₀ − V*)")
        axis.set_title(f"{kind} regression, seed {example['seed']}: each update at its best step size")
        axis.legend(fontsize=8, loc="lower left")
    save_figure(figure, path)


# ---------------------------------------------------------------------------------------------------------------


def beats_sgd(runs: dict[str, Any], key: str) -> dict[str, bool]:
    """Per update: its best ``key`` score is strictly below SGD's; ``"literal"``: the better γ = 0 reading is."""
    sgd = runs["SGD"][key]
    beats = {name: run_[key] < sgd for name, run_ in runs.items()}
    beats["literal"] = min(runs[name][key] for name in LITERAL) < sgd
    return beats


def verdicts(instances: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The verdict rule on the literal readings and on the friction extension, with the win counts per update."""
    wins = [instance[key] for instance in instances]
    return {
        "verdict": grid_verdict([w["literal"] for w in wins]),
        "extension_verdict": grid_verdict([w[EXTENSION] for w in wins]),
        "wins_over_sgd": {name: sum(w[name] for w in wins) for name in wins[0]},
        "instances": len(wins),
    }


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "1 seed per task kind, 80 steps, step sizes every ½ decade")
    start = time.perf_counter()
    seeds = 1 if args.quick else 3
    steps = 80 if args.quick else 200
    per_decade = 2 if args.quick else 3
    lrs = [10 ** (e / per_decade) for e in range(-4 * per_decade, per_decade // 2 + 1)]  # 1e-4 … 10^0.5 or 10^⅓
    numbers: dict[str, Any] = {"tasks": {}, "residuals": {}}
    summaries, examples, instances = {}, {}, []
    for kind in KINDS:
        tables = []
        for offset in range(seeds):
            task = make_task(kind, args.seed + offset, args.device)
            runs = compare(task, lrs, steps)
            tables.append(residual_table(task, runs))
            instance = {
                "kind": kind,
                "seed": task.seed,
                "loss0": task.loss0,
                "loss_star": task.loss_star,
                "best": {
                    name: {key: r[key] for key in ("lr", "score", "final_lr", "final_score")}
                    for name, r in runs.items()
                },
                "beats_sgd": beats_sgd(runs, "score"),
                "beats_sgd_final": beats_sgd(runs, "final_score"),
                "residuals": tables[-1],
            }
            if kind == "linear":
                reference = gd_closed_form(task, runs["SGD"]["lr"], steps)
                instance["sgd_score_closed_form"] = float(scores(reference))
            instances.append(instance)
            if offset == 0:
                examples[kind] = {"seed": task.seed, "runs": runs, "gd_closed_form": reference}
        summaries[kind] = summarise(tables)
        numbers["residuals"][kind] = summaries[kind]
    numbers["tasks"] = instances
    numbers["comparison"] = verdicts(instances, "beats_sgd")
    numbers["comparison_final_step"] = verdicts(instances, "beats_sgd_final")
    numbers["satisfies_exactly"] = {
        update.name: [
            lag.name
            for lag in LAGRANGIANS
            if all(summaries[kind][update.name][lag.name]["label"] == "exact" for kind in KINDS)
        ]
        for update in UPDATES
    }
    plot(summaries, examples, args.out / "euler_lagrange.png")
    numbers["wall_seconds"] = time.perf_counter() - start
    for instance in instances:
        best = "  ".join(f"{n}: {b['score']:.1e}@{b['lr']:.2g}" for n, b in instance["best"].items())
        print(f"{instance['kind']} seed {instance['seed']}: {best}")
    for name, lags in numbers["satisfies_exactly"].items():
        print(f"{name:30} exact DEL of: {', '.join(lags) or '—'}")
    for key in ("comparison", "comparison_final_step"):
        print(f"{key}: {numbers[key]}")
    settings = {
        "task_kinds": list(KINDS),
        "samples": SAMPLES,
        "params": PARAMS,
        "log10_feature_scale_range": LOG10_CONDITION,
        "seeds_per_kind": seeds,
        "steps": steps,
        "lr_grid": lrs,
        "momentum": MOMENTUM,
        "adam_betas": list(ADAM_BETAS),
        "eps": EPS,
        "score": "mean relative excess loss (V − V*)/(V0 − V*) over the second half of the steps, floored",
        "final_score": "relative excess loss at the last step, floored (reported beside the verdict)",
        "floor": FLOOR,
        "labels": {"exact": EXACT, "approximate": APPROXIMATE},
        "identifiable_singular_ratio": IDENTIFIABLE,
        "min_force_share": MIN_FORCE_SHARE,
        "verdict_rows": list(LITERAL),
        "extension_row": EXTENSION,
        "updates": [u.name for u in UPDATES],
        "lagrangians": [lag.name for lag in LAGRANGIANS],
    }
    write_report(args, "euler_lagrange", CLAIM, numbers["comparison"]["verdict"], settings, numbers)


if __name__ == "__main__":
    main()
