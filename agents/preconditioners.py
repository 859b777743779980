"""The ``preconditioner=`` presets of lagrl's agents: which optimizer of the ρ family updates the policy.

=============  =====================================================================================
``"adam"``     ρ = ½, diagonal Fisher from the gradients (Eq. 32): :class:`~lagrl.optim.LagrangianAdam`
               with SB3's ``eps = 1e-5``, numerically SB3's default Adam.
``"rmsprop"``  ρ = ½ without first moment (Eq. 31): :class:`~lagrl.optim.LagrangianRMSprop` with SB3
               A2C's ``alpha = 0.99``, ``eps = 1e-5``.
``"fisher-sqrt"``  ρ = ½ with the *true* Fisher of the agent's predictive distribution (actions drawn
               from π; THEORY §5), K-FAC form, refreshed every update (our reading of the paper's
               postulate for policies); the energy rule with ``budget_split="epochs"``.
``"natural"``  ρ = 1, the same Fisher: a K-FAC natural gradient (the energy rule's own split).
=============  =====================================================================================

Any other setting is a :class:`PreconditionerConfig` (or a ``dict`` of its fields).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lagrl.optim import LagrangianAdam, LagrangianOptimizer, LagrangianRMSprop
from lagrl.step_size import SCALED_RULES, check_budget_split

PRESETS = ("adam", "rmsprop", "fisher-sqrt", "natural")
FISHER_KINDS = ("true", "gradients")


@dataclass(frozen=True)
class PreconditionerConfig:
    """A :class:`~lagrl.optim.LagrangianOptimizer` for the policy, ``θ ← θ − lr · F̂^{-ρ} ĝ``.

    Args:
        rho: exponent ρ ∈ [0, 1].
        damping: ε (Adam's placement for the diagonal form, ``(F + ε)^{-ρ}`` for K-FAC: see lagrl.optim).
        fisher: ``"kfac"`` (each ``nn.Linear``; other parameters diagonal) or ``"diagonal"``.
        fisher_kind: ``"true"`` — the Fisher of the agent's predictive distribution, actions sampled
            from π and value targets from ``N(V(s), 1)``, estimated on each update's observations —
            or ``"gradients"`` — the EMA of the loss gradients (Adam's estimate; K-FAC's empirical form).
        refresh_interval: re-estimate the true Fisher every this many updates (``train()`` calls).
        fisher_decay: the true Fisher is averaged over updates, ``F̂ ← decay · F̂ + (1 − decay) · F_rollout``
            (K-FAC and ACKTR keep such running averages; 0 uses each rollout's estimate alone).
        fisher_samples: sampled targets per observation for the true Fisher.
        betas: EMA coefficients of the gradient estimate (β1) and of a gradient-sourced Fisher (β2).
        step_rule: how long each step is (:mod:`lagrl.step_size`): ``"energy"`` — the kinetic energy
            ``½ ΔθᵀMΔθ`` of every optimizer step, in the step's Fisher metric, is ``energy_budget`` for
            the actor and for the critic separately (their parameters are two param groups); SB3's
            ``learning_rate`` schedule then scales the step relative to its start (its absolute
            value does not matter) — ``"graft"`` — Adam's step length at ``learning_rate``, the Fisher
            direction — ``"trust-region"`` — the whole update's displacement ``D`` held in ``½ DᵀMD ≤ δ``
            by radial projection, each of its ``K`` steps of energy ``δ/K`` — or ``"lr"`` — ``θ ← θ − lr · u``.
        energy_budget: ``δ`` of the energy-sized rules for the actor, per update (``train()`` call), split over
            the update's ``K`` optimizer steps by ``budget_split``; under ``"trust-region"`` ``δ`` is also the
            ball's energy (the agent logs the update's ``½ DᵀMD`` as ``train/update_energy``).
            ``None``: the agent's default (``LagrangianPPO``: 3e-2; ``LagrangianA2C``: 1e-3, ACKTR's KL clip).
        critic_energy_budget: the same for the critic's own parameters, whose Fisher is that of
            ``N(V(s), σ²)`` with σ² the rollout's squared value error: ``½`` is a full Gauss–Newton step
            of the critic towards its targets, smaller values a fraction ``sqrt(2δ)`` of it. ``None``: the
            agent's default (``LagrangianPPO``: ½; ``LagrangianA2C``: 1e-3, ACKTR's clip for both heads).
        budget_split: how an update's ``δ`` is split over its ``K = N·M`` steps (``N`` epochs of ``M``
            minibatches; :func:`~lagrl.step_size.step_budget`): ``"coherent"`` ``δ/K²``, ``"independent"``
            ``δ/K``, ``"epochs"`` ``δ/(M·N²)`` (an epoch's minibatches independent, the epochs coherent; ours).
            ``None``: the rule's own (``"energy"``: coherent, since steps on one rollout move together;
            ``"trust-region"``: independent). Only for the energy-sized rules. The preset ``"fisher-sqrt"`` is the
            energy rule with ``"epochs"``.
        critic_budget_split: the same for the critic's own parameters (``critic_energy_budget``), where the
            heads are to be split differently; ``None``: as ``budget_split``.
        kl_target: if set, a :class:`~lagrl.step_size.KLController` multiplies the step by a scale it
            adapts after every update (``train()`` call) to the measured KL between the rollout's
            and the new policy.
        signal_groups: if set (``G ≥ 2``), each update's energy budgets (both heads) are multiplied by the
            signal fraction ``φ`` of the head's rollout gradient (:func:`~lagrl.step_size.signal_fraction`, in
            the Euclidean norm, the energy's metric at ρ = ½; ours), estimated before the update's first step
            from the gradients of the algorithm's loss on ``G`` disjoint random groups of the rollout; the
            agent logs ``train/signal_fraction`` (actor) and ``train/critic_signal_fraction``. Only for the
            energy-sized rules.
    """

    rho: float = 0.5
    damping: float = 1e-3
    fisher: str = "kfac"
    fisher_kind: str = "true"
    refresh_interval: int = 1
    fisher_samples: int = 1
    fisher_decay: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    step_rule: str = "energy"
    energy_budget: float | None = None
    critic_energy_budget: float | None = None
    kl_target: float | None = None
    budget_split: str | None = None
    critic_budget_split: str | None = None
    signal_groups: int | None = None

    def __post_init__(self) -> None:
        if self.fisher not in ("kfac", "diagonal"):
            raise ValueError(f"fisher must be 'kfac' or 'diagonal', got {self.fisher!r}")
        if self.fisher_kind not in FISHER_KINDS:
            raise ValueError(f"fisher_kind must be one of {FISHER_KINDS}, got {self.fisher_kind!r}")
        for name in ("refresh_interval", "fisher_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.fisher_decay < 1.0:
            raise ValueError(f"fisher_decay must lie in [0, 1), got {self.fisher_decay!r}")
        for name in ("energy_budget", "critic_energy_budget"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        for name in ("budget_split", "critic_budget_split"):
            split = getattr(self, name)
            if split is not None:
                check_budget_split(split, name)
                if self.step_rule not in SCALED_RULES:
                    raise ValueError(
                        f"{name} splits an energy budget; step_rule={self.step_rule!r} has none: drop {name} "
                        f"or choose a step_rule of {SCALED_RULES}"
                    )
        if self.signal_groups is not None:
            groups = self.signal_groups
            if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
                raise ValueError(f"signal_groups must be an int >= 2 (or None), got {groups!r}")
            if self.step_rule not in SCALED_RULES:
                raise ValueError(
                    f"signal_groups scales an energy budget; step_rule={self.step_rule!r} has none: drop "
                    f"signal_groups or choose a step_rule of {SCALED_RULES}"
                )
        if self.kl_target is not None and not self.kl_target > 0:
            raise ValueError(f"kl_target must be positive (or None), got {self.kl_target!r}")
        # The optimizer validates rho, damping, betas and the step rule; fail here, at configuration time.
        LagrangianOptimizer([torch.zeros(1, requires_grad=True)], **self.optimizer_kwargs())

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~lagrl.optim.LagrangianOptimizer` (without ``lr``)."""
        return dict(
            rho=self.rho,
            eps=self.damping,
            betas=tuple(self.betas),
            fisher=self.fisher,
            fisher_source="external" if self.fisher_kind == "true" else "gradients",
            step_rule=self.step_rule,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve(preconditioner: str | PreconditionerConfig | dict[str, Any]) -> str | PreconditionerConfig:
    """A preset name or a :class:`PreconditionerConfig`; raises on anything else, naming the choices."""
    if isinstance(preconditioner, PreconditionerConfig):
        return preconditioner
    if isinstance(preconditioner, dict):
        unknown = set(preconditioner) - set(PreconditionerConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown preconditioner setting(s) {sorted(unknown)}; "
                f"PreconditionerConfig takes {sorted(PreconditionerConfig.__dataclass_fields__)}"
            )
        return PreconditionerConfig(**preconditioner)
    if preconditioner == "fisher-sqrt":
        return PreconditionerConfig(rho=0.5, budget_split="epochs")
    if preconditioner == "natural":
        return PreconditionerConfig(rho=1.0)
    if preconditioner in PRESETS:
        return preconditioner
    raise ValueError(
        f"unknown preconditioner {preconditioner!r}; choose one of {PRESETS}, "
        "or pass a PreconditionerConfig / dict(rho=..., damping=..., refresh_interval=...)"
    )


def policy_optimizer(
    preconditioner: str | PreconditionerConfig, rms_prop_eps: float = 1e-5
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(optimizer_class, optimizer_kwargs)`` for SB3's ``policy_kwargs`` (SB3 passes ``lr`` itself)."""
    if preconditioner == "adam":
        return LagrangianAdam, dict(eps=1e-5)  # SB3 ActorCriticPolicy's default Adam eps
    if preconditioner == "rmsprop":
        return LagrangianRMSprop, dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)  # SB3 A2C's RMSprop
    assert isinstance(preconditioner, PreconditionerConfig)
    return LagrangianOptimizer, preconditioner.optimizer_kwargs()
