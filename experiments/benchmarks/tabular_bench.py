"""Benchmark: ``lagrl.bellman.solve`` beside pymdptoolbox on tabular MDPs, one torch thread.

Each task gives both libraries the same arrays (pymdptoolbox: ``P`` as ``(A, S, S)``, ``R`` as ``(S, A)``).
Timed: pymdptoolbox's ``run()`` only (objects are built outside the timer) and lagrl's
``solve(mdp, tol=1e-8)`` on a prebuilt ``TabularMDP``, each as the mean over a block of solves lasting
about 20 ms; the blocks are interleaved in every repeat and the table shows medians over repeats (the
convention of optim_bench.py). ``ratio`` = the faster of pymdptoolbox PI and VI over lagrl (the batch: PI, looped over
the members). Values are compared with pymdptoolbox ``PolicyIteration`` (exact up to round-off);
pymdptoolbox's value iteration stops on a span rule, so its own error against that reference is shown.

Tasks: FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1, Taxi-v4 (γ = 0.99, ``from_gymnasium``; Taxi also
with the same transitions stored sparse), 256 random MDPs (S = 64, A = 4) solved as one batched MDP
against a loop of pymdptoolbox PI, and a sparse MDP with S = 100,000, A = 4, 4 successors per (s, a),
γ = 0.99, solved to 1e-6 in a child process so that its peak RSS is its own.

    python experiments/benchmarks/tabular_bench.py [--repeats 21] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy
import torch

from lagrl.bellman import solve
from lagrl.mdp import TabularMDP

GAMMA = 0.99
TOL = 1e-8
BLOCK_SECONDS = 0.02
TARGETS = {  # minimum speed-up over the faster pymdptoolbox solver, from the issue
    "FrozenLake-v1": 1.0,
    "FrozenLake8x8-v1": 5.0,
    "CliffWalking-v1": 1.0,
    "Taxi-v4": 5.0,
    "Taxi-v4 (sparse)": 5.0,
    "random 256×(64, 4)": 5.0,
}


def compare(name: str, mdp: TabularMDP, repeats: int, device: torch.device) -> dict[str, object]:
    """Median over interleaved repeats of the mean seconds per solve in a block of solves.

    lagrl: ``solve(mdp, TOL)`` on the prebuilt MDP. pymdptoolbox: ``run()`` of solver objects built
    before the timer (a batch: one object per member, run in one loop). Each block holds enough solves
    to last about ``BLOCK_SECONDS`` (at least one), judged from a first, untimed solve.
    """
    import mdptoolbox.mdp as toolbox

    arrays = toolbox_arrays(mdp)
    builders = {
        "PI": lambda p, r: toolbox.PolicyIteration(p, r, GAMMA),
        "VI": lambda p, r: toolbox.ValueIteration(p, r, GAMMA, epsilon=1e-10),
    }

    def run_lagrl(block: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(block):
            solve(mdp, TOL)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / block

    def run_toolbox(kind: str, block: int) -> float:
        solvers = [builders[kind](p, r) for _ in range(block) for p, r in arrays]
        start = time.perf_counter()
        for solver in solvers:
            solver.run()
        elapsed = (time.perf_counter() - start) / block
        values[kind] = numpy.stack([numpy.asarray(solver.V) for solver in solvers[: len(arrays)]])
        return elapsed

    values: dict[str, numpy.ndarray] = {}
    runs = {
        "lagrl": run_lagrl,
        "PI": lambda block: run_toolbox("PI", block),
        "VI": lambda block: run_toolbox("VI", block),
    }
    blocks = {kind: max(1, round(BLOCK_SECONDS / run(1))) for kind, run in runs.items()}
    samples: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(repeats):
        for kind, run in runs.items():
            samples[kind].append(run(blocks[kind]))
    solution = solve(mdp, TOL)
    reference = values["PI"]
    medians = {kind: statistics.median(times) for kind, times in samples.items()}
    baseline = medians["PI"] if len(arrays) > 1 else min(medians["PI"], medians["VI"])
    return {
        "task": name,
        **medians,
        "ratio": baseline / medians["lagrl"],
        "error": float(numpy.abs(solution.values.cpu().numpy().reshape(reference.shape) - reference).max()),
        "vi_error": float(numpy.abs(values["VI"] - reference).max()),
        "bound": float(solution.error_bound.max()),
    }


def toolbox_arrays(mdp: TabularMDP) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """pymdptoolbox's ``(P (A, S, S), R (S, A))`` for each member of a (batched) MDP."""
    transitions = mdp.transitions.to_dense() if mdp.is_sparse else mdp.transitions
    transitions = transitions.cpu().reshape((-1,) + tuple(transitions.shape[-3:]))
    rewards = mdp.rewards.cpu().reshape((-1,) + tuple(mdp.rewards.shape[-2:]))
    return [(p.permute(1, 0, 2).contiguous().numpy(), r.contiguous().numpy()) for p, r in zip(transitions, rewards)]


def random_mdps(batch: int, states: int, actions: int, seed: int, device: torch.device) -> TabularMDP:
    """Dense random MDPs: uniform transition weights normalised per (s, a), rewards uniform in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    transitions = torch.rand(batch, states, actions, states, generator=generator, dtype=torch.float64)
    rewards = torch.rand(batch, states, actions, generator=generator, dtype=torch.float64)
    return TabularMDP(transitions / transitions.sum(-1, keepdim=True), rewards, GAMMA, device=device)


def sparse_mdp(states: int, actions: int, successors: int, seed: int, device: torch.device) -> TabularMDP:
    """A random sparse MDP: ``successors`` uniform next states per (s, a) with random probabilities."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, states, (states, actions, successors), generator=generator)
    weights = torch.rand(states, actions, successors, generator=generator, dtype=torch.float64)
    source = torch.arange(states).view(-1, 1, 1).expand_as(targets)
    action = torch.arange(actions).view(1, -1, 1).expand_as(targets)
    indices = torch.stack([source.reshape(-1), action.reshape(-1), targets.reshape(-1)])
    probabilities = (weights / weights.sum(-1, keepdim=True)).reshape(-1)
    transitions = torch.sparse_coo_tensor(indices, probabilities, (states, actions, states))
    rewards = torch.rand(states, actions, generator=generator, dtype=torch.float64)
    return TabularMDP(transitions, rewards, GAMMA, device=device)


def sparse_child(device: torch.device) -> None:
    """Build and solve the S = 100,000 sparse MDP; print seconds, peak RSS and bounds as JSON."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    mdp = sparse_mdp(100_000, 4, 4, seed=0, device=device)
    build = time.perf_counter() - start
    start = time.perf_counter()
    solution = solve(mdp, 1e-6)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    q = mdp.rewards + mdp.gamma * mdp.expected_next(solution.values)  # an independent residual check
    residual_bound = float((q.amax(-1) - solution.values).abs().amax()) / (1 - mdp.gamma)
    print(
        json.dumps(
            {
                "build_s": build,
                "solve_s": elapsed,
                "iterations": solution.iterations,
                "error_bound": float(solution.error_bound),
                "residual_bound": residual_bound,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparse-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.sparse_child:
        sparse_child(device)
        return
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    rows = []
    for env_id in ("FrozenLake-v1", "FrozenLake8x8-v1", "CliffWalking-v1", "Taxi-v4"):
        mdp = TabularMDP.from_gymnasium(env_id, GAMMA, device=device)
        rows.append(compare(env_id, mdp, args.repeats, device))
        if env_id == "Taxi-v4":
            stored_sparse = TabularMDP(mdp.transitions.to_sparse(), mdp.rewards, GAMMA, mdp.start)
            rows.append(compare(f"{env_id} (sparse)", stored_sparse, args.repeats, device))
    rows.append(compare("random 256×(64, 4)", random_mdps(256, 64, 4, 0, device), args.repeats, device))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, device {device}, tol {TOL:g}, median times")
    header = f"{'task':<20} {'lagrl s':>10} {'PI s':>10} {'VI s':>10} {'ratio':>7} {'target':>7}  "
    print(header + f"{'max|V-V_PI|':>11} {'VI err':>9} {'bound':>9}")
    for row in rows:
        target = TARGETS[row["task"]]
        verdict = "pass" if row["ratio"] >= target else "MISS"
        print(
            f"{row['task']:<20} {row['lagrl']:>10.2e} {row['PI']:>10.2e} {row['VI']:>10.2e} {row['ratio']:>6.1f}x "
            f"{'≥' + format(target, 'g') + 'x':>6} {verdict} {row['error']:>11.1e} {row['vi_error']:>9.1e} "
            f"{row['bound']:>9.1e}"
        )
    child = subprocess.run(
        [sys.executable, __file__, "--sparse-child", "--device", args.device],
        capture_output=True,
        text=True,
        check=True,
    )
    sparse = json.loads(child.stdout.strip().splitlines()[-1])
    verdict = (
        "pass" if sparse["solve_s"] < 30 and sparse["peak_rss_mb"] < 2048 and sparse["error_bound"] <= 1e-6 else "MISS"
    )
    print(
        f"sparse S=100,000 A=4 (4 successors), tol 1e-6: solve {sparse['solve_s']:.2f} s ({sparse['iterations']} "
        f"iterations; build {sparse['build_s']:.2f} s), peak RSS {sparse['peak_rss_mb']:.0f} MB, error bound "
        f"{sparse['error_bound']:.1e} (residual check {sparse['residual_bound']:.1e}); target < 30 s, < 2 GB: {verdict}"
    )


if __name__ == "__main__":
    main()
