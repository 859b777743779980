"""The true Fisher of an SB3 actor-critic policy, for ``fisher_source="external"`` optimizers.

The agent's predictive model is ``p(a, y | s) = π(a|s) · N(y; V(s), 1)`` (our reading: the paper's
Fisher is for one likelihood; an actor-critic has two heads, and a unit-variance Gaussian makes the
critic's squared error a log-likelihood). Its true Fisher draws ``a ~ π(·|s)`` and ``y ~ N(V(s), 1)``
(THEORY §5) and, since the two scores have zero mean and are sampled independently, is the sum of the
actor's and the critic's Fishers; parameters the heads share get the sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from lagrl.fisher import DiagonalFisher, KroneckerFisher, fisher

SUPPORTED_ACTIONS = (spaces.Discrete, spaces.Box)


class _Actor(nn.Module):
    """Preprocessed observations → the parameters of π(·|s) (logits, or mean and log-std)."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.features = policy.pi_features_extractor
        self.latent = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net
        self.log_std = getattr(policy, "log_std", None)

    def forward(self, obs: Tensor) -> Tensor:
        out = self.action_net(self.latent(self.features(obs)))
        return out if self.log_std is None else torch.cat([out, self.log_std.expand_as(out)], dim=-1)


class _Critic(nn.Module):
    """Preprocessed observations → ``V(s)``, shape ``(N, 1)``."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.features = policy.vf_features_extractor
        self.latent = policy.mlp_extractor.value_net
        self.value_net = policy.value_net

    def forward(self, obs: Tensor) -> Tensor:
        return self.value_net(self.latent(self.features(obs)))


def _categorical(logits: Tensor) -> Distribution:
    return Categorical(logits=logits)


def _gaussian(output: Tensor) -> Distribution:
    mean, log_std = output.chunk(2, dim=-1)
    return Independent(Normal(mean, log_std.exp()), 1)


def _unit_gaussian(value: Tensor) -> Distribution:
    return Normal(value, torch.ones_like(value))


def check_policy(policy: ActorCriticPolicy) -> None:
    """Raise unless the true Fisher of this policy can be estimated (the action space and the layout)."""
    if not isinstance(policy.action_space, SUPPORTED_ACTIONS):
        raise ValueError(
            f"the true policy Fisher supports Discrete and Box action spaces, not {policy.action_space}; "
            "use preconditioner='adam' or a PreconditionerConfig(fisher_kind='gradients')"
        )
    if isinstance(policy.observation_space, spaces.Dict):
        raise ValueError("the true policy Fisher does not support Dict observations; use preconditioner='adam'")


@torch.no_grad()
def policy_fisher(
    policy: ActorCriticPolicy, observations: Tensor, form: str = "kfac", num_samples: int = 1
) -> dict[Tensor, DiagonalFisher | KroneckerFisher]:
    """True Fisher of actor and critic on ``observations`` (raw, as stored in SB3's rollout buffer).

    ``form="kfac"``: a ``KroneckerFisher`` per ``nn.Linear`` (keyed by its weight) and a
    ``DiagonalFisher`` for every other parameter (e.g. ``log_std``); ``form="diagonal"``: a
    ``DiagonalFisher`` per parameter. Keys are the policy's parameters, as ``set_fisher`` wants them.
    """
    check_policy(policy)
    obs = preprocess_obs(observations, policy.observation_space, normalize_images=policy.normalize_images)
    actor_distribution: Callable[[Tensor], Distribution] = (
        _categorical if isinstance(policy.action_space, spaces.Discrete) else _gaussian
    )
    estimates: dict[Tensor, DiagonalFisher | KroneckerFisher] = {}
    for head, distribution in ((_Actor(policy), actor_distribution), (_Critic(policy), _unit_gaussian)):
        params = dict(head.named_parameters())
        covered: set[str] = set()
        if form == "kfac":
            for name, block in fisher(
                head, obs, kind="true", form="kfac", distribution=distribution, num_samples=num_samples
            ).items():
                layer = head.get_submodule(name)
                covered.update(n for n, p in params.items() if any(p is q for q in layer.parameters()))
                previous = estimates.get(layer.weight)
                if isinstance(previous, KroneckerFisher):  # a layer both heads use: G adds, A is the same
                    block = KroneckerFisher(block.input_factor, previous.output_factor + block.output_factor)
                estimates[layer.weight] = block
        if len(covered) < len(params):
            diagonal = fisher(
                head, obs, kind="true", form="diagonal", distribution=distribution, num_samples=num_samples
            )
            for name, block in diagonal.items():
                if name in covered:
                    continue
                previous = estimates.get(params[name])
                estimates[params[name]] = (
                    block if previous is None else DiagonalFisher(previous.diagonal + block.diagonal)
                )
    return estimates
