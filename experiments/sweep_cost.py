"""What a packaged sweep costs, priced from trials other sweeps measured (docs/sweeps.md).

Each trial of the target sweeps (default: ``agents_ppo`` and ``agents_a2c``, the agents benchmark) costs the
median ``wall_seconds`` of the measured trials with its (env, algo, preconditioner) in the given sweep folders'
``trials.csv`` (one CPU per trial there, so wall seconds are core-seconds). Printed: the total in core-hours,
the wall time on one machine of ``--cores`` cores (total / cores) and on ``--nodes`` such machines, for the
trials packed longest first onto ``nodes × cores`` slots (greedy LPT; Tune itself starts trials in grid order,
where a long trial that starts last can add up to its own length), and the longest trial, the floor of any
cluster.

    python experiments/sweep_cost.py DIR [DIR ...] [--sweeps agents_ppo agents_a2c] [--cores 2] [--nodes 10]
"""

from __future__ import annotations

import argparse
import csv
import heapq
import statistics
from collections import defaultdict
from pathlib import Path

from lagrl.agents.sweep_config import load_sweep

Group = tuple[str, str, str]
"""(env, algo, preconditioner) of a trial."""


def measured_seconds(folders: list[Path]) -> dict[Group, list[float]]:
    """Every finished trial's ``wall_seconds`` in the folders' ``trials.csv``, by (env, algo, preconditioner)."""
    seconds: dict[Group, list[float]] = defaultdict(list)
    for folder in folders:
        with open(folder / "trials.csv", newline="") as file:
            for row in csv.DictReader(file):
                seconds[(row["env"], row["algo"], row["preconditioner"])].append(float(row["wall_seconds"]))
    return seconds


def packed_wall(durations: list[float], slots: int) -> float:
    """The makespan of ``durations`` placed longest first, each on the slot that frees first."""
    ends = [0.0] * slots
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(ends, ends[0] + duration)
    return max(ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders whose trials.csv prices the trials")
    parser.add_argument("--sweeps", nargs="+", default=["agents_ppo", "agents_a2c"], help="the sweeps to price")
    parser.add_argument("--cores", type=int, default=2, help="cores per machine (one trial per core)")
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args()
    seconds = measured_seconds(args.folders)
    medians = {group: statistics.median(values) for group, values in seconds.items()}
    groups = [(t.env, t.algo, t.preset) for name in args.sweeps for t in load_sweep(name).trials()]
    missing = sorted(set(groups) - medians.keys())
    if missing:
        raise SystemExit(f"no measured trial for {missing}: add the folder of a sweep that ran them")
    durations = [medians[group] for group in groups]
    for group, values in sorted(seconds.items()):
        print(f"{' / '.join(group):40} {len(values):3d} measured, median {medians[group]:7.0f} s")
    total = sum(durations)
    print(
        f"{len(durations)} trials: {total / 3600:.1f} core-hours; one {args.cores}-core machine "
        f"{packed_wall(durations, args.cores) / 3600:.1f} h; {args.nodes} nodes "
        f"{packed_wall(durations, args.nodes * args.cores) / 60:.0f} min; longest trial {max(durations) / 60:.0f} min"
    )


if __name__ == "__main__":
    main()
