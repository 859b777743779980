"""Experiment: how far is Adam's Fisher estimate ``v̂`` from the true policy Fisher in SB3's PPO?

The paper identifies Adam with the ρ = ½ flow with ``F ≈ diag(v̂)`` (Eq. 32). ``v̂`` is an EMA of the
squared *minibatch* gradient of PPO's loss; the true Fisher (THEORY §5) is the expected squared
*per-sample* score of the policy (and, in lagrl's reading, of the critic's unit Gaussian). This trains
``LagrangianPPO(preconditioner="adam")`` with rl-zoo's CartPole-v1 settings (numerically SB3's PPO)
and prints, per parameter tensor, the mean of the bias-corrected ``v̂`` and of the true diagonal Fisher
on the last rollout (``lagrl.agents.policy_fisher``, 50 sampled actions per state), and their ratio.
At equal ``lr`` a ρ = ½ step with the true Fisher is about ``√(v̂/F)`` times Adam's.

    python experiments/adam_vs_true_fisher.py [--steps 20000] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from lagrl.agents import LagrangianPPO
from lagrl.agents.policy_fisher import policy_fisher

ZOO_CARTPOLE = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    schedules = dict(learning_rate=LinearSchedule(1e-3, 0.0, 1.0), clip_range=LinearSchedule(0.2, 0.0, 1.0))
    model = LagrangianPPO("MlpPolicy", env, seed=args.seed, preconditioner="adam", **ZOO_CARTPOLE, **schedules)
    model.learn(args.steps)
    observations = torch.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
    true_fisher = policy_fisher(model.policy, observations, form="diagonal", num_samples=50)
    optimizer = model.policy.optimizer
    print(f"PPO (zoo CartPole-v1, {args.steps} steps, seed {args.seed}); minibatch size 256")
    print(f"{'parameter':34} {'mean v̂':>10} {'mean F_true':>12} {'v̂/F':>8} {'√(v̂/F)':>8}")
    for name, param in model.policy.named_parameters():
        state = optimizer.state[param]
        v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
        ratio = float(v_hat.mean() / true_fisher[param].diagonal.mean())
        print(
            f"{name:34} {v_hat.mean():10.3e} {true_fisher[param].diagonal.mean():12.3e} {ratio:8.1e} {ratio**0.5:8.3f}"
        )


if __name__ == "__main__":
    main()
