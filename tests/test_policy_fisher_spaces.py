"""lagrl.agents.policy_fisher on every action and observation space SB3's PPO and A2C support.

Each estimate is checked against a computation that shares no code with it: closed forms of the
output factor ``G`` of the action layer and of the Gaussians' ``log_std`` Fisher; the K-FAC input
factors ``A`` of every ``nn.Linear`` from SB3's own forward pass; and the diagonal Fisher against a
Monte Carlo estimate from SB3's own sampling (``get_actions``: gSDE's exploration matrices and tanh
squash included) and log-probabilities, differentiated by autograd. The agents then train a few
updates with the Fisher presets on each space. Policies are tiny and runs a few steps.
"""

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from lagrl.agents import LagrangianA2C, LagrangianPPO
from lagrl.agents.policy_fisher import check_policy, policy_fisher, rollout_observations
from lagrl.fisher import DiagonalFisher, KroneckerFisher

Observations = Tensor | dict[str, Tensor]


class RandomEnv(gymnasium.Env):
    """Observations drawn from ``observation_space``, Gaussian rewards, episodes of 8 steps."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.steps += 1
        return self.observation_space.sample(), float(self.np_random.normal()), False, self.steps >= 8, {}


def vector(dim: int = 3) -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (dim,), dtype=np.float32)


MIXED = spaces.Dict(
    {
        "box": vector(),
        "discrete": spaces.Discrete(3),
        "multi": spaces.MultiDiscrete([2, 3]),
        "bits": spaces.MultiBinary(2),
    }
)
MLP = dict(net_arch=[8])
CNN = dict(net_arch=[8], features_extractor_kwargs=dict(features_dim=16))
MULTI = dict(net_arch=[8], features_extractor_kwargs=dict(cnn_output_dim=16))

# name: (environment, policy, policy_kwargs, algorithm kwargs)
CASES: dict[str, tuple[Callable[[], gymnasium.Env], str, dict, dict]] = {
    "discrete": (lambda: IdentityEnv(4, ep_length=8), "MlpPolicy", MLP, {}),
    "box": (lambda: IdentityEnvBox(ep_length=8), "MlpPolicy", MLP, {}),
    "multidiscrete": (lambda: IdentityEnvMultiDiscrete(3, ep_length=8), "MlpPolicy", MLP, {}),
    "multibinary": (lambda: IdentityEnvMultiBinary(3, ep_length=8), "MlpPolicy", MLP, {}),
    "gsde": (lambda: RandomEnv(vector(), vector(2)), "MlpPolicy", MLP, dict(use_sde=True)),
    "gsde-squashed": (
        lambda: RandomEnv(vector(), vector(2)),
        "MlpPolicy",
        {**MLP, "squash_output": True, "full_std": False},
        dict(use_sde=True),
    ),
    "image": (lambda: FakeImageEnv(screen_height=36, screen_width=36), "CnnPolicy", CNN, {}),
    "dict-image": (lambda: SimpleMultiObsEnv(), "MultiInputPolicy", MULTI, {}),
    "dict-mixed": (lambda: RandomEnv(MIXED, vector(2)), "MultiInputPolicy", MLP, {}),
}
IMAGE_CASES = ("image", "dict-image")
# share_features_extractor only matters where the extractor has parameters (the CNNs).
LAYOUTS = [(case, True) for case in CASES] + [(case, False) for case in IMAGE_CASES]
LAYOUT_IDS = [f"{case}-{'shared' if share else 'separate'}" for case, share in LAYOUTS]


def build(agent: type, case: str, share: bool, **settings: Any) -> Any:
    """``agent`` (SB3's or lagrl's) on the case's env and policy, 8-step rollouts, CPU."""
    env, policy, policy_kwargs, kwargs = CASES[case]
    policy_kwargs = {**policy_kwargs, "share_features_extractor": share}
    return agent(policy, env(), n_steps=8, device="cpu", policy_kwargs=policy_kwargs, **settings, **kwargs)


def sb3_model(case: str, share: bool = True, seed: int = 0) -> PPO:
    """SB3's own PPO on the case's spaces after one rollout of 8 steps (and its update)."""
    return build(PPO, case, share, batch_size=8, n_epochs=1, seed=seed).learn(8)


def rows(observations: Observations, index: slice) -> Observations:
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def repeat(observations: Observations, times: int) -> Observations:
    if isinstance(observations, dict):
        return {key: repeat(value, times) for key, value in observations.items()}
    return observations.repeat(times, *[1] * (observations.ndim - 1))


def count(observations: Observations) -> int:
    return len(next(iter(observations.values())) if isinstance(observations, dict) else observations)


def sb3_diagonal_fisher(policy: ActorCriticPolicy, observations: Observations, samples: int) -> dict[str, Tensor]:
    """``E_s[E_a (∂θ log π(a|s))² + (∂θ V(s))²]`` from SB3's own distribution, per parameter name.

    Actor: ``samples`` draws per observation from SB3's ``get_actions`` (gSDE: one exploration matrix
    per draw, so the draws are independent) and SB3's ``log_prob``, one gradient per draw by a batched
    backward. Critic: ``E_y (∂θ log N(y; V, 1))² = (∂θ V)²`` exactly.
    """
    params = dict(policy.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(count(observations)):
        observation = rows(observations, slice(i, i + 1))
        with torch.no_grad():
            if policy.use_sde:
                policy.reset_noise(samples)
            actions = policy.get_distribution(repeat(observation, samples)).get_actions()
        log_prob = policy.get_distribution(observation).log_prob(actions)  # (samples,): one state, broadcast
        actor = torch.autograd.grad(
            log_prob, list(params.values()), torch.eye(samples), is_grads_batched=True, allow_unused=True
        )
        critic = torch.autograd.grad(policy.predict_values(observation).sum(), list(params.values()), allow_unused=True)
        for name, a, c in zip(params, actor, critic):
            if a is not None:
                total[name] += a.square().mean(0) / count(observations)
            if c is not None:
                total[name] += c.square() / count(observations)
    return total


def sb3_input_factors(policy: ActorCriticPolicy, observations: Observations) -> dict[nn.Linear, Tensor]:
    """``A = E[a aᵀ]`` of every ``nn.Linear``, ``a`` its input in SB3's ``evaluate_actions`` (and a 1 for a bias)."""
    inputs: dict[nn.Linear, Tensor] = {}

    def record(layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        inputs[layer] = args[0]

    with torch.no_grad():
        actions = policy.get_distribution(observations).get_actions()
        handles = [m.register_forward_hook(record) for m in policy.modules() if isinstance(m, nn.Linear)]
        policy.evaluate_actions(observations, actions)
    for handle in handles:
        handle.remove()
    factors = {}
    for layer, x in inputs.items():
        a = torch.cat([x, torch.ones(len(x), 1)], dim=1) if layer.bias is not None else x
        factors[layer] = a.T @ a / len(a)
    return factors


def relative_error(got: Tensor, want: Tensor) -> float:
    return float((got - want).norm() / want.norm())


# ----------------------------------------------------------------------------- every space and layout


@pytest.mark.parametrize("case, share", LAYOUTS, ids=LAYOUT_IDS)
def test_kfac_layout_and_input_factors(case, share):
    """A K-FAC block per nn.Linear, ``A`` over the inputs SB3 feeds it; a diagonal for every other parameter."""
    torch.manual_seed(0)
    model = sb3_model(case, share)
    policy, observations = model.policy, rollout_observations(model.rollout_buffer, "cpu")
    estimate = policy_fisher(policy, observations, form="kfac")
    linears = [m for m in policy.modules() if isinstance(m, nn.Linear)]
    weights, biases = {id(m.weight) for m in linears}, {id(m.bias) for m in linears}
    assert {id(p) for p in estimate} == {id(p) for p in policy.parameters() if id(p) not in biases}
    for layer, expected in sb3_input_factors(policy, observations).items():
        block = estimate[layer.weight]
        assert isinstance(block, KroneckerFisher)
        assert torch.allclose(block.input_factor, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert bool(torch.isfinite(block.output_factor).all())
    others = [p for p in policy.parameters() if id(p) not in weights | biases]
    assert all(isinstance(estimate[p], DiagonalFisher) and estimate[p].diagonal.shape == p.shape for p in others)
    if case in IMAGE_CASES:
        assert any(p.ndim == 4 for p in others)  # the convolutions get the diagonal Fisher


@pytest.mark.parametrize("case, share", LAYOUTS, ids=LAYOUT_IDS)
def test_diagonal_fisher_matches_sb3_monte_carlo(case, share):
    """The diagonal true Fisher of every parameter against SB3's own sampling and log-probabilities.

    Both sides are Monte Carlo estimates on the same 4 observations, each parameter's diagonal agreeing
    within 15 % in relative Frobenius norm (1,000 draws per observation; measured ≤ 8 %) or, for the
    CNNs, 30 % (200 and 400 draws; measured ≤ 12 %). A parameter missing the actor's or the critic's
    part, or fed other features, is off by far more. ``log_std``, whose score ``(u² − 1)`` is
    heavy-tailed, is checked against its closed form in :func:`test_gaussian_closed_forms` instead.
    """
    torch.manual_seed(0)
    model = sb3_model(case, share)
    policy = model.policy
    observations = rows(rollout_observations(model.rollout_buffer, "cpu"), slice(0, 4))
    ours, theirs, tolerance = (200, 400, 0.3) if case in IMAGE_CASES else (1000, 1000, 0.15)
    estimate = policy_fisher(policy, observations, form="diagonal", num_samples=ours)
    reference = sb3_diagonal_fisher(policy, observations, samples=theirs)
    for name, p in policy.named_parameters():
        if name != "log_std":
            assert relative_error(estimate[p].diagonal, reference[name]) < tolerance, name


# ----------------------------------------------------------------------------- closed forms per action space


def logits_policy(action_space: spaces.Space) -> tuple[ActorCriticPolicy, Tensor]:
    """A policy for ``action_space`` with O(1) logits (SB3 initialises them near 0), and 16 observations."""
    torch.manual_seed(0)
    policy = PPO("MlpPolicy", RandomEnv(vector(), action_space), seed=0, device="cpu", policy_kwargs=MLP).policy
    with torch.no_grad():
        policy.action_net.weight.normal_(0.0, 2.0)
    return policy, torch.rand(16, 3) * 2 - 1


def softmax_covariance(probs: Tensor) -> Tensor:
    """``E_s[diag π − π πᵀ]``: the Fisher of softmax logits, ``E_a[δδᵀ]`` with ``δ = onehot(a) − π``."""
    return (torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)).mean(0)


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(4), spaces.MultiDiscrete([2, 3, 4]), spaces.MultiBinary(3)],
    ids=lambda space: type(space).__name__,
)
def test_logit_output_factors(action_space):
    """``G`` of the action layer against closed forms (400 draws per state: within 5 % of its largest entry).

    Discrete: ``E_s[diag π − ππᵀ]``; MultiDiscrete: block-diagonal, one such block per sub-space (the
    sub-actions are independent); MultiBinary: ``E_s[diag p(1 − p)]``. ``A`` involves no sampling.
    """
    policy, observations = logits_policy(action_space)
    estimate = policy_fisher(policy, observations, num_samples=400)[policy.action_net.weight]
    with torch.no_grad():
        distribution = policy.get_distribution(observations).distribution
        latent = policy.mlp_extractor.forward_actor(observations)
    if isinstance(action_space, spaces.Discrete):
        expected = softmax_covariance(distribution.probs)
    elif isinstance(action_space, spaces.MultiDiscrete):
        expected = torch.block_diag(*[softmax_covariance(part.probs) for part in distribution])
    else:
        expected = torch.diag((distribution.probs * (1 - distribution.probs)).mean(0))
    assert torch.allclose(estimate.output_factor, expected, rtol=0, atol=0.05 * float(expected.abs().max()))
    inputs = torch.cat([latent, torch.ones(len(latent), 1)], dim=1)
    assert torch.allclose(estimate.input_factor, inputs.T @ inputs / len(inputs), atol=1e-4)  # float32 sums of 6,400


@pytest.mark.parametrize("case", ["box", "gsde", "gsde-squashed", "dict-mixed"])
def test_gaussian_closed_forms(case):
    """Gaussian policies, ``N(μ(s), σ(s)²)`` per action dimension (gSDE: ``σ`` depends on the latent).

    ``G`` of the mean layer is ``E_s[diag σ(s)⁻²]``, and the ``log_std`` Fisher is
    ``E_s Σ_j (∂σ_j(s)²/∂log_std)² / (2σ_j(s)⁴)`` (the Fisher of a Gaussian's variance is ``1/(2σ⁴)``;
    for a state-independent σ it is 2 per entry), with σ from SB3's own distribution and its derivative
    by autograd. The squashed gSDE policy has the same Fisher (tanh is a fixed bijection of the action).
    1,000 draws per state: ``G`` within 8 % of its largest entry, ``log_std`` within 15 %.
    """
    torch.manual_seed(0)
    model = sb3_model(case)
    policy = model.policy
    observations = rollout_observations(model.rollout_buffer, "cpu")
    estimate = policy_fisher(policy, observations, num_samples=1000)
    scale = policy.get_distribution(observations).distribution.scale  # (N, A), a function of log_std
    expected = torch.diag(scale.detach().pow(-2).mean(0))
    got = estimate[policy.action_net.weight].output_factor
    assert torch.allclose(got, expected, rtol=0, atol=0.08 * float(expected.abs().max()))
    variance = scale.square()
    log_std_fisher = torch.zeros_like(policy.log_std)
    for i in range(variance.shape[0]):
        for j in range(variance.shape[1]):
            (derivative,) = torch.autograd.grad(variance[i, j], policy.log_std, retain_graph=True)
            log_std_fisher += derivative.square() / (2 * variance[i, j].detach().square()) / len(variance)
    assert relative_error(estimate[policy.log_std].diagonal, log_std_fisher) < 0.15


# ----------------------------------------------------------------------------- the agents on every space


def flat(model) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.policy.parameters()])


AGENTS = [(LagrangianPPO, "natural", dict(batch_size=8, n_epochs=2)), (LagrangianA2C, "fisher-sqrt", {})]


@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("agent, preset, settings", AGENTS, ids=["ppo-natural", "a2c-fisher-sqrt"])
@pytest.mark.parametrize("case", list(CASES))
def test_agents_train_with_the_true_fisher(case, agent, preset, settings, share):
    """Two updates of 8 steps: the parameters moved and are finite."""
    model = build(agent, case, share, seed=0, preconditioner=preset, **settings)
    before = flat(model).clone()
    model.learn(16)
    after = flat(model)
    assert model.num_updates == 2
    assert bool(torch.isfinite(after).all()) and not torch.equal(after, before)


# ----------------------------------------------------------------------------- errors


def test_dict_observations_must_be_a_dict():
    model = sb3_model("dict-mixed")
    observations = rollout_observations(model.rollout_buffer, "cpu")
    assert isinstance(observations, dict) and observations["box"].shape == (8, 3)
    with pytest.raises(TypeError, match="must be a dict of tensors.*rollout_observations"):
        policy_fisher(model.policy, observations["box"])


def test_unsupported_policies_are_named():
    model = sb3_model("box")
    with pytest.raises(TypeError, match="needs an SB3 ActorCriticPolicy, not Linear"):
        check_policy(nn.Linear(2, 2))
    model.policy.action_dist = type("BetaDistribution", (), {})()  # a custom policy's own distribution
    with pytest.raises(ValueError, match="not BetaDistribution.*preconditioner='adam'"):
        check_policy(model.policy)
