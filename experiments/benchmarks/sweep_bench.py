"""Benchmark: ``lagrl sweep`` on Ray Tune beside the same trials one after another in one process.

The trials: ``LagrangianPPO(preconditioner="adam")`` (numerically SB3's PPO) on CartPole-v1 with the package's
zoo settings, ``--trials`` seeds of ``--timesteps`` steps each, a deterministic 10-episode evaluation after
each; every trial writes its TensorBoard logs. Sequential: in this process, one torch thread, each trial
built, trained and evaluated in turn (the anchor). Sweep: :func:`lagrl.agents.sweep.run_sweep` on a local Ray
started here (its start-up timed apart), one CPU and one torch thread per trial. Printed: both wall times,
their ratio (target ≤ 0.6 on 2 cores), and Ray's overhead per trial, ``(cores · T_sweep − Σ T_sequential) /
trials``: the core-seconds a trial costs in Ray beyond what the same trial costs in-process (target ≤ 1 s). A
shared host's speed drifts by more than that between runs, so the two sides are run ``--repeats`` times,
alternated, and the medians printed with their range.
Needs the ``sweep`` extra.

    python experiments/benchmarks/sweep_bench.py [--trials 8] [--timesteps 20000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lagrl.agents.sweep import EVALUATION_SEED, run_sweep
from lagrl.agents.sweep_config import parse_sweep
from lagrl.agents.training import build_model, evaluate, evaluation_env, plan_run
from lagrl.atomic import atomic_open

EPISODES = 10


def sequential(seeds: list[int], timesteps: int, logs: Path) -> list[float]:
    """Seconds of each trial done in this process: build, train (TensorBoard logs, as in a sweep), evaluate."""
    seconds = []
    for seed in seeds:
        start = time.perf_counter()
        plan = plan_run("ppo", "CartPole-v1", {}, preconditioner="adam", timesteps=timesteps, seed=seed)
        model = build_model(plan, "cpu", logs / str(seed))
        model.learn(plan.timesteps)
        evaluate(model, evaluation_env(model, EVALUATION_SEED + seed), EPISODES, deterministic=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def swept(config, cores: int) -> tuple[float, float]:
    """Seconds to start a local Ray on ``cores`` CPUs, and seconds of :func:`run_sweep` on it (Ray stopped after)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    startup = time.perf_counter() - start
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_sweep(config, Path(out))
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert len(result.rows) == len(config.seeds), "every trial must finish"
    return startup, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="sequential/sweep pairs, alternated; medians printed")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.trials))
    config = parse_sweep(
        {"algo": "ppo", "env": "CartPole-v1", "preconditioner": "adam", "seeds": seeds,
         "timesteps": args.timesteps, "eval_episodes": EPISODES}
    )  # fmt: skip
    cores = os.cpu_count() or 1
    pairs = []
    for repeat in range(args.repeats):  # alternated, so that a slower spell of a shared host hits both sides
        with tempfile.TemporaryDirectory() as logs:
            total = sum(sequential(seeds, args.timesteps, Path(logs)))
        startup, seconds = swept(config, cores)
        pair = {
            "sequential_seconds": total,
            "sweep_seconds": seconds,
            "ray_startup_seconds": startup,
            "ratio": seconds / total,
            "ratio_with_startup": (seconds + startup) / total,
            "overhead_per_trial_seconds": (cores * seconds - total) / args.trials,
        }
        pairs.append(pair)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{key} {value:.2f}" for key, value in pair.items()))
    figures = {"trials": args.trials, "timesteps": args.timesteps, "cores": cores, "repeats": pairs}
    figures |= {key: statistics.median(pair[key] for pair in pairs) for key in pairs[0]}
    low = {key: min(pair[key] for pair in pairs) for key in pairs[0]}
    high = {key: max(pair[key] for pair in pairs) for key in pairs[0]}
    sequential_seconds, sweep_seconds = figures["sequential_seconds"], figures["sweep_seconds"]
    print(f"{args.trials} trials × {args.timesteps} CartPole-v1 steps (PPO, zoo settings), {cores} cores")
    print(f"medians of {args.repeats} alternated pairs (min–max):")
    print(f"sequential, one process: {sequential_seconds:7.1f} s  ({sequential_seconds / args.trials:.1f} s per trial)")
    print(f"lagrl sweep on Ray:      {sweep_seconds:7.1f} s  (+ {figures['ray_startup_seconds']:.1f} s to start Ray)")
    print(
        f"ratio {figures['ratio']:.2f} ({low['ratio']:.2f}–{high['ratio']:.2f}; "
        f"{figures['ratio_with_startup']:.2f} with Ray's start-up); target ≤ 0.6"
    )
    key = "overhead_per_trial_seconds"
    print(f"Ray overhead per trial: {figures[key]:.2f} core-seconds ({low[key]:.2f}–{high[key]:.2f}); target ≤ 1 s")
    if args.json:
        with atomic_open(args.json) as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
