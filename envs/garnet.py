"""Garnet random MDPs (Archibald, McKinnon & Thomas 1995; Bhatnagar et al. 2009).

``GarnetEnv(num_states, num_actions, branching, seed)`` draws, from ``numpy.random.default_rng(seed)``
and in this order:

1. for each ``(s, a)`` in row-major order: ``branching`` distinct next states (``rng.choice`` without
   replacement), then their probabilities as the gaps of a uniform partition of ``[0, 1]`` —
   ``branching − 1`` sorted uniform cut points;
2. the rewards ``r(s, a) ~ Uniform[0, 1]``, one per ``(s, a)``, paid whatever the next state.

The same arguments give the same MDP. The start state is uniform; nothing terminates; the registered
id ``lagrl/Garnet-v0`` truncates after 1000 steps. ``reset(seed=...)`` seeds only the sampling of
episodes, never the MDP.
"""

from __future__ import annotations

import numpy as np
import torch

from lagrl.envs._checks import check_int
from lagrl.envs.tabular import Table, TabularEnv
from lagrl.mdp import TabularMDP


class GarnetEnv(TabularEnv):
    """A seeded Garnet MDP with ``branching`` successors per state-action pair."""

    def __init__(self, num_states: int = 20, num_actions: int = 4, branching: int = 3, seed: int = 0) -> None:
        num_states = check_int("num_states", num_states, minimum=1)
        num_actions = check_int("num_actions", num_actions, minimum=1)
        branching = check_int("branching", branching, minimum=1)
        seed = check_int("seed", seed, minimum=0)
        if branching > num_states:
            raise ValueError(
                f"branching = {branching} exceeds num_states = {num_states}: each (s, a) needs that many distinct "
                f"next states; pass branching <= {num_states}"
            )
        rng = np.random.default_rng(seed)
        successors: dict[tuple[int, int], list[tuple[float, int]]] = {}
        for s in range(num_states):
            for a in range(num_actions):
                next_states = rng.choice(num_states, size=branching, replace=False)
                cuts = np.sort(rng.uniform(size=branching - 1))
                probs = np.diff(np.concatenate(([0.0], cuts, [1.0])))
                successors[s, a] = list(zip(probs.tolist(), next_states.tolist()))
        rewards = rng.uniform(size=(num_states, num_actions))
        P: Table = {
            s: {
                a: [(prob, next_state, float(rewards[s, a]), False) for prob, next_state in successors[s, a]]
                for a in range(num_actions)
            }
            for s in range(num_states)
        }
        super().__init__(P, np.full(num_states, 1.0 / num_states))


def garnet_batch(
    count: int,
    num_states: int,
    num_actions: int,
    branching: int,
    *,
    gamma: float = 0.99,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> TabularMDP:
    """``count`` Garnet MDPs as one batched :class:`~lagrl.mdp.TabularMDP` ``(count, S, A, S)``, drawn on ``device``.

    The distribution of :class:`GarnetEnv` (per ``(s, a)``: ``branching`` distinct successors, probabilities
    the gaps of sorted uniform cut points; rewards ``Uniform[0, 1]``; uniform start) drawn with a torch
    generator seeded by ``seed`` on ``device`` — the same draws on one device type, not GarnetEnv's numpy
    draws. The tables are built on the device, so a large batch never passes through Python loops.
    """
    count = check_int("count", count, minimum=1)
    num_states = check_int("num_states", num_states, minimum=1)
    num_actions = check_int("num_actions", num_actions, minimum=1)
    branching = check_int("branching", branching, minimum=1)
    if branching > num_states:
        raise ValueError(f"branching = {branching} exceeds num_states = {num_states}; pass branching <= {num_states}")
    device = torch.device(device or "cpu")
    generator = torch.Generator(device).manual_seed(check_int("seed", seed, minimum=0))
    shape = (count, num_states, num_actions)
    keys = torch.rand(shape + (num_states,), generator=generator, device=device)
    successors = keys.argsort(-1)[..., :branching]  # distinct next states
    cuts = torch.rand(shape + (branching - 1,), generator=generator, device=device, dtype=dtype).sort(-1).values
    edges = torch.cat([cuts.new_zeros(shape + (1,)), cuts, cuts.new_ones(shape + (1,))], dim=-1)
    transitions = torch.zeros(shape + (num_states,), device=device, dtype=dtype)
    transitions.scatter_(-1, successors, edges.diff(dim=-1))
    rewards = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return TabularMDP(transitions, rewards, gamma, dtype=dtype, device=device)
