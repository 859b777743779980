"""Benchmark: environment steps until Q-learning's greedy policy is near-optimal on FrozenLake-v1, one torch thread.

Agents: :class:`lagrl.agents.LagrangianQLearning` with ρ = ½ (Adam-type per-entry step, betas (0.9, 0.999))
and with ``rho=0, betas=(0, 0.999)`` (plain Q-learning, ``Q += lr·δ``), each over a grid of constant step
sizes; everything else at the agent's defaults (ε from 1 to 0.05 over the first 10% of the run).
Every ``--check-every`` steps a callback evaluates the greedy policy exactly
(:func:`lagrl.bellman.policy_evaluation` on the env's own MDP) and stops the run once its start value is
within ``--threshold`` of ``V*`` (:func:`lagrl.bellman.solve`). A run that never gets there within
``--max-steps`` shows ``—``. ``steps/s`` counts the whole loop (SB3's vectorised env included).

The summary takes, for each agent, the step size with the smallest median steps (a miss counts as
infinite) and prints the per-seed steps of both and their ratio plain / ρ = ½ (> 1: ρ = ½ faster).

    python experiments/benchmarks/qlearning_bench.py [--seeds 0 1 2] [--max-steps 500000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from lagrl.agents import LagrangianQLearning
from lagrl.bellman import policy_evaluation, solve
from lagrl.mdp import TabularMDP

ENV_ID = "FrozenLake-v1"
GAMMA = 0.99
AGENTS = {"rho=0.5": dict(rho=0.5, betas=(0.9, 0.999)), "plain": dict(rho=0.0, betas=(0.0, 0.999))}


def start_value(mdp: TabularMDP, table: torch.Tensor) -> float:
    """``Σ_s μ(s) V^π(s)`` of the greedy policy of ``table`` (the sink, if any, gets action 0)."""
    policy = torch.zeros(mdp.num_states, dtype=torch.int64)
    policy[: len(table)] = table.argmax(-1)
    return float(mdp.start @ policy_evaluation(mdp, policy))


def steps_to_threshold(
    agent: dict[str, Any], lr: float, seed: int, mdp: TabularMDP, target: float, args: argparse.Namespace
) -> tuple[int | None, float]:
    """Environment steps until the greedy start value first reaches ``target`` (None: never), and steps/s."""
    hit: list[int] = []

    def check(local: dict[str, Any], _: dict[str, Any]) -> bool:
        model = local["self"]
        if model.num_timesteps % args.check_every or start_value(mdp, model.policy.q_table.detach()) < target:
            return True
        hit.append(model.num_timesteps)
        return False

    model = LagrangianQLearning(ENV_ID, learning_rate=lr, gamma=GAMMA, seed=seed, **agent)
    start = time.perf_counter()
    model.learn(args.max_steps, callback=check)
    return (hit[0] if hit else None), model.num_timesteps / (time.perf_counter() - start)


def median_steps(steps: list[int | None]) -> float:
    return statistics.median(math.inf if s is None else s for s in steps)


def show(steps: int | None | float) -> str:
    return "—" if steps is None or steps == math.inf else f"{int(steps):,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=500_000)
    parser.add_argument("--check-every", type=int, default=5_000)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--rates-rho", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--rates-plain", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    args = parser.parse_args()
    torch.set_num_threads(1)

    mdp = TabularMDP.from_gymnasium(ENV_ID, gamma=GAMMA)
    optimum = float(mdp.start @ solve(mdp, 1e-10).values)
    print(
        f"{ENV_ID}, γ = {GAMMA}: V*(start) = {optimum:.6f}; threshold {args.threshold} (check every "
        f"{args.check_every:,} steps, at most {args.max_steps:,}), seeds {args.seeds}\n"
    )
    rates = {"rho=0.5": args.rates_rho, "plain": args.rates_plain}
    results: dict[tuple[str, float], list[int | None]] = {}
    print(
        f"{'agent':>8} {'lr':>6} "
        + " ".join(f"{'seed ' + str(s):>9}" for s in args.seeds)
        + f" {'median':>9} {'steps/s':>8}"
    )
    for name, agent in AGENTS.items():
        for lr in rates[name]:
            runs = [steps_to_threshold(agent, lr, seed, mdp, optimum - args.threshold, args) for seed in args.seeds]
            results[name, lr] = [steps for steps, _ in runs]
            speed = statistics.median(rate for _, rate in runs)
            cells = " ".join(f"{show(steps):>9}" for steps, _ in runs)
            print(f"{name:>8} {lr:>6g} {cells} {show(median_steps(results[name, lr])):>9} {speed:>8,.0f}", flush=True)

    best = {name: min(rates[name], key=lambda lr: median_steps(results[name, lr])) for name in AGENTS}
    print(f"\nbest step sizes: ρ = ½ lr = {best['rho=0.5']:g}, plain lr = {best['plain']:g}")
    print(f"{'seed':>6} {'ρ = ½':>9} {'plain':>9} {'plain/ρ=½':>10}")
    pairs = zip(args.seeds, results["rho=0.5", best["rho=0.5"]], results["plain", best["plain"]])
    for seed, lagrangian, plain in pairs:
        ratio = f"{plain / lagrangian:.2f}" if lagrangian and plain else "—"
        print(f"{seed:>6} {show(lagrangian):>9} {show(plain):>9} {ratio:>10}")
    medians = median_steps(results["rho=0.5", best["rho=0.5"]]), median_steps(results["plain", best["plain"]])
    ratio = f"{medians[1] / medians[0]:.2f}" if math.isfinite(sum(medians)) else "—"
    print(f"{'median':>6} {show(medians[0]):>9} {show(medians[1]):>9} {ratio:>10}")


if __name__ == "__main__":
    main()
