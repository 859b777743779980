"""Tests of lagrl.fisher: representations and estimators against closed forms and explicit loops."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Normal

from helpers import F64, random_spd
from lagrl.fisher import (
    DenseFisher,
    DiagonalFisher,
    KroneckerFisher,
    diagonal_power,
    fisher,
    per_sample_grads,
    sample_targets,
    spd_power,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- models


class BernoulliLogit(nn.Module):
    """``Bernoulli(logits=θ)`` for every input: one scalar parameter."""

    def __init__(self, p: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(math.log(p / (1 - p)), dtype=F64))

    def forward(self, x):
        return Bernoulli(logits=self.theta.expand(x.shape[0]))


class SoftmaxLogits(nn.Module):
    """``Categorical(logits=z)`` for every input."""

    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(torch.as_tensor(logits, dtype=F64))

    def forward(self, x):
        return Categorical(logits=self.z.expand(x.shape[0], -1))


class Gaussian(nn.Module):
    """``Normal(μ, σ)`` parametrised directly by μ and σ."""

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu, dtype=F64))
        self.sigma = nn.Parameter(torch.tensor(sigma, dtype=F64))

    def forward(self, x):
        n = x.shape[0]
        return Normal(self.mu.expand(n), self.sigma.expand(n))


class LinearGaussian(nn.Module):
    """``Normal(W x + b, σ)`` with fixed σ."""

    def __init__(self, sigma: float):
        super().__init__()
        self.linear = nn.Linear(3, 2, dtype=F64)
        self.sigma = sigma

    def forward(self, x):
        return Normal(self.linear(x), self.sigma)


def mlp(device, bias_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=bias_first), nn.Tanh(), nn.Linear(4, 3)).to(device, F64)


def categorical(z):
    return Categorical(logits=z)


# ----------------------------------------------------------------------------- 1. representations


@pytest.mark.parametrize("exponent", [-1.0, -0.5, 0.5, 1.0, 0.75])
def test_spd_power_matches_scipy(device, exponent):
    m = random_spd(5, 1, device, shift=0.1)
    expected = np.real(scipy.linalg.fractional_matrix_power(m.cpu().numpy(), exponent))
    got = spd_power(m, exponent)
    assert got.device.type == device.type
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-9, atol=1e-11)
    assert torch.allclose(DenseFisher(m).power(exponent).matrix, got)


def test_damped_inverse_root_whitens(device):
    m = random_spd(4, 2, device, shift=0.0)
    m = m @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64, device=device)) @ m  # singular PSD
    root = spd_power(m, -0.5, damping=0.1)
    damped = m + 0.1 * torch.eye(4, dtype=F64, device=device)
    assert torch.allclose(root @ damped @ root, torch.eye(4, dtype=F64, device=device), atol=1e-10)
    with pytest.raises(ValueError, match="damping"):
        spd_power(m, -0.5)


def test_spd_power_rejects_bad_matrices(device):
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=F64, device=device))
    for exponent in (-0.5, 0.5):
        with pytest.raises(ValueError, match="damping"):
            spd_power(indefinite, exponent)
    with pytest.raises(ValueError, match="symmetric"):
        spd_power(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64, device=device), 0.5)


@pytest.mark.parametrize("exponent", [-0.5, 0.5, 1.0])
def test_kronecker_power_matvec(device, exponent):
    a, g = random_spd(3, 3, device, shift=0.1), random_spd(2, 4, device, shift=0.1)
    k = KroneckerFisher(a, g)
    powered = k.power(exponent, 0.0)
    assert torch.allclose(powered.to_dense(), torch.kron(spd_power(g, exponent), spd_power(a, exponent)), atol=1e-10)
    assert torch.allclose(powered.to_dense(), spd_power(k.to_dense(), exponent), atol=1e-10)
    x = torch.randn(2, 3, dtype=F64, generator=gen(5)).to(device)
    assert torch.allclose(k.matvec(x).flatten(), k.to_dense() @ x.flatten(), atol=1e-12)


def test_diagonal_power(device):
    d = torch.tensor([[4.0, 1.0], [0.25, 9.0]], dtype=F64, device=device)
    assert torch.allclose(DiagonalFisher(d).power(-0.5).diagonal, d.rsqrt())
    assert torch.allclose(DiagonalFisher(d).power(0.75, damping=1.0).diagonal, (d + 1) ** 0.75)
    assert torch.equal(DiagonalFisher(d).to_dense(), torch.diag(d.flatten()))
    zero = torch.tensor([1.0, 0.0], dtype=F64, device=device)
    with pytest.raises(ValueError, match="damping"):
        diagonal_power(zero, -0.5)
    assert torch.allclose(
        diagonal_power(zero, -1.0, damping=0.5), torch.tensor([1 / 1.5, 2.0], dtype=F64, device=device)
    )


# ----------------------------------------------------------------------------- 2. closed forms


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_exact_bernoulli(device, p):
    model = BernoulliLogit(p).to(device)
    x = torch.zeros(3, device=device)
    diag = fisher(model, x, kind="exact")["theta"].diagonal
    full = fisher(model, x, kind="exact", form="full").matrix
    assert diag.dtype == F64 and diag.device.type == device.type
    assert abs(float(diag) - p * (1 - p)) < 1e-12
    assert abs(float(full.squeeze()) - p * (1 - p)) < 1e-12


def test_exact_softmax(device):
    model = SoftmaxLogits([0.3, -1.0, 2.0, 0.5]).to(device)
    pi = torch.softmax(model.z.detach(), 0)
    full = fisher(model, torch.zeros(2, device=device), kind="exact", form="full").matrix
    assert torch.allclose(full, torch.diag(pi) - torch.outer(pi, pi), rtol=0, atol=1e-12)


def true_fisher_with_se(model, x, num_samples, seed):
    """(full true Fisher, mean, standard error) of the per-sample squared scores from the same draws."""
    f = fisher(model, x, kind="true", form="full", num_samples=num_samples, generator=gen(seed)).matrix
    y = sample_targets(model, x, num_samples=num_samples, generator=gen(seed))
    scores = torch.cat([g.reshape(len(g), -1) for g in per_sample_grads(model, x.repeat(num_samples), y).values()], 1)
    products = scores.unsqueeze(2) * scores.unsqueeze(1)
    return f, products.mean(0), products.std(0) / math.sqrt(len(scores))


def test_true_gaussian_monte_carlo(device):
    sigma = 1.5
    model = Gaussian(0.4, sigma).to(device)
    f, mean, se = true_fisher_with_se(model, torch.zeros(1, device=device), 20000, seed=0)
    assert torch.allclose(f, mean, atol=1e-12)  # same generator, same targets
    closed = torch.diag(torch.tensor([1 / sigma**2, 2 / sigma**2], dtype=F64, device=device))
    assert bool(((f - closed).abs() < 4 * se).all()), (f, closed, se)
    diag = fisher(model, torch.zeros(1, device=device), num_samples=20000, generator=gen(0))
    assert torch.allclose(torch.stack([diag["mu"].diagonal, diag["sigma"].diagonal]), f.diagonal(), atol=1e-12)


def test_true_bernoulli_monte_carlo(device):
    model = BernoulliLogit(0.3).to(device)
    f, mean, se = true_fisher_with_se(model, torch.zeros(1, device=device), 20000, seed=1)
    assert torch.allclose(f, mean, atol=1e-12)
    assert abs(float(f) - 0.21) < 4 * float(se)


# ----------------------------------------------------------------------------- 3. per-sample grads vs a loop


def test_per_sample_grads_match_loop(device):
    model = mlp(device)
    model[0].bias.requires_grad_(False)  # frozen parameters are excluded
    x = torch.randn(7, 3, dtype=F64, generator=gen(2)).to(device)
    y = torch.randint(0, 3, (7,), generator=gen(3)).to(device)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    loop = []
    for i in range(len(x)):
        log_p = Categorical(logits=model(x[i : i + 1])).log_prob(y[i : i + 1]).sum()
        loop.append(torch.autograd.grad(log_p, [model.get_parameter(n) for n in names]))
    grads = per_sample_grads(model, x, y, distribution=categorical)
    assert list(grads) == names
    for j, name in enumerate(names):
        assert torch.allclose(grads[name], torch.stack([g[j] for g in loop]), atol=1e-12)
    diag = fisher(model, x, y, kind="empirical", distribution=categorical)
    for j, name in enumerate(names):
        assert torch.allclose(diag[name].diagonal, torch.stack([g[j] ** 2 for g in loop]).mean(0), atol=1e-12)
    flat = torch.stack([torch.cat([t.flatten() for t in g]) for g in loop])
    full = fisher(model, x, y, kind="empirical", form="full", distribution=categorical).matrix
    assert torch.allclose(full, flat.T @ flat / len(x), atol=1e-12)


def test_sample_targets_alignment_and_rng(device):
    model = nn.Identity()
    x = torch.arange(4.0, dtype=F64, device=device)
    narrow = lambda out: Normal(out, 1e-9)  # noqa: E731
    state = torch.get_rng_state()
    y = sample_targets(model, x, distribution=narrow, num_samples=3, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is forked, not advanced
    assert y.shape == (12,) and torch.allclose(y, x.repeat(3), atol=1e-6)
    z = sample_targets(model, x, distribution=narrow, num_samples=3, generator=gen(7))
    assert torch.equal(y, z)


# ----------------------------------------------------------------------------- 4. true vs empirical


def test_true_vs_empirical(device):
    n = 20000
    model = BernoulliLogit(0.3).to(device)
    x = torch.zeros(n, device=device)

    def empirical(labels):
        f = float(fisher(model, x, labels, kind="empirical")["theta"].diagonal)
        sq = per_sample_grads(model, x, labels)["theta"] ** 2
        assert abs(f - float(sq.mean())) < 1e-12
        return f, float(sq.std()) / math.sqrt(n)

    _, true_mean, true_se = true_fisher_with_se(model, x, 1, seed=3)
    true, true_se = float(true_mean), float(true_se)
    off, off_se = empirical(torch.bernoulli(torch.full((n,), 0.8, dtype=F64), generator=gen(4)).to(device))
    assert abs(off - 0.41) < 4 * off_se
    assert off - true > 50 * math.hypot(off_se, true_se)
    on, on_se = empirical(sample_targets(model, x, generator=gen(5)))
    assert abs(on - true) < 4 * math.hypot(on_se, true_se)
    assert abs(on - 0.21) < 4 * on_se


# ----------------------------------------------------------------------------- 5. K-FAC


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_kfac_factors_match_hand_loop(device, kind):
    model = mlp(device, bias_first=False)
    x = torch.randn(6, 3, dtype=F64, generator=gen(8)).to(device)
    y = torch.randint(0, 3, (6,), generator=gen(9)).to(device)
    first, second = model[0], model[2]
    factors = {"0": [0, 0], "2": [0, 0]}
    for i in range(len(x)):
        s1 = x[i] @ first.weight.T
        h = torch.tanh(s1)
        s2 = h @ second.weight.T + second.bias
        probs = torch.softmax(s2, 0).detach()
        classes = [(int(y[i]), 1.0)] if kind == "empirical" else [(k, float(probs[k])) for k in range(3)]
        for k, w in classes:
            d1, d2 = torch.autograd.grad(Categorical(logits=s2).log_prob(torch.tensor(k)), [s1, s2], retain_graph=True)
            a2 = torch.cat([h.detach(), torch.ones(1, dtype=F64, device=device)])
            for name, a, d in (("0", x[i], d1), ("2", a2, d2)):
                factors[name][0] = factors[name][0] + w * torch.outer(a, a) / len(x)
                factors[name][1] = factors[name][1] + w * torch.outer(d, d) / len(x)
    kfac = fisher(model, x, y if kind == "empirical" else None, kind=kind, form="kfac", distribution=categorical)
    assert list(kfac) == ["0", "2"]
    assert kfac["0"].input_factor.shape == (3, 3) and kfac["2"].input_factor.shape == (5, 5)
    for name, (a, g) in factors.items():
        assert torch.allclose(kfac[name].input_factor, a, atol=1e-12)
        assert torch.allclose(kfac[name].output_factor, g, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # no .grad side effects
    model[0].requires_grad_(False)
    assert list(fisher(model, x, y, kind="empirical", form="kfac", distribution=categorical)) == ["2"]


class Reversed(nn.Module):
    """Registers its layers in the opposite order to the one it calls them in; ``spare`` is never called."""

    def __init__(self):
        super().__init__()
        self.second = nn.Linear(4, 3, bias=False, dtype=F64)
        self.spare = nn.Linear(2, 2, dtype=F64)
        self.first = nn.Linear(3, 4, dtype=F64)

    def forward(self, x):
        return Categorical(logits=self.second(torch.tanh(self.first(x))))


def test_kfac_keys_follow_modules_not_call_order(device):
    model = Reversed().to(device)
    x = torch.randn(5, 3, dtype=F64, generator=gen(13)).to(device)
    with pytest.raises(ValueError, match=r"\['spare'\] are not called"):
        fisher(model, x, kind="exact", form="kfac")
    model.spare.requires_grad_(False)
    kfac = fisher(model, x, kind="exact", form="kfac")
    assert list(kfac) == ["second", "first"]
    shapes = {name: (k.input_factor.shape, k.output_factor.shape) for name, k in kfac.items()}
    assert shapes == {"second": ((4, 4), (3, 3)), "first": ((4, 4), (4, 4))}
    hidden = torch.tanh(model.first(x)).detach()
    assert torch.allclose(kfac["second"].input_factor, hidden.T @ hidden / 5, atol=1e-12)


def test_kfac_exact_for_linear_gaussian(device):
    sigma, d, n = 0.7, 2, 6
    torch.manual_seed(1)
    model = LinearGaussian(sigma).to(device)
    x = torch.randn(n, 3, dtype=F64, generator=gen(10)).to(device)
    with torch.no_grad():
        mu = model.linear(x)
    eye = torch.eye(d, dtype=F64, device=device)
    offsets = sigma * math.sqrt(d) * torch.cat([eye, -eye])  # 2d sigma points
    xs = x.repeat(2 * d, 1)
    ys = mu.repeat(2 * d, 1) + offsets.repeat_interleave(n, 0)
    block = fisher(model, xs, ys, kind="empirical", form="kfac")["linear"]
    assert torch.allclose(block.output_factor, eye / sigma**2, atol=1e-12)
    full = fisher(model, xs, ys, kind="empirical", form="full").matrix  # order [W (row-major), b]
    perm = [o * 3 + j if j < 3 else 6 + o for o in range(d) for j in range(4)]  # → row-major [W | b]
    assert torch.allclose(block.to_dense(), full[perm][:, perm], rtol=0, atol=1e-10)

    x = torch.randn(50, 3, dtype=F64, generator=gen(11)).to(device)
    a = torch.cat([x, torch.ones(50, 1, dtype=F64, device=device)], 1)
    expected = torch.kron(eye / sigma**2, a.T @ a / 50)
    got = fisher(model, x, kind="true", form="kfac", num_samples=400, generator=gen(12))["linear"].to_dense()
    assert torch.linalg.norm(got - expected) < 0.05 * torch.linalg.norm(expected)


# ----------------------------------------------------------------------------- 6. errors


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0, dtype=F64))  # finite forward, d sqrt(w)/dw = inf

    def forward(self, x):
        return Bernoulli(logits=torch.sqrt(self.w).expand(x.shape[0]))


def test_errors(device):
    model = BernoulliLogit(0.3).to(device)
    x = torch.zeros(4, device=device)
    y = torch.ones(4, dtype=F64, device=device)
    linear = nn.Linear(2, 3, dtype=F64).to(device)
    x2 = torch.zeros(4, 2, dtype=F64, device=device)
    with pytest.raises(TypeError, match="distribution="):
        fisher(linear, x2)
    with pytest.raises(TypeError, match="Distribution"):
        fisher(linear, x2, distribution=lambda z: z)
    with pytest.raises(TypeError, match="drop the distribution"):
        fisher(model, x, distribution=categorical)
    with pytest.raises(ValueError, match="unknown kind"):
        fisher(model, x, kind="expected")
    with pytest.raises(ValueError, match="unknown form"):
        fisher(model, x, form="block")
    with pytest.raises(ValueError, match="pass targets="):
        fisher(model, x, kind="empirical")
    with pytest.raises(ValueError, match="only with kind='empirical'"):
        fisher(model, x, y)
    with pytest.raises(ValueError, match="differ in length"):
        fisher(model, x, y[:3], kind="empirical")
    with pytest.raises(ValueError, match="trainable"):
        fisher(model.requires_grad_(False), x)
    model.requires_grad_(True)
    with pytest.raises(ValueError, match="'w'"):
        fisher(NaNModel().to(device), x)
    with pytest.raises(ValueError, match="enumerate"):
        fisher(Gaussian(0.0, 1.0).to(device), x, kind="exact")
    with pytest.raises(ValueError, match="nn.Linear"):
        fisher(model, x, form="kfac")
    with pytest.raises(ValueError, match="batch_shape"):
        fisher(linear, x2, distribution=lambda z: Categorical(logits=z.sum(0)))
    with pytest.raises(ValueError, match=r"\(N, in\) rows"):
        fisher(linear, x2[:, None], kind="exact", form="kfac", distribution=categorical)
    with pytest.raises(ValueError, match="num_samples"):
        sample_targets(model, x, num_samples=0)
