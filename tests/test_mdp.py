"""TabularMDP: validation (one test per error), operators, and conversion from Gymnasium P tables."""

import gymnasium
import pytest
import torch

from helpers import F64
from lagrl.bellman import solve
from lagrl.mdp import TabularMDP


def random_transitions(*shape: int, seed: int = 0) -> torch.Tensor:
    """Dense ``P[..., s, a, s']`` with rows drawn uniformly and normalised."""
    weights = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return weights / weights.sum(-1, keepdim=True)


def absorbing_chain() -> tuple[torch.Tensor, torch.Tensor]:
    """States 0 → 1 → 2 with state 2 absorbing and zero-reward (every state can terminate)."""
    transitions = torch.zeros(3, 2, 3, dtype=F64)
    transitions[0, :, 1] = transitions[1, :, 2] = transitions[2, :, 2] = 1.0
    rewards = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 0.0]], dtype=F64)
    return transitions, rewards


class TableEnv(gymnasium.Env):
    """A toy-text style env whose only content is the transition table ``P[s][a]``."""

    def __init__(self, table: dict, start: list[float] | None = None) -> None:
        self.P = table
        self.observation_space = gymnasium.spaces.Discrete(len(table))
        self.action_space = gymnasium.spaces.Discrete(len(table[0]))
        if start is not None:
            self.initial_state_distrib = start


# ---------------------------------------------------------------------------------------- validation
def test_rejects_transitions_that_are_not_three_dimensional(device):
    with pytest.raises(ValueError, match=r"transitions must have shape \(\.\.\., S, A, S\)"):
        TabularMDP(torch.eye(3, dtype=F64), torch.zeros(3, 3), 0.9, device=device)


def test_rejects_different_numbers_of_source_and_next_states(device):
    with pytest.raises(ValueError, match="2 source states but 3 next states"):
        TabularMDP(torch.full((2, 2, 3), 1 / 3, dtype=F64), torch.zeros(2, 2), 0.9, device=device)


def test_rejects_negative_probabilities(device):
    transitions = random_transitions(3, 2, 3)
    transitions[1, 0] = torch.tensor([1.5, -0.5, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="negative probabilities"):
        TabularMDP(transitions, torch.zeros(3, 2), 0.9, device=device)


def test_rejects_nan_transitions(device):
    transitions = random_transitions(3, 2, 3)
    transitions[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="transitions contain NaN"):
        TabularMDP(transitions, torch.zeros(3, 2), 0.9, device=device)


def test_rejects_rows_that_do_not_sum_to_one(device):
    transitions = random_transitions(3, 2, 3)
    transitions[1, 1] *= 0.9
    with pytest.raises(ValueError, match=r"P\[1, 1, :\] sums to 0.9, not 1"):
        TabularMDP(transitions, torch.zeros(3, 2), 0.9, device=device)


def test_rejects_sparse_rows_that_do_not_sum_to_one(device):
    transitions = random_transitions(3, 2, 3)
    transitions[0, 1] = 0.0  # an empty sparse row sums to 0
    with pytest.raises(ValueError, match=r"P\[0, 1, :\] sums to 0, not 1"):
        TabularMDP(transitions.to_sparse(), torch.zeros(3, 2), 0.9, device=device)


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_rejects_gamma_outside_the_unit_interval(device, gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(3, 2), gamma, device=device)


def test_rejects_gamma_one_without_horizon_when_a_state_cannot_terminate(device):
    transitions, rewards = absorbing_chain()
    transitions[2, 1] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # 2 is no longer absorbing: a loop 0 → 1 → 2 → 0
    with pytest.raises(ValueError, match=r"states 0, 1, 2 cannot reach an absorbing zero-reward state"):
        TabularMDP(transitions, rewards, 1.0, device=device)


def test_rejects_gamma_one_when_the_absorbing_state_pays(device):
    transitions, rewards = absorbing_chain()
    rewards[2, 0] = 1.0
    with pytest.raises(ValueError, match="use gamma < 1 or pass horizon"):
        TabularMDP(transitions, rewards, 1.0, device=device)


def test_accepts_gamma_one_with_absorbing_states_or_a_horizon(device):
    transitions, rewards = absorbing_chain()
    assert TabularMDP(transitions, rewards, 1.0, device=device).gamma == 1.0
    assert TabularMDP(transitions.to_sparse(), rewards, 1.0, device=device).gamma == 1.0
    transitions[2, 1] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    assert TabularMDP(transitions, rewards, 1.0, horizon=4, device=device).horizon == 4


def test_gamma_one_check_of_a_large_sparse_mdp_never_densifies(device):
    """50,000 states jumping at random, 1% of them into an absorbing end: dense, P would need 40 GB."""
    states, generator = 50_000, torch.Generator().manual_seed(0)
    target = torch.randint(0, states - 1, (states, 2), generator=generator)
    target[torch.randperm(states, generator=generator)[: states // 100], 1] = states - 1
    target[-1] = states - 1
    indices = torch.stack([torch.arange(states).repeat_interleave(2), torch.arange(2).repeat(states), target.flatten()])
    transitions = torch.sparse_coo_tensor(indices, torch.ones(2 * states, dtype=F64), check_invariants=True)
    rewards = torch.ones(states, 2, dtype=F64)
    rewards[-1] = 0.0
    assert TabularMDP(transitions, rewards, 1.0, device=device).num_states == states
    rewards[-1, 0] = 1.0
    with pytest.raises(ValueError, match=r"states 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. cannot reach"):
        TabularMDP(transitions, rewards, 1.0, device=device)


def test_rejects_a_start_distribution_of_the_wrong_shape(device):
    with pytest.raises(ValueError, match=r"start must have shape \(3,\), got \(4,\)"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(3, 2), 0.9, torch.full((4,), 0.25), device=device)


@pytest.mark.parametrize("start", [[0.5, 0.5, 0.5], [1.5, -0.5, 0.0], [float("nan"), 0.5, 0.5]])
def test_rejects_a_start_that_is_not_a_distribution(device, start):
    with pytest.raises(ValueError, match="start must be a probability distribution"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(3, 2), 0.9, torch.tensor(start), device=device)


@pytest.mark.parametrize("shape", [(3,), (2, 3), (3, 2, 1)])
def test_rejects_rewards_of_the_wrong_shape(device, shape):
    with pytest.raises(ValueError, match=r"rewards must have shape \(3, 2\)"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(shape), 0.9, device=device)


def test_rejects_time_indexed_rewards_of_the_wrong_length(device):
    with pytest.raises(ValueError, match=r"rewards must have shape \(5, 3, 2\)"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(4, 3, 2), 0.9, horizon=5, device=device)


def test_rejects_non_finite_rewards(device):
    rewards = torch.zeros(3, 2)
    rewards[0, 1] = float("inf")
    with pytest.raises(ValueError, match="rewards contain NaN or inf"):
        TabularMDP(random_transitions(3, 2, 3), rewards, 0.9, device=device)


def test_rejects_a_horizon_below_one(device):
    with pytest.raises(ValueError, match="horizon must be a positive number of steps, got 0"):
        TabularMDP(random_transitions(3, 2, 3), torch.zeros(3, 2), 0.9, horizon=0, device=device)


def test_rejects_batched_sparse_transitions(device):
    with pytest.raises(ValueError, match=r"sparse transitions must be unbatched with shape \(S, A, S\)"):
        TabularMDP(random_transitions(2, 3, 2, 3).to_sparse(), torch.zeros(2, 3, 2), 0.9, device=device)


def test_rejects_an_mdp_without_actions(device):
    with pytest.raises(ValueError, match="at least one state and one action"):
        TabularMDP(torch.zeros(3, 0, 3, dtype=F64), torch.zeros(3, 0), 0.9, device=device)


# ---------------------------------------------------------------------------------------- operators
def test_batch_shape_start_and_properties(device):
    mdp = TabularMDP(random_transitions(2, 5, 4, 3, 4), torch.zeros(2, 5, 4, 3), 0.9, device=device)
    assert (mdp.batch_shape, mdp.num_states, mdp.num_actions) == ((2, 5), 4, 3)
    assert mdp.device.type == device.type and mdp.dtype == torch.float64
    torch.testing.assert_close(mdp.start, torch.full((2, 5, 4), 0.25, dtype=F64, device=device))


def test_expected_next_and_policy_matrix_match_explicit_sums(device):
    transitions = random_transitions(4, 3, 4, seed=1)
    rewards = torch.rand(4, 3, dtype=F64)
    values = torch.randn(4, dtype=F64)
    policy = torch.softmax(torch.randn(4, 3, dtype=F64), -1)
    expected_next = torch.tensor(
        [[sum(transitions[s, a, t] * values[t] for t in range(4)) for a in range(3)] for s in range(4)]
    )
    expected_matrix = torch.stack([sum(policy[s, a] * transitions[s, a] for a in range(3)) for s in range(4)])
    for stored in (transitions, transitions.to_sparse()):
        mdp = TabularMDP(stored, rewards, 0.9, device=device)
        torch.testing.assert_close(mdp.expected_next(values.to(device)).cpu(), expected_next)
        matrix, policy_rewards = mdp.policy_matrix(policy.to(device))
        torch.testing.assert_close(matrix.to_dense().cpu(), expected_matrix)
        torch.testing.assert_close(policy_rewards.cpu(), (policy * rewards).sum(-1))
        actions = torch.tensor([2, 0, 1, 1], device=device)
        torch.testing.assert_close(mdp.policy_matrix(actions)[0].to_dense().cpu(), transitions[range(4), actions.cpu()])


def test_time_indexed_rewards_need_the_step(device):
    rewards = torch.arange(5 * 3 * 2, dtype=F64).reshape(5, 3, 2)
    mdp = TabularMDP(random_transitions(3, 2, 3), rewards, 1.0, horizon=5, device=device)
    assert mdp.time_indexed
    torch.testing.assert_close(mdp.reward_at(4).cpu(), rewards[4])
    with pytest.raises(ValueError, match="rewards are time-indexed: pass the step t"):
        mdp.reward_at()


def test_to_changes_dtype_and_keeps_the_mdp(device):
    mdp = TabularMDP(random_transitions(3, 2, 3), torch.rand(3, 2), 0.9, horizon=2, device=device)
    single = mdp.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.horizon == 2 and single.gamma == 0.9
    torch.testing.assert_close(single.transitions, mdp.transitions.float())


# ---------------------------------------------------------------------------------------- Gymnasium
def test_from_gymnasium_rejects_an_env_without_a_transition_table():
    with pytest.raises(ValueError, match=r"CartPole-v1 has no transition table env\.unwrapped\.P"):
        TabularMDP.from_gymnasium("CartPole-v1", 0.99)


def test_from_gymnasium_sends_terminated_transitions_to_an_absorbing_sink():
    mdp = TabularMDP.from_gymnasium("FrozenLake-v1", 0.99)
    sink = 16
    assert mdp.num_states == 17 and mdp.num_actions == 4
    torch.testing.assert_close(mdp.transitions[sink], torch.eye(17, dtype=F64)[sink].expand(4, 17))
    assert (mdp.rewards[sink] == 0).all()
    # Right from 14 slips to 14, 10 or onto the goal: the goal step pays 1 and terminates into the sink.
    torch.testing.assert_close(mdp.transitions[14, 2, [10, 14, 15, 16]], torch.tensor([1, 1, 0, 1], dtype=F64) / 3)
    assert mdp.rewards[14, 2].item() == pytest.approx(1 / 3)
    assert (mdp.transitions[:, :, 15] == 0).all()  # the goal is never entered without terminating
    torch.testing.assert_close(mdp.transitions[5], mdp.transitions[sink, :, :])  # a hole terminates at once
    assert mdp.start[0] == 1 and mdp.start[sink] == 0


def test_cliffwalking_values_are_right_only_thanks_to_the_sink():
    reference = -12.247898  # V*(36) at gamma = 0.99
    mdp = TabularMDP.from_gymnasium("CliffWalking-v1", 0.99)
    assert solve(mdp, 1e-9).values[36].item() == pytest.approx(reference, abs=1e-6)
    table = gymnasium.make("CliffWalking-v1").unwrapped.P  # the naive model: terminated steps stay put
    naive_transitions = torch.zeros(48, 4, 48, dtype=F64)
    naive_rewards = torch.zeros(48, 4, dtype=F64)
    for state, actions in table.items():
        for action, outcomes in actions.items():
            for probability, next_state, reward, _ in outcomes:
                naive_transitions[state, action, next_state] += probability
                naive_rewards[state, action] += probability * reward
    naive = solve(TabularMDP(naive_transitions, naive_rewards, 0.99), 1e-9).values[36].item()
    assert naive < reference - 50  # the goal keeps paying -1 per step forever


def test_from_gymnasium_sums_duplicate_outcomes_and_keeps_the_start():
    table = {
        0: {0: [(0.25, 1, 4.0, False), (0.5, 1, 2.0, False), (0.25, 0, 0.0, False)], 1: [(1.0, 0, -1.0, False)]},
        1: {0: [(1.0, 1, 0.0, False)], 1: [(0.5, 0, 1.0, False), (0.5, 0, 1.0, False)]},
    }
    mdp = TabularMDP.from_gymnasium(TableEnv(table, start=[0.0, 1.0]), 0.9)
    assert mdp.num_states == 2  # nothing terminates: no sink
    torch.testing.assert_close(mdp.transitions[0, 0], torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(mdp.transitions[1, 1], torch.tensor([1.0, 0.0], dtype=F64))
    torch.testing.assert_close(mdp.rewards, torch.tensor([[2.0, -1.0], [0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(mdp.start, torch.tensor([0.0, 1.0], dtype=F64))


def test_from_gymnasium_rejects_missing_actions():
    table = {0: {0: [(1.0, 1, 0.0, False)], 1: [(1.0, 1, 0.0, False)]}, 1: {0: [(1.0, 1, 0.0, False)]}}
    with pytest.raises(ValueError, match=r"state 1 lists actions \[0\], expected 0..1"):
        TabularMDP.from_gymnasium(TableEnv(table), 0.9)


def test_from_gymnasium_taxi_start_distribution():
    mdp = TabularMDP.from_gymnasium("Taxi-v4", 0.99)
    assert (mdp.num_states, mdp.num_actions) == (501, 6)
    assert int((mdp.start > 0).sum()) == 300 and mdp.start[500] == 0
    assert mdp.start.sum().item() == pytest.approx(1.0)


def test_transition_rows_are_csr_for_large_sparse_tables_and_equal_the_dense_view():
    taxi = TabularMDP.from_gymnasium("Taxi-v4", gamma=0.99)
    rows = taxi.transition_rows()
    assert rows.layout == torch.sparse_csr
    dense_view = taxi.transitions.reshape(taxi.num_states * taxi.num_actions, taxi.num_states)
    assert torch.equal(rows.to_dense(), dense_view)
    small = TabularMDP.from_gymnasium("FrozenLake-v1", gamma=0.99)
    assert small.transition_rows().layout == torch.strided
    batch = TabularMDP(torch.stack([small.transitions] * 2), torch.stack([small.rewards] * 2), 0.99)
    with pytest.raises(ValueError, match="index the batch first"):
        batch.transition_rows()
