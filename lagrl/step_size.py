"""Step-size rules for the discretised ρ flow ``Δθ = −η F^{-ρ} ĝ`` (THEORY §5b; our reading — the paper is silent).

The flow ``θ̇ = −F^{-ρ} g`` traces the same path under any change of time, so only the discretisation
sets a scale. A fixed ``η`` borrowed from Adam is the wrong scale for a true Fisher (Adam's ``v̂`` is
about ``F/B`` for minibatches of ``B``). Four rules whose scale does not come from a per-problem ``η``:

- ``"energy"``: the kinetic energy of the step in the Fisher metric is held at a budget ``δ``,
  ``½ ΔθᵀMΔθ = δ`` with ``u = M^{-ρ} ĝ``:  ``η = sqrt(2δ / uᵀMu) = sqrt(2δ / ĝᵀM^{1−2ρ}ĝ)``.
  For a policy with its true Fisher ``½ ΔθᵀFΔθ`` is the second-order KL between the old and the new
  policy, so ρ = 1 is the trust-region step of TRPO and ACKTR, and ρ = ½ gives ``η = sqrt(2δ)/‖ĝ‖``.
  It relates to the paper's ``T = (1/2P) gᵀF⁻¹g`` (Eq. 26) as follows: ``T`` is the Euclidean kinetic
  energy ``½ m |θ̇|²`` of the ρ = ½ particle of mass ``m = 1/P``; ``½ θ̇ᵀFθ̇`` is the kinetic energy of
  the same velocity measured in the Fisher metric. They coincide (up to ``P``) only where ``F ∝ I``.
- ``"trust-region"``: the *update's* displacement ``D`` (the sum of its steps since the update began)
  is held in the ball ``½ DᵀMD ≤ Δ``. Each step has energy ``δ`` as under ``"energy"``; a step that
  leaves the ball is followed by ``θ ← θ₀ + sqrt(2Δ / DᵀMD) · D``, the radial projection onto it. Coherent
  steps reach the boundary and then slide along it (projected steps on the trust-region problem
  ``min L(θ₀ + D)`` s.t. ``½ DᵀMD ≤ Δ``, TRPO's problem solved by first-order steps instead of conjugate
  gradients); incoherent ones random-walk inside it. ``δ = Δ/K`` for ``K`` steps per update: ``K``
  steps of independent directions fill the ball, coherent ones reach it after ``√K``.
  How an update's budget is split over its steps is :func:`step_budget`'s choice (the agents'
  ``budget_split``): each rule has its own, and ``"epochs"`` sits between them for PPO's epochs of minibatches.
- ``"graft"``: the direction of the Fisher step with the length of Adam's step on the same block
  (Agarwal et al. 2020, "Disentangling adaptive gradient methods"): ``η_b = ‖Δθ_b^{Adam}‖ / ‖u_b‖``.
- a controller on each update's measured KL (:class:`KLController`): the scale is multiplied or
  divided by a factor when the measured KL of the last update leaves a band around its target, as
  PPO's adaptive KL penalty adapts its coefficient (Schulman et al. 2017, §4).

Any energy-sized budget can further be scaled, update by update, by the signal fraction of the update's
gradient (:func:`signal_fraction`; ours): a step along a noisy estimate ``ĝ = s + n`` gains most at
``sqrt(φ)`` times the length of the noise-free step, ``φ = |s|² / E|ĝ|²``, so at the energy ``φ δ``. This is
McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", §2): the expected gain of ``−εĝ`` is best at
``ε = ε_max / (1 + B_noise/B)``, which is ``ε_max · φ`` where the curvature is isotropic in the step's metric
(``B_noise = B_simple``), and ``ĝ``'s length is ``|s| / sqrt(φ)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

STEP_RULES = ("lr", "energy", "graft", "trust-region")
SCALED_RULES = ("energy", "trust-region")  # the rules whose step is sized by its kinetic energy
BUDGET_SPLITS = ("coherent", "independent", "epochs")
RULE_SPLITS = {"energy": "coherent", "trust-region": "independent"}  # each scaled rule's own split


def step_budget(budget: float, epochs: int, minibatches: int, split: str) -> float:
    """The energy of each of an update's ``K = N·M`` steps (``N`` epochs of ``M`` minibatches) under ``split``.

    ``"coherent"``: ``δ/K²`` — the steps move together, their lengths add, so ``K`` of them have energy ``δ``.
    ``"independent"``: ``δ/K`` — their directions are independent, their energies add.
    ``"epochs"`` (ours): ``δ/(M·N²)`` — an epoch's minibatches are disjoint samples of the rollout, so their
    energies add; the epochs repeat the same samples, so their displacements add as lengths. The three agree
    where ``K = 1``; ``"epochs"`` is ``"coherent"`` for full-batch epochs (``M = 1``) and ``"independent"``
    for one epoch (``N = 1``).
    """
    check_budget_split(split)
    steps = epochs * minibatches
    if split == "coherent":
        return budget / steps**2
    if split == "independent":
        return budget / steps
    return budget / (minibatches * epochs**2)


def energy_step_size(energy: float, budget: float) -> float:
    """``η = sqrt(2δ / uᵀMu)``: the step ``−η u`` has kinetic energy ``½ η² uᵀMu = δ`` (0 where ``u = 0``)."""
    if not energy > 0.0:
        return 0.0
    return math.sqrt(2.0 * budget / energy)


def check_step_rule(step_rule: str, energy_budget: float, trust_budget: float | None = None) -> None:
    """Raise, naming the choices, for an unknown rule or a budget that is not positive and finite."""
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {step_rule!r}; choose one of {STEP_RULES}")
    budgets = [("energy_budget", energy_budget)] + ([] if trust_budget is None else [("trust_budget", trust_budget)])
    for name, budget in budgets:
        if not (isinstance(budget, numbers.Real) and 0.0 < budget < math.inf):
            raise ValueError(f"{name} must be positive and finite, got {budget}")


def check_budget_split(split: str, name: str = "budget_split") -> None:
    """Raise, naming the setting ``name`` and the choices, for an unknown :func:`step_budget` split."""
    if split not in BUDGET_SPLITS:
        raise ValueError(f"unknown {name} {split!r}: {name} must be one of {BUDGET_SPLITS} or None")


def signal_fraction(gradients: Sequence[Tensor]) -> float:
    """``φ``, the estimated share of ``|s|²`` in ``E|ḡ|²`` for the mean ``ḡ = (1/G) Σ_j g_j`` of ``G`` gradients.

    For ``g_j = s + n_j`` with independent zero-mean noise, ``E|ḡ|² = |s|² + ν/G`` and ``E (1/G) Σ_j |g_j|² =
    |s|² + ν``; eliminating ``ν`` with the observed sums gives ``φ = G/(G − 1) · (1 − Σ_j |g_j|² / |Σ_j g_j|²)``,
    clipped to ``[0, 1]``: 1 where every ``g_j`` is the same, about 0 for pure noise (0 where ``Σ_j g_j = 0``).
    ``|Σ_j g_j|² / Σ_j |g_j|²`` is the groups' coherence (1 for independent noise, ``G`` for one direction).
    """
    if len(gradients) < 2:
        raise ValueError(f"a signal fraction needs at least 2 gradients, got {len(gradients)}")
    total = torch.stack(list(gradients)).sum(dim=0).square().sum().item()
    squares = sum(g.square().sum().item() for g in gradients)
    if not total > 0.0:
        return 0.0
    groups = len(gradients)
    return min(max(groups / (groups - 1) * (1.0 - squares / total), 0.0), 1.0)


class KLController:
    """A multiplicative controller of the step scale on the measured KL of each update.

    After an update with measured KL ``κ``: ``scale ← scale · factor`` if ``κ < target / band``,
    ``scale ← scale / factor`` if ``κ > target · band``, unchanged in between; clamped to
    ``[lowest, highest]``.
    """

    def __init__(
        self,
        target: float,
        factor: float = 1.5,
        band: float = 1.5,
        scale: float = 1.0,
        lowest: float = 1e-6,
        highest: float = 1e6,
    ) -> None:
        if not target > 0.0:
            raise ValueError(f"the KL target must be positive, got {target}")
        if not (factor > 1.0 and band >= 1.0):
            raise ValueError(f"need factor > 1 and band >= 1, got factor={factor}, band={band}")
        self.target, self.factor, self.band = target, factor, band
        self.scale, self.lowest, self.highest = scale, lowest, highest

    def update(self, kl: float, target_scale: float = 1.0) -> float:
        """Adapt to the last update's KL against ``target · target_scale``; returns the new scale.

        ``target_scale`` lets a learning-rate schedule anneal the target (the agents pass
        ``(lr_t / lr_0)²``, the square of the schedule, as a KL is quadratic in the step). A non-finite
        KL shrinks the scale.
        """
        target = self.target * target_scale
        if not math.isfinite(kl) or kl > target * self.band:
            self.scale /= self.factor
        elif kl < target / self.band:
            self.scale *= self.factor
        self.scale = min(max(self.scale, self.lowest), self.highest)
        return self.scale
