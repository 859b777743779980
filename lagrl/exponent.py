"""The exponent of the Learning-Lagrangian flow (THEORY §5, "known dissent"): is ρ = ½ (Adam, the paper's
postulate) the best exponent of ``θ ← θ − η m̂ / (v̂^ρ + ε)``, or does the best ρ drift from ½ toward ¾ as
Adam's β2 grows, as a 2026 replication on a small GPT reports?

The replication's family is Adam with its own ``v̂`` raised to ρ: ``LagrangianOptimizer(fisher="diagonal",
fisher_source="gradients", rho=ρ, betas=(0.9, β2))`` (ρ = ½ is ``torch.optim.Adam``; ρ = 0 keeps no ``v̂``, so it
is momentum SGD and cannot depend on β2 — checked exactly, bit for bit). Grid: ρ ∈ {0, ¼, ½, ⅝, ¾, 1} ×
β2 ∈ {0.9, 0.99, 0.999}, on the two maximum-likelihood models of :mod:`lagrl.generative`: the next-character
MLP on Python's bundled documentation text and the 2-D Gaussian mixture.

One **cell** (a model, ρ, β2) is independent of the others, so that the grid runs as one trial per cell
(``lagrl sweep exponent``) or one cell after another (``experiments/exponent.py``), with the same numbers: the
cell takes its best step size from one shared log-spaced grid (``generative.STEP_SIZES``, 2 per decade), chosen
by the final validation loss of a tuning seed by a downhill walk that starts at ``10^{−4ρ}`` (:func:`start`);
it is then trained on 3 other seeds (initialisation and minibatch order), whose median final validation loss
fills the heat map (minus the best of its β2 row; test losses reported beside). Every run has β1 = 0.9 and
ε = 1e-8 and decays its step linearly to 0 (our choice); 1,500 minibatches of 64 for the characters, 300 for
the mixture (:data:`STEPS`).

Verdict (our operationalisation): on a model the drift is reproduced when the best ρ (lowest median validation
loss) is non-decreasing in β2, larger at β2 = 0.999 than at 0.9, and above ½ at 0.999 (the direction and the end
of "from ½ toward ¾"). "holds" if it is reproduced on both models, "fails" if on neither, "mixed" otherwise.
The Adam-minus-best gaps (ρ = ½ minus the best ρ, per β2) are reported beside the replication's
0.000 / 0.240 / 0.341 nats (validation loss, β2 = 0.9 / 0.99 / 0.999).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from functools import cache
from pathlib import Path
from typing import Any

from lagrl.generative import (
    STEP_SIZES,
    Method,
    Task,
    character_task,
    grid_search,
    json_safe,
    mixture_task,
    paired_difference,
    train,
)

CLAIM = (
    "The ρ = ½ postulate (Adam) against the reported drift: the best exponent ρ of m̂ / v̂^ρ moves from ½ toward ¾ "
    "as Adam's β2 grows (a 2026 small-GPT replication: Adam minus best 0.000 / 0.240 / 0.341 nats at "
    "β2 = 0.9 / 0.99 / 0.999)."
)
RHOS = [0.0, 0.25, 0.5, 0.625, 0.75, 1.0]
BETA2S = [0.9, 0.99, 0.999]
MODELS = ("characters", "mixture")
REPLICATION_GAPS = [0.0, 0.240, 0.341]  # validation loss, Adam minus best, at BETA2S
STEPS = {"characters": 1500, "mixture": 300}  # minibatches per run
QUICK_STEPS = 15
QUICK_HELDOUT = 2048  # --quick: smaller held-out subsets, cheaper evaluations
TASK_KEYS = ("label", "unit", "steps", "batch_size", "task_settings")  # a cell's model description


def method(rho: float, beta2: float) -> Method:
    """The replication's optimizer ``m̂ / (v̂^ρ + ε)`` with Adam's own ``v̂`` (β2) as the Fisher."""
    return Method(f"rho={rho:g},beta2={beta2:g}", f"ρ = {rho:g}, β2 = {beta2:g}", rho, "adam", beta2=beta2)


def start(rho: float) -> int:
    """Where a cell's walk on ``STEP_SIZES`` begins: the grid point nearest ``10^{−4ρ}`` (the character model's
    best step size in 17 of its 18 cells in the first, sequential run; the walk ends at the same point from any
    start where the validation loss is unimodal in ``log η``, so the start only sets how many runs it takes)."""
    return min(range(len(STEP_SIZES)), key=lambda i: abs(math.log10(STEP_SIZES[i]) + 4 * rho))


@cache
def task(model: str, device: str, quick: bool) -> Task:
    """The model's task (data on ``device``), built once per process."""
    heldout = {"heldout_size": QUICK_HELDOUT} if quick else {}
    if model not in MODELS:
        raise ValueError(f"model {model!r} is unknown; choose from {list(MODELS)}")
    return (character_task if model == "characters" else mixture_task)(device, **heldout)


def steps(model: str, quick: bool) -> int:
    """Minibatches per run: :data:`STEPS`, or :data:`QUICK_STEPS` for the CI-sized runs."""
    return QUICK_STEPS if quick else STEPS[model]


def run_cell(
    model: str, rho: float, beta2: float, seeds: list[int], tuning_seed: int, device: str, quick: bool
) -> dict[str, Any]:
    """One (model, ρ, β2) cell: its step size (tuning seed, validation), then its final losses on ``seeds``, and a
    SHA-256 of each seed's final parameters (to compare cells bit for bit)."""
    problem, budget, cell = task(model, device, quick), steps(model, quick), method(rho, beta2)

    def validation(lr: float) -> float:
        return train(problem, cell, lr, tuning_seed, budget, device).final

    index, values = grid_search(validation, STEP_SIZES, start(rho))
    runs = [train(problem, cell, STEP_SIZES[index], seed, budget, device) for seed in seeds]
    finals = {split: [run.finals.get(split, math.inf) for run in runs] for split in ("validation", "test")}
    return {
        "model": model,
        "label": problem.label,
        "unit": problem.unit,
        "steps": budget,
        "batch_size": problem.batch_size,
        "task_settings": problem.settings,
        "rho": rho,
        "beta2": beta2,
        "lr": STEP_SIZES[index],
        "grid": {f"{STEP_SIZES[i]:g}": values[i] for i in sorted(values)},
        "validation": finals["validation"],
        "test": finals["test"],
        "validation_median": statistics.median(finals["validation"]),
        "test_median": statistics.median(finals["test"]),
        "diverged": [run.diverged for run in runs if run.diverged],
        "parameters_sha256": [hashlib.sha256(run.parameters.numpy().tobytes()).hexdigest() for run in runs],
    }


def block(cells: list[dict]) -> dict:
    """One model's part of the report from its cells (every ρ × β2): each β2 row's best ρ, Adam's gaps, the drift,
    and whether the ρ = 0 cells are bit-identical across β2 (same parameters, same losses). The model's
    description (:data:`TASK_KEYS`) moves from the cells to the block."""
    model, described = cells[0]["model"], cells[0]
    order = sorted(cells, key=lambda c: (BETA2S.index(c["beta2"]), RHOS.index(c["rho"])))
    cells = [{key: value for key, value in cell.items() if key not in TASK_KEYS} for cell in order]
    expected = [(beta2, rho) for beta2 in BETA2S for rho in RHOS]
    if [(c["beta2"], c["rho"]) for c in cells] != expected:
        raise ValueError(f"{model}: the cells must be every (β2, ρ) of {expected} once")
    rows = [summarise([c for c in cells if c["beta2"] == beta2]) for beta2 in BETA2S]
    zero = [c for c in cells if c["rho"] == 0]
    keys = ("parameters_sha256", "validation", "test")
    identical = all(all(c[key] == zero[0][key] for key in keys) for c in zero)
    best_rhos = [row["best_rho"] for row in rows]
    return {
        "task": model,
        **{key: described[key] for key in TASK_KEYS},
        "cells": cells,
        "rows": rows,
        "best_rho": best_rhos,
        "best_rho_by_test": [row["best_rho_by_test"] for row in rows],
        "adam_minus_best": [row["adam_minus_best"] for row in rows],
        "drift_reproduced": drift(best_rhos),
        "rho0_bit_identical_across_beta2": identical,
    }


def summarise(row: list[dict]) -> dict:
    """One β2 row: the best ρ by median validation (and by test) loss, and Adam's gap to it (nats)."""
    by_validation = min(row, key=lambda c: c["validation_median"])
    by_test = min(row, key=lambda c: c["test_median"])
    adam = next(c for c in row if c["rho"] == 0.5)
    return {
        "beta2": row[0]["beta2"],
        "best_rho": by_validation["rho"],
        "best_rho_by_test": by_test["rho"],
        "adam_minus_best": adam["validation_median"] - by_validation["validation_median"],
        "adam_minus_best_per_seed": paired_difference(adam["validation"], by_validation["validation"]),
        "adam_minus_best_test": adam["test_median"] - by_test["test_median"],
        "validation_minus_best": [c["validation_median"] - by_validation["validation_median"] for c in row],
    }


def drift(best_rhos: list[float]) -> bool:
    """The reported drift: the best ρ is non-decreasing in β2, larger at the largest β2 than at the smallest, and
    beyond Adam's ½ there."""
    rising = all(a <= b for a, b in zip(best_rhos, best_rhos[1:])) and best_rhos[-1] > best_rhos[0]
    return rising and best_rhos[-1] > 0.5


def verdict(blocks: list[dict]) -> str:
    """``holds``: the drift is reproduced on every model; ``fails``: on none; ``mixed`` otherwise."""
    flags = [block["drift_reproduced"] for block in blocks]
    return "holds" if all(flags) else "fails" if not any(flags) else "mixed"


def settings(blocks: list[dict], seeds: list[int], tuning_seed: int) -> dict[str, Any]:
    """The report's settings: the grid, the seeds, the step-size rule and each model's task."""
    return {
        "rhos": RHOS,
        "beta2s": BETA2S,
        "beta1": 0.9,
        "eps": 1e-8,
        "step_sizes": STEP_SIZES,
        "tuning": "final validation loss of the tuning seed, downhill walk on the grid from 10^(-4ρ)",
        "tuning_seed": tuning_seed,
        "evaluation_seeds": seeds,
        "replication_adam_minus_best": REPLICATION_GAPS,
        "tasks": {b["task"]: b["task_settings"] | {"steps": b["steps"]} for b in blocks},
    }


def describe(blocks: list[dict]) -> list[str]:
    """The lines a run prints: per model and β2 the best ρ and Adam's gap, and the ρ = 0 check."""
    lines = []
    for block in blocks:
        for row in block["rows"]:
            lines.append(
                f"{block['task']:10} β2={row['beta2']:<6g} best ρ {row['best_rho']:g} "
                f"(by test {row['best_rho_by_test']:g})  Adam − best {row['adam_minus_best']:.4f} nats"
            )
        lines.append(f"{block['task']:10} ρ = 0 bit-identical across β2: {block['rho0_bit_identical_across_beta2']}")
    return lines


def report(blocks: list[dict], seeds: list[int], tuning_seed: int, quick: bool, device: str) -> dict[str, Any]:
    """``exponent.json``'s content: ``claim``, ``verdict``, ``settings`` and ``numbers`` (the models' blocks)."""
    shared = {"quick": quick, "seed": tuning_seed, "device": device}
    numbers = json_safe({"models": blocks})
    return {"claim": CLAIM, "verdict": verdict(blocks), "settings": shared | settings(blocks, seeds, tuning_seed),
            "numbers": numbers}  # fmt: skip


def sweep_trial(config: dict[str, Any]) -> None:
    """Ray Tune's function trainable of ``lagrl sweep`` for one cell (``config["trial"]``): one report, the cell as
    JSON (exact floats, ``inf`` as ``null``), its wall time and the node it ran on."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(1)
    began = time.perf_counter()
    cell = config["trial"]
    arguments = (config["seeds"], config["tuning_seed"], config["device"], config["quick"])
    result = run_cell(cell["model"], cell["rho"], cell["beta2"], *arguments)
    node = ray.get_runtime_context().get_node_id()
    tune.report({"cell": json.dumps(json_safe(result)), "wall_seconds": time.perf_counter() - began, "node": node})


def cell_from_json(text: str) -> dict[str, Any]:
    """A cell reported by :func:`sweep_trial`, its ``null`` losses (diverged runs) back to ``inf``."""
    cell = json.loads(text)
    for split in ("validation", "test"):
        cell[split] = [math.inf if value is None else value for value in cell[split]]
        median = cell[f"{split}_median"]
        cell[f"{split}_median"] = math.inf if median is None else median
    cell["grid"] = {lr: math.inf if value is None else value for lr, value in cell["grid"].items()}
    return cell


def plot(blocks: list[dict], path: Path) -> None:
    """Per model a heat map of median validation loss minus the best of its β2 row; then Adam's gaps against the
    replication's (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    figure, axes = plt.subplots(1, len(blocks) + 1, figsize=(6.2 * len(blocks) + 5, 4.6), squeeze=False)
    for axis, model in zip(axes[0], blocks):
        gaps = torch.tensor([row["validation_minus_best"] for row in model["rows"]])
        finite = gaps[torch.isfinite(gaps)]
        digits = 4 if float(finite.max()) < 0.01 else 3
        image = axis.imshow(gaps.clamp_max(float(finite.max())), cmap="magma_r", aspect="auto", vmin=0.0)
        figure.colorbar(image, ax=axis, label=f"validation loss − best of the row ({model['unit']})")
        for b, row in enumerate(model["rows"]):
            for r, rho in enumerate(RHOS):
                cell = next(c for c in model["cells"] if c["beta2"] == row["beta2"] and c["rho"] == rho)
                text = f"{gaps[b, r]:.{digits}f}\nη={cell['lr']:g}" if math.isfinite(gaps[b, r]) else "diverged"
                axis.text(
                    r,
                    b,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold" if rho == row["best_rho"] else None,
                    color="white" if gaps[b, r] > 0.6 * float(finite.max()) else "black",
                )
            axis.add_patch(plt.Rectangle((RHOS.index(row["best_rho"]) - 0.5, b - 0.5), 1, 1, fill=False, lw=2))
        axis.set_xticks(range(len(RHOS)), [f"{rho:g}" for rho in RHOS])
        axis.set_yticks(range(len(BETA2S)), [f"{beta2:g}" for beta2 in BETA2S])
        axis.set_xlabel("exponent ρ of m̂ / v̂^ρ (ρ = ½: Adam)")
        axis.set_ylabel("Adam's β2")
        axis.set_title(f"{model['label']}\n{model['steps']} steps; median of seeds; □ best ρ", fontsize=9)
    axis = axes[0][-1]
    positions = [-math.log10(1 - beta2) for beta2 in BETA2S]  # evenly spaced in log(1 − β2)
    axis.plot(positions, REPLICATION_GAPS, "k--", marker="s", label="replication (small GPT)")
    for model, colour in zip(blocks, ("tab:blue", "tab:orange")):
        axis.plot(positions, model["adam_minus_best"], marker="o", color=colour, label=model["label"])
    axis.set_xticks(positions, [f"{beta2:g}" for beta2 in BETA2S])
    axis.set_xlabel("Adam's β2")
    axis.set_ylabel("validation loss, Adam (ρ = ½) − best ρ (nats)")
    axis.set_title("Adam's gap to the best exponent", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
