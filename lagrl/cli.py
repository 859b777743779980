"""The ``lagrl`` command line: composes the library, defines no math.

lagrl check [--steps N] [--device DEV]   LagrangianAdam/RMSprop vs torch.optim, bit for bit
lagrl verify [--env ID ...]              Bellman's fixed point vs the Lagrangian flows on tabular tasks
lagrl train --algo ppo --env ID ...      an agent with zoo-style hyperparameters, checkpoints, TensorBoard
lagrl evaluate PATH [--episodes N]       the mean ± std return of a model lagrl train saved
lagrl sweep CONFIG.yml --out DIR         a grid of training runs on Ray Tune, with IQM statistics
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import gymnasium
import torch
import yaml
from tqdm import tqdm

from lagrl.agents import PRESETS, training
from lagrl.agents.sweep_config import ExponentSweep, load_sweep
from lagrl.atomic import atomic_open
from lagrl.envs.garnet import garnet_batch
from lagrl.equivalence import optimizer_parity
from lagrl.optim import NonFiniteGradientError
from lagrl.trajectory import TrajectoryWriter
from lagrl.verify import DEFAULT_SUITE, TaskReport, TaskSpec, load_task, verify_batch, verify_task


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu, cuda or cuda:N): {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _gamma(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--gamma must lie in [0, 1], got {text}")
    return value


def _tolerance(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"--tol must be a positive number, got {text}")
    return value


def _task(text: str) -> TaskSpec:
    try:
        return TaskSpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run_device(text: str) -> str:
    """``auto`` (SB3's advice: the CPU for MLP policies) or a device ``_device`` accepts."""
    return text if text == "auto" else str(_device(text))


def _hyperparameter(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (``16`` → int, ``lin_0.001`` → str, ``{a: 1}`` → dict)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"cannot read the value of {key}: {error}") from None


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train an agent (zoo-style hyperparameters, atomic checkpoints, TensorBoard trajectories)"
    )
    train.add_argument("--algo", choices=training.ALGOS, required=True, help="the agent")
    train.add_argument("--env", required=True, metavar="ID", help="a Gymnasium env id (lagrl/... ids included)")
    train.add_argument(
        "--preconditioner",
        choices=PRESETS,
        help="ppo/a2c policy update (default: the agent's own, ppo adam, a2c rmsprop)",
    )
    train.add_argument("--timesteps", type=_positive_int, help="environment steps (default: the YAML's n_timesteps)")
    train.add_argument("--seed", type=int, default=0, help="seed of the envs and the agent (default 0)")
    train.add_argument("--n-envs", type=_positive_int, help="parallel envs (default: the YAML's n_envs, else 1)")
    train.add_argument("--logdir", type=Path, metavar="DIR", help="TensorBoard folder (SB3's and lagrl's tags)")
    train.add_argument("--device", type=_run_device, default="auto", help="auto (default: cpu for MLPs), cpu, cuda")
    train.add_argument("--save", required=True, metavar="PATH", help="the model zip (.zip added if missing)")
    train.add_argument(
        "--hyperparams",
        type=_hyperparameter,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override the YAML entry, e.g. n_steps=16 learning_rate=lin_3e-4",
    )
    train.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: when stdout is a terminal)"
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="mean and std of the return of a model saved by lagrl train")
    evaluate.add_argument("path", type=Path, metavar="PATH", help="the model zip")
    evaluate.add_argument("--env", metavar="ID", help="evaluate on this env id (default: the one it was trained on)")
    evaluate.add_argument("--episodes", type=_positive_int, default=10, help="episodes (default 10)")
    evaluate.add_argument("--deterministic", action="store_true", default=True, help="greedy actions (default)")
    evaluate.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions from π")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the evaluation env (default 0)")
    evaluate.add_argument("--device", type=_run_device, default="auto", help="auto (default), cpu or cuda")
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="write mean_return, std_return, episodes")


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep", help="run a sweep file's grid of training runs on Ray Tune (the sweep extra), with IQM statistics"
    )
    sweep.add_argument("config", type=Path, metavar="CONFIG.yml", help="the sweep file (see lagrl.agents.sweep_config)")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR", help="the sweep's folder")
    sweep.add_argument(
        "--address", metavar="ADDR", help="join a running Ray cluster: auto or host:port (default: start a local Ray)"
    )
    sweep.add_argument("--resume", action="store_true", help="continue the sweep in DIR, skipping finished trials")
    sweep.add_argument("--max-concurrent", type=_positive_int, metavar="N", help="trials at once (default: 1 per CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagrl", description="Learning-Lagrangian RL: checks and tools.")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify on tabular tasks that Bellman's fixed point and the Lagrangian-derived flows meet (THEORY §6)",
    )
    verify.add_argument(
        "--env",
        dest="tasks",
        type=_task,
        action="append",
        metavar="ID[:key=value,...]",
        help="a Gymnasium env with a transition table P (repeatable; default: the built-in suite)",
    )
    verify.add_argument("--gamma", type=_gamma, default=0.99, help="discount (default 0.99)")
    verify.add_argument("--tol", type=_tolerance, default=1e-6, help="exact solvers' tolerance on |V - V*| (1e-6)")
    verify.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu (default) or cuda")
    verify.add_argument("--json", type=Path, metavar="PATH", help="write the rows as a JSON list")
    verify.add_argument("--logdir", type=Path, metavar="DIR", help="TensorBoard trajectories of the flows")
    verify.add_argument("--strict", action="store_true", help="also require every flow's greedy policy to be optimal")
    verify.add_argument("--exact-only", action="store_true", help="skip the flows (exact checks and solvers only)")
    verify.add_argument(
        "--batch",
        type=_positive_int,
        metavar="N",
        help="instead of the suite: N Garnet MDPs solved in one batched call on --device, certificates on every "
        "member, throughput (MDPs/s)",
    )
    verify.add_argument("--states", type=_positive_int, default=64, help="--batch: states per MDP (default 64)")
    verify.add_argument("--actions", type=_positive_int, default=4, help="--batch: actions per MDP (default 4)")
    verify.add_argument("--branching", type=_positive_int, default=4, help="--batch: successors per (s, a) (default 4)")
    verify.add_argument("--seed", type=int, default=0, help="--batch: seed of the Garnet draws (default 0)")
    verify.add_argument(
        "--jobs",
        type=_positive_int,
        help="tasks solved at once in worker processes, --threads torch threads each (default: one per CPU "
        "core, at most one per task; 1 on CUDA)",
    )
    check = commands.add_parser(
        "check", help="check that LagrangianAdam and LagrangianRMSprop are torch.optim's Adam and RMSprop bit for bit"
    )
    check.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps on the MLP (default 1000)")
    check.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu (default) or cuda")
    _add_train(commands)
    _add_evaluate(commands)
    _add_sweep(commands)
    return parser


def _check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rows = optimizer_parity(steps=args.steps, device=args.device)
    print(f"LagrangianAdam / LagrangianRMSprop vs torch.optim: {args.steps} float32 steps on an MLP, {args.device}")
    print(f"{'optimizer':9} {'settings':78} {'max |Δθ|':>10}  result")
    for row in rows:
        result = "identical" if row.identical else "DIFFERS"
        print(f"{row.optimizer:9} {row.settings:78} {row.max_abs_diff:10.3g}  {result}")
    failed = sum(not row.identical for row in rows)
    print(f"{len(rows) - failed}/{len(rows)} bit-identical in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


def _verify_batch(args: argparse.Namespace) -> int:
    if args.tasks:
        print("lagrl verify: --batch draws its own Garnet MDPs; drop --env (or drop --batch)", file=sys.stderr)
        return 2
    if args.branching > args.states:
        print(f"lagrl verify: --branching {args.branching} exceeds --states {args.states}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    mdps = garnet_batch(
        args.batch, args.states, args.actions, args.branching, gamma=args.gamma, seed=args.seed, device=args.device
    )
    label = f"Garnet×{args.batch}(S={args.states},A={args.actions},b={args.branching},seed={args.seed})"
    batch = verify_batch(label, mdps, tol=args.tol)
    _print_reports([batch.report], args)
    rates = ", ".join(f"{method} {rate:,.0f}" for method, rate in batch.mdps_per_second.items())
    print(f"throughput (MDPs/s, one batched call each, {args.device}): {rates}")
    print(f"value iteration: {batch.bandwidth:.1f} GB/s effective (P read once a sweep)")
    if args.json:
        _write_json_atomically(args.json, [row.as_json() for row in batch.report.rows])
    checks_ok = all(check.passed for check in batch.report.checks)
    exact_ok = all(row.max_abs_dv <= args.tol for row in batch.report.rows)
    print(
        f"certificates {'hold' if checks_ok else 'FAIL'} on every member; exact solvers "
        f"{'within' if exact_ok else 'NOT within'} tol {args.tol:g}; {time.perf_counter() - start:.1f} s"
    )
    return 0 if checks_ok and exact_ok else 1


def _verify(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return _verify_batch(args)
    tasks = args.tasks or [TaskSpec.parse(text) for text in DEFAULT_SUITE]
    start = time.perf_counter()
    jobs = 1 if args.device.type != "cpu" else min(args.jobs or len(os.sched_getaffinity(0)), len(tasks))
    reports: list[TaskReport] = []
    writer = TrajectoryWriter(args.logdir) if args.logdir else nullcontext()
    settings = (args.gamma, args.tol, args.device, not args.exact_only, args.threads)
    progress = tqdm(total=len(tasks), desc="lagrl verify", unit="task", disable=None, leave=False)
    try:  # the workers fork before the writer starts its thread
        with _verify_tasks(tasks, settings, jobs) as run, writer as log, progress as bar:
            for spec, outcome in run(log):
                bar.update()
                if isinstance(outcome, Exception):
                    print(f"lagrl verify: {spec.label}: {outcome}", file=sys.stderr)
                    return 2
                report, trajectories = outcome
                for prefix, step, scalars in trajectories if log is not None else ():
                    log.scalars(prefix, step, scalars)
                reports.append(report)
    except KeyboardInterrupt:
        kept = f"; their trajectories are in {args.logdir}" if args.logdir else ""
        print(f"lagrl verify: interrupted after {len(reports)} of {len(tasks)} tasks{kept}", file=sys.stderr)
        return 130
    _print_reports(reports, args)
    rows = [row for report in reports for row in report.rows]
    if args.json:
        _write_json_atomically(args.json, [row.as_json() for row in rows])
    checks_ok = all(check.passed for report in reports for check in report.checks)
    exact_ok = all(row.max_abs_dv <= args.tol for row in rows if row.kind == "exact")
    flows_ok = all(row.greedy_optimal_at is not None for row in rows if row.kind == "flow")
    print(
        f"exact checks {'hold' if checks_ok else 'FAIL'}; exact solvers {'within' if exact_ok else 'NOT within'} "
        f"tol {args.tol:g}; flows greedy-optimal within budget: "
        f"{sum(row.greedy_optimal_at is not None for row in rows if row.kind == 'flow')}"
        f"/{sum(row.kind == 'flow' for row in rows)}; {time.perf_counter() - start:.1f} s"
    )
    return 0 if checks_ok and exact_ok and (flows_ok or not args.strict) else 1


VerifySettings = tuple[float, float, torch.device, bool, int]
"""``(gamma, tol, device, run_flows, threads)`` of one ``lagrl verify`` run."""


class _TrajectoryBuffer:
    """A writer's ``scalars`` kept in memory, for the parent process to write (workers share no log file)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, dict[str, float]]] = []

    def scalars(self, prefix: str, step: int, scalars: dict[str, float]) -> None:
        self.records.append((prefix, step, dict(scalars)))


def _verify_one(
    spec: TaskSpec, settings: VerifySettings, writer: TrajectoryWriter | None = None
) -> tuple[TaskReport, list] | Exception:
    """One task: its report and the trajectories not yet written (all of them without ``writer``, as in a
    worker, which shares no log file), or the load error (exit 2)."""
    gamma, tol, device, run_flows, threads = settings
    torch.set_num_threads(threads)
    try:
        mdp = load_task(spec, gamma=gamma, device=device)
    except (ValueError, TypeError, gymnasium.error.Error) as error:
        return error
    buffer = _TrajectoryBuffer()
    report = verify_task(spec.label, mdp, tol=tol, writer=writer or buffer, run_flows=run_flows)
    return report, buffer.records


def _task_size(spec: TaskSpec) -> int:
    """``S·A`` of the task's table (0 if it cannot be built: the worker reports why)."""
    try:
        env = gymnasium.make(spec.env_id, **spec.kwargs)
    except (ValueError, TypeError, gymnasium.error.Error):  # the worker's load_task reports it
        return 0
    try:
        return int(env.observation_space.n) * int(env.action_space.n)
    except AttributeError:
        return 0
    finally:
        env.close()


Outcomes = Iterator[tuple[TaskSpec, tuple[TaskReport, list] | Exception]]


@contextmanager
def _verify_tasks(
    tasks: list[TaskSpec], settings: VerifySettings, jobs: int
) -> Iterator[Callable[[TrajectoryWriter | None], Outcomes]]:
    """``run(writer)`` → ``(spec, outcome)`` in the tasks' order; with ``jobs > 1`` from forked workers.

    One process writes the trajectories as they are made; workers hand theirs back. Fork, not spawn: a
    worker inherits the imported torch (seconds of start-up each). The workers are forked on entry, while
    the parent runs no thread of its own (``--threads`` torch threads, no CUDA: CUDA runs in one process),
    and the pool is shut down by its own handle on exit, Ctrl-C included.
    """
    if jobs == 1:
        yield lambda writer: ((spec, _verify_one(spec, settings, writer)) for spec in tasks)
        return
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        # Largest first (by the table's size), so no worker is left with a big task at the end.
        futures = dict.fromkeys(range(len(tasks)))
        for index in sorted(futures, key=lambda index: -_task_size(tasks[index])):
            futures[index] = pool.submit(_verify_one, tasks[index], settings)
        try:
            yield lambda writer: ((spec, futures[index].result()) for index, spec in enumerate(tasks))
        finally:
            for future in futures.values():
                future.cancel()


def _print_reports(reports: list[TaskReport], args: argparse.Namespace) -> None:
    width = max([4] + [len(report.task) for report in reports])
    check_width = max([5] + [len(check.name) for report in reports for check in report.checks])
    print(f"Exact checks (THEORY §6), gamma={args.gamma:g}, tol={args.tol:g}, {args.device}")
    print(f"{'task':{width}} {'check':{check_width}} {'residual':>10} {'tolerance':>10}  result")
    for report in reports:
        for check in report.checks:
            numbers = f"{check.residual:10.2e} {check.tolerance:10.1e}  {'ok' if check.passed else 'FAIL'}"
            print(f"{report.task:{width}} {check.name:{check_width}} {numbers}")
    columns = f"{'max|V-V*|':>10} {'agree':>6} {'optimal@':>8} {'iters':>7} {'sec':>7}"
    print(f"\n{'task':{width}} {'method':16} {'kind':5} {columns}")
    for report in reports:
        for row in report.rows:
            optimal_at = "-" if row.greedy_optimal_at is None else str(row.greedy_optimal_at)
            optimal_at = "n/a" if row.kind == "exact" else optimal_at
            print(
                f"{row.task:{width}} {row.method:16} {row.kind:5} {row.max_abs_dv:10.2e} {row.policy_agreement:6.3f} "
                f"{optimal_at:>8} {row.iterations:7d} {row.seconds:7.3f}"
            )


def _write_json_atomically(path: Path, payload: object) -> None:
    with atomic_open(path) as handle:
        json.dump(payload, handle, indent=2)


def _train(args: argparse.Namespace) -> int:
    path = training.model_path(args.save)
    try:
        plan = training.plan_run(
            args.algo,
            args.env,
            dict(args.hyperparams),
            preconditioner=args.preconditioner,
            n_envs=args.n_envs,
            timesteps=args.timesteps,
            seed=args.seed,
        )
        model = training.build_model(plan, args.device, args.logdir)
    except training.ConfigError as error:
        print(f"lagrl train: {error}", file=sys.stderr)
        return 2
    _print_plan(plan, model)
    checkpoint = training.AtomicCheckpoint(path, plan.timesteps // training.CHECKPOINTS_PER_RUN)
    progress = sys.stdout.isatty() if args.progress is None else args.progress
    try:
        training.train(model, plan.timesteps, checkpoint, progress)
    except KeyboardInterrupt:
        training.save_atomically(model, path)
        print(f"interrupted after {model.num_timesteps} steps; model saved to {path}{_logs(model)}", flush=True)
        return 130
    except NonFiniteGradientError as error:
        print(f"lagrl train: {error}", file=sys.stderr)
        kept = f"the last good checkpoint ({checkpoint.saved_at} steps) is {path}" if checkpoint.saved_at else ""
        print(f"training stopped; {kept or 'no checkpoint was written before the failure'}{_logs(model)}")
        return 1
    training.save_atomically(model, path)
    print(f"trained {model.num_timesteps} steps; model saved to {path}{_logs(model)}")
    return 0


def _print_plan(plan: training.RunPlan, model: training.BaseAlgorithm) -> None:
    source = plan.source or f"no entry for {plan.env_id} in {training.hyperparameter_file(plan.algo)}: defaults"
    print(f"{plan.agent.__name__} on {plan.env_id}: {plan.timesteps} steps, {plan.n_envs} env(s), seed {plan.seed}")
    print(f"hyperparameters ({source}): {plan.kwargs or 'none set'}")
    print(f"device {model.device}, {torch.get_num_threads()} torch thread(s)", flush=True)


def _logs(model: training.BaseAlgorithm) -> str:
    directory = training.run_directory(model)
    return f"; TensorBoard logs in {directory}" if directory else ""


def _evaluate(args: argparse.Namespace) -> int:
    try:
        model = training.load_run(args.path, args.device)
        env = training.evaluation_env(model, args.seed, args.env)
        result = training.evaluate(model, env, args.episodes, args.deterministic)
    except training.ConfigError as error:
        print(f"lagrl evaluate: {error}", file=sys.stderr)
        return 2
    policy = "deterministic" if args.deterministic else "stochastic"
    env_id = args.env or model.lagrl_run["env_id"]
    print(
        f"{type(model).__name__} on {env_id}: return {result.mean_return:.2f} ± {result.std_return:.2f} "
        f"over {result.episodes} episodes ({policy})"
    )
    if args.json:
        _write_json_atomically(args.json, dataclasses.asdict(result))
    return 0


def _exponent_report(config: ExponentSweep, cells: list[dict], out: Path) -> None:
    """An exponent sweep's ``exponent.json`` (the report of ``experiments/exponent.py``) and ``exponent.png``."""
    from lagrl import exponent

    blocks = [exponent.block([cell for cell in cells if cell["model"] == model]) for model in config.model]
    exponent.plot(blocks, out / "exponent.png")
    report = exponent.report(blocks, list(config.seeds), config.tuning_seed, config.quick, config.device)
    _write_json_atomically(out / "exponent.json", report)
    print("\n".join(exponent.describe(blocks)))
    print(f"verdict: {report['verdict']} — {report['claim']}")


def _sweep(args: argparse.Namespace) -> int:
    from lagrl.agents import sweep, sweep_summary

    try:
        config = load_sweep(args.config)
        result = sweep.run_sweep(
            config, args.out, address=args.address, resume=args.resume, max_concurrent=args.max_concurrent
        )
    except training.ConfigError as error:
        print(f"lagrl sweep: {error}", file=sys.stderr)
        return 2
    experiment = isinstance(config, ExponentSweep)
    sweep.write_trials(result.rows, args.out / "trials.csv", cells=experiment)
    if experiment and not result.incomplete:
        _exponent_report(config, [row["cell"] for row in result.rows], args.out)
    elif result.rows and not experiment:
        summary = sweep_summary.write_summary(result.rows, result.curves, config.threshold, args.out)
        print(sweep_summary.markdown(summary))
    stopped = f" ({result.stopped_early} more stopped early by the scheduler)" if result.stopped_early else ""
    print(f"{len(result.rows)} finished trials in {args.out / 'trials.csv'}{stopped}")
    if result.incomplete:
        print(f"not every trial finished; continue with: lagrl sweep {args.config} --out {args.out} --resume")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    commands = {"check": _check, "verify": _verify, "train": _train, "evaluate": _evaluate, "sweep": _sweep}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
