"""Diagnostic: the signal fraction ``φ`` of each update's gradient, and what scaling the budget by it does.

``PreconditionerConfig(signal_groups=G)`` multiplies each update's energy budget by ``φ``, the share of the
rollout gradient's squared norm that is signal (:func:`lagrl.step_size.signal_fraction`, our reading of
McCandlish et al. 2018's noise scale). This trains, at the package's zoo settings, Acrobot-v1 seed 8 (whose
early updates carry no reward: ``fisher-sqrt`` never finishes an episode there in 200k steps) with SB3's PPO
(``adam``), ``fisher-sqrt`` and ``fisher-sqrt`` + ``signal_groups=16``, and Pendulum-v1 seed 0 with the latter;
it records per update the policy's entropy, the 100-episode training mean and ``φ`` of both heads, and draws them.

    python experiments/signal_fraction.py [--out DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

from lagrl.agents.training import build_model, plan_run

SIGNAL = {"rho": 0.5, "budget_split": "epochs", "signal_groups": 16}
RUNS = [  # (label, env, seed, timesteps, preconditioner)
    ("SB3 PPO", "Acrobot-v1", 8, 200_000, "adam"),
    ("fisher-sqrt", "Acrobot-v1", 8, 200_000, "fisher-sqrt"),
    ("fisher-sqrt + signal_groups=16", "Acrobot-v1", 8, 200_000, SIGNAL),
    ("fisher-sqrt + signal_groups=16", "Pendulum-v1", 0, 100_000, SIGNAL),
]


class UpdateRecord(BaseCallback):
    """After every update (at the next rollout's start, before SB3's logger is read again): its scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def _on_rollout_start(self) -> None:
        logged = self.model.logger.name_to_value
        if "train/entropy_loss" not in logged:
            return
        episodes = [info["r"] for info in self.model.ep_info_buffer]
        self.rows.append(
            {
                "timesteps": self.model.num_timesteps,
                "entropy": -logged["train/entropy_loss"],
                "training_mean": sum(episodes) / len(episodes) if episodes else None,
                "signal_fraction": logged.get("train/signal_fraction"),
                "critic_signal_fraction": logged.get("train/critic_signal_fraction"),
            }
        )

    def _on_step(self) -> bool:
        return True


def train(run: tuple[str, str, int, int, Any]) -> dict[str, Any]:
    label, env_id, seed, timesteps, preconditioner = run
    torch.set_num_threads(1)
    model = build_model(plan_run("ppo", env_id, {}, preconditioner=preconditioner, timesteps=timesteps, seed=seed))
    record = UpdateRecord()
    model.learn(timesteps, callback=record)
    return {"label": label, "env": env_id, "seed": seed, "preconditioner": preconditioner, "updates": record.rows}


def draw(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acrobot = [r for r in results if r["env"] == "Acrobot-v1"]
    figure, (mean, entropy, fraction) = plt.subplots(1, 3, figsize=(15, 4.2))
    for result in acrobot:
        steps = [row["timesteps"] / 1000 for row in result["updates"]]
        mean.plot(steps, [row["training_mean"] for row in result["updates"]], label=result["label"])
        entropy.plot(steps, [row["entropy"] for row in result["updates"]], label=result["label"])
    mean.axhline(-100, color="grey", linestyle="--", linewidth=1, label="threshold −100")
    mean.set(
        title="Acrobot-v1 seed 8: training mean",
        xlabel="environment steps (thousands)",
        ylabel="100-episode mean return",
    )
    entropy.set(
        title="Acrobot-v1 seed 8: policy entropy", xlabel="environment steps (thousands)", ylabel="entropy (nats)"
    )
    for result in (r for r in results if r["updates"] and r["updates"][0]["signal_fraction"] is not None):
        steps = [row["timesteps"] / 1000 for row in result["updates"]]
        line = fraction.plot(
            steps,
            [row["signal_fraction"] for row in result["updates"]],
            label=f"{result['env']} seed {result['seed']}, actor",
        )
        fraction.plot(
            steps,
            [row["critic_signal_fraction"] for row in result["updates"]],
            linestyle=":",
            color=line[0].get_color(),
            label=f"{result['env']} seed {result['seed']}, critic",
        )
    fraction.set(
        title="signal fraction φ per update (signal_groups=16)",
        xlabel="environment steps (thousands)",
        ylabel="φ (share of |ĝ|² that is signal)",
        ylim=(-0.05, 1.05),
    )
    for axes in (mean, entropy, fraction):
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(train, RUNS))
    (args.out / "signal_fraction.json").write_text(json.dumps(results, indent=1))
    draw(results, args.out / "signal_fraction.png")
    for result in results:
        updates = result["updates"]
        print(
            f"{result['env']:12} seed {result['seed']} {result['label']:32} final training mean "
            f"{updates[-1]['training_mean']}, lowest entropy {min(row['entropy'] for row in updates):.2f} nats"
        )


if __name__ == "__main__":
    main()
