"""A Gymnasium env that samples a finite MDP from its toy-text table.

``P[s][a] = [(prob, next_state, reward, terminated), ...]`` and ``initial_state_distrib[s]``, the
format of Gymnasium's toy-text envs (FrozenLake, CliffWalking, Taxi); subclasses only build the table.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.toy_text.utils import categorical_sample

Transition = tuple[float, int, float, bool]
"""One outcome ``(prob, next_state, reward, terminated)``."""

Table = dict[int, dict[int, list[Transition]]]
"""``P[s][a]``: the outcomes of action ``a`` in state ``s``."""


class TabularEnv(gymnasium.Env[int, int]):
    """Samples the MDP ``(P, initial_state_distrib)``: Discrete observations (the state) and actions."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, P: Table, initial_state_distrib: np.ndarray) -> None:
        self.P = P
        self.initial_state_distrib = initial_state_distrib
        self.observation_space = spaces.Discrete(len(P))
        self.action_space = spaces.Discrete(len(P[0]))
        self.s = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Draw the start state from ``initial_state_distrib`` with ``self.np_random``."""
        super().reset(seed=seed)
        self.s = int(categorical_sample(self.initial_state_distrib, self.np_random))
        return self.s, {"prob": float(self.initial_state_distrib[self.s])}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        """Draw one outcome of ``P[s][action]``; never truncates (a ``TimeLimit`` wrapper does)."""
        outcomes = self.P[self.s][int(action)]
        index = categorical_sample([outcome[0] for outcome in outcomes], self.np_random)
        prob, next_state, reward, terminated = outcomes[index]
        self.s = int(next_state)
        return self.s, float(reward), bool(terminated), False, {"prob": float(prob)}
