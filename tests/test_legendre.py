"""Tests for lagrl.legendre against closed forms: the harmonic oscillator, L = Σ cosh(q̇) − q², numpy
solves for the particle maps and the log-sum-exp ↔ negative-entropy conjugate pair."""

import math

import numpy as np
import pytest
import torch

from helpers import F64, randn, random_spd
from lagrl.fisher import DenseFisher, DiagonalFisher, KroneckerFisher
from lagrl.lagrangian import kinetic_energy, particle_kinetic_energy
from lagrl.legendre import (
    as_fisher,
    gradient_from_momentum,
    hamiltonian,
    hamiltonian_function,
    momentum,
    momentum_from_velocity,
    negative_entropy,
    soft_maximum,
    softmax_policy,
    velocity,
    velocity_from_gradient,
)

# --- mechanics ------------------------------------------------------------------------------------

MASS, STIFFNESS = 2.5, 0.7


def oscillator(q, qdot):
    return 0.5 * MASS * qdot.dot(qdot) - 0.5 * STIFFNESS * q.dot(q)


def cosh_lagrangian(q, qdot):
    return qdot.cosh().sum() - q.dot(q)


def coupled(q, qdot):
    """Strictly convex in q̇ (Hessian diag(cosh q̇) + q qᵀ) and coupled to q."""
    return qdot.cosh().sum() + 0.5 * q.dot(qdot) ** 2 + q.sin().sum()


def test_harmonic_oscillator_hamiltonian(device):
    H = hamiltonian_function(oscillator)
    for seed in range(3):
        q, p = randn(3, seed=seed, device=device), randn(3, seed=seed + 10, device=device)
        expected = p.dot(p) / (2 * MASS) + STIFFNESS * q.dot(q) / 2
        torch.testing.assert_close(H(q, p), expected, rtol=1e-12, atol=1e-12)
        assert H(q, p).device.type == device.type
        # H at a velocity: q̇ = p/m
        torch.testing.assert_close(hamiltonian(oscillator, q, p / MASS), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(momentum(oscillator, q, p / MASS), p, rtol=1e-12, atol=1e-12)


def test_cosh_lagrangian_inverse_map_is_asinh(device):
    q, qdot = randn(4, seed=1, device=device), 1.5 * randn(4, seed=2, device=device)
    torch.testing.assert_close(momentum(cosh_lagrangian, q, qdot), qdot.sinh(), rtol=1e-12, atol=1e-12)
    p = 2.0 * randn(4, seed=3, device=device)
    torch.testing.assert_close(velocity(cosh_lagrangian, q, p), p.asinh(), rtol=1e-12, atol=1e-12)
    expected = p.dot(p.asinh()) - (1 + p.square()).sqrt().sum() + q.dot(q)  # cosh(asinh p) = √(1+p²)
    torch.testing.assert_close(hamiltonian_function(cosh_lagrangian)(q, p), expected, rtol=1e-12, atol=1e-12)


def test_velocity_carries_the_implicit_derivative(device):
    """d asinh(p)/dp = 1/√(1 + p²) = (∂²L/∂q̇²)⁻¹ at q̇(p), through the last on-graph Newton step."""
    p = 2.0 * randn(4, seed=8, device=device).requires_grad_()
    (slope,) = torch.autograd.grad(velocity(cosh_lagrangian, randn(4, device=device), p).sum(), p)
    torch.testing.assert_close(slope, (1 + p.detach().square()).rsqrt(), rtol=1e-10, atol=1e-10)


def test_velocity_inverts_momentum(device):
    for seed in range(3):
        q, qdot = randn(3, seed=seed, device=device), randn(3, seed=seed + 5, device=device)
        p = momentum(coupled, q, qdot).detach()
        torch.testing.assert_close(velocity(coupled, q, p), qdot, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(velocity(coupled, q, p, qdot0=qdot + 0.1), qdot, rtol=1e-10, atol=1e-10)


def test_momentum_is_differentiable(device):
    qdot = randn(3, seed=4, device=device).requires_grad_()
    p = momentum(cosh_lagrangian, randn(3, device=device), qdot)
    (curvature,) = torch.autograd.grad(p.sum(), qdot)
    torch.testing.assert_close(curvature, qdot.detach().cosh())


def test_hamiltons_equations(device):
    """q̇ = ∂H/∂p and ∂H/∂q = −∂L/∂q, through the implicit derivative of q̇(p)."""
    q = randn(3, seed=6, device=device).requires_grad_()
    p = randn(3, seed=7, device=device).requires_grad_()
    dH_dq, dH_dp = torch.autograd.grad(hamiltonian_function(coupled)(q, p), (q, p))
    qdot = velocity(coupled, q.detach(), p.detach())
    torch.testing.assert_close(dH_dp, qdot, rtol=1e-10, atol=1e-10)
    q_leaf = q.detach().requires_grad_()
    (dL_dq,) = torch.autograd.grad(coupled(q_leaf, qdot), q_leaf)
    torch.testing.assert_close(dH_dq, -dL_dq, rtol=1e-10, atol=1e-10)


def test_non_convex_lagrangian_raises(device):
    q, p = randn(2, device=device), randn(2, seed=1, device=device)
    with pytest.raises(ValueError, match="not strictly convex"):
        velocity(lambda q, v: -0.5 * v.dot(v), q, p)
    with pytest.raises(ValueError, match="not strictly convex"):  # Hessian 12 q̇² vanishes at q̇ = 0
        velocity(lambda q, v: v.pow(4).sum(), q, p)


def test_velocity_errors(device):
    q, p = randn(2, device=device), 5.0 * torch.ones(2, dtype=F64, device=device)
    with pytest.raises(ValueError, match="did not converge"):
        velocity(cosh_lagrangian, q, p, max_iter=2)
    with pytest.raises(ValueError, match="scalar"):
        momentum(lambda q, v: v.square(), q, p)


# --- the learning particle ------------------------------------------------------------------------

P = 6


def fishers(device):
    """(F, g, dense F acting on g.flatten()) for the three representations and the tensor forms."""
    dense = random_spd(P, 11, device)
    diagonal = randn(2, 3, seed=12, device=device).exp()
    input_factor, output_factor = random_spd(4, 13, device), random_spd(3, 14, device)
    kron = KroneckerFisher(input_factor, output_factor)
    return [
        (DenseFisher(dense), randn(P, seed=21, device=device), dense),
        (dense, randn(P, seed=22, device=device), dense),
        (DiagonalFisher(diagonal), randn(2, 3, seed=23, device=device), torch.diag(diagonal.flatten())),
        (diagonal.flatten(), randn(P, seed=24, device=device), torch.diag(diagonal.flatten())),
        (kron, randn(3, 4, seed=25, device=device), torch.kron(output_factor, input_factor)),
    ]


def solve(matrix, vector):
    """Independent reference: numpy's ``matrix⁻¹ vector`` on the flattened vector, reshaped back."""
    x = np.linalg.solve(matrix.cpu().numpy(), vector.flatten().cpu().numpy())
    return torch.from_numpy(x).reshape(vector.shape).to(vector.device)


def test_kinetic_matching(device):
    """½ m |θ̇|² with θ̇ = −F^{-½} g equals (1/2P) gᵀF⁻¹g (numpy)."""
    for F, g, dense in fishers(device):
        v = velocity_from_gradient(g, F, rho=0.5)
        expected = g.flatten().dot(solve(dense, g).flatten()) / (2 * P)
        torch.testing.assert_close(particle_kinetic_energy(v, P), expected)
        torch.testing.assert_close(kinetic_energy(g, F, P), expected)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_gradient_momentum_round_trip(device, rho):
    for F, g, _ in fishers(device):
        p = momentum_from_velocity(velocity_from_gradient(g, F, rho=rho), P)
        torch.testing.assert_close(gradient_from_momentum(p, F, P, rho=rho), g)
        assert p.device.type == device.type and p.shape == g.shape


def test_endpoints_of_the_rho_family(device):
    for F, g, dense in fishers(device):
        torch.testing.assert_close(velocity_from_gradient(g, F, rho=0.0), -g)
        torch.testing.assert_close(velocity_from_gradient(g, F, rho=1.0), -solve(dense, g))
    F, g, dense = fishers(device)[0]
    eye = torch.eye(P, dtype=F64, device=device)
    torch.testing.assert_close(velocity_from_gradient(g, F, rho=1.0, damping=0.3), -solve(dense + 0.3 * eye, g))
    torch.testing.assert_close(momentum_from_velocity(g, P), g / P)


def test_particle_errors(device):
    F, g, _ = fishers(device)[0]
    for rho in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"rho must lie in \[0, 1\]"):
            velocity_from_gradient(g, F, rho=rho)
        with pytest.raises(ValueError, match=r"rho must lie in \[0, 1\]"):
            gradient_from_momentum(g, F, P, rho=rho)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="num_params"):
            momentum_from_velocity(g, bad)
    with pytest.raises(ValueError, match="flat vector of length P"):
        velocity_from_gradient(g.reshape(2, 3), F)
    with pytest.raises(ValueError, match=r"\[out, in \(\+1\)\]"):
        velocity_from_gradient(g, fishers(device)[-1][0])


def test_as_fisher(device):
    d, m = torch.ones(3, dtype=F64, device=device), torch.eye(3, dtype=F64, device=device)
    assert isinstance(as_fisher(d), DiagonalFisher) and as_fisher(d).diagonal is d
    assert isinstance(as_fisher(m), DenseFisher) and as_fisher(m).matrix is m
    kron = KroneckerFisher(m, m)
    assert as_fisher(kron) is kron
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        as_fisher(torch.ones(2, 2, 2, device=device))
    with pytest.raises(TypeError, match="got list"):
        as_fisher([1.0, 2.0])


# --- convex conjugates ----------------------------------------------------------------------------


def test_gradient_of_soft_maximum_is_softmax_policy(device):
    q = randn(4, 5, seed=30, device=device).requires_grad_()
    for tau, dim in ((0.3, -1), (2.0, 0)):
        (gradient,) = torch.autograd.grad(soft_maximum(q, tau, dim=dim).sum(), q)
        torch.testing.assert_close(gradient, softmax_policy(q, tau, dim=dim))
        torch.testing.assert_close(gradient, torch.softmax(q.detach() / tau, dim=dim))


def test_fenchel_young(device):
    """V_τ(q) = max_π ⟨π, q⟩ − τ Σ π log π, attained at softmax(q/τ) and strictly smaller elsewhere."""
    tau = 0.7
    q = randn(3, 6, seed=31, device=device)
    best = softmax_policy(q, tau)
    torch.testing.assert_close(soft_maximum(q, tau), (best * q).sum(-1) - negative_entropy(best, tau))
    gen = torch.Generator().manual_seed(32)
    for _ in range(20):
        pi = torch.rand(3, 6, generator=gen, dtype=F64)
        pi[0, torch.randint(6, (1,), generator=gen)] = 0.0  # a zero entry: 0 log 0 = 0
        pi = (pi / pi.sum(-1, keepdim=True)).to(device)
        assert ((pi * q).sum(-1) - negative_entropy(pi, tau) < soft_maximum(q, tau) - 1e-9).all()


def test_soft_maximum_tends_to_max(device):
    q = randn(5, 8, seed=33, device=device)
    hard = q.amax(-1)
    for tau in (1.0, 0.1, 1e-3):
        soft = soft_maximum(q, tau)
        assert (soft >= hard).all() and (soft <= hard + tau * math.log(8) + 1e-12).all()
    torch.testing.assert_close(soft_maximum(q, 1e-6), hard, rtol=0, atol=1e-5)


def test_negative_entropy_values_and_errors(device):
    uniform = torch.full((4,), 0.25, dtype=F64, device=device)
    torch.testing.assert_close(
        negative_entropy(uniform, 2.0), torch.tensor(-2.0 * math.log(4), dtype=F64, device=device)
    )
    one_hot = torch.tensor([0.0, 1.0, 0.0], dtype=F64, device=device)
    assert negative_entropy(one_hot, 1.0).item() == 0.0
    with pytest.raises(ValueError, match="does not sum to 1"):
        negative_entropy(2 * uniform, 1.0)
    with pytest.raises(ValueError, match="negative entry"):
        negative_entropy(torch.tensor([1.5, -0.5], dtype=F64, device=device), 1.0)
    for fn, arg in ((soft_maximum, uniform), (softmax_policy, uniform), (negative_entropy, uniform)):
        with pytest.raises(ValueError, match="tau must be > 0"):
            fn(arg, 0.0)
