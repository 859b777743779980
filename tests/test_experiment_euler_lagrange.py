"""experiments/euler_lagrange.py (open question 3): the discrete Euler–Lagrange residuals against closed forms, the
discrete action's autograd gradient and lagrl's own Fisher and Lagrangian, and the quick run's numbers against the
exact identities (heavy ball ↔ damped Euclidean DEL, Adam ↔ Adam-metric DEL, SGD ↔ its β = 0 limit)."""

import math
import sys

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

from helpers import ROOT, run_quick

sys.path.insert(0, str(ROOT / "experiments"))
import euler_lagrange as el  # noqa: E402

from lagrl.fisher import DenseFisher, fisher  # noqa: E402
from lagrl.lagrangian import learning_lagrangian  # noqa: E402

F64 = torch.float64
LAGRANGIANS = {lagrangian.name: lagrangian for lagrangian in el.LAGRANGIANS}
UPDATES = {update.name: update for update in el.UPDATES}


def diagonal_quadratic(curvatures: torch.Tensor, target: torch.Tensor) -> el.Task:
    """``V(θ) = ½ (θ − θ*)ᵀ diag(a) (θ − θ*)``: rows ``X = √P diag(√a)``, targets ``y = Xθ*`` (noise-free)."""
    p = len(curvatures)
    inputs = math.sqrt(p) * torch.diag(curvatures.sqrt())
    theta0 = torch.zeros(p, dtype=F64, device=curvatures.device)
    draft = el.Task("linear", 0, inputs, inputs @ target, theta0, target, 0.0, 0.0)
    return el.Task("linear", 0, inputs, inputs @ target, theta0, target, float(el.loss(draft, theta0)), 0.0)


def test_conservative_residual_of_gradient_descent_by_hand(device):
    """GD on ``V = ½ eᵀ diag(a) e``: ``g_k = a (1 − lr a)^k e₀``, ``Δ_{k+1} = −lr g_k``; the conservative DEL
    ``Δ_{k+1} − Δ_k + c g_k`` has inertia ``−lr(g_k − g_{k−1})``, ``c* = −⟨inertia, g⟩/⟨g, g⟩``."""
    curvatures = torch.tensor([0.3, 1.0, 4.0, 9.0], dtype=F64, device=device)
    target = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=F64, device=device)
    task, lr, steps = diagonal_quadratic(curvatures, target), 0.05, 40
    path = el.run_torch(task, UPDATES["SGD"], [lr], steps)[0]
    k = torch.arange(steps, dtype=F64, device=device).unsqueeze(1)
    g = curvatures * (1 - lr * curvatures) ** k * (task.theta0 - target)  # g_0 … g_{K−1}
    assert torch.allclose(path[1:] - path[:-1], -lr * g, rtol=0, atol=1e-14)
    inertia, force = (-lr * (g[1:] - g[:-1])).reshape(-1), g[1:].reshape(-1)
    c = float(-(inertia @ force) / (force @ force))
    relative = float((inertia + c * force).norm() / (inertia.norm() + abs(c) * force.norm()))
    fit = el.fit_del(task, path, LAGRANGIANS["conservative ½m|θ̇|²−V"])
    assert fit["c"] == pytest.approx(c, rel=1e-10)
    assert fit["relative"] == pytest.approx(relative, rel=1e-10)
    assert fit["relative"] > 0.1  # GD is no conservative motion
    damped = el.fit_del(task, path, LAGRANGIANS["damped, Euclidean"])  # but the β → 0 limit of the damped one
    assert damped["relative"] < 1e-12 and abs(damped["beta"]) < 1e-12
    assert damped["c"] == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("name", ["damped, Euclidean", "damped, M=F true", "damped, M=F^½ true", "damped, Adam M_k"])
def test_residual_is_the_gradient_of_the_discrete_action(name, device):
    """``r_k = −β^k ∂S_d/∂q_k`` with ``S_d = Σ_k β^{−k}[½ Δ_{k+1}ᵀ M Δ_{k+1} − c V(q_k)]`` by autograd, on an
    arbitrary (non-solution) path of the logistic task: the DEL formula, ∇M term included, is the action's."""
    task = el.make_task("logistic", 3, str(device))
    lagrangian, beta, c, steps = LAGRANGIANS[name], 0.8, 0.05, 12
    generator = torch.Generator().manual_seed(7)
    path = (0.1 * torch.randn(steps + 1, el.PARAMS, generator=generator, dtype=F64)).cumsum(0).to(device)
    moving, previous, force = el.del_terms(task, path, lagrangian)
    residual = moving - beta * previous + c * force

    def metric(theta: torch.Tensor, k: int) -> torch.Tensor:
        if lagrangian.metric == "euclidean":
            return torch.eye(el.PARAMS, dtype=F64, device=device)
        if lagrangian.metric == "adam":  # frozen along the path: computed from the fixed path's gradients
            return torch.diag(el.adam_metric(el.gradient(task, path[:-1]))[k])
        return el.spd_power(el.fisher_matrix(task, theta, "true"), lagrangian.rho, el.EPS)

    points = path.clone().requires_grad_()
    action = sum(
        beta ** (-k)
        * (
            0.5 * (points[k + 1] - points[k]) @ metric(points[k], k) @ (points[k + 1] - points[k])
            - c * el.loss(task, points[k])
        )
        for k in range(steps)
    )
    (gradient,) = torch.autograd.grad(action, points)
    weights = torch.tensor([beta**k for k in range(1, steps)], dtype=F64, device=device).unsqueeze(1)
    assert torch.allclose(residual, -weights * gradient[1:-1], rtol=1e-9, atol=1e-12)


def test_fisher_matches_lagrl_and_the_hessian(device):
    """The closed-form Fisher against ``lagrl.fisher.fisher`` (exact and empirical) and, for the true Fisher of these
    GLMs, against the Hessian of V; the ``∇(ΔᵀFΔ)`` closed form against autograd."""
    distributions = {"linear": lambda out: Normal(out.squeeze(-1), 1.0), "logistic": lambda out: Bernoulli(logits=out)}
    for kind, distribution in distributions.items():
        task = el.make_task(kind, 1, str(device))
        theta = 0.5 * task.theta_star + 0.01
        model = nn.Linear(el.PARAMS, 1, bias=False).to(device, F64)
        model.weight.data.copy_(theta.unsqueeze(0))
        wrap = distribution if kind == "linear" else (lambda out: Bernoulli(logits=out.squeeze(-1)))
        empirical = fisher(model, task.inputs, task.targets, kind="empirical", form="full", distribution=wrap)
        assert torch.allclose(el.fisher_matrix(task, theta, "empirical"), empirical.matrix, rtol=1e-10, atol=1e-12)
        if kind == "logistic":
            exact = fisher(model, task.inputs, kind="exact", form="full", distribution=wrap)
            assert torch.allclose(el.fisher_matrix(task, theta, "true"), exact.matrix, rtol=1e-10, atol=1e-12)
        hessian = torch.autograd.functional.hessian(lambda t: el.loss(task, t), theta)
        assert torch.allclose(el.fisher_matrix(task, theta, "true"), hessian, rtol=1e-10, atol=1e-12)
        delta = 0.1 * task.theta_star
        for kind_of_fisher in ("true", "empirical"):

            def metric(t: torch.Tensor, which: str = kind_of_fisher) -> torch.Tensor:
                return el.fisher_matrix(task, t, which)

            autograd = el.metric_correction(metric, theta, delta)
            closed = el.fisher_quadratic_gradient(task, theta, delta, kind_of_fisher)
            assert torch.allclose(closed, autograd, rtol=1e-10, atol=1e-14)


def test_eq26_residual_matches_lagrl_learning_lagrangian(device):
    """``∇L`` of ``lagrl.lagrangian.learning_lagrangian`` (autograd through lagrl's Fisher power) gives the same
    relative residual ``‖∇L‖ / (‖∇L + g‖ + ‖g‖)``; on the quadratic it is ``(P − 1)/(P + 1)``."""
    for kind in el.KINDS:
        task = el.make_task(kind, 2, str(device))
        path = torch.stack([task.theta_star * s for s in (0.0, 0.3, 0.6, 0.9, 1.2)])
        residuals, gradients = [], []
        for theta in path[:-1]:
            theta = theta.clone().requires_grad_()
            g = torch.autograd.grad(el.loss(task, theta), theta, create_graph=True)[0]
            value = learning_lagrangian(el.loss(task, theta), g, DenseFisher(el.fisher_matrix(task, theta, "true")), 8)
            residuals.append(torch.autograd.grad(value, theta)[0])
            gradients.append(g.detach())
        residual, g = torch.stack(residuals), torch.stack(gradients)
        expected = float(residual.norm() / ((residual + g).norm() + g.norm()))
        assert el.eq26_residual(task, path)["relative"] == pytest.approx(expected, rel=1e-9)
        if kind == "linear":
            assert expected == pytest.approx((el.PARAMS - 1) / (el.PARAMS + 1), rel=1e-10)


def test_quick(tmp_path):
    report = run_quick("euler_lagrange", tmp_path)
    settings, numbers = report["settings"], report["numbers"]
    beta1, p = settings["adam_betas"][0], settings["params"]
    assert numbers["wall_seconds"] > 0
    for instance in numbers["tasks"]:
        fits, best = instance["residuals"], instance["best"]

        def check(update: str, lagrangian: str, beta: float, c: float) -> None:
            fit = fits[update][lagrangian]
            assert fit["relative"] < 1e-10 and fit["admissible"], (update, lagrangian, fit)
            assert fit["beta"] == pytest.approx(beta, abs=1e-9) and fit["c"] == pytest.approx(c, rel=1e-8)

        # Exact identities: the fitted constants are the optimizers' own hyperparameters.
        check("momentum SGD", "damped, Euclidean", settings["momentum"], best["momentum SGD"]["lr"])
        check("Adam", "damped, Adam M_k", beta1, best["Adam"]["lr"] * (1 - beta1))
        check("SGD", "damped, Euclidean", 0.0, best["SGD"]["lr"])
        check("LL particle (Störmer–Verlet)", "conservative ½m|θ̇|²−V", 1.0, best["LL particle (Störmer–Verlet)"]["lr"])
        check("LL Fisher metric", "damped, M=F true", 1.0, best["LL Fisher metric"]["lr"])
        check("LL Fisher metric + friction", "damped, M=F true", settings["momentum"], best[el.EXTENSION]["lr"])
        assert fits["SGD"]["conservative ½m|θ̇|²−V"]["relative"] > 0.1
        assert fits["momentum SGD"]["conservative ½m|θ̇|²−V"]["relative"] > 1e-3
        if instance["kind"] == "linear":  # constant F: the ρ flows are the β = 0 limits of their own metric
            check("ρ=½ true F", "damped, M=F^½ true", 0.0, best["ρ=½ true F"]["lr"])
            assert fits["ρ=1 true F"]["damped, M=F true"]["relative"] < 1e-10
            for row in fits.values():  # Eq. 26 as written: ∇T = g/P on the quadratic, on every path
                assert row["Eq. 26 as written (no θ̇)"]["relative"] == pytest.approx((p - 1) / (p + 1), rel=1e-9)
            assert instance["best"]["SGD"]["score"] == pytest.approx(instance["sgd_score_closed_form"], rel=1e-8)
        else:  # F(θ) varies: the ρ flows satisfy their metric's DEL only to first order in the step
            assert 1e-8 < fits["ρ=1 true F"]["damped, M=F true"]["relative"] < 0.1
        assert instance["loss_star"] < instance["loss0"]
    # The verdicts follow from the wins by the stated rule.
    for key, wins_key in (("comparison", "beats_sgd"), ("comparison_final_step", "beats_sgd_final")):
        wins = [instance[wins_key] for instance in numbers["tasks"]]
        for instance, win in zip(numbers["tasks"], wins):
            scores = "score" if wins_key == "beats_sgd" else "final_score"
            literal = min(instance["best"][name][scores] for name in settings["verdict_rows"])
            assert win["literal"] == (literal < instance["best"]["SGD"][scores])
        literal = [win["literal"] for win in wins]
        expected = "holds" if all(literal) else "fails" if not any(literal) else "mixed"
        assert numbers[key]["verdict"] == expected
    assert report["verdict"] == numbers["comparison"]["verdict"]
