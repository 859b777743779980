"""Tests for lagrl.envs: Gymnasium's own checker, the documented tables, seeding, registration and the
torch dynamics of the linear-quadratic env against its numpy ``step``."""

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import lagrl.envs  # noqa: F401  (registers the lagrl/ ids)
from lagrl.envs.garnet import GarnetEnv
from lagrl.envs.linear_quadratic import LinearQuadraticEnv
from lagrl.envs.river_swim import LEFT, RIGHT, RiverSwimEnv
from lagrl.mdp import TabularMDP

F64 = torch.float64

# RiverSwim(6) written out by hand from the module docstring: P[s, a, s'] and r[s, a].
RIVER_SWIM_6 = np.zeros((6, 2, 6))
RIVER_SWIM_6[0, LEFT, 0] = 1.0
for _s in range(1, 6):
    RIVER_SWIM_6[_s, LEFT, _s - 1] = 1.0
RIVER_SWIM_6[0, RIGHT, [0, 1]] = [0.4, 0.6]
for _s in range(1, 5):
    RIVER_SWIM_6[_s, RIGHT, [_s - 1, _s, _s + 1]] = [0.05, 0.6, 0.35]
RIVER_SWIM_6[5, RIGHT, [4, 5]] = [0.4, 0.6]
RIVER_SWIM_6_REWARDS = np.zeros((6, 2))
RIVER_SWIM_6_REWARDS[0, LEFT] = 0.005
RIVER_SWIM_6_REWARDS[5, RIGHT] = 1.0


def dense(env) -> tuple[np.ndarray, np.ndarray]:
    """``(P[s, a, s'], r[s, a])`` from the toy-text table; every outcome of ``(s, a)`` pays the same reward."""
    table = env.unwrapped.P
    num_states, num_actions = len(table), len(table[0])
    transitions = np.zeros((num_states, num_actions, num_states))
    rewards = np.zeros((num_states, num_actions))
    for s in range(num_states):
        for a in range(num_actions):
            outcome_rewards = {reward for _, _, reward, _ in table[s][a]}
            assert len(outcome_rewards) == 1
            rewards[s, a] = outcome_rewards.pop()
            for prob, next_state, _, terminated in table[s][a]:
                assert terminated is False and 0 <= next_state < num_states
                transitions[s, a, next_state] += prob
    return transitions, rewards


def checker_warnings(env_id: str, **kwargs) -> list[str]:
    """Run Gymnasium's ``check_env`` on the made env (raises on failure); return the warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gymnasium.make(env_id, **kwargs).unwrapped)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("lagrl/RiverSwim-v0", {}),
        ("lagrl/RiverSwim-v0", {"n": 2}),
        ("lagrl/Garnet-v0", {}),
        ("lagrl/Garnet-v0", {"num_states": 5, "num_actions": 2, "branching": 5, "seed": 3}),
    ],
)
def test_tabular_envs_pass_check_env_without_warnings(env_id, kwargs):
    assert checker_warnings(env_id, **kwargs) == []


def test_linear_quadratic_passes_check_env_warning_only_about_unbounded_boxes():
    messages = checker_warnings("lagrl/LinearQuadratic-v0", state_dim=3, action_dim=2, horizon=5, seed=1)
    assert messages
    assert all("infinity" in m or "normalized" in m for m in messages), messages


@pytest.mark.parametrize(
    "env",
    [RiverSwimEnv(2), RiverSwimEnv(), RiverSwimEnv(11), GarnetEnv(), GarnetEnv(7, 3, 7, seed=5)],
    ids=["river_swim_2", "river_swim_6", "river_swim_11", "garnet", "garnet_full_branching"],
)
def test_rows_are_distributions(env):
    transitions, _ = dense(env)
    np.testing.assert_allclose(transitions.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert (transitions >= 0).all()
    np.testing.assert_allclose(env.initial_state_distrib.sum(), 1.0, rtol=0, atol=1e-12)


def test_river_swim_table_is_the_documented_one():
    env = RiverSwimEnv()
    transitions, rewards = dense(env)
    np.testing.assert_array_equal(transitions, RIVER_SWIM_6)
    np.testing.assert_array_equal(rewards, RIVER_SWIM_6_REWARDS)
    np.testing.assert_array_equal(env.initial_state_distrib, [0.5, 0.5, 0, 0, 0, 0])
    mdp = TabularMDP.from_gymnasium(env, gamma=0.9)
    np.testing.assert_array_equal(mdp.transitions.numpy(), RIVER_SWIM_6)
    np.testing.assert_array_equal(mdp.rewards.numpy(), RIVER_SWIM_6_REWARDS)


def test_river_swim_samples_its_table():
    env = RiverSwimEnv()
    env.reset(seed=0)
    draws = 20_000
    next_states = []
    for _ in range(draws):
        env.s = 2
        next_states.append(env.step(RIGHT)[0])
    frequencies = np.bincount(next_states, minlength=6) / draws
    np.testing.assert_allclose(frequencies, RIVER_SWIM_6[2, RIGHT], atol=0.01)
    starts = np.bincount([env.reset(seed=seed)[0] for seed in range(2000)], minlength=6) / 2000
    np.testing.assert_allclose(starts, env.initial_state_distrib, atol=0.03)


def test_garnet_structure():
    env = GarnetEnv(num_states=10, num_actions=3, branching=4, seed=7)
    transitions, rewards = dense(env)
    assert ((transitions > 0).sum(-1) == 4).all()
    assert ((rewards >= 0) & (rewards <= 1)).all() and rewards.std() > 0.1
    np.testing.assert_array_equal(env.initial_state_distrib, np.full(10, 0.1))


def test_garnet_same_seed_same_mdp_other_seed_other_mdp():
    first, again, other = (dense(GarnetEnv(seed=seed)) for seed in (4, 4, 5))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RiverSwimEnv(n=1), "n must be an integer >= 2"),
        (lambda: RiverSwimEnv(n=2.5), "n must be an integer >= 2"),
        (lambda: GarnetEnv(num_states=0), "num_states must be an integer >= 1"),
        (lambda: GarnetEnv(num_actions=True), "num_actions must be an integer >= 1"),
        (lambda: GarnetEnv(branching=0), "branching must be an integer >= 1"),
        (lambda: GarnetEnv(num_states=3, branching=4), "branching = 4 exceeds num_states = 3"),
        (lambda: GarnetEnv(seed=-1), "seed must be an integer >= 0"),
        (lambda: LinearQuadraticEnv(state_dim=0), "state_dim must be an integer >= 1"),
        (lambda: LinearQuadraticEnv(action_dim="1"), "action_dim must be an integer >= 1"),
        (lambda: LinearQuadraticEnv(horizon=0), "horizon must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_registered_ids():
    river = gymnasium.make("lagrl/RiverSwim-v0")
    assert isinstance(river.unwrapped, RiverSwimEnv) and river.spec.max_episode_steps == 1000
    garnet = gymnasium.make("lagrl/Garnet-v0", num_states=6, branching=2, seed=9)
    np.testing.assert_array_equal(dense(garnet)[0], dense(GarnetEnv(6, 4, 2, seed=9))[0])
    lq = gymnasium.make("lagrl/LinearQuadratic-v0", horizon=3)
    lq.reset(seed=0)
    flags = [lq.step(np.zeros(1, dtype=np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_linear_quadratic_matrices():
    env = LinearQuadraticEnv(state_dim=4, action_dim=2, seed=3)
    assert np.linalg.norm(env.A, 2) == pytest.approx(1.05)
    for name, matrix, shift in [("Q", env.Q, 0.1), ("R", env.R, 0.5), ("Q_f", env.Q_f, 0.1)]:
        np.testing.assert_array_equal(matrix, matrix.T, err_msg=name)
        assert np.linalg.eigvalsh(matrix).min() >= shift - 1e-12, name
    assert env.B.shape == (4, 2)
    assert not np.array_equal(env.A, LinearQuadraticEnv(4, 2, seed=4).A)


def test_linear_quadratic_torch_functions_match_step(device):
    env = LinearQuadraticEnv(state_dim=3, action_dim=2, horizon=6, seed=2)
    rng = np.random.default_rng(0)
    observation, _ = env.reset(seed=11)
    np.testing.assert_array_equal(observation, env.state.astype(np.float32))
    for k in range(env.horizon):
        s, a = env.state.copy(), rng.standard_normal(2)
        observation, reward, terminated, truncated, _ = env.step(a)
        s_t, a_t = torch.tensor(s, device=device), torch.tensor(a, device=device)
        next_t = env.dynamics(s_t, a_t)
        expected = env.reward(s_t, a_t) + (env.terminal_reward(next_t) if k == env.horizon - 1 else 0.0)
        np.testing.assert_allclose(next_t.cpu().numpy(), env.state, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(observation, env.state.astype(np.float32))
        assert reward == pytest.approx(float(expected), rel=1e-13)
        assert terminated is False and truncated is (k == env.horizon - 1)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(2))


def test_linear_quadratic_torch_functions_are_batched_in_any_dtype(device):
    env = LinearQuadraticEnv(state_dim=3, action_dim=2, seed=1)
    gen = torch.Generator().manual_seed(0)
    s, a = torch.randn(4, 5, 3, generator=gen, dtype=F64), torch.randn(4, 5, 2, generator=gen, dtype=F64)
    expected_next = np.einsum("ij,bkj->bki", env.A, s.numpy()) + np.einsum("ij,bkj->bki", env.B, a.numpy())
    expected_reward = -np.einsum("bki,ij,bkj->bk", s.numpy(), env.Q, s.numpy()) - np.einsum(
        "bki,ij,bkj->bk", a.numpy(), env.R, a.numpy()
    )
    expected_terminal = -np.einsum("bki,ij,bkj->bk", s.numpy(), env.Q_f, s.numpy())
    for dtype, tol in [(F64, 1e-12), (torch.float32, 1e-5)]:
        s_d, a_d = s.to(device, dtype), a.to(device, dtype)
        outputs = (env.dynamics(s_d, a_d), env.reward(s_d, a_d), env.terminal_reward(s_d))
        for output, expected in zip(outputs, (expected_next, expected_reward, expected_terminal)):
            assert output.dtype == dtype and output.device.type == device.type
            np.testing.assert_allclose(output.cpu().double().numpy(), expected, rtol=tol, atol=tol)


def test_linear_quadratic_rejects_a_misshaped_action():
    env = LinearQuadraticEnv(action_dim=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3))
