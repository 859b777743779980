"""lagrl.design (THEORY §2) against closed forms, brute force and Monte Carlo."""

import itertools
import math

import numpy as np
import pytest
import torch

from lagrl.design import (
    error_bound,
    greedy_path,
    prediction_error,
    random_path,
    samples_needed,
    tight_frame,
    tight_path,
)

F64 = torch.float64


def test_prediction_error_is_the_monte_carlo_test_error():
    """Least squares on random data, a test point uniform on the sphere: the simulated expected squared
    prediction error (noise included) matches σ²(1 + tr((XᵀX)⁻¹)/p)."""
    rng = np.random.default_rng(0)
    n, p, sigma2, trials = 7, 3, 0.5, 200_000
    X = rng.normal(size=(n, p))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    beta = rng.normal(size=p)
    noise = rng.normal(scale=math.sqrt(sigma2), size=(trials, n))
    estimates = np.linalg.lstsq(X, (X @ beta)[:, None] + noise.T, rcond=None)[0].T  # (trials, p)
    tests = rng.normal(size=(trials, p))
    tests /= np.linalg.norm(tests, axis=1, keepdims=True)
    errors = ((tests * (estimates - beta)).sum(-1) + rng.normal(scale=math.sqrt(sigma2), size=trials)) ** 2
    assert errors.mean() == pytest.approx(prediction_error(X, sigma2), rel=0.01)
    assert prediction_error(torch.tensor(X), sigma2) == pytest.approx(prediction_error(X, sigma2), rel=1e-15)


@pytest.mark.parametrize("p", range(1, 7))
def test_tight_frames_for_every_n_attain_the_bound(p):
    for n in range(p, 3 * p + 3):
        frame = tight_frame(n, p)
        assert frame.shape == (n, p)
        torch.testing.assert_close(frame.norm(dim=-1), torch.ones(n, dtype=F64))
        torch.testing.assert_close(frame.T @ frame, n / p * torch.eye(p, dtype=F64), rtol=0, atol=1e-12)
        assert prediction_error(frame, 2.0) == pytest.approx(error_bound(n, p, 2.0), rel=1e-12)


def test_the_bound_holds_for_random_designs_and_is_strict_off_tight_ones():
    for seed in range(20):
        design = random_path(9, 4, seed=seed)
        assert prediction_error(design, 1.0) > error_bound(9, 4, 1.0)


@pytest.mark.parametrize("p,sigma2", [(1, 1.0), (3, 0.7), (10, 2.0)])
def test_samples_needed_is_the_smallest_n_within_the_target(p, sigma2):
    for delta in np.linspace(sigma2 * 1.001, 2 * sigma2, 37):
        needed = samples_needed(float(delta), p, sigma2)
        brute = next(n for n in itertools.count(p) if error_bound(n, p, sigma2) <= delta)
        assert needed == brute
    assert samples_needed(1.5 * sigma2, p, sigma2) == 2 * p  # p σ²/(δ − σ²) exactly 2p
    for bad in (sigma2, 0.5 * sigma2, 2.0001 * sigma2):
        with pytest.raises(ValueError, match=r"outside \(σ², 2σ²\]"):
            samples_needed(bad, p, sigma2)


def test_tight_path_is_tight_at_every_multiple_of_p_and_not_between():
    p = 3
    for seed in (None, 4):
        path = tight_path(10, p, seed=seed)
        torch.testing.assert_close(path.norm(dim=-1), torch.ones(10, dtype=F64))
        for n in range(p, 11):
            error, bound = prediction_error(path[:n], 1.0), error_bound(n, p, 1.0)
            if n % p == 0:
                assert error == pytest.approx(bound, rel=1e-12)
            else:
                assert error > bound * (1 + 1e-6)


def test_greedy_path_is_no_worse_than_random_and_finds_the_tight_optimum():
    """Started on a basis vector (every unit row ties at the first step; the lowest index wins), greedy
    completes the orthonormal basis among random candidates (trace p, the AM–HM optimum p²/n); with random
    candidates its error is at least the brute-force best multiset of the same size and below random's mean."""
    p = 4
    candidates = torch.cat([torch.eye(p, dtype=F64), random_path(60, p, seed=1)])
    chosen = greedy_path(p, candidates)
    assert prediction_error(chosen, 1.0) == pytest.approx(error_bound(p, p, 1.0), rel=1e-9)
    pool = random_path(9, 3, seed=3)
    path = greedy_path(4, pool)
    best = min(
        prediction_error(pool[list(rows)], 1.0)
        for rows in itertools.combinations_with_replacement(range(9), 4)
        if torch.linalg.matrix_rank(pool[list(rows)]) == 3
    )
    assert prediction_error(path, 1.0) >= best - 1e-12
    assert prediction_error(path, 1.0) <= np.mean([prediction_error(random_path(4, 3, seed=s), 1.0) for s in range(50)])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="n >= p"):
        error_bound(2, 3, 1.0)
    with pytest.raises(ValueError, match="singular"):
        prediction_error(np.array([[1.0, 0.0], [1.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="noise_var must be positive"):
        error_bound(3, 2, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        greedy_path(3, np.zeros((0, 2)))
