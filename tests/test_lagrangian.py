"""Tests for lagrl.lagrangian: closed forms (numpy) for T, L, E and the action; Monte Carlo checks of the
Euler–Lagrange quantity Q of Eq. 30 against the Bartlett identities and the Gaussian closed form

    Q(μ, σ) = (−3/2 − E[(y − μ)²]/(2σ²)) / 2,

from ``F⁻¹∇log p = (y − μ, −σ/2 + (y − μ)²/(2σ))`` with ``F = diag(1/σ², 2/σ²)``, whose divergence is
``−1 − 1/2 − (y − μ)²/(2σ²)``, divided by ``P = 2``.
"""

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

from helpers import F64, randn, random_spd
from lagrl.fisher import DenseFisher, KroneckerFisher
from lagrl.lagrangian import action, energy, euler_lagrange_q, kinetic_energy, learning_lagrangian


def numpy_kinetic(F, g, num_params, damping=0.0):
    """(1/2P) gᵀ (F + λI)⁻¹ g by numpy."""
    F, g = F.cpu().numpy(), g.flatten().cpu().numpy()
    return g @ np.linalg.solve(F + damping * np.eye(len(g)), g) / (2 * num_params)


# --- T, L, E, S -----------------------------------------------------------------------------------


def test_kinetic_energy_closed_form(device):
    F, g = random_spd(5, 1, device), randn(5, seed=2, device=device)
    for damping in (0.0, 0.2):
        value = kinetic_energy(g, F, 5, damping=damping)
        assert value.device.type == device.type and value.ndim == 0
        assert value.item() == pytest.approx(numpy_kinetic(F, g, 5, damping), rel=1e-12)
    kron, g_layer = (
        KroneckerFisher(random_spd(3, 3, device), random_spd(2, 4, device)),
        randn(2, 3, seed=5, device=device),
    )
    assert kinetic_energy(g_layer, kron, 6).item() == pytest.approx(
        numpy_kinetic(kron.to_dense(), g_layer, 6), rel=1e-12
    )


def test_kinetic_energy_of_blocks_sums(device):
    """With a block-diagonal Fisher, T over all P parameters is the sum of the blocks' T (each with P)."""
    a, b = random_spd(3, 6, device), random_spd(2, 7, device)
    g = randn(5, seed=8, device=device)
    full = kinetic_energy(g, torch.block_diag(a, b), 5)
    torch.testing.assert_close(kinetic_energy(g[:3], a, 5) + kinetic_energy(g[3:], DenseFisher(b), 5), full)


def test_energy_and_lagrangian(device):
    """E + L = 2T and E − L = 2V (V = loss)."""
    F, g = randn(4, seed=9, device=device).exp(), randn(4, seed=10, device=device)
    loss = torch.tensor(1.3, dtype=F64, device=device)
    T = kinetic_energy(g, F, 4)
    torch.testing.assert_close(energy(loss, g, F, 4) + learning_lagrangian(loss, g, F, 4), 2 * T)
    torch.testing.assert_close(energy(loss, g, F, 4) - learning_lagrangian(loss, g, F, 4), 2 * loss)
    torch.testing.assert_close(learning_lagrangian(loss, g, F, 4), T - loss)
    torch.testing.assert_close(learning_lagrangian(0.5, g, F, 4), T - 0.5)  # a float loss


def test_action(device):
    constant = torch.full((3, 7), -0.4, dtype=F64, device=device)
    torch.testing.assert_close(action(constant, dt=0.25), torch.full((3,), 7 * -0.4 * 0.25, dtype=F64, device=device))
    lagrangians, dt = randn(7, seed=11, device=device), randn(7, seed=12, device=device).abs()
    assert action(lagrangians, dt).item() == pytest.approx(
        float(np.dot(lagrangians.cpu().numpy(), dt.cpu().numpy())), rel=1e-12
    )
    with pytest.raises(ValueError, match="does not broadcast"):
        action(lagrangians, torch.ones(3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="scalar"):
        action(lagrangians.sum())


# --- Euler–Lagrange quantity (Eq. 30) -------------------------------------------------------------


def gaussian(theta):
    return Normal(theta[0], theta[1])


def gaussian_fisher(theta):
    """Closed form F = diag(1/σ², 2/σ²) of Normal(μ, σ)."""
    return torch.diag(torch.stack([1 / theta[1] ** 2, 2 / theta[1] ** 2]))


def gaussian_q(theta, y):
    return (-1.5 - ((y - theta[0]) ** 2).mean() / (2 * theta[1] ** 2)) / 2


def observations(device, n=2048):
    """Data from Normal(1, 2), unlike the models evaluated on it."""
    return (1.0 + 2.0 * randn(n, seed=40)).to(device)


def within(value, se, target, k=3.0):
    assert abs(value.item() - target) <= k * se.item(), f"Q = {value.item():.5f} ± {se.item():.5f}, expected {target}"


@pytest.mark.parametrize("theta", [(0.0, 1.0), (-2.0, 0.4), (3.0, 5.0)])
def test_q_is_minus_one_under_the_model(device, theta):
    theta = torch.tensor(theta, dtype=F64, device=device)
    value, se = euler_lagrange_q(gaussian, theta, expectation="model", generator=torch.Generator().manual_seed(41))
    assert value.device.type == device.type and 0 < se.item() < 0.02
    within(value, se, -1.0)


def test_q_at_the_data_mle_is_minus_one(device):
    y = observations(device)
    mle = torch.stack([y.mean(), y.std(correction=0)])
    value, se = euler_lagrange_q(gaussian, mle, expectation="data", data=y)
    within(value, se, -1.0)
    assert value.item() == pytest.approx(-1.0, abs=1e-10)  # exact: the chunk divergences average to the sample mean


def test_q_away_from_the_mle_matches_the_closed_form(device):
    y = observations(device)
    theta = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    value, se = euler_lagrange_q(gaussian, theta, expectation="data", data=y)
    assert abs(value.item() + 1.0) > 10 * se.item()
    within(value, se, gaussian_q(theta, y).item())
    assert value.item() == pytest.approx(gaussian_q(theta, y).item(), abs=1e-10)


def test_closed_form_fisher_matches_the_kl_hessian(device):
    y = observations(device, n=512)
    theta = torch.tensor([0.5, 1.5], dtype=F64, device=device)
    default = euler_lagrange_q(gaussian, theta, expectation="data", data=y, num_batches=8)
    closed = euler_lagrange_q(gaussian, theta, expectation="data", data=y, num_batches=8, fisher_fn=gaussian_fisher)
    torch.testing.assert_close(closed, default, rtol=0, atol=1e-10)


def test_q_is_minus_one_for_conditional_discrete_models(device):
    """Logistic regression (Bernoulli) and a 3-class softmax (Categorical) over fixed inputs (batch shape (5,))."""
    x = torch.linspace(-1, 1, 5, dtype=F64, device=device)
    theta = torch.tensor([0.3, -1.2], dtype=F64, device=device)
    models = [
        lambda t: Bernoulli(logits=t[0] + t[1] * x),
        lambda t: Categorical(logits=torch.stack([t[0] * x, t[1] * x + 0.5, torch.zeros_like(x)], dim=-1)),
    ]
    for seed, model in enumerate(models):
        value, se = euler_lagrange_q(model, theta, expectation="model", generator=torch.Generator().manual_seed(seed))
        within(value, se, -1.0)


def test_generator_makes_the_model_expectation_reproducible(device):
    theta = torch.tensor([0.2, 0.8], dtype=F64, device=device)
    state = torch.get_rng_state()
    runs = [
        euler_lagrange_q(
            gaussian,
            theta,
            expectation="model",
            num_samples=256,
            num_batches=4,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_euler_lagrange_errors(device):
    theta = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    y = observations(device, n=64)
    with pytest.raises(ValueError, match="expectation must be 'model'"):
        euler_lagrange_q(gaussian, theta, expectation="empirical")
    with pytest.raises(ValueError, match="needs the observations"):
        euler_lagrange_q(gaussian, theta, expectation="data")
    with pytest.raises(ValueError, match="only with expectation='data'"):
        euler_lagrange_q(gaussian, theta, expectation="model", data=y)
    with pytest.raises(ValueError, match="batch_shape"):
        euler_lagrange_q(gaussian, theta, expectation="data", data=y.reshape(32, 2))
    with pytest.raises(ValueError, match="num_batches"):
        euler_lagrange_q(gaussian, theta, expectation="data", data=y, num_batches=1)
    with pytest.raises(ValueError, match="cannot fill"):
        euler_lagrange_q(gaussian, theta, expectation="data", data=y[:4], num_batches=8)
    with pytest.raises(ValueError, match="flat parameter vector"):
        euler_lagrange_q(gaussian, theta.reshape(1, 2), expectation="data", data=y)
    with pytest.raises(ValueError, match="not positive definite"):
        euler_lagrange_q(
            gaussian,
            theta,
            expectation="data",
            data=y,
            num_batches=2,
            fisher_fn=lambda t: torch.zeros(2, 2, dtype=F64, device=device) * t[0],
        )
