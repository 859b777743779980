"""Benchmark: lagrl's agents beside SB3's PPO and A2C and sb3-contrib's TRPO, rl-zoo settings, several seeds.

Envs CartPole-v1, Acrobot-v1, LunarLander-v3 and Pendulum-v1; every algorithm at rl-baselines3-zoo's settings
for the env: SB3's ``PPO`` and ``LagrangianPPO`` (``--presets``, named ``ppo:<preset>``) with
``lagrl.agents``' hyperparams/ppo.yml, SB3's ``A2C`` and ``LagrangianA2C`` (``--a2c-presets``, named
``a2c:<preset>``) with hyperparams/a2c.yml, and sb3-contrib's ``TRPO`` (``lagrl train --algo trpo``'s agent) with
hyperparams/trpo.yml, the zoo's. Each run trains for its algorithm's zoo ``n_timesteps`` on the env
(``--timesteps ENV=N`` sets one budget for every algorithm on ENV; ``--budget-scale`` multiplies all budgets).

Per run: throughput (environment steps per second of ``learn``), the first step at which the mean return
of the last 100 training episodes (SB3's ``ep_info_buffer``, full) reaches the threshold (CartPole 475,
Acrobot −100, LunarLander 200, Pendulum −200), and, after training, a deterministic 20-episode evaluation
on a separately seeded env (with VecNormalize: the training statistics, frozen). A run that raises is
recorded with its error. Printed per env × algorithm: steps to threshold, median [min, max] over all seeds
(a seed that never reaches it is a miss) and the median's ratio to SB3 PPO's (and to SB3 A2C's for the
``a2c:`` presets), the final evaluation, median [min, max], and the median fps with the same ratios. ``--json``
writes every run, ``--markdown`` the summary as a table for the README.

``--presets`` and ``--a2c-presets`` take preset names or ``NAME={FIELD: VALUE, ...}``, a
:class:`~lagrl.agents.PreconditionerConfig` of those fields run as ``ppo:NAME`` (``a2c:NAME``), so a variant of a
preset (another step rule, say) is measured beside the anchors in the same run, e.g.
``--presets adam fisher-sqrt "tr-half={rho: 0.5, step_rule: trust-region}"``. A run is known by its env, algorithm
name, seed and budget (``--resume`` reuses by these), so give a changed variant a new name.

``--lagrl-hyperparams KEY=VALUE ...`` overrides the zoo settings of the lagrl presets only (the anchors keep
the zoo's); ``ppo:KEY=VALUE`` or ``a2c:KEY=VALUE`` overrides one family only. Runs go to ``--jobs`` worker
processes (default 2: this machine has 2 cores; each run uses one torch thread), seed by seed with the algorithms
interleaved (:func:`run_order`), so that the fps of a host whose speed drifts are compared fairly. Needs the
``bench`` extra (``pip install -c constraints.txt -e ".[bench]"``: sb3-contrib, Box2D).

    python experiments/benchmarks/agents_bench.py [--seeds 5] [--jobs 2] \\
        [--envs CartPole-v1 Acrobot-v1 LunarLander-v3 Pendulum-v1] [--presets adam fisher-sqrt natural] \\
        [--anchors sb3:ppo sb3:a2c sb3-contrib:trpo] [--a2c-presets rmsprop natural] \\
        [--timesteps LunarLander-v3=500000] [--budget-scale 0.1] \\
        [--lagrl-hyperparams learning_rate=lin_0.03 ppo:n_epochs=10] [--json runs.json [--resume]] \\
        [--markdown table.md]

``--json`` is rewritten (atomically) after every finished run, so an interrupted benchmark keeps what it
measured; ``--resume`` reads it back and runs only the jobs it lacks (same env, algorithm, seed and budget,
finished without error), then summarises all of them: ``--seeds 5 --resume`` after a 3-seed run adds seeds
3 and 4.

``--from-sweeps DIR ...`` runs nothing: it prints (and ``--markdown`` writes) the same table from the finished
trials of ``lagrl sweep`` runs of the benchmark's packaged sweeps (``agents_ppo``, ``agents_a2c``, ``agents_trpo``
and their slices), ``ppo:adam`` and ``a2c:rmsprop`` under the names of the SB3 agents they equal bit for bit.
With ``--curves PNG`` it also draws every algorithm's IQM training curve over its seeds, with bootstrap bands, one
panel per env, from the reports the trials left under ``DIR/tune`` (so a variant's sweep can be drawn beside the
sweep of the presets it varies).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from sb3_contrib import TRPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.evaluation import evaluate_policy

from lagrl.agents import PRESETS
from lagrl.agents.preconditioners import resolve
from lagrl.agents.sweep_config import TrialSpec
from lagrl.agents.sweep_summary import BASELINES, curve_estimates, plot_curves
from lagrl.agents.threshold import ThresholdWatch
from lagrl.agents.training import (
    ConfigError,
    RunPlan,
    build_model,
    evaluation_env,
    plan_run,
)
from lagrl.atomic import atomic_open

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "LunarLander-v3": 200.0, "Pendulum-v1": -200.0}
ANCHORS = {"sb3:ppo": PPO, "sb3:a2c": A2C, "sb3-contrib:trpo": TRPO}
FAMILIES = ("ppo", "a2c")  # the lagrl agents: LagrangianPPO and LagrangianA2C
# a sweep's (algo, preconditioner) under the benchmark's name: the sweeps' baselines (adam, rmsprop) are SB3's PPO and
# A2C bit for bit; trpo (no preconditioner, label "-") is sb3-contrib's TRPO
SWEEP_NAMES = {(algo, preset): f"sb3:{algo}" for algo, preset in BASELINES.items()}
SWEEP_NAMES[("trpo", "-")] = "sb3-contrib:trpo"
EVALUATION_EPISODES = 20
EVALUATION_SEED = 10_000  # + the run's seed: an env the training never saw

COLUMNS = (
    "env",
    "algorithm",
    "budget",
    "reached",
    "steps to threshold, median [min, max]",
    "steps × SB3 PPO",
    "steps × SB3 A2C",
    f"deterministic eval ({EVALUATION_EPISODES} ep.), median [min, max]",
    "fps",
    "fps × SB3 PPO",
    "fps × SB3 A2C",
)

Overrides = dict[str, dict[str, Any]]  # lagrl family → --lagrl-hyperparams
Variants = dict[str, dict[str, Any]]  # "family:NAME" → the PreconditionerConfig fields of --presets NAME={...}


@dataclass(frozen=True)
class Job:
    """One training run to do: env, algorithm (an anchor or ``family:preset``), seed and budget."""

    env: str
    algorithm: str
    seed: int
    budget: int
    overrides: dict[str, Any]


@dataclass
class Run:
    """One training run's results; ``error`` is set (and the measurements are ``None``) where it raised."""

    env: str
    algorithm: str
    seed: int
    budget: int
    timesteps: int | None = None
    seconds: float | None = None
    fps: float | None = None
    steps_to_threshold: int | None = None
    evaluation_mean: float | None = None
    evaluation_std: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Row:
    """The summary of one env × algorithm over its seeds (``math.inf`` steps: the median or maximum is a miss)."""

    env: str
    algorithm: str
    budget: int
    runs: int
    reached: int
    failed: int
    steps: tuple[float, float, float] | None  # median, min, max over all seeds
    steps_vs_ppo: float | None
    steps_vs_a2c: float | None
    evaluation: tuple[float, float, float] | None
    fps: float | None
    fps_vs_ppo: float | None
    fps_vs_a2c: float | None


def make_plan(env_id: str, algorithm: str, seed: int, overrides: dict[str, Any]) -> RunPlan:
    """The zoo settings of ``algorithm`` on ``env_id``; a lagrl preset's with ``overrides`` on top."""
    if algorithm == "sb3-contrib:trpo":
        return plan_run("trpo", env_id, {}, seed=seed)
    family, _, name = algorithm.partition(":")
    if family == "sb3":
        return replace(plan_run(name, env_id, {}, seed=seed), agent=ANCHORS[algorithm])
    # a preset by its name; a variant (--presets NAME={...}) by the PreconditionerConfig in its overrides
    return plan_run(family, env_id, overrides, preconditioner=name if name in PRESETS else None, seed=seed)


def run(job: Job) -> Run:
    """One training run and its final evaluation; an exception is recorded in the result, not raised."""
    torch.set_num_threads(1)
    result = Run(env=job.env, algorithm=job.algorithm, seed=job.seed, budget=job.budget)
    try:
        model = build_model(make_plan(job.env, job.algorithm, job.seed, job.overrides), device="cpu")
        watch = ThresholdWatch(THRESHOLDS[job.env])
        start = time.perf_counter()
        model.learn(job.budget, callback=watch)
        seconds = time.perf_counter() - start
        env = evaluation_env(model, EVALUATION_SEED + job.seed)  # seeded apart, behind the frozen statistics
        mean, std = evaluate_policy(model, env, n_eval_episodes=EVALUATION_EPISODES, deterministic=True)
    except Exception as error:  # a preset that cannot run on an env is a result of the benchmark
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.timesteps, result.seconds, result.fps = model.num_timesteps, seconds, model.num_timesteps / seconds
    result.steps_to_threshold = watch.reached
    result.evaluation_mean, result.evaluation_std = float(mean), float(std)
    return result


def _run(job: Job) -> Run:
    """:func:`run` with a progress line."""
    result = run(job)
    outcome = (
        f"FAILED ({result.error})"
        if result.error
        else f"{result.fps:7.0f} fps, threshold at {result.steps_to_threshold}, eval {result.evaluation_mean:.1f}"
    )
    print(f"  {result.env:14} {result.algorithm:16} seed {result.seed}: {outcome}", flush=True)
    return result


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """Median, minimum and maximum (``None`` for no values)."""
    return (statistics.median(values), min(values), max(values)) if values else None


def ratio(value: float | None, anchor: float | None) -> float | None:
    """``value / anchor`` where both are finite, else ``None``."""
    finite = value is not None and anchor is not None and math.isfinite(value) and math.isfinite(anchor)
    return value / anchor if finite and anchor != 0 else None


def summary_row(env_id: str, algorithm: str, runs: list[Run], anchors: dict[str, Row]) -> Row:
    """The summary of ``runs`` (one env × algorithm), with ratios to the SB3 anchors' rows in ``anchors``."""
    done = [run for run in runs if run.error is None]
    misses = [math.inf if run.steps_to_threshold is None else run.steps_to_threshold for run in runs]
    steps = spread(misses) if done else None
    fps = statistics.median(run.fps for run in done) if done else None
    median_steps = steps[0] if steps else None
    ppo, a2c = anchors.get("sb3:ppo"), anchors.get("sb3:a2c")
    versus_a2c = algorithm.startswith("a2c:") and a2c is not None
    return Row(
        env=env_id,
        algorithm=algorithm,
        budget=runs[0].budget,
        runs=len(runs),
        reached=sum(run.steps_to_threshold is not None for run in runs),
        failed=len(runs) - len(done),
        steps=steps,
        steps_vs_ppo=ratio(median_steps, ppo.steps[0] if ppo and ppo.steps else None),
        steps_vs_a2c=ratio(median_steps, a2c.steps[0] if a2c.steps else None) if versus_a2c else None,
        evaluation=spread([run.evaluation_mean for run in done]),
        fps=fps,
        fps_vs_ppo=ratio(fps, ppo.fps if ppo else None),
        fps_vs_a2c=ratio(fps, a2c.fps) if versus_a2c else None,
    )


def summarise(runs: list[Run], algorithms: list[str]) -> list[Row]:
    """One :class:`Row` per env × algorithm, the anchors first (in the order of ``algorithms``)."""
    rows = []
    for env_id in dict.fromkeys(run.env for run in runs):
        anchors: dict[str, Row] = {}
        for algorithm in algorithms:
            group = [run for run in runs if run.env == env_id and run.algorithm == algorithm]
            if not group:  # an algorithm the runs (say, a subset of the sweeps) have on other envs only
                continue
            rows.append(summary_row(env_id, algorithm, group, anchors))
            if algorithm in ANCHORS:
                anchors[algorithm] = rows[-1]
    return rows


def _steps(value: float) -> str:
    return "miss" if math.isinf(value) else f"{value:,.0f}"


def _spread(values: tuple[float, float, float] | None, number: Callable[[float], str]) -> str:
    return "—" if values is None else f"{number(values[0])} [{number(values[1])}, {number(values[2])}]"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def cells(row: Row) -> list[str]:
    """``row`` as the table's cells, in the order of :data:`COLUMNS`."""
    return [
        row.env,
        row.algorithm,
        f"{row.budget:,}",
        f"{row.reached}/{row.runs}" + (f" ({row.failed} failed)" if row.failed else ""),
        _spread(row.steps, _steps),
        _times(row.steps_vs_ppo),
        _times(row.steps_vs_a2c),
        _spread(row.evaluation, lambda value: f"{value:.1f}"),
        "—" if row.fps is None else f"{row.fps:,.0f}",
        _times(row.fps_vs_ppo),
        _times(row.fps_vs_a2c),
    ]


def text_table(rows: list[Row]) -> str:
    """The summary as aligned plain text."""
    table = [list(COLUMNS), *(cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def markdown_table(rows: list[Row]) -> str:
    """The summary as a Markdown table (ratios are to SB3's PPO and A2C medians on the same env)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(COLUMNS) - 2)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells(row)) + " |" for row in rows]) + "\n"


def failures(runs: list[Run]) -> list[str]:
    """One line per env × algorithm × distinct error."""
    counts: dict[tuple[str, str, str], int] = {}
    for run in runs:
        if run.error is not None:
            key = (run.env, run.algorithm, run.error)
            counts[key] = counts.get(key, 0) + 1
    return [f"{algorithm} on {env} failed in {n} seed(s): {error}" for (env, algorithm, error), n in counts.items()]


def key_values(items: list[str], option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` items as pairs; a missing ``=`` is a usage error."""
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, equals, _) in zip(items, pairs) if not equals]
    if bad:
        raise ConfigError(f"{option} takes KEY=VALUE items, got {bad}")
    return [(key, value) for key, _, value in pairs]


def lagrl_overrides(items: list[str]) -> Overrides:
    """``--lagrl-hyperparams``: ``KEY=VALUE`` for both lagrl families, ``ppo:KEY=VALUE`` / ``a2c:KEY=VALUE`` for one."""
    overrides: Overrides = {family: {} for family in FAMILIES}
    for key, value in key_values(items, "--lagrl-hyperparams"):
        family, _, name = key.rpartition(":")
        if family and family not in FAMILIES:
            raise ConfigError(f"--lagrl-hyperparams {key}=...: the prefix must be one of {FAMILIES}")
        for target in [family] if family else FAMILIES:
            overrides[target][name] = yaml.safe_load(value)
    return overrides


def preset_variants(family: str, items: list[str], option: str) -> tuple[list[str], Variants]:
    """``--presets`` items: ``family:NAME`` for each, and the ``PreconditionerConfig`` fields of each ``NAME={...}``.

    A name without ``=`` must be a preset; a variant's name must be new (not a preset, no ``:``) and its value a
    mapping that :func:`~lagrl.agents.preconditioners.resolve` accepts (checked here, before any run).
    """
    algorithms, variants = [], {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals:
            if name not in PRESETS:
                raise ConfigError(f"{option} {name}: not a preset; choose one of {PRESETS} or give NAME={{rho: ...}}")
        else:
            if not name or name in PRESETS or ":" in name:
                raise ConfigError(f"{option} {item}: a variant needs a new name (not one of {PRESETS}, no ':')")
            try:
                config = yaml.safe_load(text)
                if not isinstance(config, dict):
                    raise ValueError(f"{text!r} is not a mapping")
                resolve(config)
            except (yaml.YAMLError, ValueError, TypeError) as error:
                raise ConfigError(
                    f"{option} {item}: give NAME={{FIELD: VALUE, ...}} with PreconditionerConfig's fields ({error})"
                ) from None
            variants[f"{family}:{name}"] = config
        algorithms.append(f"{family}:{name}")
    if len(set(algorithms)) < len(algorithms):
        raise ConfigError(f"{option}: each name once, got {items}")
    return algorithms, variants


def timestep_overrides(items: list[str]) -> dict[str, int]:
    """``--timesteps ENV=N`` as a mapping (``N`` may be written ``1e5``)."""
    budgets = {}
    for env_id, value in key_values(items, "--timesteps"):
        if env_id not in THRESHOLDS:
            raise ConfigError(f"--timesteps {env_id}=...: the env must be one of {list(THRESHOLDS)}")
        try:
            budget = float(value)
        except ValueError:
            budget = 0.0
        if budget < 1 or budget != int(budget):
            raise ConfigError(f"--timesteps {env_id}={value}: the budget must be a positive whole number")
        budgets[env_id] = int(budget)
    return budgets


def plan_jobs(args: argparse.Namespace, algorithms: list[str], variants: Variants | None = None) -> list[Job]:
    """Every run of the benchmark, its budget resolved and its settings checked (a bad key fails here)."""
    overrides, budgets = lagrl_overrides(args.lagrl_hyperparams), timestep_overrides(args.timesteps)
    variants = variants or {}
    jobs = []
    for env_id in args.envs:
        for algorithm in algorithms:
            extra = overrides.get(algorithm.partition(":")[0], {})
            if algorithm in variants:
                extra = {**extra, "preconditioner": variants[algorithm]}
            try:
                zoo = make_plan(env_id, algorithm, 0, extra).timesteps
            except ConfigError as error:
                raise ConfigError(f"{algorithm} on {env_id}: {error}") from None
            budget = max(1, round(args.budget_scale * budgets.get(env_id, zoo)))
            jobs += [Job(env_id, algorithm, seed, budget, extra) for seed in range(args.seeds)]
    return jobs


def run_order(jobs: list[Job]) -> list[Job]:
    """The order the runs are started in: env by env, seed by seed, a seed's algorithms forwards on even seeds and
    backwards on odd ones, so that a host whose speed drifts within the benchmark (a shared one's does: SB3 PPO's
    CartPole runs here spread over 1.8× in one day) slows no algorithm's fps more than another's."""
    envs = list(dict.fromkeys(job.env for job in jobs))
    algorithms = list(dict.fromkeys(job.algorithm for job in jobs))

    def position(job: Job) -> tuple[int, int, int]:
        index = algorithms.index(job.algorithm)
        return envs.index(job.env), job.seed, index if job.seed % 2 == 0 else -index

    return sorted(jobs, key=position)


def _key(item: Job | Run) -> tuple[str, str, int, int]:
    return item.env, item.algorithm, item.seed, item.budget


def finished_runs(path: str, jobs: list[Job]) -> list[Run]:
    """The runs of an earlier ``--json`` that this benchmark would do again (no error, same key)."""
    if not os.path.exists(path):
        return []
    wanted = {_key(job) for job in jobs}
    with open(path) as handle:
        runs = [Run(**item) for item in json.load(handle)]
    return [run for run in runs if run.error is None and _key(run) in wanted]


def write_runs(path: str, runs: list[Run]) -> None:
    """``runs`` as a JSON list, written to a temporary file and renamed over ``path`` (never half-written)."""
    with atomic_open(path) as handle:
        json.dump([asdict(run) for run in runs], handle, indent=1)


def sweep_runs(directory: Path) -> list[Run]:
    """The finished trials of a ``lagrl sweep`` in ``directory`` (``trials.csv``) as the benchmark's runs.

    ``ppo:adam``, ``a2c:rmsprop`` and ``trpo`` are named ``sb3:ppo``, ``sb3:a2c`` and ``sb3-contrib:trpo``
    (:data:`SWEEP_NAMES`: the first two are SB3's agents bit for bit, ``tests/test_agents.py``); each trial's budget
    is its planned one (``sweep.json``'s grid). A sweep that overrides the zoo settings or uses other thresholds is
    not the benchmark and is refused.
    """
    try:
        grid = json.loads((directory / "sweep.json").read_text())
        with open(directory / "trials.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ConfigError(f"{directory} holds no finished lagrl sweep ({error.strerror}: {error.filename})") from None
    budgets = {}
    for trial in grid["trials"]:
        spec = TrialSpec(**trial)
        where = f"{directory}: {spec.algo}:{spec.preset} on {spec.env}"
        if spec.env not in THRESHOLDS or grid["threshold"].get(spec.env) != THRESHOLDS[spec.env]:
            raise ConfigError(f"{where}: the benchmark's envs and thresholds are {THRESHOLDS}")
        if spec.hyperparams:
            raise ConfigError(f"{where} overrides the zoo settings with {spec.hyperparams}: not the benchmark's runs")
        plan = plan_run(spec.algo, spec.env, {}, preconditioner=spec.preconditioner, timesteps=spec.timesteps)
        budgets[spec.algo, spec.env, spec.preset, spec.seed] = plan.timesteps
    runs = []
    for row in rows:
        algo, preset, seed = row["algo"], row["preconditioner"], int(row["seed"])
        runs.append(
            Run(
                env=row["env"],
                algorithm=SWEEP_NAMES.get((algo, preset), f"{algo}:{preset}"),
                seed=seed,
                budget=budgets[algo, row["env"], preset, seed],
                timesteps=int(row["timesteps"]),
                seconds=float(row["wall_seconds"]),
                fps=float(row["fps"]),
                steps_to_threshold=int(row["steps_to_threshold"]) if row["steps_to_threshold"] else None,
                evaluation_mean=float(row["eval_mean"]),
                evaluation_std=float(row["eval_std"]),
            )
        )
    return runs


def sweep_curves(directory: Path) -> tuple[list[dict[str, str]], dict[str, list[tuple[int, float]]]]:
    """``--curves``: a sweep's ``trials.csv`` rows and each trial's reported ``(timesteps, train_mean)``, read from
    Tune's ``DIR/tune/<trial_id>/result.json`` (one report per step: a restored trial's last)."""
    with open(directory / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    curves = {}
    for row in rows:
        reports: dict[int, float] = {}
        with open(directory / "tune" / row["trial_id"] / "result.json") as handle:
            for line in handle:
                if line.strip():
                    report = json.loads(line)
                    mean = report.get("train_mean")  # None before the first episode ends
                    reports[int(report["timesteps"])] = math.nan if mean is None else float(mean)
        curves[row["trial_id"]] = sorted(reports.items())
    return rows, curves


def draw_curves(directories: list[Path], path: Path) -> None:
    """``--curves PNG``: :func:`sweep_curves` of every directory in one figure (lagrl.agents.sweep_summary's plot)."""
    rows, curves = [], {}
    for directory in directories:
        found, reports = sweep_curves(directory)
        rows += found
        curves |= reports
    plot_curves(curve_estimates(rows, curves, reps=2000, seed=0), THRESHOLDS, path)


def runs_from_sweeps(directories: list[Path]) -> list[Run]:
    """:func:`sweep_runs` of every directory; a run (env, algorithm, seed, budget) found twice is refused."""
    runs: dict[tuple[str, str, int, int], tuple[Run, Path]] = {}
    for directory in directories:
        for run in sweep_runs(directory):
            if _key(run) in runs:
                first = runs[_key(run)][1]
                raise ConfigError(f"{run.algorithm} on {run.env} seed {run.seed} is in both {first} and {directory}")
            runs[_key(run)] = run, directory
    return [run for run, _ in runs.values()]


def parse_arguments() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--envs", nargs="+", default=list(THRESHOLDS), choices=list(THRESHOLDS))
    parser.add_argument("--anchors", nargs="*", default=list(ANCHORS), choices=list(ANCHORS))
    parser.add_argument("--presets", nargs="*", default=["adam", "fisher-sqrt", "natural"], metavar="PRESET|NAME={...}")
    parser.add_argument("--a2c-presets", nargs="*", default=["rmsprop", "natural"], metavar="PRESET|NAME={...}")
    parser.add_argument("--timesteps", nargs="*", default=[], metavar="ENV=N", help="budget of every algorithm")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every budget")
    parser.add_argument("--lagrl-hyperparams", nargs="*", default=[], metavar="[FAMILY:]KEY=VALUE")
    parser.add_argument("--json", help="write every run as a JSON list (after each run)")
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs of --json, run the rest")
    parser.add_argument("--markdown", help="write the summary as a Markdown table")
    parser.add_argument(
        "--from-sweeps", nargs="+", type=Path, metavar="DIR", help="summarise lagrl sweeps' trials instead of running"
    )
    parser.add_argument("--curves", type=Path, metavar="PNG", help="with --from-sweeps: the training curves, drawn")
    return parser.parse_args()


def summarise_sweeps(args: argparse.Namespace, algorithms: list[str]) -> list[Row]:
    """``--from-sweeps``: the sweeps' runs in the benchmark's table (envs, then ``algorithms``, then seeds)."""
    try:
        runs = runs_from_sweeps(args.from_sweeps)
    except ConfigError as error:
        raise SystemExit(f"agents_bench: {error}") from None
    present = list(dict.fromkeys([*algorithms, *(run.algorithm for run in runs)]))
    present = [algorithm for algorithm in present if any(run.algorithm == algorithm for run in runs)]
    envs = list(THRESHOLDS)
    runs.sort(key=lambda run: (envs.index(run.env), present.index(run.algorithm), run.seed))
    print(f"{len(runs)} finished trials of {len(args.from_sweeps)} sweep(s)")
    return summarise(runs, present)


def main() -> None:
    args = parse_arguments()
    try:
        ppo, ppo_variants = preset_variants("ppo", args.presets, "--presets")
        a2c, a2c_variants = preset_variants("a2c", args.a2c_presets, "--a2c-presets")
    except ConfigError as error:
        raise SystemExit(f"agents_bench: {error}") from None
    algorithms = [*args.anchors, *ppo, *a2c]
    if args.curves and not args.from_sweeps:
        raise SystemExit("agents_bench: --curves draws the trials of --from-sweeps DIR ...; give --from-sweeps")
    if args.from_sweeps:
        rows = summarise_sweeps(args, algorithms)
        print(f"\n{text_table(rows)}")
        if args.markdown:
            with atomic_open(args.markdown) as handle:
                handle.write(markdown_table(rows))
        if args.curves:
            draw_curves(args.from_sweeps, args.curves)
        return
    try:
        jobs = plan_jobs(args, algorithms, {**ppo_variants, **a2c_variants})
    except ConfigError as error:
        raise SystemExit(f"agents_bench: {error}") from None
    if args.resume and not args.json:
        raise SystemExit("agents_bench: --resume reads the runs of --json FILE; give --json")
    done = finished_runs(args.json, jobs) if args.resume else []
    todo = run_order([job for job in jobs if _key(job) not in {_key(run) for run in done}])
    print(f"torch {torch.__version__}, {len(todo)} runs on {args.jobs} processes, one thread each", end="")
    print(f" ({len(done)} reused from {args.json})" if args.resume else "")
    if args.lagrl_hyperparams:
        print(f"zoo settings; lagrl presets overridden with {' '.join(args.lagrl_hyperparams)}")
    runs = list(done)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for run in pool.imap_unordered(_run, todo, chunksize=1):
            runs.append(run)
            if args.json:
                write_runs(args.json, runs)
    order = {_key(job): index for index, job in enumerate(jobs)}
    runs.sort(key=lambda run: order[_key(run)])
    rows = summarise(runs, algorithms)
    print(f"\n{text_table(rows)}")
    for line in failures(runs):
        print(line)
    if args.json:
        write_runs(args.json, runs)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(markdown_table(rows))


if __name__ == "__main__":
    main()
