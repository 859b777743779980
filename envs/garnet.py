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

from lagrl.envs._checks import check_int
from lagrl.envs.tabular import Table, TabularEnv


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
