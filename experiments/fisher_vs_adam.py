"""Insight 3 (THEORY §5): Adam is the ρ = ½ flow ``θ̇ = −F^{-½} g`` with ``F ≈ diag(v̂)``; does the flow with the
model's *true* Fisher train generative models at least as well as Adam?

Two maximum-likelihood density models (``lagrl.generative``): a 4-component 2-D Gaussian mixture fit to draws of a
fixed true mixture (P = 20: diagonal and full Fisher), and a next-character MLP on Python's bundled documentation
text (P ≈ 23k: diagonal and K-FAC, the embedding diagonal); 300 and 1,000 minibatches of 64. The true Fisher is
estimated on each minibatch's inputs with targets drawn from the model itself (one per context for the
characters; for the unconditional mixture 4 draws from the model per row of constant dummy inputs, 256 in all,
through ``lagrl.fisher``), blended into a running average and supplied to
``LagrangianOptimizer(fisher_source="external")``. Rows: Adam (ρ = ½, ``F ≈ diag v̂``: ``torch.optim.Adam``),
ρ = ½ with the true Fisher in each form, the natural gradient (ρ = 1, true Fisher, full / K-FAC), and — one
setting, untuned — ρ = ½ true diagonal with the energy step rule (``½ ΔθᵀMΔθ = δ = 1e-3`` per step, THEORY §5b).

A fixed learning rate is not comparable across metrics (a true-Fisher ρ = ½ step at Adam's ``lr`` is about
``1/√B`` of Adam's, THEORY §5b), so every tuned row takes its best step size from one shared log-spaced grid
(``lagrl.generative.STEP_SIZES``, 2 per decade), chosen by the final *validation* loss of one tuning seed (``--seed``)
by a downhill walk on the grid; every row decays its step linearly to 0 over the run (our choice: final losses
then measure convergence, not the noise floor of a constant step). The reported numbers are *test* losses on
other seeds (8 for the mixture, whose seeds differ mostly in the basin they end in; 4 for the characters), the
same initialisation and minibatch order for every row, so the comparison is paired. Every row has β1 = 0.9 and
β2 = 0.999 (Adam's; the true-Fisher rows use β1 only) and Adam's ε = 1e-8; the true Fisher, damped by ε = 1e-3 in
every form (``lagrl.generative.FISHER_EPS``: a minibatch's true Fisher has exact zeros), is refreshed every 5 (mixture)
or 10 (characters) steps into a running average (decay 0.95), as K-FAC does.

Verdict (our operationalisation): per model, the ρ = ½ true-Fisher form with the lower tuning-seed validation
loss is compared with Adam; it is "not worse" when the median over seeds of the paired difference of final test
losses (ours − Adam's, equal steps) is at most two standard errors of that difference. "holds" if not worse on
every model, "fails" if worse on every model, "mixed" otherwise. The same rule at equal *training time* (each
row's test loss at Adam's training time, linear between its 25 evaluations; the Fisher costs time) is reported beside
it as ``per_second_verdict``. The clock is the process's CPU time (one thread: the wall clock of an idle core,
not inflated by other jobs on a shared host; on CUDA, the synchronised wall clock); evaluation is not counted.

    python experiments/fisher_vs_adam.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Writes ``DIR/fisher_vs_adam.json``, ``DIR/fisher_vs_adam.png`` (loss against steps and seconds) and
``DIR/fisher_vs_adam_grid.png`` (validation loss against step size); prints the verdict.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from claims import parse_arguments, plt, save_figure, write_report

from lagrl.generative import (
    ADAM_EPS,
    ENERGY_BUDGET,
    FISHER_DECAY,
    FISHER_EPS,
    STEP_SIZES,
    Method,
    Run,
    Task,
    character_task,
    grid_search,
    json_safe,
    mixture_task,
    not_worse,
    paired_difference,
    train,
)

CLAIM = (
    "Insight 3: Adam is the ρ = ½ Learning-Lagrangian flow with F ≈ diag(v̂); the same flow with the model's true "
    "Fisher (diagonal, K-FAC, full) trains generative models at least as well as Adam."
)
ADAM = Method("adam", "Adam (ρ = ½, F ≈ diag v̂)", 0.5, "adam")
STARTS = {"adam": 1e-2, "lr": 1e-1}  # where each walk on the grid begins (Adam's, and the true-Fisher rows')
COLOURS = {"adam": "black", "sqrt-diagonal": "tab:blue", "sqrt-full": "tab:orange", "sqrt-kfac": "tab:orange"}
COLOURS |= {"natural-full": "tab:green", "natural-kfac": "tab:green", "sqrt-diagonal-energy": "tab:purple"}


def methods(task: Task) -> list[Method]:
    """Adam, ρ = ½ with the true Fisher in each form the model affords, the natural gradient, the energy row."""
    rows = [ADAM]
    rows += [Method(f"sqrt-{form}", f"ρ = ½, true Fisher, {form}", 0.5, form) for form in task.forms]
    matrix = task.forms[-1]
    rows.append(Method(f"natural-{matrix}", f"natural gradient (ρ = 1, true Fisher, {matrix})", 1.0, matrix))
    energy = f"ρ = ½, true diagonal, energy rule δ = {ENERGY_BUDGET:g} (untuned)"
    rows.append(Method("sqrt-diagonal-energy", energy, 0.5, "diagonal", step_rule="energy"))
    return rows


def tune(task: Task, method: Method, steps: int, seed: int, device: str) -> tuple[float, dict[float, float]]:
    """The method's step size: the grid point of lowest final validation loss on the tuning seed (the energy
    rule sets its own, so it takes none)."""
    if method.step_rule == "energy":
        return 1.0, {}
    start = STEP_SIZES.index(STARTS["adam" if method.fisher == "adam" else "lr"])
    best, values = grid_search(lambda lr: train(task, method, lr, seed, steps, device).final, STEP_SIZES, start)
    return STEP_SIZES[best], {STEP_SIZES[index]: values[index] for index in sorted(values)}


def median_curve(runs: list[Run]) -> dict[str, list[float]]:
    """Median over seeds, at each evaluation, of the test loss and of the training seconds (finished runs only)."""
    done = [run for run in runs if not run.diverged]
    if not done:
        return {"steps": [], "loss": [], "seconds": []}
    columns = range(len(done[0].steps))
    return {
        "steps": done[0].steps,
        "loss": [statistics.median(run.losses[i] for run in done) for i in columns],
        "seconds": [statistics.median(run.seconds[i] for run in done) for i in columns],
    }


def run_task(task: Task, steps: int, seeds: list[int], tuning_seed: int, evaluations: int, device: str) -> dict:
    """Tune every row on the tuning seed, then train it on every seed; paired comparisons against Adam."""
    rows, runs = [], {}
    for method in methods(task):
        lr, grid = tune(task, method, steps, tuning_seed, device)
        runs[method.name] = [train(task, method, lr, s, steps, device, "test", evaluations) for s in seeds]
        rows.append({"method": method, "lr": lr, "grid": grid})
    adam_runs = runs[ADAM.name]
    budgets = [run.seconds[-1] if run.seconds else 0.0 for run in adam_runs]  # Adam's training seconds per seed
    results = []
    for row in rows:
        method, own = row["method"], runs[row["method"].name]
        finals = [run.final for run in own]
        at_adam_time = [run.loss_at(budget) for run, budget in zip(own, budgets)]
        results.append(
            {
                "name": method.name,
                "label": method.label,
                "rho": method.rho,
                "fisher": method.fisher,
                "step_rule": method.step_rule,
                "lr": None if method.step_rule == "energy" else row["lr"],
                "validation_at_lr": row["grid"].get(row["lr"], math.inf),
                "grid": {f"{lr:g}": value for lr, value in row["grid"].items()},
                "test_final": finals,
                "test_final_median": statistics.median(finals),
                "seconds_median": statistics.median(run.seconds[-1] if run.seconds else math.nan for run in own),
                "test_at_adam_seconds": at_adam_time,
                "diverged": [run.diverged for run in own if run.diverged],
                "curve": median_curve(own),
                "per_step_vs_adam": paired_difference(finals, [run.final for run in adam_runs]),
                "per_second_vs_adam": paired_difference(at_adam_time, [run.final for run in adam_runs]),
            }
        )
    candidates = [r for r in results if r["rho"] == 0.5 and r["fisher"] != "adam" and r["step_rule"] == "lr"]
    chosen = min(candidates, key=lambda r: r["validation_at_lr"])
    return {
        "task": task.name,
        "label": task.label,
        "unit": task.unit,
        "floor": task.floor,
        "steps": steps,
        "seeds": seeds,
        "batch_size": task.batch_size,
        "fisher_every": task.fisher_every,
        "rows": results,
        "verdict_row": chosen["name"],
        "per_step": chosen["per_step_vs_adam"] | {"not_worse": not_worse(chosen["per_step_vs_adam"])},
        "per_second": chosen["per_second_vs_adam"] | {"not_worse": not_worse(chosen["per_second_vs_adam"])},
    }


def verdict(blocks: list[dict], key: str) -> str:
    """``holds``: not worse than Adam on every model; ``fails``: worse on every model; ``mixed`` otherwise."""
    flags = [block[key]["not_worse"] for block in blocks]
    return "holds" if all(flags) else "fails" if not any(flags) else "mixed"


def plot(blocks: list[dict], path: Path) -> None:
    """Per model: median test loss against steps and against training seconds, Adam in black, the floor dashed."""
    figure, axes = plt.subplots(len(blocks), 2, figsize=(13, 4.6 * len(blocks)), squeeze=False)
    for (by_step, by_time), block in zip(axes, blocks):
        for row in block["rows"]:
            curve = row["curve"]
            if not curve["steps"]:
                continue
            style = dict(color=COLOURS[row["name"]], linewidth=2.4 if row["name"] == "adam" else 1.4)
            style["linestyle"] = ":" if row["step_rule"] == "energy" else "-"
            lr = "" if row["lr"] is None else f", η = {row['lr']:g}"
            by_step.plot(curve["steps"], curve["loss"], label=f"{row['label']}{lr}", **style)
            by_time.plot(curve["seconds"], curve["loss"], **style)
        losses = [loss for row in block["rows"] for loss in row["curve"]["loss"]]
        low = min(losses + ([block["floor"]] if block["floor"] is not None else []))
        high = sorted(losses)[int(0.8 * (len(losses) - 1))]
        for axis in (by_step, by_time):
            if block["floor"] is not None:
                axis.axhline(block["floor"], color="gray", linestyle="--", label="true mixture (Bayes floor)")
            axis.set_ylim(low - 0.05 * (high - low), high)
            axis.set_ylabel(f"test loss ({block['unit']}), median of seeds")
            axis.set_title(block["label"], fontsize=10)
            axis.grid(alpha=0.3)
        by_step.set_xlabel(f"steps (minibatch of {block['batch_size']})")
        by_time.set_xlabel("training seconds (CPU time of the one thread; evaluations excluded)")
        by_step.legend(fontsize=7)
    save_figure(figure, path)


def plot_grid(blocks: list[dict], path: Path) -> None:
    """Per model: final validation loss of the tuning seed against the step size, the chosen one marked."""
    figure, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.3), squeeze=False)
    for axis, block in zip(axes[0], blocks):
        for row in block["rows"]:
            if not row["grid"]:
                continue
            points = [(float(lr), value) for lr, value in row["grid"].items() if math.isfinite(value)]
            colour = COLOURS[row["name"]]
            axis.plot(*zip(*points), marker="o", color=colour, label=row["label"])
            if math.isfinite(row["validation_at_lr"]):
                axis.plot(row["lr"], row["validation_at_lr"], marker="*", markersize=14, color=colour)
        if block["floor"] is not None:
            axis.axhline(block["floor"], color="gray", linestyle="--", label="true mixture (test split)")
        lowest = min(row["validation_at_lr"] for row in block["rows"])
        untrained = block["rows"][0]["curve"]["loss"][0]  # Adam's median test loss at step 0
        axis.set_ylim(min(lowest, block["floor"] or lowest) - 0.05 * (untrained - lowest), untrained)
        axis.set_xscale("log")
        axis.set_xlabel("step size η (grid, 2 per decade)")
        axis.set_ylabel(f"final validation loss ({block['unit']}), tuning seed;\nclipped at the untrained model's")
        axis.set_title(f"{block['label']}: step-size search (★ chosen)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    save_figure(figure, path)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "40 steps per model, 2 seeds")
    began, cpu = time.perf_counter(), time.process_time()
    quick = args.quick
    heldout = {"heldout_size": 2048} if quick else {}  # quick: smaller held-out subsets, cheaper evaluations
    tasks = [(mixture_task(args.device, **heldout), 40 if quick else 300, 2 if quick else 8)]
    tasks.append((character_task(args.device, **heldout), 40 if quick else 1000, 2 if quick else 4))
    evaluations = 4 if quick else 25
    blocks = []
    for task, steps, count in tasks:
        seeds = [args.seed + k for k in range(1, count + 1)]
        blocks.append(run_task(task, steps, seeds, args.seed, evaluations, args.device))
    plot(blocks, args.out / "fisher_vs_adam.png")
    plot_grid(blocks, args.out / "fisher_vs_adam_grid.png")
    for block in blocks:
        for row in block["rows"]:
            print(
                f"{block['task']:10} {row['name']:22} η={row['lr']!s:8} test {row['test_final_median']!s:.6} "
                f"({row['seconds_median']:.1f} s)  Δ/step {row['per_step_vs_adam']['median']:+.4f}  "
                f"Δ/second {row['per_second_vs_adam']['median']:+.4f}"
            )
    settings = {
        "step_sizes": STEP_SIZES,
        "tuning": "final validation loss of the tuning seed (--seed), downhill walk on the grid",
        "evaluation_seeds": {block["task"]: block["seeds"] for block in blocks},
        "schedule": "linear decay of the step size to 0 over the run (LambdaLR 1 − t/T), every row",
        "betas": [0.9, 0.999],
        "eps": {"adam": ADAM_EPS, "true_fisher": FISHER_EPS},
        "fisher_decay": FISHER_DECAY,
        "energy_budget": ENERGY_BUDGET,
        "true_fisher": "lagrl.fisher.fisher(kind='true'): fisher_samples targets drawn from the model per input",
        "fisher_samples": {task.name: task.fisher_samples for task, _, _ in tasks},
        "fisher_every": {task.name: task.fisher_every for task, _, _ in tasks},
        "tasks": {task.name: task.settings | {"steps": steps} for task, steps, _ in tasks},
    }
    numbers = {"models": blocks, "per_second_verdict": verdict(blocks, "per_second")}
    numbers["wall_seconds"] = time.perf_counter() - began
    numbers["cpu_seconds"] = time.process_time() - cpu
    write_report(args, "fisher_vs_adam", CLAIM, verdict(blocks, "per_step"), settings, json_safe(numbers))


if __name__ == "__main__":
    main()
