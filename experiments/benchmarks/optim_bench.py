"""Benchmark: ``optimizer.step()`` of lagrl's optimizers beside ``torch.optim.Adam`` in one run.

Models: SB3's CartPole-v1 ``MlpPolicy`` actor-critic (9,155 parameters) and a 4×1024 MLP. Gradients
are fixed random tensors, so only the step is timed. Each timing is the median over interleaved
repeats of the mean time of a block of steps; ratios are lagrl / torch.

    python experiments/benchmarks/optim_bench.py [--device cpu|cuda] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from lagrl.optim import LagrangianAdam, LagrangianOptimizer


def cartpole_policy() -> nn.Module:
    env = gym.make("CartPole-v1")
    return ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 3e-4)


def wide_mlp() -> nn.Module:
    return nn.Sequential(*[layer for _ in range(4) for layer in (nn.Linear(1024, 1024), nn.Tanh())])


def time_steps(
    make_opt: Callable[[], torch.optim.Optimizer], model: nn.Module, steps: int, device: torch.device
) -> Callable[[], float]:
    """A closure timing ``steps`` calls of ``step()`` (seconds per step) on fresh gradients."""
    generator = torch.Generator(device=device).manual_seed(0)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator, device=device)
    optimizer = make_opt()
    optimizer.step()  # allocate state outside the timed block

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    return run


def compare(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds per step of each candidate, the candidates interleaved in every repeat."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def kfac_step_seconds(device: torch.device, repeats: int, update_interval: int) -> float:
    """Seconds per K-FAC step on the CartPole policy, factors recomputed every ``update_interval``."""
    policy = cartpole_policy().to(device)
    optimizer = LagrangianOptimizer(
        policy.parameters(), lr=3e-4, fisher="kfac", eps=1e-3, model=policy, update_interval=update_interval
    )
    observations = torch.randn(64, 4, device=device)
    actions = torch.randint(0, 2, (64,), device=device)
    times = []
    for _ in range(repeats * 10):
        values, log_prob, _ = policy.evaluate_actions(observations, actions)
        loss = -(log_prob.mean()) + values.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    rows = []
    for label, build, steps in (("CartPole actor-critic", cartpole_policy, 200), ("4x1024 MLP", wide_mlp, 10)):
        models = {name: build().to(device) for name in ("adam", "lagrangian_adam", "rho_0.75", "rho_0.6")}
        count = sum(p.numel() for p in models["adam"].parameters())
        results = compare(
            {
                "adam": time_steps(
                    lambda: torch.optim.Adam(models["adam"].parameters()), models["adam"], steps, device
                ),
                "lagrangian_adam": time_steps(
                    lambda: LagrangianAdam(models["lagrangian_adam"].parameters()),
                    models["lagrangian_adam"],
                    steps,
                    device,
                ),
                **{
                    name: time_steps(
                        lambda name=name: LagrangianOptimizer(models[name].parameters(), rho=float(name[4:])),
                        models[name],
                        steps,
                        device,
                    )
                    for name in ("rho_0.75", "rho_0.6")
                },
            },
            args.repeats,
        )
        rows.append((label, count, results))

    print(
        f"\n{'model':22} {'params':>8} {'Adam µs':>9}"
        + "".join(f" {name + ' µs':>17} {'ratio':>6}" for name in rows[0][2] if name != "adam")
    )
    for label, count, r in rows:
        print(
            f"{label:22} {count:8d} {r['adam'] * 1e6:9.1f}"
            + "".join(f" {r[name] * 1e6:17.1f} {r[name] / r['adam']:6.3f}" for name in r if name != "adam")
        )
    every = kfac_step_seconds(device, args.repeats, update_interval=1)
    amortised = kfac_step_seconds(device, args.repeats, update_interval=10)
    print(
        f"\nK-FAC step, CartPole actor-critic: {every * 1e3:.2f} ms (factors inverted every step), "
        f"{amortised * 1e3:.2f} ms (every 10 steps)"
    )


if __name__ == "__main__":
    main()
