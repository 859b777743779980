"""Benchmark: LagrangianPPO presets beside SB3's PPO, zoo settings, several seeds, one torch thread per run.

For each env (CartPole-v1 for 100k steps, Acrobot-v1 for 200k steps, rl-zoo settings from
``lagrl.agents``' YAML files) and each seed, SB3's ``PPO`` and ``LagrangianPPO`` with each preset train
from the same seed. Per run: throughput (environment steps per second of ``learn``, evaluation time
excluded), the first step at which the mean return of the last 100 training episodes (SB3's
``ep_info_buffer``, full) reaches the threshold (CartPole 475, Acrobot −100), and on CartPole a
deterministic 10-episode evaluation every 10k steps (pass: some evaluation ≥ 475 within the budget).
Printed per preset: median fps and its ratio to SB3's, the median steps to threshold (over the seeds
that reach it) and its ratio to SB3's, and how many seeds reach it and pass the evaluation.

``--lagrl-hyperparams key=value ...`` overrides the zoo settings of the lagrl presets only (SB3 keeps
the zoo's), e.g. a step size for the Fisher presets (see experiments/adam_vs_true_fisher.py). Runs go
to ``--jobs`` worker processes (default 2: this machine has 2 cores; each run uses one thread).

    python experiments/benchmarks/agents_bench.py [--seeds 5] [--envs CartPole-v1 Acrobot-v1] \\
        [--presets adam fisher-sqrt natural] [--lagrl-hyperparams learning_rate=lin_0.03] [--jobs 2] \\
        [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from lagrl.agents.training import build_model, plan_run

BUDGETS = {"CartPole-v1": 100_000, "Acrobot-v1": 200_000}
THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}
EVALUATED = {"CartPole-v1": 10_000}  # env → evaluation interval (steps)
TARGETS = (
    "adam fps ≥ 0.95× SB3; Fisher presets fps ≥ 0.5×; CartPole eval ≥ 475 in ≥ 4/5 seeds; "
    "a Fisher preset ≤ 0.8× SB3's steps"
)


@dataclass
class Run:
    env: str
    preset: str
    seed: int
    timesteps: int
    seconds: float
    fps: float
    steps_to_threshold: int | None
    best_evaluation: float | None
    evaluation_pass: bool | None


class Progress(BaseCallback):
    """Records when the 100-episode training mean first reaches the threshold; evaluates periodically."""

    def __init__(self, env_id: str, seed: int) -> None:
        super().__init__()
        self.env_id, self.seed = env_id, seed
        self.threshold = THRESHOLDS[env_id]
        self.interval = EVALUATED.get(env_id)
        self.next_evaluation = self.interval
        self.reached: int | None = None
        self.evaluations: list[float] = []
        self.evaluation_seconds = 0.0

    def _on_step(self) -> bool:
        if self.interval is not None and self.num_timesteps >= self.next_evaluation:
            self.next_evaluation += self.interval
            start = time.perf_counter()
            env = make_vec_env(self.env_id, n_envs=1, seed=10_000 + self.seed)
            mean, _ = evaluate_policy(self.model, env, n_eval_episodes=10, deterministic=True)
            self.evaluations.append(float(mean))
            self.evaluation_seconds += time.perf_counter() - start
        return True

    def _on_rollout_end(self) -> None:
        episodes = self.model.ep_info_buffer
        if self.reached is None and len(episodes) == episodes.maxlen:
            if statistics.fmean(info["r"] for info in episodes) >= self.threshold:
                self.reached = self.num_timesteps


def run(env_id: str, preset: str, seed: int, overrides: dict[str, Any]) -> Run:
    """One training run; ``preset == "sb3"`` is SB3's own PPO with the zoo settings."""
    torch.set_num_threads(1)
    sb3 = preset == "sb3"
    plan = plan_run("ppo", env_id, {} if sb3 else overrides, preconditioner=None if sb3 else preset, seed=seed)
    model = build_model(plan, device="cpu")
    if preset == "sb3":
        kwargs = {key: value for key, value in plan.kwargs.items() if key != "preconditioner"}
        model = PPO(env=model.get_env(), seed=seed, device="cpu", **{"policy": "MlpPolicy", **kwargs})
    budget = BUDGETS[env_id]
    progress = Progress(env_id, seed)
    start = time.perf_counter()
    model.learn(budget, callback=progress)
    seconds = time.perf_counter() - start - progress.evaluation_seconds
    evaluated = env_id in EVALUATED
    return Run(
        env=env_id,
        preset=preset,
        seed=seed,
        timesteps=model.num_timesteps,
        seconds=seconds,
        fps=model.num_timesteps / seconds,
        steps_to_threshold=progress.reached,
        best_evaluation=max(progress.evaluations) if evaluated else None,
        evaluation_pass=any(value >= 475.0 for value in progress.evaluations) if evaluated else None,
    )


def _run(arguments: tuple[str, str, int, dict[str, Any]]) -> Run:
    result = run(*arguments)
    print(
        f"  {result.env:12} {result.preset:12} seed {result.seed}: {result.fps:7.0f} fps, "
        f"threshold at {result.steps_to_threshold}, best eval {result.best_evaluation}",
        flush=True,
    )
    return result


def summarise(runs: list[Run], presets: list[str]) -> None:
    """One line per env × preset: medians and ratios to SB3."""
    header = f"{'env':12} {'preset':12} {'fps':>7} {'fps×':>6} {'steps to thr.':>13} {'steps×':>7} {'reached':>8}"
    print(f"\n{header} {'eval≥475':>9}")
    for env_id in dict.fromkeys(run.env for run in runs):
        anchor = [run for run in runs if run.env == env_id and run.preset == "sb3"]
        anchor_fps = statistics.median(run.fps for run in anchor)
        anchor_steps = [run.steps_to_threshold for run in anchor if run.steps_to_threshold is not None]
        for preset in ["sb3", *presets]:
            group = [run for run in runs if run.env == env_id and run.preset == preset]
            fps = statistics.median(run.fps for run in group)
            steps = [run.steps_to_threshold for run in group if run.steps_to_threshold is not None]
            median_steps = statistics.median(steps) if steps else None
            ratio = median_steps / statistics.median(anchor_steps) if steps and anchor_steps else None
            evaluations = [run.evaluation_pass for run in group if run.evaluation_pass is not None]
            print(
                f"{env_id:12} {preset:12} {fps:7.0f} {fps / anchor_fps:5.2f}x "
                f"{'—' if median_steps is None else f'{median_steps:.0f}':>13} "
                f"{'—' if ratio is None else f'{ratio:.2f}x':>7} {len(steps)}/{len(group):<6} "
                f"{'—' if not evaluations else f'{sum(evaluations)}/{len(evaluations)}':>9}"
            )
    print(f"targets: {TARGETS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--envs", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--presets", nargs="+", default=["adam", "fisher-sqrt", "natural"])
    parser.add_argument("--lagrl-hyperparams", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write every run as a JSON list")
    args = parser.parse_args()
    pairs = (item.partition("=") for item in args.lagrl_hyperparams)
    overrides = {key: yaml.safe_load(value) for key, _, value in pairs}
    jobs = [
        (env_id, preset, seed, overrides)
        for env_id in args.envs
        for seed in range(args.seeds)
        for preset in ["sb3", *args.presets]
    ]
    print(f"torch {torch.__version__}, {len(jobs)} runs on {args.jobs} processes, one thread each")
    print(f"zoo settings; lagrl presets overridden with {overrides}" if overrides else "zoo settings")
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        runs = pool.map(_run, jobs, chunksize=1)
    summarise(runs, args.presets)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(run) for run in runs], handle, indent=1)


if __name__ == "__main__":
    main()
