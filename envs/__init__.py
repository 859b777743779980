"""Gymnasium environments of lagrl, registered under the ``lagrl/`` namespace on import.

- ``lagrl/RiverSwim-v0``        :class:`~lagrl.envs.river_swim.RiverSwimEnv`, tabular chain (exploration)
- ``lagrl/Garnet-v0``           :class:`~lagrl.envs.garnet.GarnetEnv`, seeded random tabular MDP
- ``lagrl/LinearQuadratic-v0``  :class:`~lagrl.envs.linear_quadratic.LinearQuadraticEnv`, deterministic
  differentiable dynamics for the RL Hamiltonian (THEORY §3)

The tabular envs expose Gymnasium's toy-text table ``unwrapped.P[s][a] = [(prob, next_state, reward,
terminated), ...]`` and ``unwrapped.initial_state_distrib``, so :meth:`lagrl.mdp.TabularMDP.from_gymnasium`
reads them. Usage: ``import lagrl.envs; gymnasium.make("lagrl/Garnet-v0", seed=3)``.
"""

import gymnasium

gymnasium.register(
    id="lagrl/RiverSwim-v0",
    entry_point="lagrl.envs.river_swim:RiverSwimEnv",
    max_episode_steps=1000,
)
gymnasium.register(
    id="lagrl/Garnet-v0",
    entry_point="lagrl.envs.garnet:GarnetEnv",
    max_episode_steps=1000,
)
# No TimeLimit here: the env truncates itself at its own ``horizon`` (and adds the terminal reward).
gymnasium.register(
    id="lagrl/LinearQuadratic-v0",
    entry_point="lagrl.envs.linear_quadratic:LinearQuadraticEnv",
)
