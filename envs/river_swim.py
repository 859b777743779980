"""RiverSwim (Strehl & Littman 2008), in the variant of Osband, Russo & Van Roy (2013).

A chain of ``n`` states ``0 … n−1``; action 0 (``LEFT``) swims with the current, action 1 (``RIGHT``)
against it. Rewards depend on ``(s, a)`` only:

- ``LEFT`` moves to ``max(s − 1, 0)`` with probability 1; it pays ``5/1000`` in state 0, else 0.
- ``RIGHT`` in an interior state ``0 < s < n−1``: ``s + 1`` w.p. 0.35, stay w.p. 0.6, ``s − 1`` w.p. 0.05.
- ``RIGHT`` in state 0: ``1`` w.p. 0.6, stay w.p. 0.4.
- ``RIGHT`` in state ``n − 1``: stay w.p. 0.6, ``n − 2`` w.p. 0.4; it pays 1 (whatever the outcome).

The start state is 0 or 1, each with probability ½. Nothing terminates; the registered id
``lagrl/RiverSwim-v0`` truncates after 1000 steps.
"""

from __future__ import annotations

import numpy as np

from lagrl.envs._checks import check_int
from lagrl.envs.tabular import Table, TabularEnv

LEFT, RIGHT = 0, 1
SMALL_REWARD = 5 / 1000
"""Reward of ``LEFT`` in state 0."""
LARGE_REWARD = 1.0
"""Reward of ``RIGHT`` in the last state."""
RIGHT_INTERIOR = {+1: 0.35, 0: 0.6, -1: 0.05}
"""``RIGHT`` in an interior state: probability of each move (next state = s + move)."""
RIGHT_FIRST = {+1: 0.6, 0: 0.4}
"""``RIGHT`` in state 0."""
RIGHT_LAST = {0: 0.6, -1: 0.4}
"""``RIGHT`` in state ``n − 1``."""


class RiverSwimEnv(TabularEnv):
    """RiverSwim with ``n`` states (``n >= 2``); see the module docstring for the exact table."""

    def __init__(self, n: int = 6) -> None:
        n = check_int("n", n, minimum=2)
        P: Table = {}
        for s in range(n):
            moves = RIGHT_FIRST if s == 0 else RIGHT_LAST if s == n - 1 else RIGHT_INTERIOR
            right_reward = LARGE_REWARD if s == n - 1 else 0.0
            P[s] = {
                LEFT: [(1.0, max(s - 1, 0), SMALL_REWARD if s == 0 else 0.0, False)],
                RIGHT: [(prob, s + move, right_reward, False) for move, prob in moves.items()],
            }
        start = np.zeros(n)
        start[:2] = 0.5
        super().__init__(P, start)
