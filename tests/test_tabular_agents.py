"""Tabular agents: V* against pymdptoolbox, the per-entry step against torch, Q-learning by hand, SB3 plumbing."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lagrl.agents import BellmanPlanner, EntrywiseLagrangianOptimizer, LagrangianQLearning
from lagrl.agents.tabular import entry_step
from lagrl.bellman import policy_evaluation, solve
from lagrl.mdp import TabularMDP
from lagrl.optim import LagrangianOptimizer
from lagrl.trajectory import TAGS

GAMMA = 0.99


def frozen_lake_mdp() -> TabularMDP:
    return TabularMDP.from_gymnasium("FrozenLake-v1", gamma=GAMMA)


def greedy_values(mdp: TabularMDP, table: torch.Tensor) -> torch.Tensor:
    """Exact values of the greedy policy of ``table`` on the env's states (the sink takes action 0)."""
    policy = torch.zeros(mdp.num_states, dtype=torch.int64)
    policy[: len(table)] = table.detach().cpu().argmax(-1)
    return policy_evaluation(mdp, policy)[: len(table)]


def scalar_tags(root) -> set[str]:
    tags = set()
    for directory in {path.parent for path in root.rglob("events.out.tfevents.*")}:
        accumulator = EventAccumulator(str(directory))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


# ---------------------------------------------------------------------------------------- planner
@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1"])
def test_planner_values_equal_pymdptoolbox_policy_iteration(env_id, device):
    toolbox = pytest.importorskip("mdptoolbox.mdp")
    mdp = TabularMDP.from_gymnasium(env_id, gamma=GAMMA)
    reference = toolbox.PolicyIteration(
        mdp.transitions.permute(1, 0, 2).numpy(), mdp.rewards.numpy(), GAMMA, max_iter=10_000
    )
    reference.run()
    planner = BellmanPlanner(env_id, gamma=GAMMA, device=device).learn(0)
    table = planner.policy.q_table
    assert table.device.type == device.type
    states = len(table)
    expected = torch.as_tensor(reference.V[:states], dtype=torch.float64)
    torch.testing.assert_close(table.amax(-1).cpu(), expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(greedy_values(mdp, table), expected, rtol=0, atol=1e-8)
    actions, _ = planner.predict(np.arange(states), deterministic=True)
    np.testing.assert_array_equal(actions, table.argmax(-1).cpu().numpy())


def test_planner_frozen_lake_start_value():
    planner = BellmanPlanner("FrozenLake-v1", gamma=GAMMA).learn(0)
    assert abs(float(planner.policy.q_table[0].max()) - 0.542026) < 1e-6
    assert abs(float(greedy_values(frozen_lake_mdp(), planner.policy.q_table)[0]) - 0.542026) < 1e-6


def test_planner_without_transition_table_says_so():
    with pytest.raises(ValueError, match=r"CartPole-v1 has no transition table env.unwrapped.P"):
        BellmanPlanner("CartPole-v1")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_q_learning_rejects_non_discrete_observations(env_id):
    with pytest.raises(ValueError, match=r"needs a Discrete observation space, got Box.*discretise the observations"):
        LagrangianQLearning(env_id)


def test_continuous_actions_are_named_with_the_fix():
    env = gym.make("FrozenLake-v1")
    env.action_space = gym.spaces.Box(-1.0, 1.0, (1,))
    with pytest.raises(ValueError, match=r"needs a Discrete action space, got Box.*use LagrangianPPO"):
        LagrangianQLearning(env)


# ---------------------------------------------------------------------------------------- the per-entry step
@pytest.mark.parametrize("rho", [0.5, 0.25, 0.0])
def test_entry_step_equals_lagrangian_optimizer_on_the_entry_alone(rho):
    grads = torch.randn(50, generator=torch.Generator().manual_seed(1), dtype=torch.float64).tolist()
    param = torch.nn.Parameter(torch.tensor([0.3], dtype=torch.float64))
    reference = LagrangianOptimizer([param], lr=0.05, rho=rho, betas=(0.9, 0.99), eps=1e-8)
    table, visits, exp_avg, exp_avg_sq = (np.zeros((2, 3)) for _ in range(4))
    table[1, 2] = 0.3
    group = dict(lr=0.05, rho=rho, betas=(0.9, 0.99), eps=1e-8)
    for g in grads:
        param.grad = torch.tensor([g], dtype=torch.float64)
        reference.step()
        entry_step(table, visits, exp_avg, exp_avg_sq, (1, 2), g, group)
        assert table[1, 2] == pytest.approx(param.item(), rel=1e-12, abs=1e-15)
    assert visits[1, 2] == len(grads) and np.count_nonzero(table) == 1


def test_entrywise_optimizer_is_adam_per_entry_on_sparse_gradients():
    table = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    optimizer = EntrywiseLagrangianOptimizer([table], lr=0.1, rho=0.5, betas=(0.9, 0.999), eps=1e-8)
    entries = {(0, 1): torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)), (2, 0): None}
    entries[2, 0] = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    adams = {entry: torch.optim.Adam([p], lr=0.1) for entry, p in entries.items()}
    generator = torch.Generator().manual_seed(2)
    for step in range(30):
        entry = (0, 1) if step % 3 else (2, 0)  # uneven visits: the EMAs must advance per entry
        g = float(torch.randn(1, generator=generator, dtype=torch.float64))
        table.grad = torch.sparse_coo_tensor(
            [[entry[0]], [entry[1]]], [g], table.shape, dtype=torch.float64, check_invariants=True
        )
        optimizer.step()
        entries[entry].grad = torch.tensor([g], dtype=torch.float64)
        adams[entry].step()
    for entry, param in entries.items():
        assert table[entry].item() == pytest.approx(param.item(), rel=1e-12)
    assert torch.count_nonzero(table) == 2
    assert optimizer.state[table]["visits"].sum() == 30
    table.grad = torch.zeros_like(table)
    with pytest.raises(ValueError, match="sparse gradient"):
        optimizer.step()


def test_metric_is_identity_on_unvisited_entries():
    table = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    optimizer = EntrywiseLagrangianOptimizer([table], lr=0.1, rho=0.5, betas=(0.9, 0.999), eps=1e-8)
    table.grad = torch.sparse_coo_tensor([[0], [1]], [0.5], table.shape, dtype=torch.float64, check_invariants=True)
    optimizer.step()
    (block,) = optimizer.metric()
    expected = torch.ones(2, 2, dtype=torch.float64)
    expected[0, 1] = (0.5 + 1e-8) ** 2  # v̂ = g² after one visit: M = (√v̂ + ε)²
    torch.testing.assert_close(block.metric.diagonal, expected)


# ---------------------------------------------------------------------------------------- Q-learning
def test_plain_q_learning_equals_a_hand_written_loop():
    """rho=0, betas=(0, ·): ``Q(s,a) += lr·δ``; ε = 1 and a deterministic lake make the loop reproducible."""
    seed, steps, lr = 3, 3000, 0.2
    model = LagrangianQLearning(
        gym.make("FrozenLake-v1", is_slippery=False),
        learning_rate=lr,
        rho=0.0,
        betas=(0.0, 0.999),
        exploration_initial_eps=1.0,
        exploration_final_eps=1.0,
        steps_per_update=128,
        seed=seed,
    ).learn(steps)
    env, rng, q = gym.make("FrozenLake-v1", is_slippery=False), np.random.default_rng(seed), np.zeros((16, 4))
    state, _ = env.reset()
    for _ in range(steps):
        assert rng.random() < 1.0
        action = int(rng.integers(4))
        next_state, reward, terminated, truncated, _ = env.step(action)
        q[state, action] += lr * (reward + (0.0 if terminated else GAMMA * q[next_state].max()) - q[state, action])
        state = env.reset()[0] if terminated or truncated else next_state
    assert np.count_nonzero(q) > 0
    np.testing.assert_allclose(model.policy.q_table.detach().numpy(), q, rtol=0, atol=1e-15)


def test_rho_half_reaches_near_optimal_greedy_policy_on_frozen_lake():
    mdp = frozen_lake_mdp()
    optimum = float(solve(mdp, 1e-10).values[0])
    hits = []

    def check(local, _):
        model = local["self"]
        if model.num_timesteps % 5000 == 0 and float(greedy_values(mdp, model.policy.q_table)[0]) >= optimum - 0.01:
            hits.append(model.num_timesteps)
            return False
        return True

    LagrangianQLearning("FrozenLake-v1", learning_rate=0.03, rho=0.5, seed=2).learn(100_000, callback=check)
    assert hits and hits[0] <= 100_000


def test_callback_stops_training_and_sees_the_hooks():
    calls = []

    def stop_at_seven(local, _):
        calls.append(local["self"].num_timesteps)
        return len(calls) < 7

    model = LagrangianQLearning("FrozenLake-v1", seed=0, steps_per_update=5).learn(100, callback=stop_at_seven)
    assert calls == list(range(1, 8)) and model.num_timesteps == 7 and model._n_updates == 2


def test_trajectory_tags_in_tensorboard(tmp_path):
    LagrangianQLearning("FrozenLake-v1", seed=0, steps_per_update=250, tensorboard_log=str(tmp_path / "q")).learn(1000)
    assert set(TAGS) <= scalar_tags(tmp_path / "q")
    BellmanPlanner("FrozenLake-v1", tensorboard_log=str(tmp_path / "plan")).learn(0)
    assert set(TAGS) - scalar_tags(tmp_path / "plan") == {"kinematics/acceleration"}  # no observations elapse


# ---------------------------------------------------------------------------------------- save / load
def test_planner_save_load_predicts_the_same(tmp_path):
    planner = BellmanPlanner("FrozenLake-v1").learn(0)
    planner.save(tmp_path / "planner")
    loaded = BellmanPlanner.load(tmp_path / "planner", device="cpu")
    states = np.arange(16)
    np.testing.assert_array_equal(loaded.predict(states)[0], planner.predict(states)[0])
    assert torch.equal(loaded.policy.q_table, planner.policy.q_table)


def test_q_learning_save_load_round_trips_the_fisher_and_continues_exactly(tmp_path):
    settings = dict(learning_rate=0.05, exploration_initial_eps=0.3, exploration_final_eps=0.3, steps_per_update=100)
    uninterrupted = LagrangianQLearning("FrozenLake-v1", seed=5, **settings).learn(4000)

    model = LagrangianQLearning("FrozenLake-v1", seed=5, **settings).learn(2000)
    model.save(tmp_path / "q")
    loaded = LagrangianQLearning.load(tmp_path / "q", env=model.get_env(), force_reset=False)
    for key in ("visits", "exp_avg", "exp_avg_sq"):
        saved = model.policy.optimizer.state[model.policy.q_table][key]
        assert torch.equal(loaded.policy.optimizer.state[loaded.policy.q_table][key], saved)
    assert float(model.policy.optimizer.state[model.policy.q_table]["visits"].sum()) == 2000
    states = np.arange(16)
    np.testing.assert_array_equal(loaded.predict(states, deterministic=True)[0], model.predict(states, True)[0])

    loaded.learn(2000, reset_num_timesteps=False)
    assert loaded.num_timesteps == 4000
    assert torch.equal(loaded.policy.q_table, uninterrupted.policy.q_table)
    state, reference = loaded.policy.optimizer.state, uninterrupted.policy.optimizer.state
    assert torch.equal(
        state[loaded.policy.q_table]["exp_avg_sq"], reference[uninterrupted.policy.q_table]["exp_avg_sq"]
    )
