"""``lagrl verify``: Bellman's fixed point and the Lagrangian-derived flows, task by task (THEORY §6).

For each task (a Gymnasium env with a transition table ``P``): build the :class:`~lagrl.mdp.TabularMDP`,
run the exact checks of :func:`lagrl.equivalence.exact_checks`, the exact solvers (value iteration,
policy iteration, :func:`lagrl.bellman.solve`) and the flows of :mod:`lagrl.flows`, and report one row
per method. Exact solvers must land within ``tol`` of ``V*``; flows are measured, not gated, unless
``strict``.

``V*`` is policy iteration's exact solution; the policy-iteration row is measured against value
iteration run to ``tol/100``, so every exact row compares two different routes.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lagrl import bellman, flows
from lagrl.equivalence import IDENTITY_RTOL, ExactCheck, exact_checks
from lagrl.hamiltonian import bellman_optimality_residual, tabular_hamiltonian
from lagrl.mdp import TabularMDP
from lagrl.trajectory import TrajectoryWriter

DEFAULT_SUITE = (
    "FrozenLake-v1",
    "FrozenLake8x8-v1",
    "CliffWalking-v1",
    "Taxi-v4",
    "lagrl/RiverSwim-v0",
    "lagrl/Garnet-v0:num_states=20,num_actions=4,branching=3,seed=0",
    "lagrl/Garnet-v0:num_states=50,num_actions=5,branching=5,seed=1",
    "lagrl/Garnet-v0:num_states=100,num_actions=4,branching=2,seed=2",
)


@dataclass(frozen=True)
class TaskSpec:
    """An env id with keyword arguments for ``gymnasium.make``: ``ID`` or ``ID:key=value,key=value``."""

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        env_id, _, arguments = text.partition(":")
        if not env_id:
            raise ValueError(f"empty env id in {text!r}; use ID or ID:key=value,...")
        kwargs = {}
        for item in filter(None, arguments.split(",")):
            key, equals, value = item.partition("=")
            if not equals or not key:
                raise ValueError(f"malformed env argument {item!r} in {text!r}; use ID:key=value,key=value")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        return cls(env_id, kwargs)

    @property
    def label(self) -> str:
        name = self.env_id.removeprefix("lagrl/")
        return name + ("(" + ",".join(f"{k}={v}" for k, v in self.kwargs.items()) + ")" if self.kwargs else "")


class Row(NamedTuple):
    """One task × method. ``kind`` is ``"exact"`` (gated by ``tol``) or ``"flow"`` (measured).

    ``greedy_optimal_at`` is a flow's first iteration whose greedy policy is optimal (``None``: never
    within the budget, or an exact solver, which does not track it).
    """

    task: str
    method: str
    kind: str
    max_abs_dv: float
    policy_agreement: float
    greedy_optimal_at: int | None
    iterations: int
    seconds: float
    settings: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class TaskReport(NamedTuple):
    task: str
    checks: list[ExactCheck]
    rows: list[Row]


def policy_agreement(policy: Tensor, optimal_q: Tensor, optimal_values: Tensor) -> float:
    """Fraction of states whose greedy action (argmax of ``policy``) is an optimal action.

    An action is optimal where ``H(s, a; V*) ≥ V*(s) − tolerance·max(1, ‖V*‖∞)``, with the flows'
    :data:`~lagrl.flows.GREEDY_OPTIMALITY_TOLERANCE`. For a batch of MDPs (leading dims): each member's own
    scale, and the fraction over all members' states.
    """
    greedy = policy.argmax(-1) if policy.is_floating_point() else policy
    scale = optimal_values.abs().amax(-1, keepdim=True).clamp_min(1.0)  # max(1, ‖V*‖∞) per member
    tolerance = flows.GREEDY_OPTIMALITY_TOLERANCE * scale
    optimal = optimal_q >= (optimal_values - tolerance).unsqueeze(-1)
    return float(optimal.gather(-1, greedy.long().unsqueeze(-1)).to(torch.float64).mean())


def _timed(run: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``run()`` and its wall time, the device's queued work included (CUDA is synchronised around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


class _ExactSolves(NamedTuple):
    """The exact solvers' rows and the solutions the checks and flows reuse."""

    rows: list[Row]
    reference: bellman.Solution
    value_iteration: bellman.Solution
    cross_check: bellman.Solution
    optimal_q: Tensor


def _exact_solves(task: str, mdp: TabularMDP, tol: float) -> _ExactSolves:
    """Policy iteration (``V*``), value iteration and :func:`~lagrl.bellman.solve` to ``tol``, each timed on
    the MDP's device, and value iteration to ``tol/100`` that policy iteration's row is measured against."""
    reference, seconds_pi = _timed(lambda: bellman.policy_iteration(mdp), mdp.device)
    optimal_values = reference.values
    optimal_q = tabular_hamiltonian(mdp, optimal_values)
    value_iteration, seconds_vi = _timed(lambda: bellman.value_iteration(mdp, tol=tol), mdp.device)
    solved, seconds_solve = _timed(lambda: bellman.solve(mdp, tol=tol), mdp.device)
    cross_check = bellman.value_iteration(mdp, tol=tol / 100)

    def exact_row(method: str, solution: bellman.Solution, against: Tensor, seconds: float) -> Row:
        return Row(
            task,
            method,
            "exact",
            float((solution.values - against).abs().amax()),
            policy_agreement(solution.policy, optimal_q, optimal_values),
            None,  # exact solvers do not track when their greedy policy became optimal
            solution.iterations,
            seconds,
            {"tol": tol},
        )

    rows = [
        exact_row("value_iteration", value_iteration, optimal_values, seconds_vi),
        exact_row("policy_iteration", reference, cross_check.values, seconds_pi),
        exact_row("solve", solved, optimal_values, seconds_solve),
    ]
    return _ExactSolves(rows, reference, value_iteration, cross_check, optimal_q)


def load_task(spec: TaskSpec, *, gamma: float, device: torch.device) -> TabularMDP:
    """The task's MDP (errors from Gymnasium or from a missing ``P`` propagate to the caller)."""
    return TabularMDP.from_gymnasium(spec.env_id, gamma=gamma, device=device, **spec.kwargs)


def verify_task(
    task: str, mdp: TabularMDP, *, tol: float, writer: TrajectoryWriter | None = None, run_flows: bool = True
) -> TaskReport:
    """Exact checks, exact solvers and flows on one MDP; flow trajectories go to ``writer``."""
    rows, reference, _, cross_check, optimal_q = _exact_solves(task, mdp, tol)
    optimal_values = reference.values
    checks = exact_checks(mdp, tol=tol, optimum=reference, value_solution=cross_check)  # nothing solved twice
    if run_flows:
        # torch.optim.Optimizer's first construction imports torch._dynamo (2-3 s here): before the clock starts,
        # not charged to the first flow's row (it was: 2 s on lp-saddle of each worker's first task).
        import torch._dynamo  # noqa: F401

        for method, run in _flows(mdp, optimal_values).items():

            def log(step: int, scalars: dict[str, float], method: str = method) -> None:
                if writer is not None:
                    writer.scalars(f"{task}/{method}", step, scalars)

            result, seconds = _timed(lambda run=run, log=log: run(log), mdp.device)
            rows.append(
                Row(
                    task,
                    method,
                    "flow",
                    float((result.values - optimal_values).abs().amax()),
                    policy_agreement(result.policy, optimal_q, optimal_values),
                    result.greedy_optimal_at,
                    result.iterations,
                    seconds,
                    result.settings,
                )
            )
    return TaskReport(task, checks, rows)


FLOW_SETTINGS: dict[str, dict[str, Any]] = {
    "lp-saddle": dict(steps=1000, record_every=10),
    "lp-proximal": dict(steps=20),
    "npg": dict(steps=200, lr=1.0, record_every=10),
    "fisher-sqrt": dict(steps=500, lr=0.1, record_every=10),
    "fisher-sqrt-energy": dict(steps=100, energy=1e-2),
    "adam": dict(steps=500, lr=0.1, record_every=10),
}
"""Budgets and step sizes of the flows in ``lagrl verify`` (each row's ``settings`` repeats them).

The flows of 200 steps and more record their trajectories (``--logdir``) every 10th step and at the last:
a quarter of the suite's time went into recording every step (lp-saddle's certified duality gap solves an
``S × S`` system). ``greedy_optimal_at`` is checked at every step, so the table does not change.

``fisher-sqrt-energy`` is the ρ = ½ exact-Fisher flow with the agents' step rule (each step's kinetic
energy in the Fisher metric fixed, no learning rate; :func:`lagrl.flows.policy_gradient`'s ``energy``).

Policy flows weight states uniformly (μ uniform, like the LP): with μ = the start distribution, states
the start never reaches get no gradient and keep the uniform policy, which dominates ``max |V − V*|``.
"""


def _flows(mdp: TabularMDP, reference: Tensor) -> dict[str, Callable[[flows.Callback], flows.FlowResult]]:
    """The flows of THEORY §6 with :data:`FLOW_SETTINGS` (soft Bellman with its default τ sequence)."""
    uniform = torch.full((mdp.num_states,), 1.0 / mdp.num_states, dtype=mdp.dtype, device=mdp.device)
    runs: dict[str, Callable[[flows.Callback], flows.FlowResult]] = {
        "lp-saddle": lambda callback: flows.lp_saddle(mdp, reference, callback=callback, **FLOW_SETTINGS["lp-saddle"]),
        "lp-proximal": lambda callback: flows.lp_proximal(
            mdp, reference, callback=callback, **FLOW_SETTINGS["lp-proximal"]
        ),
        "soft-bellman": lambda callback: flows.soft_bellman(mdp, reference, callback=callback),
    }
    for name in (*flows.POLICY_GRADIENT_METHODS, "fisher-sqrt-energy"):
        runs[name] = lambda callback, name=name: flows.policy_gradient(
            mdp, reference, method=name.removesuffix("-energy"), mu=uniform, callback=callback, **FLOW_SETTINGS[name]
        )
    return runs


class BatchReport(NamedTuple):
    """``lagrl verify --batch``: the worst member's certificates, one row per solver, and throughput."""

    report: TaskReport
    mdps_per_second: dict[str, float]
    bandwidth: float
    """Value iteration's effective memory bandwidth in GB/s: ``P`` (``N·S·A·S`` floats) read once a sweep."""


def verify_batch(label: str, mdp: TabularMDP, *, tol: float) -> BatchReport:
    """A batch of MDPs (one leading batch dim) solved by one batched call of each exact solver on its device.

    Rows as in :func:`verify_task` (``max_abs_dv``: the worst member; ``policy_agreement``: the mean over
    members). Certificates on every member, each reported for the worst member relative to its
    ``scale = max(1, ‖V*‖∞)``: stationarity of value and policy iteration (≤ ``tol``) and LP duality at
    policy iteration's ``V*`` with ``d*`` its occupancy from uniform ``μ`` (≤ ``IDENTITY_RTOL``). The
    per-task :func:`~lagrl.equivalence.exact_checks` (NPG and soft checks) run in the suite, not here.
    """
    if len(mdp.batch_shape) != 1:
        raise ValueError(f"verify_batch takes MDPs with one batch dim (N, S, A, S), got {tuple(mdp.batch_shape)}")
    count = mdp.batch_shape[0]
    solves = _exact_solves(label, mdp, tol)
    rows = [
        row._replace(settings=row.settings | {"batch": count, "mdps_per_second": count / row.seconds})
        for row in solves.rows
    ]
    reference, value_iteration, optimal_q = solves.reference, solves.value_iteration, solves.optimal_q
    optimal = reference.values
    scale = optimal.abs().amax(-1).clamp_min(1.0)

    def worst(name: str, residual: Tensor, tolerance: float) -> ExactCheck:
        return ExactCheck(f"{name}, worst of {count}, relative", float((residual / scale).amax()), tolerance)

    mu = torch.full_like(optimal, 1.0 / mdp.num_states)
    dual = flows.occupancy(mdp, reference.policy, mu)
    slack = optimal.unsqueeze(-1) - optimal_q
    inflow = mdp.gamma * torch.einsum("nsat,nsa->nt", mdp.transitions, dual)
    flow = (dual.sum(-1) - mu - inflow).abs().amax(-1) * (1 - mdp.gamma)
    gap = (mu * optimal).sum(-1) - (dual * mdp.rewards).sum((-2, -1))
    checks = [
        worst("stationarity [value iteration]", bellman_optimality_residual(mdp, value_iteration.values), tol),
        worst("stationarity [policy iteration]", bellman_optimality_residual(mdp, optimal), tol),
        worst("LP primal feasibility V* ≥ H(·,·;V*)", (-slack).amax((-2, -1)).clamp_min(0), IDENTITY_RTOL),
        worst("LP dual feasibility (flow constraint) ×(1−γ)", flow * scale, IDENTITY_RTOL),
        worst("LP duality gap", gap.abs(), IDENTITY_RTOL),
        worst("complementary slackness ×(1−γ)", (dual * slack).abs().amax((-2, -1)) * (1 - mdp.gamma), IDENTITY_RTOL),
    ]
    rates = {row.method: count / row.seconds for row in rows}
    seconds_vi = rows[0].seconds  # value iteration's row
    bandwidth = value_iteration.iterations * mdp.transitions.numel() * mdp.transitions.element_size() / seconds_vi / 1e9
    return BatchReport(TaskReport(label, checks, rows), rates, bandwidth)
