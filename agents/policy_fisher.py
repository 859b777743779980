"""The true Fisher of an SB3 actor-critic policy, for ``fisher_source="external"`` optimizers.

The agent's predictive model is ``p(a, y | s) = π(a|s) · N(y; V(s), 1)`` (our reading: the paper's
Fisher is for one likelihood; an actor-critic has two heads, and a unit-variance Gaussian makes the
critic's squared error a log-likelihood). Its true Fisher draws ``a ~ π(·|s)`` and ``y ~ N(V(s), 1)``
(THEORY §5) and, since the two scores have zero mean and are sampled independently, is the sum of the
actor's and the critic's Fishers; parameters the heads share get the sum.

``π(·|s)`` is SB3's own action distribution, built from the latent as
``ActorCriticPolicy._get_action_dist_from_latent`` builds it, and the Fisher is that of the torch
distribution SB3 evaluates ``log π`` with (its ``.distribution``), actions sampled i.i.d. per state:

===================  ===========================================================================
Discrete             ``Categorical(logits)``
MultiDiscrete        one ``Categorical`` per sub-space, independent (``log π = Σ_k log π_k``)
MultiBinary          ``Bernoulli(logits)``, independent per bit
Box                  ``Normal(μ(s), exp(log_std))``, independent per dimension
Box, ``use_sde``     gSDE: ``Normal(μ(s), σ(s))``, ``σ_j(s)² = Σ_i z_i(s)² exp(log_std_ij)² + ε`` with
                     ``z`` the policy latent, detached as SB3 detaches it (``learn_features=False``),
                     so the latent's weights get the mean's Fisher only; ``squash_output=True`` is a
                     fixed bijection ``tanh`` of the action, which leaves the Fisher unchanged, so
                     the Gaussian's is used. ``log_std`` (a matrix, or a column with
                     ``full_std=False``) gets the diagonal Fisher.
===================  ===========================================================================

Observations are SB3's: raw as stored in the rollout buffer, preprocessed by ``preprocess_obs``
(one-hot for Discrete and MultiDiscrete, ``/255`` for images, per key for Dict spaces) and passed to
the policy's features extractors (``pi_features_extractor`` for the actor, ``vf_features_extractor``
for the critic: the same module when ``share_features_extractor=True``). Dict observations are a dict
of tensors (:func:`rollout_observations` builds it from a ``DictRolloutBuffer``).

Cost: K-FAC takes one forward and backward pass of the batch per head; the diagonal Fisher of the
parameters K-FAC does not cover (``log_std``, convolutions) takes per-sample gradients under
``torch.func.vmap``, memory ``N ×`` their size (for NatureCNN on CPU about 6–25× a plain backward).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.distributions import Distribution as SB3Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from lagrl.fisher import DiagonalFisher, KroneckerFisher, fisher

Observations = Tensor | dict[str, Tensor]
SUPPORTED_DISTRIBUTIONS = (
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
)


def rollout_observations(buffer: RolloutBuffer | DictRolloutBuffer, device: torch.device | str) -> Observations:
    """A rollout buffer's observations as ``(N, *obs_shape)`` tensors, ``N = buffer_size · n_envs``.

    A ``DictRolloutBuffer`` gives a dict of them, one per key of the Dict observation space: what
    :func:`policy_fisher` takes.
    """
    if isinstance(buffer.observations, dict):
        return {
            key: torch.as_tensor(value.reshape((-1, *buffer.obs_shape[key])), device=device)
            for key, value in buffer.observations.items()
        }
    return torch.as_tensor(buffer.observations.reshape((-1, *buffer.obs_shape)), device=device)


class _Packing:
    """Dict observations ``{key: (N, *shape_k)}`` ↔ one ``(N, Σ_k |shape_k|)`` tensor.

    :func:`lagrl.fisher.fisher` batches one tensor (it repeats, splits and vmaps its rows); the heads
    unpack the rows again before the features extractor.
    """

    def __init__(self, observations: dict[str, Tensor]) -> None:
        self.shapes = {key: value.shape[1:] for key, value in observations.items()}

    def pack(self, observations: dict[str, Tensor]) -> Tensor:
        return torch.cat([observations[key].flatten(1) for key in self.shapes], dim=1)

    def unpack(self, rows: Tensor) -> dict[str, Tensor]:
        parts = rows.split([shape.numel() for shape in self.shapes.values()], dim=1)
        return {key: part.reshape(len(rows), *shape) for (key, shape), part in zip(self.shapes.items(), parts)}


def _identity(observations: Tensor) -> Tensor:
    return observations


class _Product(Distribution):
    """Independent categoricals of different sizes (MultiDiscrete): ``π(a|s) = Π_k π_k(a_k|s)``.

    Samples stack the sub-actions on the last dimension; ``log_prob`` is SB3's
    ``MultiCategoricalDistribution.log_prob`` (the sum of the sub-spaces' log-probabilities).
    """

    arg_constraints: dict = {}

    def __init__(self, distribution: MultiCategoricalDistribution) -> None:
        self.sb3 = distribution
        parts = distribution.distribution
        super().__init__(parts[0].batch_shape, torch.Size([len(parts)]), validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.stack([part.sample(sample_shape) for part in self.sb3.distribution], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.sb3.log_prob(value)


def _torch_distribution(distribution: SB3Distribution) -> Distribution:
    """The torch distribution SB3 evaluates ``log π`` with (gSDE: before the optional ``tanh`` squash)."""
    if isinstance(distribution, MultiCategoricalDistribution):
        return _Product(distribution)
    return distribution.distribution


class _Actor(nn.Module):
    """Preprocessed observations → ``π(·|s)``, SB3's action distribution of the policy latent."""

    def __init__(self, policy: ActorCriticPolicy, unpack: Callable[[Tensor], Observations]) -> None:
        super().__init__()
        self.unpack = unpack
        self.features = policy.pi_features_extractor
        self.latent = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net
        self.log_std = getattr(policy, "log_std", None)
        # A copy: proba_distribution stores its arguments on the object, which must not leak into the policy's.
        self.action_dist = copy.copy(policy.action_dist)

    def forward(self, observations: Tensor) -> Distribution:
        latent = self.latent(self.features(self.unpack(observations)))
        return _torch_distribution(self._sb3_distribution(latent))

    def _sb3_distribution(self, latent: Tensor) -> SB3Distribution:
        """As ``ActorCriticPolicy._get_action_dist_from_latent``, with this module's (functional) parameters."""
        mean = self.action_net(latent)
        if isinstance(self.action_dist, StateDependentNoiseDistribution):
            return self.action_dist.proba_distribution(mean, self.log_std, latent)
        if isinstance(self.action_dist, DiagGaussianDistribution):
            return self.action_dist.proba_distribution(mean, self.log_std)
        return self.action_dist.proba_distribution(mean)


class _Critic(nn.Module):
    """Preprocessed observations → ``V(s)``, shape ``(N, 1)``."""

    def __init__(self, policy: ActorCriticPolicy, unpack: Callable[[Tensor], Observations]) -> None:
        super().__init__()
        self.unpack = unpack
        self.features = policy.vf_features_extractor
        self.latent = policy.mlp_extractor.value_net
        self.value_net = policy.value_net

    def forward(self, observations: Tensor) -> Tensor:
        return self.value_net(self.latent(self.features(self.unpack(observations))))


def _unit_gaussian(value: Tensor) -> Distribution:
    return Normal(value, torch.ones_like(value))


def check_policy(policy: ActorCriticPolicy) -> None:
    """Raise unless the true Fisher of this policy can be estimated (an SB3 actor-critic with SB3's distributions)."""
    if not isinstance(policy, ActorCriticPolicy):
        raise TypeError(
            f"the true policy Fisher needs an SB3 ActorCriticPolicy, not {type(policy).__name__}; "
            "use preconditioner='adam' or a PreconditionerConfig(fisher_kind='gradients')"
        )
    if not isinstance(policy.action_dist, SUPPORTED_DISTRIBUTIONS):
        raise ValueError(
            f"the true policy Fisher supports SB3's action distributions "
            f"({', '.join(d.__name__ for d in SUPPORTED_DISTRIBUTIONS)}), not {type(policy.action_dist).__name__}; "
            "use preconditioner='adam' or a PreconditionerConfig(fisher_kind='gradients')"
        )


def _prepare(policy: ActorCriticPolicy, observations: Observations) -> tuple[Tensor, Callable[[Tensor], Observations]]:
    """Preprocessed observations as one batch tensor, and the map from its rows back to what the extractors take."""
    if isinstance(policy.observation_space, spaces.Dict) != isinstance(observations, Mapping):
        raise TypeError(
            f"observations for a {type(policy.observation_space).__name__} observation space must be "
            f"{'a dict of tensors' if isinstance(policy.observation_space, spaces.Dict) else 'a tensor'}, "
            f"got {type(observations).__name__}; rollout_observations(model.rollout_buffer, device) builds them"
        )
    preprocessed = preprocess_obs(observations, policy.observation_space, normalize_images=policy.normalize_images)
    if not isinstance(preprocessed, dict):
        return preprocessed, _identity
    packing = _Packing(preprocessed)
    return packing.pack(preprocessed), packing.unpack


def _head_fisher(
    head: nn.Module,
    observations: Tensor,
    form: str,
    distribution: Callable[[Tensor], Distribution] | None,
    num_samples: int,
) -> dict[Tensor, DiagonalFisher | KroneckerFisher]:
    """One head's true Fisher: K-FAC per ``nn.Linear`` (``form="kfac"``), diagonal for the other parameters."""
    params = {name: p for name, p in head.named_parameters() if p.requires_grad}
    estimates: dict[Tensor, DiagonalFisher | KroneckerFisher] = {}
    covered: set[Tensor] = set()
    if form == "kfac":
        blocks = fisher(head, observations, form="kfac", distribution=distribution, num_samples=num_samples)
        for name, block in blocks.items():
            layer = head.get_submodule(name)
            estimates[layer.weight] = block
            covered.update(layer.parameters())
    rest = [name for name, p in params.items() if p not in covered]
    if rest:
        diagonal = fisher(
            head, observations, form="diagonal", distribution=distribution, num_samples=num_samples, params=rest
        )
        estimates.update((params[name], block) for name, block in diagonal.items())
    return estimates


def _add(
    previous: DiagonalFisher | KroneckerFisher | None, block: DiagonalFisher | KroneckerFisher
) -> DiagonalFisher | KroneckerFisher:
    """The Fisher of a parameter both heads use: ``F_π + F_V``; K-FAC ``A ⊗ G_π + A ⊗ G_V = A ⊗ (G_π + G_V)``.

    ``A`` is the same for both heads: the layer sees the same observations.
    """
    if previous is None:
        return block
    if isinstance(block, KroneckerFisher):
        return KroneckerFisher(block.input_factor, previous.output_factor + block.output_factor)
    return DiagonalFisher(previous.diagonal + block.diagonal)


@torch.no_grad()
def policy_fisher(
    policy: ActorCriticPolicy, observations: Observations, form: str = "kfac", num_samples: int = 1
) -> dict[Tensor, DiagonalFisher | KroneckerFisher]:
    """True Fisher ``F = E_s[E_{a~π} ∇log π ∇log πᵀ + E_{y~N(V,1)} ∇log N ∇log Nᵀ]`` of actor and critic.

    ``observations``: raw, as stored in SB3's rollout buffer, ``(N, *obs_shape)``; a dict of such
    tensors for a Dict observation space (:func:`rollout_observations`). ``num_samples`` actions and
    value targets are drawn per observation.

    ``form="kfac"``: a ``KroneckerFisher`` per ``nn.Linear`` (keyed by its weight) and a
    ``DiagonalFisher`` for every other parameter (``log_std``, convolutions); ``form="diagonal"``: a
    ``DiagonalFisher`` per parameter. Keys are the policy's parameters, as ``set_fisher`` wants them.
    """
    check_policy(policy)
    batch, unpack = _prepare(policy, observations)
    estimates: dict[Tensor, DiagonalFisher | KroneckerFisher] = {}
    for head, distribution in ((_Actor(policy, unpack), None), (_Critic(policy, unpack), _unit_gaussian)):
        for param, block in _head_fisher(head, batch, form, distribution, num_samples).items():
            estimates[param] = _add(estimates.get(param), block)
    return estimates
