"""experiments/fisher_vs_adam.py and the models of lagrl/generative.py: the true Fisher of the Gaussian
mixture against closed forms and a Hessian, the Adam row against torch.optim.Adam, and the quick report against
its own grids, seeds and verdict rule."""

import math
import statistics
import sys

import pytest
import torch
from torch.func import functional_call, hessian

from helpers import ROOT, run_quick, torch_adam_path
from lagrl.fisher import per_sample_grads

sys.path.insert(0, str(ROOT / "experiments"))
from lagrl import generative  # noqa: E402

ADAM = generative.Method("adam", "Adam", 0.5, "adam")


def single_gaussian(means: list[float], scales: list[float]) -> generative.GaussianMixture:
    model = generative.GaussianMixture(1, len(means))
    with torch.no_grad():
        model.means.copy_(torch.tensor([means]))
        model.log_scales.copy_(torch.tensor([scales]).log())
    return model


def test_true_fisher_of_one_gaussian_is_the_closed_form():
    """K = 1: F = diag(0 | 1/σ² | 2) in (logit, μ, log σ), the logit's score being 0 (its softmax is always 1).

    Monte Carlo over N draws from the model: the squared scores have variances 2/σ⁴ (μ) and 56 (log σ)."""
    scales = torch.tensor([0.5, 2.0])
    model = single_gaussian([1.0, -3.0], scales.tolist())
    n = 20_000
    (estimate,) = generative.true_fisher_estimates(
        model, torch.zeros(n, 1), "full", torch.Generator().manual_seed(0)
    ).values()
    matrix = estimate.matrix
    expected = torch.diag(torch.cat([torch.zeros(1), 1 / scales**2, torch.full((2,), 2.0)]))
    standard_error = torch.cat([torch.zeros(1), (2 / n) ** 0.5 / scales**2, torch.full((2,), (56 / n) ** 0.5)])
    assert torch.all((matrix.diagonal() - expected.diagonal()).abs() <= 5 * standard_error + 1e-7)
    off = matrix - torch.diag(matrix.diagonal())
    assert off.abs().max() < 5 * (3 / n) ** 0.5 * 4  # cross terms have mean 0 and variances below 3·(1/σ²)²


def quadrature(model: generative.GaussianMixture, half_width: float = 10.0, points: int = 201):
    """Nodes ``y`` of a square grid over ``[−w, w]²`` and weights ``p_θ(y) Δ²``: ``E_{y~p_θ}[f] ≈ Σ w f(y)``."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    nodes = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = model(torch.zeros(len(nodes), 1)).log_prob(nodes).exp()
    return nodes, density * (axis[1] - axis[0]) ** 2


def test_true_fisher_of_the_mixture_against_quadrature_and_the_hessian():
    """A 3-component 2-D mixture: F = E_{y~p_θ}[s sᵀ] by quadrature of the scores s = ∇θ log p_θ(y) on a grid, no
    sampling; = E_{y~p_θ}[−∇²θ log p_θ(y)] by quadrature of the torch.func Hessian (Bartlett's identity); the
    experiment's Monte Carlo estimate (draws from the model) within 5 standard errors of it, entry by entry, and
    its diagonal form the diagonal of its full form on the same draws."""
    model = generative.GaussianMixture(3, 2).double()
    with torch.no_grad():
        model.logits.copy_(torch.tensor([0.2, -0.1, 0.3]))
        model.means.copy_(torch.tensor([[-2.0, 0.0], [1.0, 1.0], [2.0, -2.0]]))
        model.log_scales.copy_(torch.tensor([[0.7, 1.0], [0.5, 0.8], [1.2, 0.6]]).log())
    nodes, weights = quadrature(model)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-9)
    scores = per_sample_grads(model, torch.zeros(len(nodes), 1), nodes)
    scores = torch.cat([g.flatten(1) for g in scores.values()], dim=1)
    exact = (scores * weights.unsqueeze(1)).T @ scores
    params = {name: p.detach() for name, p in model.named_parameters()}
    sizes = [p.numel() for p in params.values()]

    def expected_nll(flat: torch.Tensor) -> torch.Tensor:
        theta = {name: piece.view_as(params[name]) for name, piece in zip(params, flat.split(sizes))}
        return -(functional_call(model, theta, (torch.zeros(len(nodes), 1),)).log_prob(nodes) * weights).sum()

    curvature = hessian(expected_nll)(torch.cat([p.flatten() for p in params.values()]))
    assert torch.allclose(curvature, exact, atol=1e-8, rtol=1e-6)
    n = 20_000
    (estimate,) = generative.true_fisher_estimates(
        model, torch.zeros(n, 1), "full", torch.Generator().manual_seed(1)
    ).values()
    squares = scores.square()
    spread = ((squares * weights.unsqueeze(1)).T @ squares - exact.square()).clamp_min(0).sqrt()  # std of s_i s_j
    assert torch.all((estimate.matrix - exact).abs() <= 5 * spread / n**0.5 + 1e-9)
    diagonal = generative.true_fisher_estimates(model, torch.zeros(n, 1), "diagonal", torch.Generator().manual_seed(1))
    stacked = torch.cat([diagonal[p].diagonal.flatten() for p in model.parameters()])
    assert torch.allclose(stacked, estimate.matrix.diagonal(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task_name", ["mixture", "characters"])
def test_the_adam_row_is_torch_adam(task_name):
    """The Adam row (LagrangianOptimizer, ρ = ½, Adam's own v̂) gives torch.optim.Adam's trajectory bit for bit,
    on the same initialisation, minibatches and step-size schedule."""
    task = generative.mixture_task("cpu") if task_name == "mixture" else generative.character_task("cpu")
    seed, steps, lr = 4, 15, 3e-2
    ours: list[torch.Tensor] = []
    generative.train(task, ADAM, lr, seed, steps, "cpu", trajectory=ours)
    reference = torch_adam_path(task, lr, (0.9, 0.999), steps, seed)  # torch.optim.Adam's default betas
    for step in range(steps):
        assert torch.equal(ours[step], reference[step])


def test_loss_at_a_time_interpolates_between_evaluations():
    run = generative.Run(steps=[0, 5, 10], seconds=[0.0, 2.0, 3.0], losses=[4.0, 3.0, 1.0])
    assert [run.loss_at(t) for t in (0.0, 1.0, 2.5, 3.0, 9.0)] == [4.0, 3.5, 2.0, 1.0, 1.0]
    run.diverged = "step 11: non-finite loss"
    assert run.loss_at(2.5) == 2.0 and run.loss_at(9.0) == math.inf


def test_grid_search_finds_the_minimum_of_a_unimodal_curve_and_walks_off_divergence():
    grid = generative.log_grid(1e-4, 1.0, 2)
    assert grid[0] == 1e-4 and grid[-1] == 1.0 and len(grid) == 9
    for target in grid:
        for start in (0, 4, 8):
            index, values = generative.grid_search(lambda lr: math.log10(lr / target) ** 2, grid, start)
            assert grid[index] == target and values[index] == min(values.values())
    diverging = generative.grid_search(lambda lr: math.inf if lr > 1e-3 else -lr, grid, 8)
    assert diverging[0] == grid.index(1e-3)


def test_quick_report_agrees_with_its_grids_seeds_and_rule(tmp_path):
    report = run_quick("fisher_vs_adam", tmp_path)
    assert (tmp_path / "fisher_vs_adam_grid.png").read_bytes()[:4] == b"\x89PNG"
    settings, numbers = report["settings"], report["numbers"]
    grid, seeds = settings["step_sizes"], settings["evaluation_seeds"]
    assert settings["seed"] not in seeds and len(seeds) >= 2 and numbers["wall_seconds"] > 0
    flags = {"per_step": [], "per_second": []}
    for block in numbers["models"]:
        rows = {row["name"]: row for row in block["rows"]}
        assert {"adam", "sqrt-diagonal", "sqrt-diagonal-energy"} <= set(rows)
        assert {"sqrt-full", "natural-full"} <= set(rows) or {"sqrt-kfac", "natural-kfac"} <= set(rows)
        adam = rows["adam"]["test_final"]
        for row in rows.values():
            assert len(row["test_final"]) == len(seeds)
            assert row["test_final_median"] == pytest.approx(statistics.median(row["test_final"]))
            difference = [a - b for a, b in zip(row["test_final"], adam)]
            assert row["per_step_vs_adam"]["median"] == pytest.approx(statistics.median(difference))
            curve = row["curve"]
            assert curve["steps"][0] == 0 and curve["steps"][-1] == block["steps"]
            assert curve["seconds"] == sorted(curve["seconds"])
            if row["step_rule"] == "energy":
                assert row["lr"] is None and not row["grid"]
                continue
            # the chosen step size is on the shared grid, the lowest validation loss the walk found, and a local
            # minimum of the grid: both neighbours were evaluated (or it lies at an end)
            evaluated = {float(lr): value for lr, value in row["grid"].items()}
            assert row["lr"] in grid and row["lr"] in evaluated and set(evaluated) <= set(grid)
            finite = {lr: value for lr, value in evaluated.items() if value is not None}
            assert row["validation_at_lr"] == min(finite.values()) == finite[row["lr"]]
            index = grid.index(row["lr"])
            assert all(grid[j] in evaluated for j in (index - 1, index + 1) if 0 <= j < len(grid))
        assert rows["adam"]["per_step_vs_adam"]["median"] == 0.0
        assert rows["adam"]["test_at_adam_seconds"] == adam  # at its own training time, Adam's final loss
        candidates = [r for r in rows.values() if r["rho"] == 0.5 and r["fisher"] != "adam" and r["step_rule"] == "lr"]
        assert block["verdict_row"] == min(candidates, key=lambda r: r["validation_at_lr"])["name"]
        for key in flags:
            comparison = block[key]
            assert comparison["not_worse"] == (comparison["median"] <= 2 * comparison["standard_error"])
            flags[key].append(comparison["not_worse"])
    expected = {key: "holds" if all(f) else "fails" if not any(f) else "mixed" for key, f in flags.items()}
    assert report["verdict"] == expected["per_step"] and numbers["per_second_verdict"] == expected["per_second"]
