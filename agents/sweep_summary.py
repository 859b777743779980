"""A sweep's statistics (rliable): interquartile means with stratified-bootstrap intervals, and plots.

For every (env, algo, preconditioner) of ``trials.csv``, over its runs (its seeds; in a search, its samples too):

- ``eval_iqm`` — the interquartile mean of the final deterministic evaluations,
  ``IQM(x) = mean of the middle 50 %`` (``scipy.stats.trim_mean(x, 0.25)``, rliable's ``aggregate_iqm``), with
  its 95 % stratified-bootstrap interval (``rliable.library.get_interval_estimates``, percentile method);
- ``reached`` — the seeds whose 100-episode training mean reached the env's threshold, and the median steps
  to it (a seed that never reached it counts as infinite);
- ``probability_of_improvement`` of each preconditioner over the algorithm's SB3-identical baseline (``adam``
  for ppo, ``rmsprop`` for a2c) on the same env, ``P(X > Y) = (1/nm) Σᵢⱼ [xᵢ > yⱼ] + ½[xᵢ = yⱼ]`` (Agarwal et
  al. 2021), with its bootstrap interval.

Plots (PNG, Agg backend): ``sweep_curves.png``, the IQM of the training mean along the run with its 95 %
band, one panel per env; ``sweep_improvement.png``, the probabilities of improvement with their intervals.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy

from lagrl.atomic import atomic_open

BASELINES = {"ppo": "adam", "a2c": "rmsprop"}  # numerically SB3's own PPO and A2C
CONFIDENCE = 0.95
CURVE_POINTS = 20


def _rliable() -> tuple[Any, Any]:
    from rliable import library, metrics

    return library, metrics


def _bootstrap(library: Any, scores: dict[str, Any], func: Any, reps: int, seed: int) -> tuple[dict, dict]:
    """``library.get_interval_estimates`` (percentile intervals), reproducible for a given ``seed``.

    rliable's resampling (``update_indices`` of its stratified bootstraps) draws from NumPy's *global* generator,
    not from the ``random_state`` it would hand on to arch (which only arch's own resamplers use); so the global
    generator is seeded here for the call and its state restored afterwards (the caller's draws are unchanged).
    """
    state = numpy.random.get_state()
    numpy.random.seed(seed)
    try:
        return library.get_interval_estimates(scores, func, reps=reps, confidence_interval_size=CONFIDENCE)
    finally:
        numpy.random.set_state(state)


def iqm_interval(scores: numpy.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """IQM of ``scores`` (one per seed) and its stratified-bootstrap interval."""
    library, metrics = _rliable()
    point, interval = _bootstrap(
        library, {"x": scores.reshape(-1, 1)}, lambda x: numpy.array([metrics.aggregate_iqm(x)]), reps, seed
    )
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def improvement_interval(x: numpy.ndarray, y: numpy.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """``P(X > Y)`` of two sets of seeds' scores and its stratified-bootstrap interval."""
    library, metrics = _rliable()
    pairs = {"x,y": [x.reshape(-1, 1), y.reshape(-1, 1)]}
    point, interval = _bootstrap(library, pairs, metrics.probability_of_improvement, reps, seed)
    low, high = numpy.ravel(interval["x,y"])
    return float(numpy.ravel(point["x,y"])[0]), float(low), float(high)


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["env"], row["algo"], row["preconditioner"])].append(row)
    return dict(sorted(groups.items()))


def _steps(value: Any) -> float:
    """Steps to the threshold; infinite where it was not reached (``None``, or empty in a CSV)."""
    return math.inf if value in (None, "") else int(value)


def summarise(rows: Sequence[dict[str, Any]], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``summary.json``'s content: one entry per (env, algo, preconditioner), and the probabilities of improvement."""
    groups = _groups(rows)
    entries = []
    for (env, algo, preconditioner), members in groups.items():
        scores = numpy.array([float(row["eval_mean"]) for row in members])
        iqm, low, high = iqm_interval(scores, reps, seed)
        steps = [_steps(row["steps_to_threshold"]) for row in members]
        median_steps = statistics.median(steps)
        entries.append(
            {
                "env": env,
                "algo": algo,
                "preconditioner": preconditioner,
                "runs": len(members),
                "eval_iqm": iqm,
                "eval_ci": [low, high],
                "reached": sum(math.isfinite(step) for step in steps),
                "median_steps_to_threshold": median_steps if math.isfinite(median_steps) else None,
                "median_fps": statistics.median(float(row["fps"]) for row in members),
            }
        )
    improvements = []
    for (env, algo, preconditioner), members in groups.items():
        baseline = groups.get((env, algo, BASELINES.get(algo, "")))
        if baseline is None or preconditioner == BASELINES[algo]:
            continue
        x = numpy.array([float(row["eval_mean"]) for row in members])
        y = numpy.array([float(row["eval_mean"]) for row in baseline])
        probability, low, high = improvement_interval(x, y, reps, seed)
        improvements.append(
            {
                "env": env,
                "algo": algo,
                "preconditioner": preconditioner,
                "baseline": BASELINES[algo],
                "probability": probability,
                "ci": [low, high],
            }
        )
    return {
        "confidence": CONFIDENCE,
        "bootstrap_reps": reps,
        "groups": entries,
        "improvement": improvements,
        "best": best_settings(rows),
    }


def best_settings(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (env, algo, preconditioner, seed) searched with several settings: the one with the best evaluation."""
    points: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        points[(row["env"], row["algo"], row["preconditioner"], str(row["seed"]))].append(row)
    best = []
    for (env, algo, preconditioner, seed), members in sorted(points.items()):
        if len(members) > 1:
            winner = max(members, key=lambda row: float(row["eval_mean"]))
            best.append(
                {
                    "env": env,
                    "algo": algo,
                    "preconditioner": preconditioner,
                    "seed": int(seed),
                    "samples": len(members),
                    "hyperparams": json.loads(winner["hyperparams"]),
                    "eval_mean": float(winner["eval_mean"]),
                }
            )
    return best


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the groups and the probabilities of improvement as tables."""
    lines = [
        f"| env | algo | preconditioner | runs | eval IQM [{CONFIDENCE:.0%} CI] | reached | median steps | fps |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for entry in summary["groups"]:
        low, high = entry["eval_ci"]
        steps = entry["median_steps_to_threshold"]
        lines.append(
            f"| {entry['env']} | {entry['algo']} | {entry['preconditioner']} | {entry['runs']} | "
            f"{entry['eval_iqm']:.1f} [{low:.1f}, {high:.1f}] | {entry['reached']}/{entry['runs']} | "
            f"{'—' if steps is None else f'{steps:,.0f}'} | {entry['median_fps']:,.0f} |"
        )
    if summary["improvement"]:
        lines += ["", f"| env | algo | X | Y (baseline) | P(X > Y) [{CONFIDENCE:.0%} CI] |", "|---|---|---|---|--:|"]
        for entry in summary["improvement"]:
            low, high = entry["ci"]
            lines.append(
                f"| {entry['env']} | {entry['algo']} | {entry['preconditioner']} | {entry['baseline']} | "
                f"{entry['probability']:.2f} [{low:.2f}, {high:.2f}] |"
            )
    if summary["best"]:
        lines += ["", "| env | algo | preconditioner | seed | samples | best hyperparameters | eval |"]
        lines.append("|---|---|---|--:|--:|---|--:|")
        for entry in summary["best"]:
            lines.append(
                f"| {entry['env']} | {entry['algo']} | {entry['preconditioner']} | {entry['seed']} | "
                f"{entry['samples']} | `{json.dumps(entry['hyperparams'], sort_keys=True)}` | "
                f"{entry['eval_mean']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def iqm_along_steps(scores: numpy.ndarray) -> numpy.ndarray:
    """rliable's ``aggregate_iqm`` of ``scores[..., t]`` for every step ``t`` of ``scores`` (runs, tasks, steps), in
    one call: the same 25 % trimmed mean (``scipy.stats.trim_mean``) taken along the flattened runs × tasks axis,
    which is what rliable's per-step loop computes one step at a time (40,000 calls for a 2,000-rep band)."""
    from scipy.stats import trim_mean  # rliable's dependency

    return trim_mean(scores.reshape(-1, scores.shape[-1]), proportiontocut=0.25, axis=0)


def curve_estimates(
    rows: Sequence[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], reps: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per env: a common step grid and, per (algo, preconditioner), the IQM of the training mean and its band.

    Each seed's curve (its reports' ``(timesteps, train_mean)``) is interpolated linearly onto
    :data:`CURVE_POINTS` steps between the first report every seed has and the last.
    """
    library, _ = _rliable()
    estimates: dict[str, dict[str, Any]] = {}
    for (env, algo, preconditioner), members in _groups(rows).items():
        points = [numpy.array(curves[row["trial_id"]], dtype=float) for row in members if curves.get(row["trial_id"])]
        points = [p[numpy.isfinite(p[:, 1])] for p in points]
        if not points or any(len(p) == 0 for p in points):
            continue
        grid = numpy.linspace(max(p[0, 0] for p in points), min(p[-1, 0] for p in points), CURVE_POINTS)
        scores = numpy.stack([numpy.interp(grid, p[:, 0], p[:, 1]) for p in points])[:, None, :]  # (runs, 1, T)
        name = algo if preconditioner == "-" else f"{algo}:{preconditioner}"  # "-": no preconditioner (trpo, q)
        point, interval = _bootstrap(library, {name: scores}, iqm_along_steps, reps, seed)
        estimates.setdefault(env, {})[name] = {"steps": grid, "iqm": point[name], "band": interval[name]}
    return estimates


def plot_curves(estimates: dict[str, dict[str, Any]], thresholds: dict[str, float], path: Path) -> None:
    """``sweep_curves.png``: the IQM training mean against environment steps with its band, one panel per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, axes = plt.subplots(1, len(estimates), figsize=(5.5 * len(estimates), 4), squeeze=False)
    names = list(dict.fromkeys(name for methods in estimates.values() for name in methods))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: cycle[index % len(cycle)] for index, name in enumerate(names)}  # a method keeps its colour
    for axis, (env, methods) in zip(axes[0], estimates.items()):
        for name, curve in methods.items():
            axis.plot(curve["steps"], curve["iqm"], label=name, color=colors[name])
            axis.fill_between(curve["steps"], curve["band"][0], curve["band"][1], color=colors[name], alpha=0.2)
        if env in thresholds:
            axis.axhline(thresholds[env], color="black", linestyle="--", linewidth=1, label="threshold")
        axis.set_title(f"{env}: IQM over seeds, {CONFIDENCE:.0%} bootstrap band", fontsize="medium")
        axis.set_xlabel("environment steps")
        axis.xaxis.set_major_formatter(EngFormatter())  # 200k, not 200000 (full numbers ran into each other)
        axis.set_ylabel("training return (mean of last 100 episodes)")
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_improvement(summary: dict[str, Any], path: Path) -> None:
    """``sweep_improvement.png``: ``P(X > Y)`` of each preconditioner over its baseline, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = summary["improvement"]
    figure, axis = plt.subplots(figsize=(9, 0.5 * len(entries) + 1.8))
    labels = [f"{e['env']}: {e['algo']}:{e['preconditioner']} > {e['algo']}:{e['baseline']}" for e in entries]
    centres = [e["probability"] for e in entries]
    errors = numpy.array([[c - e["ci"][0], e["ci"][1] - c] for c, e in zip(centres, entries)]).T
    axis.errorbar(centres, range(len(entries)), xerr=errors, fmt="o", capsize=4)
    axis.axvline(0.5, color="black", linestyle="--", linewidth=1, label="no difference (0.5)")
    axis.set_yticks(range(len(entries)), labels)
    axis.set_xlim(-0.03, 1.03)
    axis.set_xlabel(f"P(X > Y): probability of improvement in the final evaluation ({CONFIDENCE:.0%} CI)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_summary(
    rows: Sequence[dict[str, Any]],
    curves: dict[str, list[tuple[int, float]]],
    thresholds: dict[str, float],
    out: Path,
    reps: int = 2000,
) -> dict[str, Any]:
    """``summary.json``, ``summary.md`` and the plots under ``out`` (each written whole, then renamed)."""
    summary = summarise(rows, reps)
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", markdown(summary))):
        with atomic_open(out / name) as handle:
            handle.write(text)
    estimates = curve_estimates(rows, curves, reps, seed=0)
    if estimates:
        plot_curves(estimates, thresholds, out / "sweep_curves.png")
    if summary["improvement"]:
        plot_improvement(summary, out / "sweep_improvement.png")
    return summary
