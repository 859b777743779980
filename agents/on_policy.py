"""``LagrangianPPO`` and ``LagrangianA2C``: SB3's PPO and A2C with a Learning-Lagrangian policy update.

They override as little as possible: ``__init__`` puts the optimizer of the chosen ``preconditioner``
into ``policy_kwargs`` (SB3 builds it), ``_setup_model`` attaches K-FAC to the policy, and ``train``
refreshes the true policy Fisher before SB3's own ``train`` (the ρ-flow ``θ̇ = −F^{-ρ} g`` with ``F``
the Fisher of π, THEORY §5) and reports the update to the trajectory callback after it. Rollouts,
losses, schedules, callbacks, logging and ``save``/``load`` (the optimizer state, Fisher estimate
included, travels in the zip as ``policy.optimizer``) are SB3's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import Tensor
from torch.nn import functional as F

from lagrl.agents.policy_fisher import check_policy, policy_fisher
from lagrl.agents.preconditioners import PreconditionerConfig, policy_optimizer, resolve
from lagrl.agents.trajectory import TrajectoryMixin, optimizer_metric
from lagrl.optim import NonFiniteGradientError


class _LagrangianOnPolicy(TrajectoryMixin):
    """The shared overrides of :class:`LagrangianPPO` and :class:`LagrangianA2C`."""

    preconditioner: str | PreconditionerConfig
    num_updates: int = 0

    def _configure(self, policy: Any, preconditioner: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` for SB3 with the preconditioner's optimizer in ``policy_kwargs``.

        ``device="auto"`` (SB3's default) becomes the CPU for ``"MlpPolicy"``, as SB3 advises for MLP
        policies (it warns when one runs on a GPU); pass ``device="cuda"`` to insist.
        """
        self.preconditioner = resolve(preconditioner)
        if policy == "MlpPolicy" and kwargs.get("device", "auto") == "auto":
            kwargs = {**kwargs, "device": "cpu"}
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        if "optimizer_class" in policy_kwargs or "optimizer_kwargs" in policy_kwargs:
            raise ValueError(
                "lagrl agents choose the optimizer with preconditioner=...; drop optimizer_class/optimizer_kwargs "
                "from policy_kwargs (or use SB3's PPO/A2C directly)"
            )
        optimizer_class, optimizer_kwargs = policy_optimizer(self.preconditioner, kwargs.get("rms_prop_eps", 1e-5))
        policy_kwargs.update(optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs)
        return {**kwargs, "policy_kwargs": policy_kwargs}

    @property
    def _config(self) -> PreconditionerConfig | None:
        return self.preconditioner if isinstance(self.preconditioner, PreconditionerConfig) else None

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        config = self._config
        if config is not None and config.fisher_kind == "true":
            check_policy(self.policy)
        if config is not None and config.fisher == "kfac":
            self.policy.optimizer.attach(self.policy)

    def train(self) -> None:
        """Refresh the true Fisher (every ``refresh_interval`` updates), then SB3's update."""
        config = self._config
        if config is not None and config.fisher_kind == "true" and self.num_updates % config.refresh_interval == 0:
            buffer = self.rollout_buffer
            observations = torch.as_tensor(buffer.observations.reshape((-1,) + buffer.obs_shape), device=self.device)
            self.policy.set_training_mode(False)
            self.policy.optimizer.set_fisher(
                policy_fisher(self.policy, observations, config.fisher, config.fisher_samples)
            )
        try:
            super().train()  # type: ignore[misc]
        except NonFiniteGradientError as error:
            raise NonFiniteGradientError(
                f"update {self.num_updates + 1} of {type(self).__name__} (after {self.num_timesteps} environment "
                f"steps) stopped: {error}"
            ) from error
        self.num_updates += 1
        if self.trajectory_sink is not None:
            potential, gradients = self._potential()
            self._emit_trajectory(potential, gradients, optimizer_metric(self.policy.optimizer, gradients))

    def _potential(self) -> tuple[float, dict[Tensor, Tensor]]:
        """The update's loss on its whole rollout at the new parameters, and its gradient."""
        buffer = self.rollout_buffer
        data = buffer._get_samples(np.arange(buffer.buffer_size * buffer.n_envs))  # flattened by train()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy.set_training_mode(False)
        loss = self._loss(data)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.item(), {p: g for p, g in zip(params, grads) if g is not None}

    def _loss(self, data: RolloutBufferSamples) -> Tensor:
        raise NotImplementedError


def _evaluate(model: OnPolicyAlgorithm, data: RolloutBufferSamples) -> tuple[Tensor, Tensor, Tensor | None]:
    """Values, log-probabilities and entropies of the batch's actions under the current policy (as SB3's train)."""
    actions = data.actions.long().flatten() if isinstance(model.action_space, spaces.Discrete) else data.actions
    values, log_prob, entropy = model.policy.evaluate_actions(data.observations, actions)
    return values.flatten(), log_prob, entropy


def _entropy_loss(log_prob: Tensor, entropy: Tensor | None) -> Tensor:
    """SB3's entropy term: ``−mean(H)``, or ``mean(log π)`` where the distribution has no closed-form entropy."""
    return -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)


class LagrangianPPO(_LagrangianOnPolicy, PPO):
    """SB3 ``PPO`` whose policy update is chosen by ``preconditioner`` (see :mod:`agents.preconditioners`).

    ``preconditioner="adam"`` (default) is numerically SB3's PPO; every other argument is PPO's.
    """

    def __init__(self, policy: Any, env: Any, *args: Any, preconditioner: Any = "adam", **kwargs: Any) -> None:
        super().__init__(policy, env, *args, **self._configure(policy, preconditioner, kwargs))

    def _loss(self, data: RolloutBufferSamples) -> Tensor:
        """PPO's loss (clipped surrogate, value and entropy terms) on one batch, as SB3 computes it."""
        values, log_prob, entropy = _evaluate(self, data)
        advantages = data.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        clip_range = self.clip_range(self._current_progress_remaining)
        ratio = torch.exp(log_prob - data.old_log_prob)
        policy_loss = -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
        if self.clip_range_vf is not None:
            clip_vf = self.clip_range_vf(self._current_progress_remaining)
            values = data.old_values + torch.clamp(values - data.old_values, -clip_vf, clip_vf)
        value_loss = F.mse_loss(data.returns, values)
        return policy_loss.mean() + self.ent_coef * _entropy_loss(log_prob, entropy) + self.vf_coef * value_loss


class LagrangianA2C(_LagrangianOnPolicy, A2C):
    """SB3 ``A2C`` whose policy update is chosen by ``preconditioner`` (see :mod:`agents.preconditioners`).

    ``preconditioner="rmsprop"`` (default) is numerically SB3's A2C; every other argument is A2C's.
    """

    def __init__(self, policy: Any, env: Any, *args: Any, preconditioner: Any = "rmsprop", **kwargs: Any) -> None:
        super().__init__(policy, env, *args, **self._configure(policy, preconditioner, kwargs))

    def _loss(self, data: RolloutBufferSamples) -> Tensor:
        """A2C's loss (policy gradient, value and entropy terms) on the rollout, as SB3 computes it."""
        values, log_prob, entropy = _evaluate(self, data)
        advantages = data.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(data.returns, values)
        return policy_loss + self.ent_coef * _entropy_loss(log_prob, entropy) + self.vf_coef * value_loss
