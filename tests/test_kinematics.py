"""Tests for lagrl.kinematics against independent references.

The reference learner is the Beta–Bernoulli Bayes predictor, prior Beta(α, β):
``p(x_t = 1 | x_<t) = (k + α) / (n + α + β)`` with ``n = t − 1`` past observations, ``k`` of them ones.
Its joint probability has the closed form ``B(k_t + α, t − k_t + β) / B(α, β)``, and its expected
velocity under a Bernoulli(q) source is an exact finite sum over ``k ~ Binomial(t − 1, q)``.
"""

import math

import pytest
import torch

from lagrl.kinematics import (
    DecelerationReport,
    Kinematics,
    check_deceleration,
    information_acceleration,
    information_position,
    information_velocity,
    kinematics,
)

F64 = torch.float64
PRIORS = {"laplace": (1.0, 1.0), "kt": (0.5, 0.5)}


def bernoulli_entropy(q: float) -> float:
    return -(q * math.log(q) + (1 - q) * math.log1p(-q))


def sample_sequences(batch: int, steps: int, q: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Bernoulli(q) sequences, drawn on CPU (the same on every device), shape (batch, steps), float64."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, generator=gen, dtype=F64) < q).to(device, F64)


def beta_bernoulli_log_probs(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Per-step conditional log-probabilities ``log p(x_t | x_<t)`` of the Bayes predictor."""
    ones_before = x.cumsum(-1) - x
    seen = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
    zeros_before = seen - ones_before
    return torch.where(x == 1, ones_before + alpha, zeros_before + beta).log() - (seen + alpha + beta).log()


def log_beta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def binomial_pmf(steps: int, q: float, device: torch.device) -> torch.Tensor:
    """``pmf[n, k] = Binomial(k; n, q)`` for ``n, k < steps`` (zero where ``k > n``)."""
    idx = torch.arange(steps, device=device)
    n, k = idx[:, None], idx[None, :]
    m = (n - k).clamp(min=0)
    log_fact = torch.lgamma(idx.to(F64) + 1)
    log_pmf = log_fact[n] - log_fact[k] - log_fact[m] + k.to(F64) * math.log(q) + m.to(F64) * math.log1p(-q)
    return torch.where(k <= n, log_pmf.exp(), 0.0)


def expected_velocity(steps: int, q: float, alpha: float, beta: float, device: torch.device) -> torch.Tensor:
    """Exact ``E[v(t)]``, t = 1..steps, of the Beta–Bernoulli predictor under a Bernoulli(q) source.

    ``E[v] = log(n+α+β) − q·E[log(k+α)] − (1−q)·E[log(n−k+β)]`` with ``k ~ Bin(n, q)`` and
    ``n − k ~ Bin(n, 1−q)``.
    """
    j = torch.arange(steps, dtype=F64, device=device)
    return (
        (j + alpha + beta).log()
        - q * binomial_pmf(steps, q, device) @ (j + alpha).log()
        - (1 - q) * binomial_pmf(steps, 1 - q, device) @ (j + beta).log()
    )


# 1. position = sum of velocities = exact joint code length ------------------------------------------


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 0.5), (2.0, 5.0)])
def test_position_is_joint_code_length(device, alpha, beta):
    x = sample_sequences(64, 300, q=0.3, device=device)
    position = information_position(beta_bernoulli_log_probs(x, alpha, beta))
    k = x.cumsum(-1)
    t = torch.arange(1, x.shape[-1] + 1, dtype=F64, device=device)
    joint_log_prob = log_beta(k + alpha, t - k + beta) - log_beta(*torch.tensor([alpha, beta], dtype=F64))
    torch.testing.assert_close(position, -joint_log_prob, rtol=0, atol=1e-10)


# 2. expected velocity of a Bayes learner: deceleration and the entropy floor ------------------------


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("q", [0.2, 0.9])
def test_expected_velocity_decelerates_to_entropy(device, prior, q):
    steps = 2000
    ev = expected_velocity(steps, q, *PRIORS[prior], device)
    report = check_deceleration(information_acceleration(ev), tol=1e-12)
    assert report.decelerating, report.violations
    gap = ev - bernoulli_entropy(q)
    assert (gap > 0).all()
    # Bayes mixtures over a one-parameter family have expected regret ~ 1/(2t) per step (Clarke–Barron).
    assert abs(steps * gap[-1].item() - 0.5) < 5e-3


@pytest.mark.parametrize("prior", PRIORS)
def test_expected_velocity_rises_first_for_fair_coin(device, prior):
    """A counterexample to Insight 1 (a hypothesis): with a symmetric prior and q = ½ the first
    prediction is already optimal (v(1) = log 2 = H), so E[v] must rise before it decays."""
    ev = expected_velocity(200, 0.5, *PRIORS[prior], device)
    assert ev[0].item() == pytest.approx(math.log(2), abs=1e-15)
    report = check_deceleration(information_acceleration(ev), tol=1e-12)
    assert not report.decelerating
    assert report.violations.flatten().tolist() == [0, 1]  # E[v] rises for t = 1 → 3, then falls
    assert report.max_acceleration == pytest.approx((ev[1] - ev[0]).item(), rel=1e-12)


@pytest.mark.parametrize("q, prior", [(0.2, "laplace"), (0.5, "kt"), (0.9, "kt")])
def test_monte_carlo_velocity_matches_exact_expectation(device, q, prior):
    alpha, beta = PRIORS[prior]
    x = sample_sequences(20_000, 50, q, device, seed=1)
    v = information_velocity(beta_bernoulli_log_probs(x, alpha, beta))
    mean, stderr = v.mean(0), v.std(0) / math.sqrt(v.shape[0])
    exact = expected_velocity(50, q, alpha, beta, device)
    assert ((mean - exact).abs() <= 4 * stderr + 1e-12).all()


# 3. acceleration, shapes, dtype and device ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_acceleration_is_forward_difference(device, dtype):
    v = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(2), dtype=dtype).to(device)
    a = information_acceleration(v)
    expected = torch.empty(3, 4, 6, dtype=dtype, device=device)
    for t in range(6):
        expected[..., t] = v[..., t + 1] - v[..., t]
    assert a.shape == (3, 4, 6) and a.dtype == dtype and a.device == v.device
    torch.testing.assert_close(a, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_batched_kinematics_shapes_dtype_device(device, dtype):
    log_probs = -torch.rand(3, 4, 7, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
    kin = kinematics(log_probs=log_probs)
    assert isinstance(kin, Kinematics)
    assert [tuple(f.shape) for f in kin] == [(3, 4, 7), (3, 4, 7), (3, 4, 6)]
    assert all(f.dtype == dtype and f.device == log_probs.device for f in kin)
    torch.testing.assert_close(kin.velocity, information_velocity(log_probs), rtol=0, atol=0)
    torch.testing.assert_close(kin.position, information_position(log_probs), rtol=0, atol=0)
    torch.testing.assert_close(kin.velocity, -log_probs, rtol=0, atol=0)


def test_density_allows_positive_log_probs(device):
    log_density = torch.tensor([1.5, 0.2, -0.3], dtype=F64, device=device)
    kin = kinematics(log_probs=log_density, density=True)
    torch.testing.assert_close(kin.position, torch.tensor([-1.5, -1.7, -1.4], dtype=F64, device=device))
    torch.testing.assert_close(information_position(log_density, density=True), kin.position)
    torch.testing.assert_close(kinematics(losses=-log_density, density=True).position, kin.position)


# 4. learning curves and injected accelerations ------------------------------------------------------


def test_losses_match_log_probs_and_bumps_are_found(device):
    t = torch.arange(1, 61, dtype=F64, device=device)
    losses = torch.stack([1 / t.sqrt(), 2 / t])  # two strictly decreasing curves
    losses[0, 10] += 0.5  # a(9) > 0 in curve 0
    losses[1, 40] += 0.5  # a(39) > 0 in curve 1
    from_losses = kinematics(losses=losses)
    from_log_probs = kinematics(log_probs=-losses)
    for got, want in zip(from_losses, from_log_probs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    report = check_deceleration(from_losses.acceleration)
    assert isinstance(report, DecelerationReport) and not report.decelerating
    assert report.violations.tolist() == [[0, 9], [1, 39]]
    assert report.violations.device == losses.device
    bumps = torch.stack([losses[0, 10] - losses[0, 9], losses[1, 40] - losses[1, 39]])
    assert report.max_acceleration == pytest.approx(bumps.max().item(), rel=1e-15)
    assert check_deceleration(from_losses.acceleration, tol=0.6).decelerating
    assert check_deceleration(torch.zeros(3, 5, device=device)).decelerating  # a plateau is not acceleration


# 5. errors ------------------------------------------------------------------------------------------


def test_errors(device):
    ok = torch.full((2, 5), -0.5, device=device)
    nan = ok.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="time dimension"):
        information_velocity(torch.empty(2, 0, device=device))
    with pytest.raises(ValueError, match="time dimension"):
        information_position(torch.tensor(-0.5, device=device))
    with pytest.raises(ValueError, match="exactly one of log_probs= or losses=, got both"):
        kinematics(log_probs=ok, losses=-ok)
    with pytest.raises(ValueError, match="exactly one of log_probs= or losses=, got neither"):
        kinematics()
    with pytest.raises(ValueError, match="pass log-probabilities, not probabilities or losses"):
        information_velocity(torch.full((4,), 0.25, device=device))  # probabilities
    with pytest.raises(ValueError, match="density=True"):
        kinematics(losses=ok)  # negative losses
    for call in (information_velocity, information_position, information_acceleration, check_deceleration):
        with pytest.raises(ValueError, match="NaN"):
            call(nan)
    with pytest.raises(ValueError, match="NaN"):
        kinematics(losses=-nan)
    one_step = kinematics(log_probs=ok[:, :1])
    with pytest.raises(ValueError, match="acceleration .*empty"):
        check_deceleration(one_step.acceleration)
    with pytest.raises(ValueError, match="tol must be non-negative"):
        check_deceleration(ok, tol=-1e-3)
