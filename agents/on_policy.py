"""``LagrangianPPO`` and ``LagrangianA2C``: SB3's PPO and A2C with a Learning-Lagrangian policy update.

They override as little as possible: ``__init__`` puts the optimizer of the chosen ``preconditioner``
into ``policy_kwargs`` (SB3 builds it), ``_setup_model`` attaches K-FAC to the policy, and ``train``
refreshes the true policy Fisher before SB3's own ``train`` (the ρ-flow ``θ̇ = −F^{-ρ} g`` with ``F``
the Fisher of π, THEORY §5) and reports the update to the trajectory callback after it. Rollouts,
losses, schedules, callbacks, logging and ``save``/``load`` (the optimizer state, Fisher estimate
included, travels in the zip as ``policy.optimizer``) are SB3's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import Tensor
from torch.nn import functional as F

from lagrl.agents.policy_fisher import check_policy, policy_fisher, rollout_observations
from lagrl.agents.preconditioners import PreconditionerConfig, policy_optimizer, resolve
from lagrl.agents.trajectory import TrajectoryMixin, optimizer_metric
from lagrl.fisher import DiagonalFisher, KroneckerFisher
from lagrl.optim import NonFiniteGradientError
from lagrl.step_size import RULE_SPLITS, KLController, signal_fraction, step_budget


def head_groups(policy: ActorCriticPolicy) -> list[dict[str, Any]]:
    """The policy's parameters as param groups: the actor's (with any layer the heads share), then the critic's own."""
    critic_modules = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        critic_modules.append(policy.vf_features_extractor)
    critic = {id(p) for module in critic_modules for p in module.parameters()}
    params = list(policy.parameters())
    groups = [[p for p in params if id(p) not in critic], [p for p in params if id(p) in critic]]
    return [{"params": group} for group in groups if group]


class _LagrangianOnPolicy(TrajectoryMixin):
    """The shared overrides of :class:`LagrangianPPO` and :class:`LagrangianA2C`."""

    preconditioner: str | PreconditionerConfig
    sb3_optimizer: bool = False  # policy_kwargs name the optimizer (with the "adam" or "rmsprop" preset)
    default_energy_budget: tuple[float, float]  # (actor, critic) energy per update where PreconditionerConfig has None
    num_updates: int = 0
    kl_controller: KLController | None = None

    def _configure(self, policy: Any, preconditioner: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` for SB3; the optimizer of ``preconditioner`` replaces SB3's in :meth:`_setup_model`.

        ``policy_kwargs`` stay the user's (so ``load(path, policy_kwargs=...)`` compares like with like).
        Where they name an optimizer (``optimizer_class`` / ``optimizer_kwargs``) with the ``"adam"`` or
        ``"rmsprop"`` preset, SB3 builds that optimizer as it would without lagrl.
        ``device="auto"`` (SB3's default) becomes the CPU for ``"MlpPolicy"``, as SB3 advises for MLP
        policies (it warns when one runs on a GPU); pass ``device="cuda"`` to insist.
        """
        self.preconditioner = resolve(preconditioner)
        self.rms_prop_eps = kwargs.get("rms_prop_eps", 1e-5)
        if policy == "MlpPolicy" and kwargs.get("device", "auto") == "auto":
            kwargs = {**kwargs, "device": "cpu"}
        policy_kwargs = kwargs.get("policy_kwargs") or {}
        self.sb3_optimizer = "optimizer_class" in policy_kwargs or "optimizer_kwargs" in policy_kwargs
        if self.sb3_optimizer and self._config is not None:
            raise ValueError(
                "the Fisher presets choose their optimizer themselves: drop optimizer_class/optimizer_kwargs from "
                "policy_kwargs, or keep them with preconditioner='adam' or 'rmsprop' (SB3 then builds that optimizer)"
            )
        return kwargs

    @property
    def _config(self) -> PreconditionerConfig | None:
        return self.preconditioner if isinstance(self.preconditioner, PreconditionerConfig) else None

    def _setup_model(self) -> None:
        """SB3's model, then the preset's optimizer in place of SB3's (no step was taken with SB3's)."""
        super()._setup_model()  # type: ignore[misc]
        if self.sb3_optimizer:
            return  # policy_kwargs name the optimizer: SB3's choice, as SB3 makes it
        config = self._config
        if config is not None and config.fisher_kind == "true":
            check_policy(self.policy)
        optimizer_class, optimizer_kwargs = policy_optimizer(self.preconditioner, self.rms_prop_eps)
        # Fisher presets: actor and critic as two param groups, so the step rule sizes each head's step.
        params = self.policy.parameters() if config is None else head_groups(self.policy)
        if config is not None:
            for group, budgets in zip(params, self._head_budgets(config)):
                group.update(budgets)
        self.policy.optimizer_class, self.policy.optimizer_kwargs = optimizer_class, optimizer_kwargs
        self.policy.optimizer = optimizer_class(params, lr=self.lr_schedule(1), **optimizer_kwargs)
        if config is not None and config.fisher == "kfac":
            self.policy.optimizer.attach(self.policy)
        if config is not None and config.kl_target is not None and self.kl_controller is None:
            self.kl_controller = KLController(config.kl_target)

    def _head_budgets(
        self, config: PreconditionerConfig, scales: tuple[float, float] = (1.0, 1.0)
    ) -> list[dict[str, float]]:
        """Each head's ``energy_budget`` per step (and ``trust_budget`` per update): its update budget times its scale.

        energy: K steps on one rollout move coherently, δ/K² each keeps the update's energy at δ; trust-region: the
        update's displacement is held in the ball of energy δ, δ/K per step lets K steps of independent directions
        fill it (coherent ones reach it after √K, then slide along it); budget_split (both heads) and
        critic_budget_split (the critic's) override.
        """
        actor, critic = config.energy_budget, config.critic_energy_budget
        budgets = (
            self.default_energy_budget[0] if actor is None else actor,
            self.default_energy_budget[1] if critic is None else critic,
        )
        epochs, minibatches = self._update_shape()
        split = config.budget_split or RULE_SPLITS.get(config.step_rule, "coherent")
        heads = []
        for budget, head_split, scale in zip(budgets, (split, config.critic_budget_split or split), scales):
            head = {"energy_budget": step_budget(budget * scale, epochs, minibatches, head_split)}
            if config.step_rule == "trust-region":
                head["trust_budget"] = budget * scale
            heads.append(head)
        return heads

    def _scale_budgets_by_signal(self, config: PreconditionerConfig) -> None:
        """``signal_groups``: this update's budgets times each head's signal fraction ``φ`` (logged)."""
        groups = self.policy.optimizer.param_groups
        fractions = self._signal_fractions(config.signal_groups, [group["params"] for group in groups])
        for group, budgets in zip(groups, self._head_budgets(config, (*fractions, 1.0)[:2])):
            group.update(budgets)
        for name, fraction in zip(("train/signal_fraction", "train/critic_signal_fraction"), fractions):
            self.logger.record(name, fraction)

    def _signal_fractions(self, groups: int, heads: list[list[Tensor]]) -> list[float]:
        """Each head's :func:`~lagrl.step_size.signal_fraction` over the loss gradients of disjoint random groups of
        ``⌈N/groups⌉`` of the rollout's ``N`` samples (fewer groups where that does not divide ``N``), at the parameters
        the update starts from."""
        size = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
        self.policy.set_training_mode(True)
        params = [p for head in heads for p in head]
        gradients: list[list[Tensor]] = [[] for _ in heads]
        for data in self.rollout_buffer.get(math.ceil(size / min(groups, size))):
            grads = torch.autograd.grad(self._loss(data), params, allow_unused=True)
            by_param = {p: torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)}
            for head, flat in zip(heads, gradients):
                flat.append(torch.cat([by_param[p].reshape(-1) for p in head]))
        return [signal_fraction(flat) for flat in gradients]

    def _update_learning_rate(self, optimizers: Any) -> None:
        """SB3's schedule, times the KL controller's scale on the actor's param group where there is one."""
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        if self.kl_controller is not None:
            self.policy.optimizer.param_groups[0]["lr"] *= self.kl_controller.scale

    def train(self) -> None:
        """Refresh the true Fisher (every ``refresh_interval`` updates), then SB3's update."""
        config = self._config
        if config is not None:
            self.policy.optimizer.start_update()
        if config is not None and config.signal_groups is not None:
            self._scale_budgets_by_signal(config)
        if config is not None and config.fisher_kind == "true" and self.num_updates % config.refresh_interval == 0:
            observations = rollout_observations(self.rollout_buffer, self.device)
            self.policy.set_training_mode(False)
            estimates = policy_fisher(self.policy, observations, config.fisher, config.fisher_samples)
            self.policy.optimizer.set_fisher(self._critic_fisher_scaled(estimates), decay=config.fisher_decay)
        try:
            super().train()  # type: ignore[misc]
        except NonFiniteGradientError as error:
            raise NonFiniteGradientError(
                f"update {self.num_updates + 1} of {type(self).__name__} (after {self.num_timesteps} environment "
                f"steps) stopped: {error}"
            ) from error
        self.num_updates += 1
        if config is not None and config.step_rule == "trust-region":
            self.logger.record("train/update_energy", self.policy.optimizer.param_groups[0]["update_energy"])
        if self.kl_controller is not None:
            kl = self._rollout_kl()
            start = self.lr_schedule(1.0)
            annealing = (self.lr_schedule(self._current_progress_remaining) / start) ** 2 if start > 0 else 0.0
            self.logger.record("train/kl_scale", self.kl_controller.update(kl, annealing))
            self.logger.record("train/rollout_kl", kl)
        if self.trajectory_sink is not None:
            potential, gradients = self._potential()
            self._emit_trajectory(potential, gradients, optimizer_metric(self.policy.optimizer, gradients))

    def _critic_fisher_scaled(self, estimates: dict[Tensor, Any]) -> dict[Tensor, Any]:
        """The critic's own blocks for ``N(y; V(s), σ²)`` instead of ``N(V(s), 1)``: divided by σ².

        ``σ²`` is the rollout's mean squared error of the value head against its returns (the
        maximum-likelihood variance; our reading), so that the critic's step, measured in its Fisher
        metric, is in units of its own error: ``½ E[(ΔV)²] / σ²``. Layers the heads share keep ``σ² = 1``.
        """
        groups = self.policy.optimizer.param_groups
        if len(groups) < 2:
            return estimates
        buffer = self.rollout_buffer
        precision = 1.0 / max(float(np.mean((buffer.returns - buffer.values) ** 2)), 1e-8)
        critic = {id(p) for p in groups[1]["params"]}
        scaled = dict(estimates)
        for param, block in estimates.items():
            if id(param) in critic:
                scaled[param] = (
                    KroneckerFisher(block.input_factor, block.output_factor * precision)
                    if isinstance(block, KroneckerFisher)
                    else DiagonalFisher(block.diagonal * precision)
                )
        return scaled

    @torch.no_grad()
    def _rollout_kl(self) -> float:
        """``KL(π_old ‖ π_new)`` on the rollout, estimated as ``E[(r − 1) − log r]``, ``r = π_new/π_old``."""
        data = self._rollout_samples()
        _, log_prob, _ = _evaluate(self, data)
        log_ratio = log_prob - data.old_log_prob
        return float(torch.mean(torch.expm1(log_ratio) - log_ratio))

    def _rollout_samples(self) -> RolloutBufferSamples:
        """The whole rollout as one batch (the buffer was flattened by ``train()``), the policy in eval mode."""
        buffer = self.rollout_buffer
        self.policy.set_training_mode(False)
        return buffer._get_samples(np.arange(buffer.buffer_size * buffer.n_envs))

    def _potential(self) -> tuple[float, dict[Tensor, Tensor]]:
        """The update's loss on its whole rollout at the new parameters, and its gradient."""
        data = self._rollout_samples()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        loss = self._loss(data)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.item(), {p: g for p, g in zip(params, grads) if g is not None}

    def _loss(self, data: RolloutBufferSamples) -> Tensor:
        raise NotImplementedError

    def _update_shape(self) -> tuple[int, int]:
        """``(N, M)``: a ``train()`` call takes ``N`` epochs of ``M`` optimizer steps."""
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

    default_energy_budget = (3e-2, 0.5)

    def __init__(self, policy: Any, env: Any, *args: Any, preconditioner: Any = "adam", **kwargs: Any) -> None:
        super().__init__(policy, env, *args, **self._configure(policy, preconditioner, kwargs))

    def _update_shape(self) -> tuple[int, int]:
        """``n_epochs`` passes over the rollout in minibatches of ``batch_size``."""
        return self.n_epochs, math.ceil(self.n_steps * self.n_envs / self.batch_size)

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

    default_energy_budget = (1e-3, 1e-3)  # ACKTR's KL clip per update, for both heads

    def __init__(self, policy: Any, env: Any, *args: Any, preconditioner: Any = "rmsprop", **kwargs: Any) -> None:
        use_rms_prop = kwargs.pop("use_rms_prop", True)
        if use_rms_prop is False and preconditioner == "rmsprop":
            preconditioner = "adam"  # SB3's A2C(use_rms_prop=False) is Adam
        kwargs = self._configure(policy, preconditioner, kwargs)
        # use_rms_prop=False keeps SB3 from writing RMSprop into policy_kwargs; the preset's optimizer replaces it.
        super().__init__(policy, env, *args, use_rms_prop=use_rms_prop and self.sb3_optimizer, **kwargs)

    def _update_shape(self) -> tuple[int, int]:
        """One step on the whole rollout."""
        return 1, 1

    def _loss(self, data: RolloutBufferSamples) -> Tensor:
        """A2C's loss (policy gradient, value and entropy terms) on the rollout, as SB3 computes it."""
        values, log_prob, entropy = _evaluate(self, data)
        advantages = data.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(data.returns, values)
        return policy_loss + self.ent_coef * _entropy_loss(log_prob, entropy) + self.vf_coef * value_loss
