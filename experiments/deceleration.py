"""Insight 1 (information kinematics, THEORY §1; the paper's Fig. 1): does learning decelerate — is the expected
in-context velocity ``E[v(t)] = E[−log p(x_t | x_<t)]`` non-increasing in ``t`` and bounded below?

Velocity, acceleration and the check are lagrl's: ``v = information_velocity(log p)``,
``a(t) = information_acceleration(v) = v(t+1) − v(t)``, ``check_deceleration(a, tol)``. Bounded below holds for
every code length here (discrete, so ≥ 0); the question is the monotonicity. Cases:

(a) Exact Bayes predictors, two readings of "expected" (``E`` over what): the **prior predictive** (θ drawn from
    the prior, then the data from θ; the Bayes predictor's own model) and a **fixed true parameter** θ.
    Beta(1,1)–Bernoulli and Dirichlet(1)-categorical on K = 4 symbols: exact sums over the count at ``t − 1``,
    ``E_prior[v(t)] = Σ_j Σ_k BB(k; t−1, α_j, A−α_j) q log(1/q)`` with ``q = (k+α_j)/(t−1+A)`` (the count of
    symbol j is beta-binomial; the next symbol is j with probability q given it), and
    ``E_θ[v(t)] = Σ_j θ_j Σ_k Bin(k; t−1, θ_j) log((t−1+A)/(k+α_j))``. Fixed θ: the fair coin/die, a skewed θ,
    and for the coin every θ on a grid (for which θ does it decelerate over ``t ≤ T``?). Under the prior
    predictive the sequence is exchangeable, hence stationary, so ``E[v(t+1)] = H(X_{t+1}|X_{≤t}) ≤
    H(X_{t+1}|X_{2..t}) = H(X_t|X_{<t})``: a theorem; the fixed-θ reading has no such guarantee.
    Dirichlet(1) Markov chains on K states (each transition row ~ Dirichlet(1), first state uniform): the Bayes
    predictor is ``(N_{x_{t−1} j} + α)/(N_{x_{t−1}} + Kα)``. Exact for K = 2 by dynamic programming over the
    sufficient statistics (last state, transition counts); K = 3 by Monte Carlo over many sequences drawn from
    the prior predictive, Rao–Blackwellised (each sequence contributes the entropy of its predictive at ``t``,
    whose expectation is ``E[v(t)]``), with standard errors. The first state is uniform, not the chain's
    stationary law (which would break conjugacy), so this process is NOT stationary and the theorem does not
    apply: measured. Independent checks in ``numbers``: plain Monte Carlo (sampled data, realised ``v``)
    against every exact curve.
(b) A small causal transformer (2 pre-norm blocks, d = 32, about 19k parameters, BOS token, learned positions)
    trained here by lagrl's ``LagrangianAdam`` (constant rate) on fresh sequences of random K = 3 state Markov
    chains (rows ~ Dirichlet(1)), scored on held-out chains against the exact Bayes predictor on the same chains
    (paired: gap = model − Bayes per position, with its standard error). The Bayes predictor's expected loss is
    the floor: in expectation no predictor beats it.
(c) A character-level transformer (2 blocks, d = 64, about 89k parameters) trained here on the English of
    ``pydoc_data.topics`` (ships with Python; nothing is downloaded; the topics joined in sorted order, the last
    10 % held out), evaluated per position on held-out windows that start at random offsets: the Fig. 1
    analogue. References (not floors): the held-out cross-entropy of a unigram and a bigram model (add-½
    counts of the training text), the best a predictor with 0 and 1 characters of context does by counting.
(d) lagrl's agent ``LagrangianPPO`` with the presets "fisher-sqrt" (ρ = ½, true Fisher) and "adam" on
    CartPole-v1 (rl-zoo's settings, constant rate and clip range so no schedule imposes a deceleration): the
    velocity along training in environment steps is the mean ``−log π(a_t|s_t)`` of the actions taken in each
    rollout (the policy's own code length of its actions, our reading) and lagrl's ``kinematics/velocity`` (the
    PPO loss per update, lagrl.trajectory). An RL loss is not a code length: the verdict on (d) is our reading.

Verdict rules (our operationalisation; the paper states the hypothesis, no test):
- Exact curves: decelerating iff ``check_deceleration(a, tol=1e-12)`` finds no ``a(t) > 0`` for ``t < T``.
- Measured per-position curves (b, c; and the Monte Carlo floor): the standardised acceleration
  ``z(t) = mean(a)/SE(a)`` over sequences (paired within a sequence), rejected where
  ``check_deceleration(z, tol=z*)`` finds ``z > z*`` with Bonferroni ``z* = Φ⁻¹(1 − 0.05/(T−1))``; the same on
  the means over octave blocks of positions ``{1}, {2}, {3,4}, {5..8}, …`` (which sees slow trends). Decelerating
  iff neither finds a rise.
- Along training (b, c on the per-step training loss; d on the per-rollout ``−log π`` and the PPO loss), time in
  observations (tokens, environment steps): the curve is averaged over blocks of updates, 4 wide at first then
  growing by √2 (a log grid); block noise ``SE = σ/√n`` with ``σ² = mean(Δy²)/2`` from consecutive differences.
  A **rise**: a block mean above the previous one by more than 3 SE (``check_deceleration`` on the
  standardised block acceleration, tol 3). A **sudden drop**: the loss's rate of decrease per observation
  between blocks more than doubles, significantly (by more than 3 SE). A **plateau**: at least two consecutive
  block changes within 2 SE, after which the loss still falls by more than 3 SE (learning resumes).
  Training-curve verdict: "fails" on any rise, "mixed" with no rise but a sudden drop (the decrease sped up: not
  a decelerating curve), "holds" otherwise. Plateaus, and sudden drops in log time (the drop per half-octave
  block more than doubles: a shoulder on a log-x plot), are counted and reported; they do not enter the verdict.
- Each case and reading gets "holds" (decelerating) or "fails"; training curves as above. The overall verdict is
  "holds" if every case and curve holds, "fails" if none does, "mixed" otherwise.

    python experiments/deceleration.py [--quick] [--out DIR] [--seed 0] [--device cpu]

Full settings: 3,000 steps of 64 chains × 64 symbols for (b), 2,000 steps of 32 windows × 128 characters for
(c), 30,000 environment steps per agent; about 6 CPU-minutes on one thread. ``--quick``: short horizons, tiny
models trained for 120–150 steps, 2,048 agent steps; about 20 s.

Writes ``DIR/deceleration.json``, ``DIR/deceleration.png`` (one panel per case, the Bayes floor or reference
beside the measured curve) and ``DIR/deceleration_training.png`` (the training curves); prints the verdict.
"""

from __future__ import annotations

import math
import pydoc_data.topics
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from claims import parse_arguments, plt, save_figure, write_report
from torch import Tensor, nn
from torch.nn import functional as F

from lagrl.kinematics import check_deceleration, information_acceleration, information_velocity, kinematics
from lagrl.optim import LagrangianAdam

CLAIM = (
    "Insight 1: the expected in-context information velocity E[v(t)] = E[-log p(x_t | x_<t)] is non-increasing "
    "in t and bounded below (learning decelerates); also read along training steps."
)
F64 = torch.float64
EXACT_TOL = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# (a) Exact Bayes predictors
# ---------------------------------------------------------------------------------------------------------------


def _log_binomial(n: Tensor, k: Tensor) -> Tensor:
    """``log C(n, k)``."""
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _count_grid(horizon: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """``n = t − 1`` (column) and counts ``k = 0..T−1`` (row) with the mask ``k ≤ n``."""
    n = torch.arange(horizon, dtype=F64, device=device)[:, None]
    k = torch.arange(horizon, dtype=F64, device=device)[None, :]
    return n, k, k <= n


def categorical_velocity_prior(alpha: list[float], horizon: int, device: str) -> Tensor:
    """Exact ``E[v(t)]``, ``t = 1..T``, of the Dirichlet(α)-categorical Bayes predictor under its prior predictive.

    ``E[v(t)] = Σ_j Σ_k BB(k; n, α_j, A − α_j) · q_jk · log(1/q_jk)``, ``n = t − 1``, ``q_jk = (k + α_j)/(n + A)``,
    ``BB(k; n, a, b) = C(n, k) B(k + a, n − k + b) / B(a, b)``: the count of symbol j before ``t`` is
    beta-binomial and, given it, the next symbol is j with probability ``q_jk``.
    """
    n, k, valid = _count_grid(horizon, device)
    total = sum(alpha)
    velocity = torch.zeros(horizon, dtype=F64, device=device)
    for a in alpha:
        b = total - a
        log_bb = (
            _log_binomial(n, k)
            + torch.lgamma(k + a)
            + torch.lgamma(n - k + b)
            - torch.lgamma(n + a + b)
            - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        )
        q = (k + a) / (n + total)
        terms = torch.where(valid, torch.exp(torch.where(valid, log_bb, 0.0)) * q * -torch.log(q), 0.0)
        velocity += terms.sum(dim=1)
    return velocity


def categorical_velocity_fixed(theta: list[float], alpha: list[float], horizon: int, device: str) -> Tensor:
    """Exact ``E_θ[v(t)]``, ``t = 1..T``, of the Dirichlet(α)-categorical Bayes predictor on data i.i.d. from θ.

    ``E_θ[v(t)] = Σ_j θ_j Σ_k Bin(k; n, θ_j) · log((n + A)/(k + α_j))``, ``n = t − 1``: the loss on symbol j
    depends on the past only through its count, which is Binomial(n, θ_j).
    """
    n, k, valid = _count_grid(horizon, device)
    total = sum(alpha)
    velocity = torch.zeros(horizon, dtype=F64, device=device)
    for p, a in zip(theta, alpha):
        p_t = torch.tensor(p, dtype=F64, device=device)
        log_bin = _log_binomial(n, k) + torch.xlogy(k, p_t) + torch.xlogy(n - k, 1 - p_t)
        loss = torch.log(n + total) - torch.log(k + a)
        terms = torch.where(valid, torch.exp(torch.where(valid, log_bin, -math.inf)) * loss, 0.0)
        velocity += p * terms.sum(dim=1)
    return velocity


def markov_velocity_prior(states: int, alpha: float, horizon: int) -> list[float]:
    """Exact ``E[v(t)]``, ``t = 1..T``, of the Dirichlet(α) Markov-chain Bayes predictor under its prior predictive.

    Dynamic programming over the sufficient statistic ``(x_t, N)`` (last state, transition counts): the
    predictive from row ``s`` is ``(N_sj + α)/(N_s + Kα)`` and also the probability of the next state, so
    ``E[v(t+1)] = Σ_{(s,N)} P(s, N) · H(predictive of row s)``; the first state is uniform (``v(1) = log K``).
    """
    layer: dict[tuple[int, tuple[int, ...]], float] = {(s, (0,) * states**2): 1.0 / states for s in range(states)}
    velocity = [math.log(states)]
    for _ in range(horizon - 1):
        expected, following = 0.0, defaultdict(float)
        for (last, counts), probability in layer.items():
            row = counts[last * states : (last + 1) * states]
            norm = sum(row) + states * alpha
            for j in range(states):
                q = (row[j] + alpha) / norm
                expected -= probability * q * math.log(q)
                grown = list(counts)
                grown[last * states + j] += 1
                following[(j, tuple(grown))] += probability * q
        velocity.append(expected)
        layer = following
    return velocity


def sample_markov(count: int, length: int, states: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` sequences from the prior predictive: rows ~ Dirichlet(α), first state uniform, then the chain."""
    rows = rng.dirichlet(np.full(states, alpha), size=(count, states))
    x = np.empty((count, length), dtype=np.int64)
    x[:, 0] = rng.integers(0, states, count)
    uniform = rng.random((count, length))
    for t in range(1, length):
        cumulative = rows[np.arange(count), x[:, t - 1]].cumsum(axis=-1)
        x[:, t] = np.minimum((uniform[:, t, None] > cumulative).sum(axis=-1), states - 1)
    return x


def markov_bayes(x: Tensor, states: int, alpha: float) -> tuple[Tensor, Tensor]:
    """The Bayes predictor on each sequence: ``log p(x_t | x_<t)`` and the entropy of its predictive at ``t``.

    ``p(x_t = j | x_<t) = (N_{x_{t−1} j} + α)/(N_{x_{t−1}} + Kα)`` with counts ``N`` of the transitions before ``t``;
    ``p(x_1) = 1/K``. Under the prior predictive ``E[entropy_t] = E[v(t)]`` (a Rao–Blackwellised estimator).
    """
    count, length = x.shape
    rows = torch.arange(count, device=x.device)
    counts = torch.zeros(count, states, states, dtype=F64, device=x.device)
    log_p = torch.full((count, length), -math.log(states), dtype=F64, device=x.device)
    entropy = torch.full((count, length), math.log(states), dtype=F64, device=x.device)
    for t in range(1, length):
        predictive = counts[rows, x[:, t - 1]] + alpha
        predictive = predictive / predictive.sum(dim=-1, keepdim=True)
        log_p[:, t] = predictive[rows, x[:, t]].log()
        entropy[:, t] = -(predictive * predictive.log()).sum(dim=-1)
        counts[rows, x[:, t - 1], x[:, t]] += 1
    return log_p, entropy


def sample_categorical(count: int, length: int, theta: np.ndarray | None, alpha: list[float], rng: np.random.Generator):
    """Sequences i.i.d. from θ (or, for ``theta=None``, θ drawn per sequence from Dirichlet(α) first)."""
    thetas = rng.dirichlet(alpha, size=count) if theta is None else np.broadcast_to(theta, (count, len(alpha)))
    cumulative = thetas.cumsum(axis=-1)
    uniform = rng.random((count, length))
    return np.minimum((uniform[:, :, None] > cumulative[:, None, :]).sum(axis=-1), len(alpha) - 1)


def categorical_bayes_log_p(x: Tensor, alpha: list[float]) -> Tensor:
    """``log p(x_t | x_<t)`` of the Dirichlet(α)-categorical Bayes predictor, ``(N_{x_t} + α_{x_t})/(t − 1 + A)``."""
    prior = torch.tensor(alpha, dtype=F64, device=x.device)
    one_hot = F.one_hot(x, len(alpha)).to(F64)
    before = one_hot.cumsum(dim=1) - one_hot
    t = torch.arange(x.shape[1], dtype=F64, device=x.device)
    return ((before * one_hot).sum(-1) + prior[x]).log() - (t + prior.sum()).log()


def mean_and_se(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the first dimension and its standard error ``std/√n``."""
    return samples.mean(dim=0), samples.std(dim=0) / math.sqrt(samples.shape[0])


def monte_carlo_check(exact: Tensor, samples: Tensor) -> dict[str, Any]:
    """Plain Monte Carlo of ``E[v(t)]`` (realised ``v``) against an exact curve: the largest ``|z|`` over ``t``."""
    mean, se = mean_and_se(samples)
    z = (mean - exact[: mean.numel()]) / se.clamp_min(1e-300)
    z = torch.where(se > 0, z, torch.zeros_like(z))
    return {
        "sequences": samples.shape[0],
        "mean": mean.tolist(),
        "se": se.tolist(),
        "max_abs_z": float(z.abs().max()),
    }


def exact_check(velocity: Tensor) -> dict[str, Any]:
    """Insight 1 on an exact curve: ``check_deceleration(a, tol=1e-12)``; positions t with ``v(t+1) > v(t)``."""
    acceleration = information_acceleration(velocity)
    report = check_deceleration(acceleration, tol=EXACT_TOL)
    rises = [int(i) + 1 for i in report.violations[:, 0]]
    return {
        "decelerating": report.decelerating,
        "rises_at_t": rises[:20],
        "rise_count": len(rises),
        "max_acceleration": report.max_acceleration,
        "velocity": velocity.tolist(),
    }


def bonferroni(tests: int, level: float = 0.05) -> float:
    """One-sided ``z*`` with family-wise level ``level`` over ``tests`` comparisons."""
    return statistics.NormalDist().inv_cdf(1 - level / max(tests, 1))


def octave_blocks(length: int) -> list[tuple[int, int]]:
    """Position blocks ``{1}, {2}, {3,4}, {5..8}, …`` as 0-based half-open index ranges."""
    blocks, start = [(0, 1)], 1
    while start < length:
        blocks.append((start, min(2 * start, length)))
        start *= 2
    return blocks


def _standardised(mean: Tensor, se: Tensor) -> Tensor:
    """``mean/se``, 0 where both vanish (an exactly constant difference)."""
    return torch.where(se > 0, mean / se.clamp_min(1e-300), torch.where(mean > 0, math.inf, 0.0))


def measured_check(velocity: Tensor) -> dict[str, Any]:
    """Insight 1 on per-sequence velocities ``(n, T)``: rises of ``E[v]`` at Bonferroni ``z*``, adjacent and by octave.

    ``a = information_acceleration(v)`` per sequence (paired), ``z = mean(a)/SE(a)``, rejected where
    ``check_deceleration(z, tol=z*)`` finds ``z > z*``; the same for the per-sequence means over octave blocks.
    """
    mean, se = mean_and_se(velocity)
    z = _standardised(*mean_and_se(information_acceleration(velocity)))
    adjacent = check_deceleration(z, tol=bonferroni(z.numel()))
    blocks = octave_blocks(velocity.shape[1])
    block_means = torch.stack([velocity[:, lo:hi].mean(dim=1) for lo, hi in blocks], dim=1)
    z_blocks = _standardised(*mean_and_se(information_acceleration(block_means)))
    by_block = check_deceleration(z_blocks, tol=bonferroni(z_blocks.numel()))
    block_mean, block_se = mean_and_se(block_means)
    return {
        "decelerating": adjacent.decelerating and by_block.decelerating,
        "adjacent_rises_at_t": [int(i) + 1 for i in adjacent.violations[:, 0]][:20],
        "adjacent_z_star": bonferroni(z.numel()),
        "adjacent_max_z": float(z.max()),
        "block_positions": [[lo + 1, hi] for lo, hi in blocks],
        "block_mean": block_mean.tolist(),
        "block_se": block_se.tolist(),
        "block_rises_into": [blocks[int(i) + 1][0] + 1 for i in by_block.violations[:, 0]],
        "block_z_star": bonferroni(z_blocks.numel()),
        "block_max_z": float(z_blocks.max()),
        "mean": mean.tolist(),
        "se": se.tolist(),
    }


def exact_bayes(settings: dict[str, Any], rng: np.random.Generator, device: str) -> dict[str, Any]:
    """Case (a): every exact curve, its Insight-1 check and a plain Monte Carlo check of it."""
    horizon, mc = settings["exact_horizon"], settings["monte_carlo_sequences"]
    mc_length = settings["monte_carlo_horizon"]
    coin, die = settings["beta_prior"], settings["dirichlet_prior"]
    results: dict[str, Any] = {}
    readings = {
        "bernoulli_prior_predictive": (coin, None),
        "bernoulli_fair_coin": (coin, [0.5, 0.5]),
        "bernoulli_theta_0.9": (coin, [0.9, 0.1]),
        "categorical_prior_predictive": (die, None),
        "categorical_fair_die": (die, [1 / len(die)] * len(die)),
        "categorical_skewed": (die, settings["skewed_theta"]),
    }
    for name, (alpha, theta) in readings.items():
        exact = (
            categorical_velocity_prior(alpha, horizon, device)
            if theta is None
            else categorical_velocity_fixed(theta, alpha, horizon, device)
        )
        x = sample_categorical(mc, mc_length, None if theta is None else np.array(theta), alpha, rng)
        samples = information_velocity(categorical_bayes_log_p(torch.as_tensor(x, device=device), alpha))
        results[name] = exact_check(exact) | {
            "reading": "prior predictive" if theta is None else f"fixed theta = {theta}",
            "limit_entropy": None if theta is None else -sum(p * math.log(p) for p in theta),
            "monte_carlo": monte_carlo_check(exact, samples),
        }
    grid = [round(0.01 * i, 2) for i in range(1, 100)]
    rising = [
        p
        for p in grid
        if not exact_check(categorical_velocity_fixed([p, 1 - p], coin, horizon, device))["decelerating"]
    ]
    results["bernoulli_theta_grid"] = {"theta": grid, "not_decelerating": rising}
    states, alpha = settings["markov_states_exact"], settings["markov_alpha"]
    exact = torch.tensor(markov_velocity_prior(states, alpha, settings["markov_horizon_exact"]), dtype=F64)
    x = torch.as_tensor(sample_markov(mc, settings["markov_horizon_exact"], states, alpha, rng), device=device)
    log_p, _ = markov_bayes(x, states, alpha)
    results[f"markov_K{states}_prior_predictive"] = exact_check(exact) | {
        "reading": "prior predictive (exact dynamic programming)",
        "monte_carlo": monte_carlo_check(exact.to(device), information_velocity(log_p)),
    }
    states, sequences = settings["markov_states"], settings["markov_floor_sequences"]
    x = torch.as_tensor(sample_markov(sequences, settings["markov_length"], states, alpha, rng), device=device)
    log_p, entropy = markov_bayes(x, states, alpha)
    small = settings["markov_horizon_exact_small"]
    exact_small = torch.tensor(markov_velocity_prior(states, alpha, small), dtype=F64, device=device)
    check = measured_check(entropy)
    results[f"markov_K{states}_prior_predictive"] = check | {
        "reading": "prior predictive (Rao-Blackwellised Monte Carlo)",
        "sequences": sequences,
        "exact_first_steps": exact_small.tolist(),
        "monte_carlo": monte_carlo_check(exact_small, information_velocity(log_p)[:, :small]),
        "rao_blackwell_vs_exact": monte_carlo_check(exact_small, entropy[:, :small]),
    }
    return results


# ---------------------------------------------------------------------------------------------------------------
# (b, c) Small causal transformers
# ---------------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block: ``h + Attn(LN h)`` (causal), then ``h + MLP(LN h)``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: Tensor) -> Tensor:
        batch, length, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return h + self.mlp(self.norm2(h))


class CausalTransformer(nn.Module):
    """Next-symbol model ``p(x_t | x_<t)``: a BOS token, learned positions, causal blocks, a linear read-out."""

    def __init__(self, vocabulary: int, width: int, layers: int, heads: int, length: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.embed = nn.Embedding(vocabulary + 1, width)  # the last index is BOS
        self.position = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def log_probs(self, x: Tensor) -> Tensor:
        """``log p(x_t | x_<t)`` for every ``t = 1..T`` of ``x`` (shape ``(n, T)``); ``x_1`` is predicted from BOS."""
        inputs = torch.cat([torch.full_like(x[:, :1], self.vocabulary), x[:, :-1]], dim=1)
        h = self.embed(inputs) + self.position.weight[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return torch.log_softmax(self.head(self.norm(h)), dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)


@dataclass
class TrainedModel:
    model: CausalTransformer
    losses: list[float]  # training loss per step (nats per symbol)
    observations_per_step: int
    parameters: int


def train(model: CausalTransformer, batches: Any, steps: int, lr: float) -> TrainedModel:
    """``steps`` steps of ``LagrangianAdam`` (lagrl's Adam, constant rate) on the mean ``v`` of fresh batches."""
    optimizer = LagrangianAdam(model.parameters(), lr=lr)
    losses, size = [], 0
    for _ in range(steps):
        x = batches()
        loss = information_velocity(model.log_probs(x)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        size = x.numel()
    return TrainedModel(model, losses, size, sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def held_out_velocity(model: CausalTransformer, x: Tensor, chunk: int = 500) -> Tensor:
    """Per-sequence, per-position ``v(t) = −log p_model(x_t | x_<t)`` on held-out data, in float64."""
    model.eval()
    parts = [information_velocity(model.log_probs(x[i : i + chunk]).to(F64)) for i in range(0, len(x), chunk)]
    model.train()
    return torch.cat(parts)


def markov_transformer(settings: dict[str, Any], seed: int, device: str) -> dict[str, Any]:
    """Case (b): train on random Markov chains, score held-out chains against the Bayes predictor (paired)."""
    states, alpha, length = settings["markov_states"], settings["markov_alpha"], settings["markov_length"]
    torch.manual_seed(seed)
    model = CausalTransformer(states, settings["markov_width"], 2, 2, length).to(device)
    rng = np.random.default_rng([seed, 1])
    batch = settings["markov_batch"]

    def batches() -> Tensor:
        return torch.as_tensor(sample_markov(batch, length, states, alpha, rng), device=device)

    trained = train(model, batches, settings["markov_steps"], settings["markov_lr"])
    test = torch.as_tensor(
        sample_markov(settings["markov_test_sequences"], length, states, alpha, np.random.default_rng([seed, 2])),
        device=device,
    )
    v_model = held_out_velocity(model, test)
    log_p, entropy = markov_bayes(test, states, alpha)
    v_bayes = information_velocity(log_p)
    gap_mean, gap_se = mean_and_se(v_model - v_bayes)
    floor_mean, floor_se = mean_and_se(entropy)
    overall = (v_model - v_bayes).mean(dim=1)
    return {
        "parameters": trained.parameters,
        "check": measured_check(v_model),
        "bayes_on_same_chains": mean_and_se(v_bayes)[0].tolist(),
        "bayes_on_same_chains_se": mean_and_se(v_bayes)[1].tolist(),
        "floor_expected": floor_mean.tolist(),
        "floor_expected_se": floor_se.tolist(),
        "gap_mean": gap_mean.tolist(),
        "gap_se": gap_se.tolist(),
        "gap_min_z": float(_standardised(gap_mean, gap_se).min()),
        "gap_average": float(overall.mean()),
        "gap_average_se": float(overall.std() / math.sqrt(len(overall))),
        "gap_last_position": gap_mean[-1].item(),
        "training": training_events(trained.losses, trained.observations_per_step),
        "training_loss": trained.losses,
        "observations_per_step": trained.observations_per_step,
    }


def english_text() -> str:
    """The English that ships with Python: ``pydoc_data.topics`` joined in sorted topic order."""
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def ngram_cross_entropy(train_ids: list[int], test_ids: list[int], vocabulary: int, order: int) -> float:
    """Held-out cross-entropy (nats/char) of an add-½ count model with ``order`` characters of context."""
    counts: dict[tuple[int, ...], np.ndarray] = defaultdict(lambda: np.zeros(vocabulary))
    for i in range(order, len(train_ids)):
        counts[tuple(train_ids[i - order : i])][train_ids[i]] += 1
    total = 0.0
    for i in range(order, len(test_ids)):
        row = counts.get(tuple(test_ids[i - order : i]), np.zeros(vocabulary)) + 0.5
        total -= math.log(row[test_ids[i]] / row.sum())
    return total / (len(test_ids) - order)


def char_transformer(settings: dict[str, Any], seed: int, device: str) -> dict[str, Any]:
    """Case (c): a character model on ``pydoc_data.topics``; per-position loss on held-out random-offset windows."""
    text = english_text()
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    ids = [index[c] for c in text]
    cut = int(0.9 * len(ids))
    train_ids = torch.tensor(ids[:cut], device=device)
    test_ids = torch.tensor(ids[cut:], device=device)
    length, batch = settings["char_length"], settings["char_batch"]
    offsets = torch.arange(length, device=device)
    generator = torch.Generator().manual_seed(seed)

    def windows(source: Tensor, count: int, gen: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(source) - length, (count,), generator=gen).to(device)
        return source[starts[:, None] + offsets]

    torch.manual_seed(seed)
    model = CausalTransformer(len(alphabet), settings["char_width"], 2, 4, length).to(device)
    trained = train(model, lambda: windows(train_ids, batch, generator), settings["char_steps"], settings["char_lr"])
    test = windows(test_ids, settings["char_test_windows"], torch.Generator().manual_seed(seed + 1))
    velocity = held_out_velocity(model, test)
    references = {
        f"{name}_add_half": ngram_cross_entropy(ids[:cut], ids[cut:], len(alphabet), order)
        for order, name in enumerate(("unigram", "bigram"))
    }
    return {
        "characters": len(text),
        "alphabet": len(alphabet),
        "train_characters": cut,
        "parameters": trained.parameters,
        "check": measured_check(velocity),
        "references": references,
        "training": training_events(trained.losses, trained.observations_per_step),
        "training_loss": trained.losses,
        "observations_per_step": trained.observations_per_step,
    }


# ---------------------------------------------------------------------------------------------------------------
# (d) An agent along training
# ---------------------------------------------------------------------------------------------------------------


def agent_velocity(settings: dict[str, Any], preset: str, seed: int, device: str) -> dict[str, Any]:
    """Case (d): ``LagrangianPPO`` on CartPole-v1; per rollout the mean ``−log π(a_t|s_t)`` and lagrl's velocity.

    The agent's ``trajectory_sink`` receives each update's loss at its new parameters, the value
    ``lagrl.trajectory.LearningTrajectory`` records as ``kinematics/velocity``; it is taken from the sink directly
    (``LearningTrajectory.record`` also computes the kinetic energy, which raised for the fisher-sqrt preset's
    float32 K-FAC metric in our runs).
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from lagrl.agents import LagrangianPPO

    class RolloutCodeLength(BaseCallback):
        """Per rollout: env steps so far, the mean ``−log π`` of the actions taken, the mean episode return."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int, float, float]] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            code_length = -float(np.mean(self.model.rollout_buffer.log_probs))
            returns = [info["r"] for info in self.model.ep_info_buffer]
            self.rows.append((self.model.num_timesteps, code_length, float(np.mean(returns)) if returns else math.nan))

    env = make_vec_env("CartPole-v1", n_envs=settings["agent_envs"], seed=seed)
    model = LagrangianPPO("MlpPolicy", env, preconditioner=preset, seed=seed, device=device, **settings["agent_ppo"])
    losses: list[float] = []
    model.trajectory_sink = lambda potential, gradients, metric, observations: losses.append(potential)
    callback = RolloutCodeLength()
    model.learn(settings["agent_steps"], callback=callback)
    steps, code_length, returns = (list(column) for column in zip(*callback.rows))
    per_update = settings["agent_envs"] * settings["agent_ppo"]["n_steps"]
    return {
        "preset": preset,
        "env_steps": steps,
        "code_length": code_length,
        "mean_return": returns,
        "loss_velocity": losses,
        "code_length_training": training_events(code_length, per_update),
        "loss_training": training_events(losses, per_update),
    }


# ---------------------------------------------------------------------------------------------------------------
# Along training: rises, sudden drops and plateaus
# ---------------------------------------------------------------------------------------------------------------


def update_blocks(count: int, first: int = 4, ratio: float = math.sqrt(2)) -> list[tuple[int, int]]:
    """Blocks of updates, ``first`` wide, then growing by ``ratio`` (a log grid); the short tail joins the last."""
    edges = [0]
    while edges[-1] < count:
        edges.append(max(edges[-1] + first, round(edges[-1] * ratio)))
    edges[-1] = count
    if len(edges) > 2 and edges[-1] - edges[-2] < first:
        edges.pop(-2)
    return list(zip(edges[:-1], edges[1:]))


def _plateaus(change: Tensor, change_se: Tensor, centres: Tensor) -> list[list[int]]:
    """Maximal runs of ≥ 2 block changes within 2 SE that a later significant decrease (< −3 SE) follows:
    ``[first, last]`` block times (observations) of each run."""
    flat = (change.abs() <= 2 * change_se).tolist()
    falling = (change < -3 * change_se).tolist()
    runs, start = [], None
    for b, is_flat in enumerate([*flat, False]):
        if is_flat and start is None:
            start = b
        elif not is_flat and start is not None:
            if b - start >= 2 and any(falling[b:]):
                runs.append([int(centres[start]), int(centres[b])])
            start = None
    return runs


def training_events(curve: list[float], observations_per_update: int) -> dict[str, Any]:
    """Rises, sudden drops and plateaus of a training curve (velocity = loss per observation), see the docstring.

    Block means ``L_b`` (noise ``SE_b = σ_b/√n_b``, ``σ_b² = mean(Δy²)/2``) at times ``c_b`` (observations); the
    block acceleration ``L_b − L_{b−1}`` (``lagrl.kinematics``) is a rise where it exceeds 3 SE. The rate of
    decrease ``R_b = (L_{b−1} − L_b)/(c_b − c_{b−1})``; a sudden drop where ``R_b > 2 R_{b−1}`` and
    ``R_b − R_{b−1} > 3 SE``; a plateau: ≥ 2 consecutive changes within 2 SE, with a decrease of more than 3 SE
    later (learning resumes). Reported, not in the verdict: sudden drops in log time, where the drop per block of
    the log grid (per half-octave) more than doubles by more than 3 SE — what a log-x plot shows as a shoulder.
    """
    y = torch.tensor(curve, dtype=F64)
    blocks = [(lo, hi) for lo, hi in update_blocks(len(curve)) if hi - lo >= 2]
    means = torch.stack([y[lo:hi].mean() for lo, hi in blocks])
    se = torch.stack([(y[lo:hi].diff().square().mean() / 2 / (hi - lo)).sqrt() for lo, hi in blocks])
    centres = torch.tensor([observations_per_update * ((lo + hi - 1) / 2 + 1) for lo, hi in blocks], dtype=F64)
    motion = kinematics(losses=means, density=True)
    change_se = (se[1:].square() + se[:-1].square()).sqrt()
    rises = check_deceleration(_standardised(motion.acceleration, change_se), tol=3.0)
    spans = centres.diff()
    rate = -motion.acceleration / spans
    sudden = []
    for b in range(1, len(rate)):  # rate[b] is between blocks b and b+1
        variance = (
            se[b].square() * (1 / spans[b] + 1 / spans[b - 1]).square()
            + se[b + 1].square() / spans[b].square()
            + se[b - 1].square() / spans[b - 1].square()
        )
        if rate[b] > 2 * rate[b - 1] and rate[b] - rate[b - 1] > 3 * variance.sqrt():
            sudden.append(int(centres[b + 1]))
    shoulders = []  # per block on the log grid (the blocks growing by √2): the drop per half-octave more than doubles
    for b in range(1, len(motion.acceleration)):
        lo, hi = blocks[b]
        if hi - lo > blocks[0][1] - blocks[0][0]:
            drop, before = -motion.acceleration[b], -motion.acceleration[b - 1]
            noise = (se[b + 1].square() + 4 * se[b].square() + se[b - 1].square()).sqrt()
            if drop > 2 * before and drop - before > 3 * noise:
                shoulders.append(int(centres[b + 1]))
    plateaus = _plateaus(motion.acceleration, change_se, centres)
    rise_at = [int(centres[int(i) + 1]) for i in rises.violations[:, 0]]
    verdict = "fails" if rise_at else ("mixed" if sudden else "holds")
    return {
        "verdict": verdict,
        "rises_at_observations": rise_at,
        "sudden_drops_at_observations": sudden,
        "sudden_drops": len(sudden),
        "log_time_sudden_drops_at_observations": shoulders,
        "plateaus": len(plateaus),
        "plateaus_at_observations": plateaus,
        "block_observations": centres.tolist(),
        "block_mean": means.tolist(),
        "block_se": se.tolist(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Plots, verdicts, main
# ---------------------------------------------------------------------------------------------------------------


def _band(axis: plt.Axes, t: list[int], mean: list[float], se: list[float], label: str, color: str) -> None:
    low = [m - 2 * s for m, s in zip(mean, se)]
    high = [m + 2 * s for m, s in zip(mean, se)]
    axis.fill_between(t, low, high, color=color, alpha=0.25, linewidth=0)
    axis.plot(t, mean, color=color, label=label)


def _mark_rises(axis: plt.Axes, velocity: list[float], rises: list[int], color: str) -> None:
    if rises:
        axis.plot(rises, [velocity[t - 1] for t in rises], "x", color=color, markersize=7)


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per case: measured ``v(t)`` with its ±2 SE band beside the Bayes floor or a reference."""
    figure, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    exact = results["exact"]
    for axis, prefix, title in (
        (axes[0, 0], "bernoulli", "(a) Beta(1,1)–Bernoulli Bayes predictor, exact\nprior predictive and fixed θ"),
        (
            axes[0, 1],
            "categorical",
            "(a) Dirichlet(1)-categorical Bayes predictor, K = 4, exact\nprior predictive and fixed θ",
        ),
    ):
        for (name, row), color in zip(
            ((k, v) for k, v in exact.items() if k.startswith(prefix) and "velocity" in v), ("k", "tab:red", "tab:blue")
        ):
            t = list(range(1, len(row["velocity"]) + 1))
            axis.plot(t, row["velocity"], color=color, label=f"{row['reading']}: E[v(t)]")
            _mark_rises(axis, row["velocity"], row["rises_at_t"], color)
            if row["limit_entropy"] is not None:
                axis.axhline(row["limit_entropy"], color=color, linestyle=":", linewidth=1)
        axis.plot([], [], "x", color="gray", label="rise: v(t+1) > v(t)")
        axis.plot([], [], ":", color="gray", label="entropy H(θ) (the t → ∞ floor)")
        axis.set_title(title, fontsize=10)
    axis = axes[0, 2]
    markov = {k: v for k, v in exact.items() if k.startswith("markov")}
    for (name, row), color in zip(markov.items(), ("tab:purple", "tab:green")):
        t = list(range(1, len(row.get("velocity", row.get("mean", []))) + 1))
        if "velocity" in row:
            axis.plot(t, row["velocity"], color=color, label=f"{name.split('_')[1]}: {row['reading']}")
            _mark_rises(axis, row["velocity"], row["rises_at_t"], color)
        else:
            _band(axis, t, row["mean"], row["se"], f"{name.split('_')[1]}: {row['reading']} ±2 SE", color)
            small = row["exact_first_steps"]
            axis.plot(range(1, len(small) + 1), small, "o", color=color, markersize=3, label="K3: exact (first steps)")
    axis.set_title(
        "(a) Dirichlet(1) Markov chains, Bayes predictor\nprior predictive (first state uniform)", fontsize=10
    )
    axis = axes[1, 0]
    b = results["markov_transformer"]
    t = list(range(1, len(b["check"]["mean"]) + 1))
    _band(
        axis, t, b["check"]["mean"], b["check"]["se"], f"transformer ({b['parameters']} params), held out ±2 SE", "C0"
    )
    _band(axis, t, b["floor_expected"], b["floor_expected_se"], "Bayes floor E[v(t)] (Monte Carlo) ±2 SE", "k")
    axis.plot(t, b["bayes_on_same_chains"], "k:", linewidth=1, label="Bayes predictor on the same chains")
    axis.set_title(
        f"(b) causal transformer on random K = {results['settings']['markov_states']} state Markov chains\n"
        f"held out; mean gap above Bayes {b['gap_average']:.4f} ± {b['gap_average_se']:.4f} nats",
        fontsize=10,
    )
    axis = axes[1, 1]
    c = results["char_transformer"]
    t = list(range(1, len(c["check"]["mean"]) + 1))
    _band(axis, t, c["check"]["mean"], c["check"]["se"], f"char transformer ({c['parameters']} params) ±2 SE", "C1")
    for (name, value), style in zip(c["references"].items(), ("--", "-.")):
        axis.axhline(value, color="gray", linestyle=style, linewidth=1, label=f"{name.replace('_', ' ')} (held out)")
    block_t = [(lo + hi) / 2 for lo, hi in c["check"]["block_positions"]]
    axis.plot(block_t, c["check"]["block_mean"], "o", color="C1", markersize=4, label="octave-block means")
    axis.set_title(
        "(c) character transformer on pydoc_data.topics (Fig. 1 analogue)\nheld-out windows at random offsets",
        fontsize=10,
    )
    for axis in (*axes[0], axes[1, 0], axes[1, 1]):
        axis.set_xscale("log")
        axis.set_xlabel("position in context t (observations)")
        axis.set_ylabel("velocity v(t) = −log p(x_t | x_<t) (nats)")
        axis.legend(fontsize=7)
    axis = axes[1, 2]
    twin = axis.twinx()
    for (preset, d), color in zip(results["agent"].items(), ("C2", "C4")):
        axis.plot(d["env_steps"], d["code_length"], color=color, label=f"{preset}: mean −log π(a_t|s_t), actions taken")
        twin.plot(
            d["env_steps"],
            d["mean_return"],
            color=color,
            alpha=0.4,
            linewidth=1,
            linestyle="--",
            label=f"{preset}: mean episode return",
        )
    axis.axhline(math.log(2), color="gray", linestyle=":", label="uniform policy, log 2")
    axis.set_xlabel("environment steps (observations)")
    axis.set_ylabel("policy code length per action (nats)")
    twin.set_ylabel("episode return (dashed)")
    lines = axis.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    axis.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, framealpha=0.9)
    axis.set_title("(d) LagrangianPPO on CartPole-v1\nvelocity along training (our reading)", fontsize=10)
    save_figure(figure, path)


def _training_panel(
    axis: plt.Axes, curve: list[float], per: int, events: dict[str, Any], label: str, color: str, unit: str
) -> None:
    """One training curve (per update, time in observations) with its block means, rises, drops and plateaus."""
    times = [per * (i + 1) for i in range(len(curve))]
    axis.plot(times, curve, color=color, alpha=0.35, linewidth=0.8, label=f"{label}, per update")
    axis.plot(events["block_observations"], events["block_mean"], "o-", color=color, markersize=3, label="block means")
    means = dict(zip((int(c) for c in events["block_observations"]), events["block_mean"]))
    for name, marker, text in (
        ("rises_at_observations", "x", "rise (> 3 SE)"),
        ("sudden_drops_at_observations", "v", "sudden drop"),
        ("log_time_sudden_drops_at_observations", "1", "sudden drop in log time (not in the verdict)"),
    ):
        at = events[name]
        axis.plot(
            at, [means[a] for a in at], marker, color="k", markersize=9, linestyle="none", label=f"{text}: {len(at)}"
        )
    for i, (first, last) in enumerate(events["plateaus_at_observations"]):
        axis.axvspan(first, last, color="gold", alpha=0.3, label=None if i else "plateau")
    axis.plot([], [], linestyle="none", label=f"plateaus: {events['plateaus']}")
    axis.set_xscale("log")
    axis.set_xlabel(f"observations ({unit})")
    axis.legend(fontsize=7)


def plot_training(results: dict[str, Any], path: Path) -> None:
    """The training curves with their block means, rises and sudden drops."""
    figure, grid = plt.subplots(2, 3, figsize=(18, 9))
    axes = grid.reshape(-1)
    b, c = results["markov_transformer"], results["char_transformer"]
    _training_panel(
        axes[0], b["training_loss"], b["observations_per_step"], b["training"], "training loss", "C0", "symbols"
    )
    floor = float(np.mean(b["floor_expected"]))
    axes[0].axhline(floor, color="k", linestyle="--", label="Bayes floor (mean over positions)")
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"(b) Markov transformer: {b['training']['verdict']}", fontsize=10)
    _training_panel(
        axes[1], c["training_loss"], c["observations_per_step"], c["training"], "training loss", "C1", "characters"
    )
    axes[1].set_title(f"(c) char transformer: {c['training']['verdict']}", fontsize=10)
    per = results["settings"]["agent_envs"] * results["settings"]["agent_ppo"]["n_steps"]
    units = ["nats/symbol", "nats/char"]
    for i, (preset, d) in enumerate(results["agent"].items()):
        axis, color = axes[2 + 2 * i], ("C2", "C4")[i]
        _training_panel(axis, d["code_length"], per, d["code_length_training"], "mean −log π", color, "env steps")
        axis.set_title(
            f"(d) PPO {preset}: −log π of actions taken: {d['code_length_training']['verdict']}", fontsize=10
        )
        axis = axes[3 + 2 * i]
        _training_panel(
            axis, d["loss_velocity"], per, d["loss_training"], "PPO loss (kinematics/velocity)", color, "env steps"
        )
        axis.set_title(f"(d) PPO {preset}: loss per update (our reading): {d['loss_training']['verdict']}", fontsize=10)
        units += ["nats/action", "PPO loss"]
    for axis, unit in zip(axes, units):
        axis.set_ylabel(f"velocity = loss per observation ({unit})")
    save_figure(figure, path)


def verdicts(results: dict[str, Any]) -> dict[str, str]:
    """Each case and reading: "holds" (decelerating) or "fails"; training curves by :func:`training_events`."""
    table = {
        name: "holds" if row["decelerating"] else "fails"
        for name, row in results["exact"].items()
        if "decelerating" in row
    }
    table["markov_transformer_in_context"] = (
        "holds" if results["markov_transformer"]["check"]["decelerating"] else "fails"
    )
    table["char_transformer_in_context"] = "holds" if results["char_transformer"]["check"]["decelerating"] else "fails"
    table["markov_transformer_training"] = results["markov_transformer"]["training"]["verdict"]
    table["char_transformer_training"] = results["char_transformer"]["training"]["verdict"]
    for preset, d in results["agent"].items():
        table[f"agent_{preset}_code_length_training"] = d["code_length_training"]["verdict"]
        table[f"agent_{preset}_loss_training"] = d["loss_training"]["verdict"]
    return table


def overall(table: dict[str, str]) -> str:
    """ "holds" if every case holds, "fails" if none does, "mixed" otherwise."""
    held = [value == "holds" for value in table.values()]
    return "holds" if all(held) else ("fails" if not any(held) else "mixed")


def settings_for(quick: bool) -> dict[str, Any]:
    full = not quick
    return {
        "beta_prior": [1.0, 1.0],
        "dirichlet_prior": [1.0, 1.0, 1.0, 1.0],
        "skewed_theta": [0.7, 0.1, 0.1, 0.1],
        "exact_horizon": 256 if full else 64,
        "monte_carlo_sequences": 20_000 if full else 4_000,
        "monte_carlo_horizon": 64 if full else 16,
        "markov_alpha": 1.0,
        "markov_states_exact": 2,
        "markov_horizon_exact": 64 if full else 16,
        "markov_states": 3,
        "markov_horizon_exact_small": 12 if full else 8,
        "markov_length": 64 if full else 32,
        "markov_floor_sequences": 20_000 if full else 2_000,
        "markov_width": 32,
        "markov_batch": 64 if full else 32,
        "markov_steps": 3000 if full else 150,
        "markov_lr": 3e-3,
        "markov_test_sequences": 4000 if full else 500,
        "char_length": 128 if full else 64,
        "char_width": 64 if full else 32,
        "char_batch": 32 if full else 16,
        "char_steps": 2000 if full else 120,
        "char_lr": 2e-3,
        "char_test_windows": 2000 if full else 300,
        "agent_presets": ["fisher-sqrt", "adam"],
        "agent_envs": 8,
        "agent_steps": 30_000 if full else 2_048,
        "agent_ppo": dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0),
    }


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], "short horizons, tiny transformers (≈150 steps), 2k agent steps")
    start = time.perf_counter()
    settings = settings_for(args.quick)
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {"settings": settings}
    phases = {}
    for name, case in (
        ("exact", lambda: exact_bayes(settings, rng, args.device)),
        ("markov_transformer", lambda: markov_transformer(settings, args.seed, args.device)),
        ("char_transformer", lambda: char_transformer(settings, args.seed, args.device)),
        (
            "agent",
            lambda: {p: agent_velocity(settings, p, args.seed, args.device) for p in settings["agent_presets"]},
        ),
    ):
        begin = time.perf_counter()
        results[name] = case()
        phases[name] = time.perf_counter() - begin
        print(f"{name}: {phases[name]:.1f} s", flush=True)
    table = verdicts(results)
    plot(results, args.out / "deceleration.png")
    plot_training(results, args.out / "deceleration_training.png")
    for name, value in table.items():
        print(f"{name:40} {value}")
    numbers = {k: v for k, v in results.items() if k != "settings"} | {
        "verdicts": table,
        "phase_seconds": phases,
        "wall_seconds": time.perf_counter() - start,
    }
    write_report(args, "deceleration", CLAIM, overall(table), settings, numbers)


if __name__ == "__main__":
    main()
