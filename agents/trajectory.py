"""Learning trajectories in TensorBoard for every lagrl agent: one SB3 callback, one agent mixin.

Each agent calls its ``trajectory_sink(potential, gradients, metric, observations)`` after every update
(a ``train()`` call: one rollout's epochs for PPO, one gradient step for A2C, one batch of table
updates for the tabular agents), with its loss and gradient at the parameters the update produced.
:class:`LagrangianTrajectoryCallback` turns that into the scalars of
:class:`lagrl.trajectory.LearningTrajectory` under the fixed tags of :data:`lagrl.trajectory.TAGS`,
beside SB3's own, plus parameter histograms and the run's hyperparameters. Agents add the callback
themselves when ``tensorboard_log`` is set, and flush it when ``learn`` ends, fails or is interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.type_aliases import MaybeCallback
from torch import Tensor

from lagrl.optim import LagrangianOptimizer, MetricBlock
from lagrl.trajectory import LearningTrajectory, TrajectoryWriter, identity_metric

TrajectorySink = Callable[[float, Mapping[Tensor, Tensor], Sequence[MetricBlock], int], None]


def optimizer_metric(optimizer: Any, params: Sequence[Tensor]) -> list[MetricBlock]:
    """The metric of ``optimizer``'s next step: its own for a lagrl optimizer, else the identity (ρ = 0)."""
    return optimizer.metric() if isinstance(optimizer, LagrangianOptimizer) else identity_metric(params)


class LagrangianTrajectoryCallback(BaseCallback):
    """Writes each update's Lagrangian scalars (see :class:`lagrl.trajectory.LearningTrajectory`).

    Args:
        log_dir: where the event file goes; default: the directory of SB3's TensorBoard logger (the
            run's ``tensorboard_log/<ALGO>_<n>`` folder), so the tags sit beside SB3's own.
        histograms: also log a histogram of every policy parameter per update (``parameters/<name>``).
    """

    def __init__(self, log_dir: str | Path | None = None, histograms: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_dir = log_dir
        self.histograms = histograms
        self.writer: TrajectoryWriter | None = None
        self.trajectory = LearningTrajectory()
        self.last: dict[str, float] = {}

    def _on_training_start(self) -> None:
        directory = self.log_dir if self.log_dir is not None else self.logger.get_dir()
        if directory is None:
            raise ValueError(
                "LagrangianTrajectoryCallback has no directory: set tensorboard_log on the agent, "
                "or pass LagrangianTrajectoryCallback(log_dir=...)"
            )
        self.writer = TrajectoryWriter(directory)
        self.model.trajectory_sink = self.record
        self.model._trajectory_callback = self

    def record(
        self, potential: float, gradients: Mapping[Tensor, Tensor], metric: Sequence[MetricBlock], observations: int
    ) -> None:
        """Log one update at step ``observations`` (the agent's ``num_timesteps``)."""
        assert self.writer is not None
        self.last = self.trajectory.record(potential, gradients, metric, observations)
        for tag, value in self.last.items():
            self.writer.scalar(tag, value, observations)
        if self.histograms:
            for name, param in self.model.policy.named_parameters():
                self.writer.histogram(f"parameters/{name}", param, observations)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.writer is not None:
            self.writer.hparams(_hyperparameters(self.model), self.last)
        self.close()

    def close(self) -> None:
        """Flush and close the event file (idempotent); the agent stops sending updates."""
        if getattr(self.model, "trajectory_sink", None) == self.record:
            self.model.trajectory_sink = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _hyperparameters(model: Any) -> dict[str, float | int | str | bool]:
    """The run's scalar settings for TensorBoard's HParams tab (schedules and objects as text)."""
    names = ("learning_rate", "gamma", "gae_lambda", "n_steps", "batch_size", "n_epochs", "ent_coef", "vf_coef")
    values: dict[str, float | int | str | bool] = {"algorithm": type(model).__name__, "seed": str(model.seed)}
    values["preconditioner"] = str(getattr(model, "preconditioner", "sb3"))
    for name in names:
        if hasattr(model, name):
            value = getattr(model, name)
            values[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return values


def _contains(callback: MaybeCallback, kind: type[BaseCallback]) -> bool:
    if isinstance(callback, list):
        return any(_contains(c, kind) for c in callback)
    if isinstance(callback, CallbackList):
        return any(_contains(c, kind) for c in callback.callbacks)
    return isinstance(callback, kind)


class TrajectoryMixin:
    """For SB3 algorithms: add the trajectory callback when ``tensorboard_log`` is set; flush it always.

    Subclasses call :meth:`_emit_trajectory` after each update with their loss and its gradient.
    """

    trajectory_sink: TrajectorySink | None = None
    _trajectory_callback: LagrangianTrajectoryCallback | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "trajectory_sink", "_trajectory_callback"]  # type: ignore[misc]

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        if self.tensorboard_log is not None and not _contains(callback, LagrangianTrajectoryCallback):  # type: ignore[attr-defined]
            callbacks = callback if isinstance(callback, list) else ([] if callback is None else [callback])
            callback = [*callbacks, LagrangianTrajectoryCallback()]
        return super()._init_callback(callback, progress_bar)  # type: ignore[misc]

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """SB3's ``learn``; the trajectory's event file is flushed also on an error or Ctrl-C."""
        try:
            return super().learn(*args, **kwargs)  # type: ignore[misc]
        finally:
            if self._trajectory_callback is not None:
                self._trajectory_callback.close()
                self._trajectory_callback = None

    def _emit_trajectory(
        self, potential: float, gradients: Mapping[Tensor, Tensor], metric: Sequence[MetricBlock]
    ) -> None:
        if self.trajectory_sink is not None:
            self.trajectory_sink(potential, gradients, metric, self.num_timesteps)  # type: ignore[attr-defined]
