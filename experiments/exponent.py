"""The exponent of the Learning-Lagrangian flow (THEORY §5, "known dissent"): is ρ = ½ (Adam, the paper's
postulate) the best exponent of ``θ ← θ − η m̂ / (v̂^ρ + ε)``, or does the best ρ drift from ½ toward ¾ as
Adam's β2 grows, as a 2026 replication on a small GPT reports?

The experiment, its grid, step-size rule and verdict are :mod:`lagrl.exponent`'s (see there); this script runs
its cells one after another in one process. ``lagrl sweep exponent --out DIR`` runs the same cells as Ray Tune
trials, one per core, and writes the same report (the README's figure comes from that sweep).

    python experiments/exponent.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Writes ``DIR/exponent.json`` and ``DIR/exponent.png`` (heat maps and the gaps against the replication's); prints
the verdict.
"""

from __future__ import annotations

import time

from claims import parse_arguments, write_report

from lagrl import exponent


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], f"{exponent.QUICK_STEPS} steps per model, 2 seeds")
    began, cpu = time.perf_counter(), time.process_time()
    seeds = [args.seed + k for k in range(1, 3 if args.quick else 4)]
    blocks = []
    for model in exponent.MODELS:
        cells = [
            exponent.run_cell(model, rho, beta2, seeds, args.seed, args.device, args.quick)
            for beta2 in exponent.BETA2S
            for rho in exponent.RHOS
        ]
        blocks.append(exponent.block(cells))
    exponent.plot(blocks, args.out / "exponent.png")
    print("\n".join(exponent.describe(blocks)))
    report = exponent.report(blocks, seeds, args.seed, args.quick, args.device)
    seconds = {"wall_seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu}
    numbers = report["numbers"] | seconds
    write_report(args, "exponent", exponent.CLAIM, report["verdict"], report["settings"], numbers)


if __name__ == "__main__":
    main()
