"""lagrl.exponent and experiments/exponent.py: the ρ family m̂ / (v̂^ρ + ε) against its closed form, ρ = 0
bit-identical for every β2 (the replication's sanity check), ρ = ½ equal to torch.optim.Adam at each β2, and the
quick report against its own grids, seeds and verdict rule."""

import math
import statistics

import pytest
import torch

from helpers import run_quick, torch_adam_path
from lagrl import exponent, generative


@pytest.fixture(scope="module")
def tasks() -> dict[str, generative.Task]:
    return {"mixture": generative.mixture_task("cpu"), "characters": generative.character_task("cpu")}


def trajectory(task: generative.Task, rho: float, beta2: float, steps: int = 25, lr: float = 3e-2) -> list:
    path: list[torch.Tensor] = []
    generative.train(task, exponent.method(rho, beta2), lr, seed=7, steps=steps, device="cpu", trajectory=path)
    return path


def test_one_step_of_the_family_is_its_closed_form():
    """θ₁ = θ₀ − η m̂₁ / (v̂₁^ρ + ε) with m̂₁ = g, v̂₁ = g² after bias correction (ρ = 0: no v̂, θ₀ − η g)."""
    for rho in exponent.RHOS:
        param = torch.nn.Parameter(torch.tensor([0.3, -2.0, 0.05], dtype=torch.float64))
        start = param.detach().clone()
        model = torch.nn.Module()
        model.param = param
        optimizer = exponent.method(rho, 0.99).optimizer(model, lr=0.1)
        grad = torch.tensor([0.5, -4.0, 1e-3], dtype=torch.float64)
        param.grad = grad.clone()
        optimizer.step()
        expected = start - 0.1 * (grad if rho == 0 else grad / (grad.square() ** rho + 1e-8))
        assert torch.allclose(param.detach(), expected, rtol=1e-12, atol=0), rho


@pytest.mark.parametrize("task_name", ["mixture", "characters"])
def test_rho_zero_does_not_depend_on_beta2(tasks, task_name):
    """ρ = 0 keeps no v̂: the whole trajectory is bit-identical for every β2 — and, as a control, ρ = ½ is not."""
    task = tasks[task_name]
    paths = [trajectory(task, 0.0, beta2) for beta2 in exponent.BETA2S]
    for path in paths[1:]:
        assert len(path) == len(paths[0]) == 25
        assert all(torch.equal(a, b) for a, b in zip(path, paths[0]))
    adam = [trajectory(task, 0.5, beta2) for beta2 in (0.9, 0.999)]
    assert not torch.equal(adam[0][-1], adam[1][-1])


@pytest.mark.parametrize("beta2", exponent.BETA2S)
def test_rho_half_is_torch_adam_at_every_beta2(tasks, beta2):
    task, steps, lr = tasks["mixture"], 20, 3e-2
    path = trajectory(task, 0.5, beta2, steps, lr)
    reference = torch_adam_path(task, lr, (0.9, beta2), steps, seed=7)
    for step in range(steps):
        assert torch.equal(path[step], reference[step])


def test_each_walk_starts_near_ten_to_the_minus_four_rho():
    for rho in exponent.RHOS:
        chosen = generative.STEP_SIZES[exponent.start(rho)]
        assert all(abs(math.log10(chosen) + 4 * rho) <= abs(math.log10(lr) + 4 * rho) for lr in generative.STEP_SIZES)
    assert generative.STEP_SIZES[exponent.start(0.5)] == 0.01


def test_drift_rule():
    assert exponent.drift([0.5, 0.625, 0.75]) and exponent.drift([0.5, 0.5, 0.75]) and exponent.drift([0, 0.5, 1])
    assert not exponent.drift([0.5, 0.5, 0.5]) and not exponent.drift([0.75, 0.5, 0.75])
    assert not exponent.drift([0.75, 0.625, 0.5]) and not exponent.drift([0.25, 0.5, 0.5])  # never beyond ½


def test_quick_report_agrees_with_its_grids_seeds_and_rule(tmp_path):
    report = run_quick("exponent", tmp_path)
    settings, numbers = report["settings"], report["numbers"]
    grid, seeds = settings["step_sizes"], settings["evaluation_seeds"]
    assert settings["seed"] not in seeds and numbers["wall_seconds"] > 0
    flags = []
    for block in numbers["models"]:
        cells = {(c["rho"], c["beta2"]): c for c in block["cells"]}
        assert set(cells) == {(rho, beta2) for rho in exponent.RHOS for beta2 in exponent.BETA2S}
        for cell in cells.values():
            assert len(cell["validation"]) == len(cell["test"]) == len(seeds)
            assert cell["validation_median"] == pytest.approx(statistics.median(cell["validation"]))
            # the chosen step size: on the grid, the lowest validation loss the walk found, a local minimum
            evaluated = {float(lr): value for lr, value in cell["grid"].items()}
            finite = {lr: value for lr, value in evaluated.items() if value is not None}
            assert cell["lr"] in grid and set(evaluated) <= set(grid)
            assert finite[cell["lr"]] == min(finite.values())
            index = grid.index(cell["lr"])
            assert all(grid[j] in evaluated for j in (index - 1, index + 1) if 0 <= j < len(grid))
        # ρ = 0: the same walk, step size, losses and final parameters, to the last bit, at every β2
        zero = [cells[(0.0, beta2)] for beta2 in exponent.BETA2S]
        keys = ("lr", "grid", "validation", "test", "parameters_sha256")
        for cell in zero[1:]:
            assert [cell[key] for key in keys] == [zero[0][key] for key in keys]
        assert block["rho0_bit_identical_across_beta2"] is True
        for row, beta2 in zip(block["rows"], exponent.BETA2S):
            medians = {rho: cells[(rho, beta2)]["validation_median"] for rho in exponent.RHOS}
            best = min(medians, key=medians.get)
            assert row["best_rho"] == best
            assert row["adam_minus_best"] == pytest.approx(medians[0.5] - medians[best])
            assert min(row["validation_minus_best"]) == 0.0
        assert block["drift_reproduced"] == exponent.drift(block["best_rho"])
        flags.append(block["drift_reproduced"])
    assert report["verdict"] == ("holds" if all(flags) else "fails" if not any(flags) else "mixed")
