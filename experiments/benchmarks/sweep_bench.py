"""Benchmark: ``lagrl sweep`` on Ray Tune beside the same trials one after another in one process.

The trials: ``LagrangianPPO(preconditioner="adam")`` (numerically SB3's PPO) on CartPole-v1 with the package's
zoo settings, ``--trials`` seeds of ``--timesteps`` steps each, a deterministic 10-episode evaluation after
each; every trial writes its TensorBoard logs. Sequential: in this process, one torch thread, each trial
built, trained and evaluated in turn (the anchor). Sweep: :func:`lagrl.agents.sweep.run_sweep` on a local Ray
started as the command starts it (:func:`~lagrl.agents.sweep.start_ray`; its start-up timed apart), one CPU and
one torch thread per trial. Pool: the same trials in a
``concurrent.futures.ProcessPoolExecutor`` of one spawned process per core (one torch thread each; its workers'
start and imports timed, as Ray's are) — parallel, without Ray. Printed: the wall times, the sweep's ratio to
sequential (target ≤ 0.6 on 2 cores), and two overheads per trial in core-seconds: ``(cores · T_sweep − Σ
T_sequential) / trials``, what a trial costs in the sweep beyond the same trial in-process (Ray's share plus
whatever running ``cores`` trials at once costs the machine: shared caches, memory bandwidth, the host), and
``cores · (T_sweep − T_pool) / trials``, what it costs beyond the same trial in a plain process pool — Ray's own
share (target ≤ 1 s). A shared host's speed drifts by more than that between runs and within one, so the three
sides are run ``--repeats`` times, in turn forwards and backwards (sequential, pool, sweep; then sweep, pool,
sequential: a host that slows or speeds up steadily favours no side), and the medians printed with their range;
beside them the CPU-seconds of Tune's driver (this process) in the sweep, a part of Ray's share measured directly.
Needs the ``sweep`` extra.

    python experiments/benchmarks/sweep_bench.py [--trials 8] [--timesteps 20000] [--repeats 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lagrl.agents.sweep import EVALUATION_SEED, run_sweep, start_ray
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


def in_process(seeds: list[int], timesteps: int) -> float:
    """Seconds of the trials one after another in this process (:func:`sequential`, logs in a temporary folder)."""
    with tempfile.TemporaryDirectory() as logs:
        return sum(sequential(seeds, timesteps, Path(logs)))


def _pool_trial(seed: int, timesteps: int, logs: str) -> float:
    return sequential([seed], timesteps, Path(logs))[0]


def pooled(seeds: list[int], timesteps: int, cores: int) -> float:
    """Wall seconds of the trials in a pool of ``cores`` spawned processes, one torch thread each (start included)."""
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")  # fresh interpreters that import torch and SB3, as Ray's workers
        with concurrent.futures.ProcessPoolExecutor(cores, mp_context=context, initializer=torch.set_num_threads,
                                                    initargs=(1,)) as pool:  # fmt: skip
            list(pool.map(_pool_trial, seeds, [timesteps] * len(seeds), [logs] * len(seeds)))
        return time.perf_counter() - start


def swept(config, cores: int) -> tuple[float, float, float]:
    """Seconds to start a local Ray on ``cores`` CPUs, seconds of :func:`run_sweep` on it (Ray stopped after), and
    the CPU-seconds this process (Tune's driver) spent in it."""
    import ray

    start = time.perf_counter()
    start_ray(num_cpus=cores)
    startup = time.perf_counter() - start
    try:
        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            result = run_sweep(config, Path(out))
            seconds, driver = time.perf_counter() - start, time.process_time() - cpu
    finally:
        ray.shutdown()
    assert len(result.rows) == len(config.seeds), "every trial must finish"
    return startup, seconds, driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=6, help="rounds of the three sides (every other one backwards)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.trials))
    config = parse_sweep(
        {"algo": "ppo", "env": "CartPole-v1", "preconditioner": "adam", "seeds": seeds,
         "timesteps": args.timesteps, "eval_episodes": EPISODES}
    )  # fmt: skip
    cores = os.cpu_count() or 1
    rounds = []
    sides = {
        "sequential": lambda: in_process(seeds, args.timesteps),
        "pool": lambda: pooled(seeds, args.timesteps, cores),
        "sweep": lambda: swept(config, cores),
    }
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]  # a host that drifts one way biases no side
        measured = {side: sides[side]() for side in order}
        total, pool, (startup, seconds, driver) = measured["sequential"], measured["pool"], measured["sweep"]
        figures_of_round = {
            "sequential_seconds": total,
            "pool_seconds": pool,
            "sweep_seconds": seconds,
            "ray_startup_seconds": startup,
            "driver_cpu_seconds": driver,
            "ratio": seconds / total,
            "ratio_with_startup": (seconds + startup) / total,
            "pool_ratio": pool / total,
            "overhead_per_trial_seconds": (cores * seconds - total) / args.trials,
            "ray_overhead_per_trial_seconds": cores * (seconds - pool) / args.trials,
        }
        rounds.append(figures_of_round)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{key} {value:.2f}" for key, value in figures_of_round.items()))
    figures = {"trials": args.trials, "timesteps": args.timesteps, "cores": cores, "repeats": rounds}
    figures |= {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    low = {key: min(r[key] for r in rounds) for key in rounds[0]}
    high = {key: max(r[key] for r in rounds) for key in rounds[0]}
    sequential_seconds, sweep_seconds = figures["sequential_seconds"], figures["sweep_seconds"]
    print(f"{args.trials} trials × {args.timesteps} CartPole-v1 steps (PPO, zoo settings), {cores} cores")
    print(f"medians of {args.repeats} alternated rounds (min–max):")
    print(f"sequential, one process: {sequential_seconds:7.1f} s  ({sequential_seconds / args.trials:.1f} s per trial)")
    print(f"process pool, no Ray:    {figures['pool_seconds']:7.1f} s  (ratio {figures['pool_ratio']:.2f})")
    print(
        f"lagrl sweep on Ray:      {sweep_seconds:7.1f} s  (+ {figures['ray_startup_seconds']:.1f} s to start Ray; "
        f"Tune's driver {figures['driver_cpu_seconds']:.1f} CPU-seconds)"
    )
    print(
        f"ratio {figures['ratio']:.2f} ({low['ratio']:.2f}–{high['ratio']:.2f}; "
        f"{figures['ratio_with_startup']:.2f} with Ray's start-up); target ≤ 0.6"
    )
    for key, what in (
        ("overhead_per_trial_seconds", "beyond in-process"),
        ("ray_overhead_per_trial_seconds", "beyond the process pool; target ≤ 1 s"),
    ):
        print(f"overhead per trial, {what}: {figures[key]:.2f} core-seconds ({low[key]:.2f}–{high[key]:.2f})")
    if args.json:
        with atomic_open(args.json) as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
