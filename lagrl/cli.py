"""The ``lagrl`` command line: composes the library, defines no math.

lagrl check [--steps N] [--device DEV]   LagrangianAdam/RMSprop vs torch.optim, bit for bit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import gymnasium
import torch
from tqdm import tqdm

from lagrl.equivalence import optimizer_parity
from lagrl.trajectory import TrajectoryWriter
from lagrl.verify import DEFAULT_SUITE, TaskReport, TaskSpec, load_task, verify_task


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
    check = commands.add_parser(
        "check", help="check that LagrangianAdam and LagrangianRMSprop are torch.optim's Adam and RMSprop bit for bit"
    )
    check.add_argument("--steps", type=_positive_int, default=1000, help="optimizer steps on the MLP (default 1000)")
    check.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu (default) or cuda")
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


def _verify(args: argparse.Namespace) -> int:
    tasks = args.tasks or [TaskSpec.parse(text) for text in DEFAULT_SUITE]
    start = time.perf_counter()
    reports: list[TaskReport] = []
    writer = TrajectoryWriter(args.logdir) if args.logdir else nullcontext()
    with writer as log, tqdm(tasks, desc="lagrl verify", unit="task", disable=None, leave=False) as progress:
        for spec in progress:
            progress.set_postfix_str(spec.label)
            try:
                mdp = load_task(spec, gamma=args.gamma, device=args.device)
            except (ValueError, TypeError, gymnasium.error.Error) as error:
                print(f"lagrl verify: {spec.label}: {error}", file=sys.stderr)
                return 2
            reports.append(verify_task(spec.label, mdp, tol=args.tol, writer=log, run_flows=not args.exact_only))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2)
    os.replace(handle.name, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"check": _check, "verify": _verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
