"""lagrl.agents: Stable-Baselines3 agents whose updates are Learning-Lagrangian flows (THEORY §5).

- :class:`LagrangianPPO`, :class:`LagrangianA2C` — SB3's PPO and A2C with ``preconditioner=``
  ``"adam"`` | ``"rmsprop"`` | ``"fisher-sqrt"`` | ``"natural"`` | :class:`PreconditionerConfig`;
- :class:`LagrangianTrajectoryCallback` — the Lagrangian trajectory in TensorBoard (added by the
  agents themselves when ``tensorboard_log`` is set).

This package is the only place lagrl imports SB3.
"""

from lagrl.agents.on_policy import LagrangianA2C, LagrangianPPO
from lagrl.agents.preconditioners import PRESETS, PreconditionerConfig
from lagrl.agents.trajectory import LagrangianTrajectoryCallback

__all__ = ["PRESETS", "LagrangianA2C", "LagrangianPPO", "LagrangianTrajectoryCallback", "PreconditionerConfig"]
