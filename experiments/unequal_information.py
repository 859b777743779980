"""Open question 1: observations carry unequal information. Count "time" in accumulated Fisher information
instead of observations; does the planned allocation beat the uniform one by the closed-form margin?

Linear regression in ``R^p``, unit-norm rows along the basis directions, observation ``i`` with its own noise
variance ``σ_i²`` (log-uniform in ``[σ₀²/r, σ₀² r]``, r = 10, known when its direction is chosen), weighted least
squares, ``n = 4p`` observations.
The information is ``J = Σ x_i x_iᵀ/σ_i²`` and information-time ``τ = tr J = Σ 1/σ_i²``; a test point uniform on
the sphere with noise σ₀² has expected error ``ε = σ₀² + tr(J⁻¹)/p ≥ σ₀² + p/τ`` (equality iff ``J = (τ/p)I``:
THEORY §2's bound with ``n/σ²`` replaced by ``τ``; our extension).

- planned: all noise levels known in advance, information balanced across directions (largest first to the
  least-informed direction);
- online: the same rule applied as the observations arrive (no look-ahead);
- uniform: round-robin over the directions, blind to ``σ_i²`` (equal *numbers* of observations per direction).

Closed-form margin ``ε_uniform − ε_planned = (1/p) Σ_j (1/I_j^uniform − 1/I_j^planned)`` (``I_j`` the information
along direction ``j``); it is measured by Monte Carlo (simulated noise, WLS fits, the test point averaged
exactly), as a paired difference over the same noise draws.

Verdict (our operationalisation): "holds" if for every seed the Monte Carlo margin matches the closed form
(within 3 standard errors), the planned allocation is within 2 % of the information-time bound's excess
``p/τ`` and beats the uniform one; "fails" if the uniform allocation is not worse or the margins disagree on
most seeds; "mixed" otherwise.

    python experiments/unequal_information.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Writes ``DIR/unequal_information.json`` and ``DIR/unequal_information.png``; prints the verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from claims import parse_arguments, plt, save_figure, write_report

CLAIM = (
    "Open question 1: with unequal information per observation, time counted in accumulated Fisher information "
    "makes the bound σ₀² + p/τ tight for a planned allocation, which beats the uniform one by the closed-form margin."
)
BASE_NOISE = 1.0


def allocate(noise: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    """Direction index of each observation.

    ``"planned"``: the whole sequence's information known in advance, assigned largest first to the direction
    with the least so far (LPT balancing of ``Σ 1/σ²`` per direction); ``"online"``: the same rule as the
    observations arrive; ``"uniform"``: round-robin, blind to ``σ_i²``.
    """
    if mode == "uniform":
        return torch.arange(len(noise)) % p
    order = torch.argsort(noise) if mode == "planned" else torch.arange(len(noise))  # small σ² = large information
    load = torch.zeros(p, dtype=torch.float64)
    directions = torch.empty(len(noise), dtype=torch.long)
    for i in order.tolist():
        j = int(load.argmin())
        directions[i] = j
        load[j] += 1.0 / float(noise[i])
    return directions


def information(directions: torch.Tensor, noise: torch.Tensor, p: int) -> torch.Tensor:
    """``I_j`` after each prefix: ``(n, p)``, row ``i`` the information per direction after ``i + 1`` observations."""
    increments = torch.zeros(len(noise), p, dtype=torch.float64)
    increments[torch.arange(len(noise)), directions] = 1.0 / noise
    return increments.cumsum(0)


def closed_error(per_direction: torch.Tensor, p: int) -> torch.Tensor:
    """``σ₀² + tr(J⁻¹)/p`` (inf while a direction has no information)."""
    return BASE_NOISE + (1.0 / per_direction).sum(-1) / p


def estimation_errors(directions: torch.Tensor, noise: torch.Tensor, draws: torch.Tensor, p: int) -> torch.Tensor:
    """Per trial ``σ₀² + ‖β̂ − β‖²/p``: the WLS fit's test error averaged exactly over test points on the sphere
    (``E[(xᵀe)²] = ‖e‖²/p``) and over the test noise; ``draws`` are the observations' noise, ``(trials, n)``."""
    rows = torch.zeros(len(noise), p, dtype=torch.float64, device=draws.device)
    rows[torch.arange(len(noise)), directions] = 1.0
    weights = (1.0 / noise).to(draws.device)
    gram = rows.T @ (weights.unsqueeze(-1) * rows)
    estimates = torch.linalg.solve(gram, rows.T @ (weights.unsqueeze(-1) * draws.T)).T  # β̂ − β, (trials, p)
    return BASE_NOISE + estimates.square().sum(-1) / p


def run_seed(p: int, n: int, ratio: float, trials: int, seed: int, device: str) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    noise = BASE_NOISE * torch.exp((2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * math.log(ratio))
    # One set of noise draws for both allocations (observation i has the same noise level in both): the
    # margin is a paired difference.
    draws = (torch.randn(trials, n, generator=generator, dtype=torch.float64) * noise.sqrt()).to(device)
    tau = float((1.0 / noise).sum())
    result: dict[str, Any] = {"seed": seed, "information_time": tau, "bound": BASE_NOISE + p / tau}
    curves, errors = {}, {}
    for name in ("planned", "online", "uniform"):
        directions = allocate(noise, p, name)
        curves[name] = closed_error(information(directions, noise, p), p)
        errors[name] = estimation_errors(directions, noise, draws, p)
        result[name] = {
            "closed_form": float(curves[name][-1]),
            "monte_carlo": float(errors[name].mean()),
            "standard_error": float(errors[name].std() / math.sqrt(trials)),
        }
    difference = errors["uniform"] - errors["planned"]
    result["margin_closed_form"] = result["uniform"]["closed_form"] - result["planned"]["closed_form"]
    result["margin_monte_carlo"] = float(difference.mean())
    result["margin_standard_error"] = float(difference.std() / math.sqrt(trials))
    result["planned_excess_over_bound"] = (result["planned"]["closed_form"] - BASE_NOISE) / (p / tau) - 1
    result["online_margin_closed_form"] = result["uniform"]["closed_form"] - result["online"]["closed_form"]
    result["_curves"] = curves
    result["_times"] = (1.0 / noise).cumsum(0)
    return result


def verdict(results: list[dict[str, Any]]) -> str:
    agree = [abs(r["margin_monte_carlo"] - r["margin_closed_form"]) <= 3 * r["margin_standard_error"] for r in results]
    beats = [r["margin_closed_form"] > 0 for r in results]
    tight = [r["planned_excess_over_bound"] <= 0.02 for r in results]
    if not all(beats) or sum(agree) < len(agree) / 2:
        return "fails"
    return "holds" if all(agree) and all(tight) else "mixed"


def plot(results: list[dict[str, Any]], p_values: list[int], path: Path) -> None:
    figure, (curve_axis, margin_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    first = results[0]
    times = first["_times"].tolist()
    for name, color in (("planned", "tab:red"), ("online", "tab:blue"), ("uniform", "tab:gray")):
        values = first["_curves"][name].tolist()
        finite = [(t, v) for t, v in zip(times, values) if math.isfinite(v)]
        curve_axis.plot(*zip(*finite), color=color, label=f"{name} allocation (closed form)")
    curve_axis.annotate(
        "planned: directions fixed in advance,\nso its prefixes are not balanced",
        (0.35, 0.8),
        xycoords="axes fraction",
        fontsize=8,
        color="tab:red",
    )
    p = first["p"]
    bounded = [t for t in times if t >= p]
    curve_axis.plot(bounded, [BASE_NOISE + p / t for t in bounded], "k--", label="bound σ₀² + p/τ")
    curve_axis.set_ylim(BASE_NOISE * 0.98, BASE_NOISE * 2.2)
    curve_axis.set_xlabel("information-time τ = Σ 1/σᵢ² (σ₀² = 1)")
    curve_axis.set_ylabel("expected prediction error ε (noise included)")
    curve_axis.set_title(f"one path, p = {p}, seed {first['seed']}")
    curve_axis.legend(fontsize=8)
    for offset, dimension in enumerate(p_values):
        chosen = [r for r in results if r["p"] == dimension]
        x = [k + 0.15 * offset for k in range(len(chosen))]
        margin_axis.errorbar(
            x,
            [r["margin_monte_carlo"] for r in chosen],
            yerr=[3 * r["margin_standard_error"] for r in chosen],
            fmt="o",
            label=f"Monte Carlo ± 3 SE, p = {dimension}",
        )
        margin_axis.plot(
            x, [r["margin_closed_form"] for r in chosen], "x", color="k", label="closed form" if offset == 0 else None
        )
    margin_axis.axhline(0, color="k", linewidth=0.5)
    margin_axis.set_xlabel("seed")
    margin_axis.set_ylabel("ε_uniform − ε_planned")
    margin_axis.set_title("margin of the planned allocation")
    margin_axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "p = 4, 4 seeds, 20,000 trials")
    p_values = [4] if args.quick else [4, 16]
    seeds, trials, ratio = (4, 20_000, 10.0) if args.quick else (10, 200_000, 10.0)
    results = []
    for p in p_values:
        for k in range(seeds):
            result = run_seed(p, 4 * p, ratio, trials, args.seed + k, args.device)
            result["p"] = p
            results.append(result)
    plot(results, p_values, args.out / "unequal_information.png")
    numbers = [{key: value for key, value in r.items() if not key.startswith("_")} for r in results]
    for r in numbers:
        print(
            f"p={r['p']:3} seed {r['seed']}: τ={r['information_time']:.1f}, planned {r['planned']['closed_form']:.4f} "
            f"(bound {r['bound']:.4f}), online {r['online']['closed_form']:.4f}, "
            f"uniform {r['uniform']['closed_form']:.4f}; margin closed "
            f"{r['margin_closed_form']:.4f}, Monte Carlo {r['margin_monte_carlo']:.4f}"
            f" ± {r['margin_standard_error']:.4f}"
        )
    settings = {
        "base_noise_var": BASE_NOISE,
        "noise_ratio": ratio,
        "observations": "4p",
        "dimensions": p_values,
        "seeds": seeds,
        "monte_carlo_trials": trials,
    }
    write_report(args, "unequal_information", CLAIM, verdict(results), settings, numbers)


if __name__ == "__main__":
    main()
