"""Tests of lagrl.fisher: representations and estimators against closed forms and explicit loops."""

import math
import warnings

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


# The K-FAC input factor of the policy's first layer in `lagrl train --algo ppo --env Taxi-v4 --preconditioner
# fisher-sqrt` (first update, 8 envs × 256 steps): "state:visits" of the 185 states visited in its 2,048 one-hot
# rows; the other 315 states were not visited.
TAXI_VISITS = """
2:4 4:28 7:1 11:1 12:19 14:16 18:3 22:18 24:35 27:9 32:11 34:12 38:5 42:19 46:1 47:11 48:8 49:16 51:17 52:16
54:22 58:13 62:21 66:2 67:14 68:9 69:13 71:18 72:10 74:18 78:14 82:7 86:1 87:9 88:13 89:8 91:11 92:18 94:13
98:1 99:3 102:12 104:10 107:10 111:3 112:9 114:12 118:3 122:7 124:10 127:19 131:1 132:12 134:25 138:3 142:21
147:3 148:6 149:26 151:19 152:15 154:21 158:17 162:10 167:1 168:12 169:17 171:14 172:7 174:10 178:4 179:1
182:10 187:9 188:4 189:5 191:18 192:13 194:6 199:6 202:24 204:5 207:11 209:2 211:1 212:5 214:17 222:6 224:3
227:11 229:3 231:7 232:11 234:11 238:5 242:11 247:6 248:4 249:13 251:6 252:13 254:15 258:6 262:9 267:6 268:10
269:15 271:11 272:2 274:16 278:4 279:1 282:21 287:11 288:20 289:7 291:8 292:5 294:7 299:2 302:1 304:6 307:18
309:2 312:2 314:76 317:5 322:7 324:1 327:9 329:4 331:11 334:2 342:12 344:6 347:6 348:1 349:4 351:6 354:7
362:12 367:19 368:17 369:4 371:15 372:11 374:2 378:6 379:1 382:19 387:25 388:18 391:13 392:10 394:2 399:3
407:7 409:28 414:80 417:9 422:3 424:4 427:7 429:17 431:5 442:2 444:2 447:6 451:5 462:22 467:42 468:54 469:2
471:8 472:4 474:3 478:5 479:5 482:31 487:40 488:24 491:2 492:7 494:5 499:6
"""


def one_hot_factor(states: torch.Tensor, num_states: int, dtype: torch.dtype, device) -> torch.Tensor:
    """K-FAC's ``A = E[a aᵀ]`` over rows ``a = [onehot(s), 1]`` (a layer with a bias fed one-hot observations)."""
    rows = torch.cat([nn.functional.one_hot(states, num_states), torch.ones(len(states), 1, dtype=torch.long)], 1)
    rows = rows.to(dtype=dtype, device=device)
    return rows.T @ rows / len(rows)


def block_power(matrix: torch.Tensor, exponent: float, damping: float) -> np.ndarray:
    """``(M + λI)^e`` of a one-hot factor by its block structure, in float64 numpy (its own LAPACK), ``λ > 0``.

    Rows and columns of unvisited states are zero, so ``M + λI`` is ``(M_VV + λI) ⊕ λI`` over the
    visited states (and the bias) ``V`` and the rest.
    """
    m = matrix.double().cpu().numpy()
    visited = np.flatnonzero(np.abs(m).sum(1))
    result = np.diag(np.full(len(m), damping**exponent))
    w, v = np.linalg.eigh(m[np.ix_(visited, visited)])
    result[np.ix_(visited, visited)] = (v * (w + damping) ** exponent) @ v.T
    return result


def test_kfac_power_of_the_taxi_one_hot_factor(device):
    """The factor (to float32 rounding) that made torch.linalg.eigh (float32, MKL's ssyevd) fail to converge.

    Its failure: 315 exactly zero rows and columns (a 315-fold zero eigenvalue) coupled to the visited
    states through the bias row and column (with 1e-30 in place of those zero diagonal entries it converges).
    spd_power splits them off and decomposes the rest in float64: K-FAC's damped powers must match the
    block reference to float32 rounding (1e-5 of their largest entry).
    """
    visits = [tuple(map(int, pair.split(":"))) for pair in TAXI_VISITS.split()]
    states = torch.cat([torch.full((count,), state) for state, count in visits])
    assert len(states) == 2048
    a = one_hot_factor(states, 500, torch.float32, device)
    damping = 1e-3
    for exponent in (-0.5, -1.0):
        powered = KroneckerFisher(a, torch.eye(2, device=device)).power(exponent, damping).input_factor
        assert powered.dtype == torch.float32 and bool(torch.isfinite(powered).all())
        expected = block_power(a, exponent, damping**0.5)
        np.testing.assert_allclose(powered.cpu().numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spd_power_of_rank_deficient_one_hot_factors(device, dtype):
    """One-hot input factors, 20 of 200 states visited and 10 of 500 (4,096 rows): MKL's eigh of the whole
    matrix fails on the first in float32 and on the second even in float64. spd_power splits the zero rows
    off, with no warning and no retry, and matches the block reference; undamped, it has no inverse power.
    """
    for num_states, visited, seed in ((200, 20, 0), (500, 10, 2)):
        g = gen(seed)
        pool = torch.randperm(num_states, generator=g)[:visited]
        a = one_hot_factor(pool[torch.randint(visited, (4096,), generator=g)], num_states, dtype, device)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            powered = spd_power(a, -0.5, damping=0.03)
            root = spd_power(a, 0.5).double().cpu().numpy()  # undamped: the zero eigenvalues stay 0
        expected = block_power(a, -0.5, 0.03)
        np.testing.assert_allclose(powered.cpu().numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        np.testing.assert_allclose(root @ root, a.double().cpu().numpy(), rtol=0, atol=1e-5)
        assert torch.allclose(spd_power(a, 0.0), torch.eye(len(a), dtype=dtype, device=device), atol=1e-6)
        with pytest.raises(ValueError, match="not positive definite.*add damping"):
            spd_power(a, -0.5)


@pytest.mark.parametrize("exponent, damping", [(-0.5, 1e-3), (-1.0, 1e-2), (-0.5, 1e-6), (0.5, 0.0), (1.0, 0.0)])
def test_spd_power_of_an_ill_conditioned_float32_factor(device, exponent, damping):
    """Eigenvalues 1e-12 … 1e4 stored in float32: the power matches a float64 numpy reference to 1e-6 of its scale.

    The reference decomposes the same float32 matrix in float64 and, as documented, takes its eigenvalues
    within ``n · eps32 · max|w|`` of 0 (float32 rounding of a PSD matrix) as ``max(w, 0)``. A float32
    decomposition gets (−0.5, 1e-3) wrong by 70 % and (−0.5, 1e-6) NaN.
    """
    n = 40
    u = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen(0)))[0]
    m = u @ torch.diag(torch.logspace(-12, 4, n, dtype=F64)) @ u.T
    m = ((m + m.T) / 2).float().to(device)
    w, v = np.linalg.eigh(m.double().cpu().numpy())
    floor = n * np.finfo(np.float32).eps * np.abs(w).max()
    w = np.where(w >= -floor, np.clip(w, 0, None), w) + damping
    expected = (v * w**exponent) @ v.T
    got = spd_power(m, exponent, damping)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().cpu().numpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_spd_power_eigh_fallback(monkeypatch):
    """Where LAPACK fails in float64 too: one retry on the shifted matrix, with a warning; then a clear error."""
    m = random_spd(6, 4, "cpu", shift=0.0)
    m = m @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=F64)) @ m  # singular PSD
    expected = spd_power(m, -0.5, damping=0.1)
    eigh, calls = torch.linalg.eigh, []

    def failing_once(matrix):
        calls.append(matrix)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return eigh(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", failing_once)
    with pytest.warns(RuntimeWarning, match="failed to converge in float64; retrying"):
        got = spd_power(m, -0.5, damping=0.1)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    shift = float(calls[1][0, 0] - m[0, 0])
    assert 0 < shift < 1e-7 * float(m.abs().max())

    def failing(matrix):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(ValueError, match="failed to converge, in float64 and after a shift"),
    ):
        spd_power(m, -0.5, damping=0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        spd_power(torch.full((2, 2), math.nan, dtype=F64), 0.5)


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


def test_params_restrict_the_estimate(device):
    """``params=`` estimates the named parameters only, with the values the full estimate gives them."""
    model = mlp(device)
    x = torch.randn(7, 3, dtype=F64, generator=gen(2)).to(device)
    y = torch.randint(0, 3, (7,), generator=gen(3)).to(device)
    diag = fisher(model, x, y, kind="empirical", distribution=categorical)
    some = fisher(model, x, y, kind="empirical", distribution=categorical, params=["2.weight", "0.bias"])
    assert list(some) == ["0.bias", "2.weight"]  # named_parameters() order
    for name, block in some.items():
        assert torch.allclose(block.diagonal, diag[name].diagonal, atol=1e-12)
    full = fisher(model, x, y, kind="empirical", form="full", distribution=categorical, params=["2.bias"]).matrix
    assert torch.allclose(full.diagonal(), diag["2.bias"].diagonal, atol=1e-12)
    with pytest.raises(ValueError, match=r"params \['2\.w'\] are not trainable"):
        fisher(model, x, y, kind="empirical", distribution=categorical, params=["2.w"])
    with pytest.raises(ValueError, match="params is empty"):
        fisher(model, x, y, kind="empirical", distribution=categorical, params=[])
    with pytest.raises(ValueError, match="form='kfac' covers every nn.Linear"):
        fisher(model, x, y, kind="empirical", form="kfac", distribution=categorical, params=["2.bias"])


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
