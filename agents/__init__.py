"""lagrl.agents: Stable-Baselines3 agents whose updates are Learning-Lagrangian flows (THEORY §5).

- :class:`LagrangianPPO`, :class:`LagrangianA2C` — SB3's PPO and A2C with ``preconditioner=``
  ``"adam"`` | ``"rmsprop"`` | ``"fisher-sqrt"`` | ``"natural"`` | :class:`PreconditionerConfig`;
- :class:`BellmanPlanner`, :class:`LagrangianQLearning` — tabular agents with SB3's API (a planner
  on the env's transition table; Q-learning whose per-entry step is the ρ = ½ Adam-type update);
- :class:`LagrangianTrajectoryCallback` — the Lagrangian trajectory in TensorBoard (added by the
  agents themselves when ``tensorboard_log`` is set);
- :mod:`lagrl.agents.training` — what ``lagrl train`` / ``lagrl evaluate`` compose (zoo-style YAML
  hyperparameters, atomic checkpoints).

This package is the only place lagrl imports SB3.
"""

from lagrl.agents.on_policy import LagrangianA2C, LagrangianPPO
from lagrl.agents.preconditioners import PRESETS, PreconditionerConfig
from lagrl.agents.tabular import BellmanPlanner, EntrywiseLagrangianOptimizer, LagrangianQLearning, TablePolicy
from lagrl.agents.trajectory import LagrangianTrajectoryCallback

__all__ = [
    "PRESETS",
    "BellmanPlanner",
    "EntrywiseLagrangianOptimizer",
    "LagrangianA2C",
    "LagrangianPPO",
    "LagrangianQLearning",
    "LagrangianTrajectoryCallback",
    "PreconditionerConfig",
    "TablePolicy",
]
