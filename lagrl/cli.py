"""The ``lagrl`` command line: composes the library, defines no math.

lagrl check [--steps N] [--device DEV]   LagrangianAdam/RMSprop vs torch.optim, bit for bit
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lagrl.equivalence import optimizer_parity


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagrl", description="Learning-Lagrangian RL: checks and tools.")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"check": _check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
