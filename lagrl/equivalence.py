"""Verification reports: do the Lagrangian constructions reproduce what they claim to?

Optimizers. Eq. 32 reads Adam as the discretised ρ = ½ flow with a diagonal Fisher;
:func:`optimizer_parity` checks that lagrl's construction of it *is* ``torch.optim.Adam`` (and RMSprop,
Eq. 31) bit for bit on an MLP, for every combination of weight decay (coupled, decoupled), amsgrad and
maximize.

Tabular MDPs. :func:`exact_checks` runs the exact checks of THEORY §6 ("Bellman–Adam equivalence",
our operationalisation of the paper's Insight 4) on one MDP: Bellman's fixed point is also the saddle
point of the LP Lagrangian, the limit of the natural policy gradient and the point where the ρ = ½
policy gradient vanishes. Each row is an :class:`ExactCheck`; the per-check functions take their inputs
explicitly, so a wrong ``V*`` or occupancy can be fed to them (and must fail).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lagrl.bellman import Solution, policy_evaluation, policy_iteration, soft_value_iteration, value_iteration
from lagrl.flows import entropy_regularised_evaluation, natural_policy_gradient_step, occupancy, value_scale
from lagrl.hamiltonian import bellman_optimality_residual, tabular_hamiltonian
from lagrl.mdp import TabularMDP
from lagrl.optim import LagrangianAdam, LagrangianRMSprop


class ParityRow(NamedTuple):
    """One comparison: the optimizer pair, its settings and the largest parameter difference."""

    optimizer: str
    settings: str
    max_abs_diff: float

    @property
    def identical(self) -> bool:
        return self.max_abs_diff == 0.0


def _final_parameters(make_optimizer: Callable, steps: int, device: torch.device, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).to(device)
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        inputs = torch.randn(16, 8, generator=generator).to(device)
        targets = torch.randint(0, 4, (16,), generator=generator).to(device)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def optimizer_parity(steps: int = 1000, device: str | torch.device = "cpu", seed: int = 0) -> list[ParityRow]:
    """Final float32 parameters of LagrangianAdam/RMSprop vs torch.optim after ``steps`` steps.

    torch's single-tensor kernel is the reference (its CPU default; on CUDA ``foreach=False``).
    """
    device = torch.device(device)
    rows = []
    cases = [
        ("Adam", dict(lr=1e-2, weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx))
        for wd, dec, ams, mx in itertools.product([0.0, 0.1], [False, True], [False, True], [False, True])
    ]
    cases += [("RMSprop", dict(lr=1e-3, weight_decay=wd)) for wd in (0.0, 0.1)]
    pairs = {"Adam": (torch.optim.Adam, LagrangianAdam), "RMSprop": (torch.optim.RMSprop, LagrangianRMSprop)}
    for name, kwargs in cases:
        reference_class, lagrl_class = pairs[name]
        reference = _final_parameters(
            lambda params: reference_class(params, **kwargs, foreach=False), steps, device, seed
        )
        candidate = _final_parameters(lambda params: lagrl_class(params, **kwargs), steps, device, seed)
        settings = ", ".join(f"{key}={value}" for key, value in kwargs.items() if key != "lr")
        rows.append(ParityRow(name, settings, float((candidate - reference).abs().max())))
    return rows


# ---------------------------------------------------------------------------------------------------
# Tabular: the exact checks of THEORY §6 (Bellman side ↔ Lagrangian side share the fixed point)
# ---------------------------------------------------------------------------------------------------


class ExactCheck(NamedTuple):
    """One exact check of THEORY §6: a residual and the tolerance it must not exceed (NaN fails)."""

    name: str
    residual: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.residual <= self.tolerance


IDENTITY_RTOL = 1e-10
"""Tolerance of the identities (LP duality at ``V*``, the NPG steps), relative to their natural scale."""
TIE_RTOL = 1e-9
"""Action-value gaps below ``TIE_RTOL · scale`` count as ties (round-off of ``Q*``)."""
FISHER_TAUS = 11
"""Number of temperatures ``τ_k = τ_0 2^{-k}`` of the ρ = ½ check (item 5)."""
FISHER_DECAY_MARGIN = 10.0
"""Item 5 asks ``‖u(τ_K)‖ ≤ FISHER_DECAY_MARGIN · (τ_K/τ_0) · ‖u(τ_0)‖`` (at least linear decay in τ)."""
SOFT_POLICY_ITERATIONS = 100
"""Cap on the soft policy-iteration steps that find each ``π*_τ`` of item 5 (it converges quadratically)."""
SOFT_POLICY_CHANGE = 1e-12
"""Soft policy iteration stops once no probability changes by more than this (round-off is ≈ 1e-14)."""


def stationarity_check(mdp: TabularMDP, values: Tensor, *, solver: str, tolerance: float) -> ExactCheck:
    """Item 1 (solver certificate): ``‖V − max_a H(·, a; V)‖∞`` for ``V`` claimed to be ``V*``."""
    residual = float(bellman_optimality_residual(mdp, values))
    return ExactCheck(f"stationarity V* = max_a H(·,a;V*) [{solver}]", residual, tolerance)


def lp_duality_checks(
    mdp: TabularMDP, values: Tensor, occupancy: Tensor, mu: Tensor, *, rtol: float = IDENTITY_RTOL
) -> list[ExactCheck]:
    r"""Item 2: ``V`` and ``d`` solve the LP of THEORY §3 (``min μᵀV`` s.t. ``V ≥ H(·,·;V)``) and its dual.

    Rows (``scale = max(1, ‖V‖∞)``; ``Σ d = 1/(1 − γ)`` sets the dual's scale):

    - primal feasibility  ``max(0, max_{s,a} H(s,a;V) − V(s))``                       ≤ rtol·scale
    - dual feasibility    ``max |Σ_a d(s,a) − μ(s) − γ Σ_{s',a'} P(s|s',a') d(s',a')|``
      (and ``max(0, −min d)``)                                                      ≤ rtol/(1 − γ)
    - duality gap         ``|μᵀV − Σ_{s,a} d(s,a) r(s,a)|``                           ≤ rtol·scale
    - complementary slackness ``max |d(s,a)(V(s) − H(s,a;V))|``                       ≤ rtol·scale/(1 − γ)

    Feasibility of both and a zero gap make ``V`` primal and ``d`` dual optimal (weak duality). For the
    occupancy of a policy π the gap is ``μᵀV − μᵀV^π``; complementary slackness says π plays only
    actions attaining ``max_a H(s, a; V)`` wherever it visits.
    """
    hamiltonian = tabular_hamiltonian(mdp, values)
    slack = values.unsqueeze(-1) - hamiltonian
    inflow = mdp.gamma * torch.einsum("sat,sa->t", mdp.transitions, occupancy)
    flow = occupancy.sum(-1) - mu - inflow
    scale, mass = value_scale(values), 1.0 / (1.0 - mdp.gamma)
    return [
        ExactCheck("LP primal feasibility V* ≥ H(·,·;V*)", max(0.0, -float(slack.amin())), rtol * scale),
        ExactCheck(
            "LP dual feasibility (flow constraint, d* ≥ 0)",
            max(float(flow.abs().amax()), -float(occupancy.amin())),
            rtol * mass,
        ),
        ExactCheck(
            "LP duality gap μᵀV* − Σ d* r", abs(float(mu @ values - (occupancy * mdp.rewards).sum())), rtol * scale
        ),
        ExactCheck(
            "LP complementary slackness d*·(V* − H)", float((occupancy * slack).abs().amax()), rtol * scale * mass
        ),
    ]


def npg_policy_iteration_check(mdp: TabularMDP, logits: Tensor, *, rtol: float = IDENTITY_RTOL) -> ExactCheck:
    r"""Item 3, η → ∞ (identity): one natural policy gradient step is a policy-iteration step.

    The closed form ``π' ∝ π exp(η A^π/(1 − γ))`` (:func:`~lagrl.flows.natural_policy_gradient_step`) at
    ``η = 10¹²(1 − γ)/scale`` against greediness in ``Q^π = H(·,·;V^π)``: the residual
    ``max_s (max_a Q^π(s,a) − Σ_a π'(a|s) Q^π(s,a))`` is 0 exactly when ``π'`` is greedy (a PI step; with
    ties, ``π'`` keeps π's proportions among the tied actions). An action behind by ``δ`` keeps weight
    ``≤ (π(a)/π(a*)) e^{−ηδ/(1−γ)}``, so the residual is at most ``max_a π(a)/π(a*) · scale/(e·10¹²)``.
    """
    policy = torch.softmax(logits, dim=-1)
    q = tabular_hamiltonian(mdp, policy_evaluation(mdp, policy))
    scale = value_scale(q)
    stepped = torch.softmax(natural_policy_gradient_step(mdp, logits, 1e12 * (1 - mdp.gamma) / scale), dim=-1)
    residual = float((q.amax(-1) - (stepped * q).sum(-1)).amax())
    return ExactCheck("NPG η→∞ step = policy-iteration step (greedy in Q^π)", residual, rtol * scale)


def soft_policy_iteration_check(
    mdp: TabularMDP, logits: Tensor, mu: Tensor, tau: float, *, tolerance: float = IDENTITY_RTOL
) -> ExactCheck:
    r"""Item 3, entropy-regularised (identity): the literal NPG step at ``η = (1 − γ)/τ`` is soft policy iteration.

    Literal step on softmax logits: ``θ' = θ + η F⁺ ∇_θ μᵀV_τ^π`` with the gradient by autograd through the
    linear solve of :func:`~lagrl.flows.entropy_regularised_evaluation`, ``d`` the normalised discounted
    visitation from ``μ`` and ``F = Σ_s d(s)(diag π(·|s) − π(·|s)π(·|s)ᵀ)``, pseudo-inverted block by block
    (``F`` is block diagonal over states; the pseudo-inverse drops each block's null direction ``1``, a
    per-state logit shift the softmax ignores). Soft policy iteration: ``π' ∝ exp(Q_τ^π/τ)``,
    ``Q_τ^π = H(·,·;V_τ^π)``. The residual is the largest probability difference among the literal step,
    the closed form :func:`~lagrl.flows.natural_policy_gradient_step` and soft policy iteration.
    Needs ``μ > 0`` (``d(s) = 0`` blocks are not updated by the literal step). Round-off in the literal
    step grows like ``cond(I − γP_π) · scale / τ`` (measured: 9e-12 on CliffWalking at γ = 0.99, τ = 0.1;
    3e-11 at γ = 0.999), so a very small τ or ``1 − γ`` can exceed the 1e-10 tolerance.
    """
    eta = (1 - mdp.gamma) / tau
    theta = logits.detach().clone().requires_grad_()
    values = entropy_regularised_evaluation(mdp, torch.softmax(theta, dim=-1), tau)
    (gradient,) = torch.autograd.grad(mu @ values, theta)
    policy = torch.softmax(logits, dim=-1)
    visitation = (1 - mdp.gamma) * occupancy(mdp, policy, mu).sum(-1)
    blocks = visitation[:, None, None] * (torch.diag_embed(policy) - policy.unsqueeze(-1) * policy.unsqueeze(-2))
    natural = (torch.linalg.pinv(blocks, hermitian=True) @ gradient.unsqueeze(-1)).squeeze(-1)
    literal = torch.softmax(logits + eta * natural, dim=-1)
    closed_form = torch.softmax(natural_policy_gradient_step(mdp, logits, eta, tau), dim=-1)
    soft_policy_iteration = torch.softmax(tabular_hamiltonian(mdp, values.detach()) / tau, dim=-1)
    residual = max(
        float((literal - soft_policy_iteration).abs().amax()), float((closed_form - soft_policy_iteration).abs().amax())
    )
    return ExactCheck(f"entropy NPG η=(1−γ)/τ = soft PI (literal θ+ηF⁺∇J, τ={tau:g})", residual, tolerance)


def soft_bellman_check(
    mdp: TabularMDP, soft_values: Tensor, values: Tensor, tau: float, *, tolerance: float
) -> ExactCheck:
    """Item 4 (solver certificate): ``0 ≤ V_τ* − V* ≤ τ log|A|/(1 − γ)``; the residual is the largest violation."""
    difference = soft_values - values
    bound = tau * math.log(mdp.num_actions) / (1 - mdp.gamma)
    residual = max(0.0, float(difference.amin().neg()), float((difference - bound).amax()))
    return ExactCheck(f"soft Bellman 0 ≤ V_τ* − V* ≤ τ log|A|/(1−γ) (τ={tau:g})", residual, tolerance)


def fisher_sqrt_policy_gradient(mdp: TabularMDP, logits: Tensor, mu: Tensor) -> Tensor:
    r"""The ρ = ½ policy gradient with the exact diagonal Fisher, ``u = ∇_θ J / F_diag^{½}`` (undamped), ``(S, A)``.

    ``J = μᵀV^π``, ``∇_θ J = d(s)π(a|s)A^π(s,a)/(1 − γ)`` and ``F_diag = d(s)π(a|s)(1 − π(a|s))``
    (:func:`~lagrl.flows.diagonal_policy_fisher`), so ``u = √(d π/(1 − π)) A^π/(1 − γ)``, evaluated stably:
    ``log(1 − π(a))`` as the log-sum of the other actions' probabilities, and at each state's most likely
    action ``a*`` the identity ``Σ_a π A^π = 0`` gives ``u(a*) = −√(d(1 − π(a*))/π(a*)) Ā/(1 − γ)`` with
    ``Ā`` the mean of ``A^π`` over the other actions weighted by ``π`` (no ``0 · ∞`` as π turns greedy).
    """
    if mdp.num_actions == 1:  # π ≡ 1: J does not depend on θ
        return torch.zeros_like(logits)
    log_policy = torch.log_softmax(logits, dim=-1)
    policy = log_policy.exp()
    values = policy_evaluation(mdp, policy)
    advantages = tabular_hamiltonian(mdp, values) - values.unsqueeze(-1)
    log_visitation = torch.log((1 - mdp.gamma) * occupancy(mdp, policy, mu).sum(-1)).unsqueeze(-1)
    others = torch.eye(mdp.num_actions, dtype=torch.bool, device=mdp.device)
    log_rest = torch.logsumexp(log_policy.unsqueeze(-2).masked_fill(others, -math.inf), dim=-1)  # log(1 − π(a))
    direction = torch.exp(0.5 * (log_visitation + log_policy - log_rest)) * advantages
    best = log_policy.argmax(-1, keepdim=True)
    weights = torch.softmax(log_policy.scatter(-1, best, -math.inf), dim=-1)  # π(b)/(1 − π(a*)), b ≠ a*
    mean_rest = (weights * advantages).sum(-1, keepdim=True)
    at_best = -torch.exp(0.5 * (log_visitation + log_rest.gather(-1, best) - log_policy.gather(-1, best))) * mean_rest
    return direction.scatter(-1, best, at_best) / (1 - mdp.gamma)


def _soft_optimal_logits(mdp: TabularMDP, tau: float, logits: Tensor) -> Tensor:
    """Logits of ``π*_τ`` by soft policy iteration (entropy NPG with ``η = (1 − γ)/τ``) from ``logits``.

    Soft policy iteration is Newton's method on the soft Bellman equation: near ``π*_τ`` each step squares
    the change, so a change below ``SOFT_POLICY_CHANGE`` leaves ``π`` at ``π*_τ`` up to round-off.
    """
    for _ in range(SOFT_POLICY_ITERATIONS):
        stepped = natural_policy_gradient_step(mdp, logits, (1 - mdp.gamma) / tau, tau)
        change = float((torch.softmax(stepped, dim=-1) - torch.softmax(logits, dim=-1)).abs().amax())
        logits = stepped
        if change <= SOFT_POLICY_CHANGE:
            break
    return logits


def fisher_sqrt_checks(mdp: TabularMDP, q_values: Tensor, mu: Tensor) -> list[ExactCheck]:
    r"""Item 5: the ρ = ½ Fisher-preconditioned policy gradient vanishes along softened optimal policies.

    ``π*_τ`` (the entropy-regularised optimum, by soft policy iteration warm-started along the sequence)
    for ``τ_k = τ_0 2^{-k}``, ``k < FISHER_TAUS``, with ``τ_0 = max(Δ, 10⁻⁶·scale)`` and ``Δ`` the smallest
    action gap of ``Q*`` above ties (``q_values`` is ``Q*``): below ``Δ`` the suboptimal actions' weights
    decay like ``e^{−Δ/τ}``, above it the norm need not be monotone. ``u`` is
    :func:`fisher_sqrt_policy_gradient`. Rows (a measured trend, not an identity; our reading of "→ 0"):

    - non-increasing: the largest increase ``max_k (‖u(τ_{k+1})‖ − ‖u(τ_k)‖)⁺``, tolerance
      ``IDENTITY_RTOL · max(1, ‖u(τ_0)‖)`` (round-off);
    - vanishing: ``‖u(τ_K)‖`` at the last τ, tolerance ``FISHER_DECAY_MARGIN · (τ_K/τ_0) · ‖u(τ_0)‖``:
      at least linear decay in τ. Expected is faster: suboptimal actions keep weight ``~e^{−Δ/τ}``, so
      ``A^π`` and ``u`` shrink like ``e^{−Δ/(2τ)}`` (tied optimal actions included, since ``Q^π − Q*``
      does).

    Adam's empirical normalisation ``m̂/(√v̂ + ε)`` does not vanish here: on a steady gradient it tends to
    ``sign(g)`` whatever ``|g|``, so an Adam flow settles only with a decaying step (THEORY §6 item 5).
    """
    scale = value_scale(q_values.amax(-1))
    gaps = q_values.amax(-1, keepdim=True) - q_values
    gaps = gaps[gaps > TIE_RTOL * scale]
    first = max(float(gaps.amin()) if gaps.numel() else scale, 1e-6 * scale)
    taus = [first * 2.0**-k for k in range(FISHER_TAUS)]
    logits = torch.zeros_like(q_values)
    norms = []
    for tau in taus:
        logits = _soft_optimal_logits(mdp, tau, logits)
        norms.append(float(torch.linalg.vector_norm(fisher_sqrt_policy_gradient(mdp, logits, mu))))
    increase = max([0.0] + [later - earlier for earlier, later in zip(norms, norms[1:])])
    return [
        ExactCheck(
            f"ρ=½ Fisher PG non-increasing along π*_τ, τ={taus[0]:.3g}…{taus[-1]:.3g}",
            increase,
            IDENTITY_RTOL * max(1.0, norms[0]),
        ),
        ExactCheck(
            f"ρ=½ Fisher PG → 0: ‖u‖ at τ={taus[-1]:.3g} (‖u‖ at τ={taus[0]:.3g}: {norms[0]:.3g})",
            norms[-1],
            FISHER_DECAY_MARGIN * taus[-1] / taus[0] * norms[0],
        ),
    ]


def exact_checks(
    mdp: TabularMDP,
    *,
    tol: float = 1e-6,
    tau: float = 0.1,
    optimum: Solution | None = None,
    value_solution: Solution | None = None,
) -> list[ExactCheck]:
    r"""The exact checks of THEORY §6 on one dense, discounted MDP (float64), in its order.

    ``V*`` is policy iteration's (exact up to round-off); ``scale = max(1, ‖V*‖∞)``; ``μ`` is uniform
    (``μ > 0`` on every state, THEORY §3), for the LP and the policy gradients alike.

    Solver certificates (tolerance ``tol·scale``):

    1. stationarity ``‖V − max_a H(·,a;V)‖∞`` of value iteration (run to the certified error
       ``tol·scale/(1 + γ)``, which bounds its Bellman residual by ``tol·scale``) and of policy iteration;
    4. soft Bellman: soft value iteration at ``tau`` (certified to ``tol·scale``) against
       ``0 ≤ V_τ* − V* ≤ τ log|A|/(1 − γ)``.

    Identities at the exact solution (tolerance ``IDENTITY_RTOL`` = 1e-10, relative to each row's scale):

    2. LP duality (:func:`lp_duality_checks`): ``V*`` and ``d*`` = the discounted occupancy of PI's policy
       from uniform ``μ``;
    3. NPG (:func:`npg_policy_iteration_check`, :func:`soft_policy_iteration_check`): at logits
       ``θ ~ N(0, 1)`` (seed 0), η → ∞ gives a PI step, and the literal entropy-regularised step at
       ``η = (1 − γ)/τ`` is soft policy iteration.

    Measured trend (:func:`fisher_sqrt_checks`):

    5. the ρ = ½ Fisher-preconditioned policy gradient decreases to 0 along ``π*_τ``, τ → 0.

    A caller that has solved ``mdp`` already (``lagrl verify``) hands its solutions over instead of
    solving twice: ``optimum``, policy iteration's; ``value_solution``, value iteration's with a certified
    ``error_bound`` of at most ``tol·scale/(1 + γ)`` (a looser one is refused).
    """
    if mdp.is_sparse or mdp.batch_shape or mdp.horizon is not None or not mdp.gamma < 1:
        raise ValueError(
            "exact_checks takes one dense, infinite-horizon MDP with gamma < 1; densify a sparse MDP, "
            "loop over a batch, drop the horizon"
        )
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (the entropy temperature of checks 3 and 4), got {tau}")
    mdp = mdp.to(dtype=torch.float64)
    optimum = policy_iteration(mdp) if optimum is None else optimum
    if optimum.values.shape != (mdp.num_states,):
        raise ValueError(
            f"optimum must be policy_iteration(mdp) of this MDP, values of shape ({mdp.num_states},), "
            f"got {tuple(optimum.values.shape)}"
        )
    scale = value_scale(optimum.values)
    needed = tol * scale / (1 + mdp.gamma)
    if value_solution is None:
        value_solution = value_iteration(mdp, needed)
    elif not float(value_solution.error_bound) <= needed:
        raise ValueError(
            f"value_solution certifies |V − V*| ≤ {float(value_solution.error_bound):.3g}, but the stationarity "
            f"check needs ≤ tol·scale/(1 + γ) = {needed:.3g}; run value_iteration(mdp, tol={needed:.3g}) or omit it"
        )
    mu = torch.full_like(optimum.values, 1.0 / mdp.num_states)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(optimum.q_values.shape, generator=generator, dtype=torch.float64).to(mdp.device)
    soft = soft_value_iteration(mdp, tau, tol * scale)
    return [
        stationarity_check(mdp, value_solution.values, solver="value iteration", tolerance=tol * scale),
        stationarity_check(mdp, optimum.values, solver="policy iteration", tolerance=tol * scale),
        *lp_duality_checks(mdp, optimum.values, occupancy(mdp, optimum.policy, mu), mu),
        npg_policy_iteration_check(mdp, logits),
        soft_policy_iteration_check(mdp, logits, mu, tau),
        soft_bellman_check(mdp, soft.values, optimum.values, tau, tolerance=tol * scale),
        *fisher_sqrt_checks(mdp, optimum.q_values, mu),
    ]
