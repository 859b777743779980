"""Insight 2 (the least-time data path, THEORY §2): do planned data paths reach a target error in the fewest
observations, the closed form ``samples_needed``?

Linear regression in ``R^p`` with unit-norm rows and noise σ² = 1; the error of a path after ``n`` rows is
``lagrl.design.prediction_error`` of its first ``n`` rows (exact, no sampling of noise). Paths, grown one row at
a time: planned nested tight blocks (``tight_path``), A-optimal greedy from a pool of random unit rows
(``greedy_path``) and random rows (``random_path``, several seeds). For each target ``δ`` the steps to reach
``ε ≤ δ`` are compared with ``samples_needed(δ)``, below which no design reaches ``δ``.

Verdict (our operationalisation): "holds" if the planned path needs exactly ``samples_needed`` observations for
every target and random paths need more (median); "mixed" if it stays within the block the target falls in
(``≤ p·ceil(samples_needed/p)``) but is not exact for some target — a target between multiples of ``p``, where a
tight design of ``samples_needed`` rows exists but no nested path passes through it — or if random paths are not
slower; "fails" if it misses by more than a block, or any path beats the bound (a bug).

    python experiments/planning.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Writes ``DIR/planning.json`` (claim, verdict, settings, numbers) and ``DIR/planning.png``; prints the verdict.
Needs the ``experiments`` extra (matplotlib).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
from claims import parse_arguments, plt, save_figure, write_report

from lagrl.design import (
    error_bound,
    greedy_path,
    prediction_error,
    random_path,
    samples_needed,
    tight_path,
)

CLAIM = (
    "Insight 2: a planned (least-time) data path reaches a target prediction error in the fewest observations, "
    "samples_needed(δ) = ceil(pσ²/(δ − σ²)); random data need more."
)
NOISE = 1.0


def error_curve(path: torch.Tensor, p: int) -> list[float]:
    """``ε`` after each prefix of ``n = p … len(path)`` rows (inf where the prefix is still singular)."""
    curve = []
    for n in range(p, len(path) + 1):
        try:
            curve.append(prediction_error(path[:n], NOISE))
        except ValueError:
            curve.append(math.inf)
    return curve


def steps_to(curve: list[float], target: float, p: int) -> int | None:
    return next((p + index for index, error in enumerate(curve) if error <= target), None)


def run(p: int, targets: list[float], horizon: int, random_seeds: int, seed: int, device: str) -> dict[str, Any]:
    """Curves and steps to every target for one dimension ``p``."""
    pool = random_path(20 * p, p, seed=seed + 1000, device=device)
    paths = {
        "planned": tight_path(horizon, p, seed=seed, device=device),
        "greedy": greedy_path(horizon, pool),
    }
    curves = {name: error_curve(path, p) for name, path in paths.items()}
    random_curves = [error_curve(random_path(horizon, p, seed=seed + k, device=device), p) for k in range(random_seeds)]
    rows = []
    for target in targets:
        needed = samples_needed(target, p, NOISE)
        random_steps = [steps_to(curve, target, p) for curve in random_curves]
        reached = [steps for steps in random_steps if steps is not None]
        rows.append(
            {
                "target": target,
                "samples_needed": needed,
                "planned": steps_to(curves["planned"], target, p),
                "greedy": steps_to(curves["greedy"], target, p),
                "random_median": statistics.median(reached) if len(reached) == len(random_steps) else None,
                "random_min": min(reached) if reached else None,
                "random_max": max(reached) if len(reached) == len(random_steps) else None,
                "random_reached": f"{len(reached)}/{len(random_steps)}",
            }
        )
    return {"p": p, "rows": rows, "curves": curves, "random_curves": random_curves}


def verdict(results: list[dict[str, Any]]) -> str:
    """``holds``: the planned path needs exactly ``samples_needed`` for every target and random paths more;
    ``mixed``: it is within the block the target falls in but not exact somewhere (nesting fails between
    multiples of p), or random is not slower; ``fails``: a miss beyond the block, or a path below the bound."""
    exact, random_slower = True, True
    for result in results:
        p = result["p"]
        for row in result["rows"]:
            needed, planned = row["samples_needed"], row["planned"]
            if planned is None or planned > p * math.ceil(needed / p):
                return "fails"
            if any(row[name] is not None and row[name] < needed for name in ("planned", "greedy", "random_min")):
                return "fails"
            exact &= planned == needed
            random_slower &= row["random_median"] is None or row["random_median"] > needed
    return "holds" if exact and random_slower else "mixed"


def plot(results: list[dict[str, Any]], targets: list[float], path: Path) -> None:
    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, result in zip(axes[0], results):
        p = result["p"]
        n = list(range(p, p + len(result["curves"]["planned"])))
        random = torch.tensor(result["random_curves"])
        finite = torch.where(torch.isinf(random), torch.full_like(random, float("nan")), random)
        low, middle, high = (finite.nanquantile(q, dim=0).tolist() for q in (0.1, 0.5, 0.9))
        axis.fill_between(n, low, high, color="tab:gray", alpha=0.3, label="random rows, 10–90 %")
        axis.plot(n, middle, color="tab:gray", label="random rows, median")
        axis.plot(n, result["curves"]["greedy"], color="tab:blue", label="A-optimal greedy (pool of 20p)")
        axis.plot(n, result["curves"]["planned"], color="tab:red", marker=".", label="planned nested tight blocks")
        axis.plot(n, [error_bound(k, p, NOISE) for k in n], "k--", label="bound σ²(1 + p/n)")
        for target in targets:
            axis.axhline(target, color="tab:green", linewidth=0.8, linestyle=":")
            axis.annotate(f"δ = {target:g}", (n[-1], target), ha="right", va="bottom", color="tab:green", fontsize=8)
        axis.set_ylim(NOISE * 0.98, 2.6 * NOISE)
        axis.set_xlabel("observations n")
        axis.set_ylabel("expected prediction error ε (σ² = 1, noise included)")
        axis.set_title(f"least-time data path, p = {p}")
        axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "p = 4, 20 random seeds")
    dimensions = [4] if args.quick else [4, 16]
    targets = [1.5 * NOISE, 1.3 * NOISE, 1.2 * NOISE, 1.1 * NOISE]  # 1.3: samples_needed not a multiple of p
    random_seeds = 20 if args.quick else 200
    results = []
    for p in dimensions:
        horizon = samples_needed(targets[-1], p, NOISE) + 2 * p
        results.append(run(p, targets, horizon, random_seeds, args.seed, args.device))
    plot(results, targets, args.out / "planning.png")
    for result in results:
        for row in result["rows"]:
            print(
                f"p={result['p']:3} δ={row['target']:g}: samples_needed {row['samples_needed']}, planned "
                f"{row['planned']}, greedy {row['greedy']}, random median {row['random_median']} "
                f"[{row['random_min']}, {row['random_max']}] ({row['random_reached']})"
            )
    settings = {
        "noise_var": NOISE,
        "dimensions": dimensions,
        "targets": targets,
        "random_seeds": random_seeds,
        "greedy_pool": "20p random unit rows",
    }
    numbers = [{"p": result["p"], "rows": result["rows"]} for result in results]
    write_report(args, "planning", CLAIM, verdict(results), settings, numbers)


if __name__ == "__main__":
    main()
