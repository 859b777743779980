"""Learning trajectories: the Lagrangian quantities of a training run, and their TensorBoard writer.

:class:`LearningTrajectory` turns each update of a run (its loss, gradient and the optimizer's metric
``M``, :meth:`lagrl.optim.LagrangianOptimizer.metric`) into the scalars of THEORY §1 and §5 under
fixed tags (:data:`TAGS`). Time is the number of observations (THEORY §0).

:class:`TrajectoryWriter` is a thin layer over ``torch.utils.tensorboard.SummaryWriter``: tags are
``prefix/name``; the writer is a context manager that flushes and closes on normal exit, on an
exception and on Ctrl-C (``KeyboardInterrupt`` is an exception too), so the event files hold every
scalar logged before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from lagrl.fisher import DenseFisher, DiagonalFisher, KroneckerFisher
from lagrl.lagrangian import kinetic_energy
from lagrl.legendre import momentum_from_velocity, velocity_from_gradient
from lagrl.optim import MetricBlock

TAGS = (
    "lagrangian/potential",
    "lagrangian/kinetic",
    "lagrangian/lagrangian",
    "lagrangian/hamiltonian",
    "lagrangian/action",
    "lagrangian/momentum_norm",
    "lagrangian/preconditioner_min",
    "lagrangian/preconditioner_mean",
    "lagrangian/preconditioner_max",
    "kinematics/velocity",
    "kinematics/acceleration",
)


def identity_metric(params: Sequence[Tensor]) -> list[MetricBlock]:
    """The metric of plain gradient descent (ρ = 0, ``M = I``), for optimizers without a Fisher."""
    return [MetricBlock([p], None, 0.0) for p in params]


def _block_vector(block: MetricBlock, gradients: Mapping[Tensor, Tensor]) -> Tensor:
    """The block's gradient in the layout its metric acts on (zeros for parameters without one)."""
    parts = [gradients.get(p, torch.zeros_like(p)) for p in block.params]
    if isinstance(block.metric, KroneckerFisher):
        return parts[0] if len(parts) == 1 else torch.cat([parts[0], parts[1].unsqueeze(1)], dim=1)
    if isinstance(block.metric, DenseFisher):
        return torch.cat([part.reshape(-1) for part in parts])
    return parts[0] if len(parts) == 1 else torch.cat([part.reshape(-1) for part in parts])


def _preconditioner_diagonal(block: MetricBlock, like: Tensor) -> Tensor:
    """``diag(M^{-ρ})``: the per-coordinate scale the step applies to the gradient estimate."""
    if block.metric is None or block.rho == 0:
        return torch.ones(like.numel(), dtype=like.dtype, device=like.device)
    powered = block.metric.power(-block.rho, block.damping)
    if isinstance(powered, DiagonalFisher):
        return powered.diagonal.reshape(-1)
    if isinstance(powered, DenseFisher):
        return powered.matrix.diagonal()
    return torch.outer(powered.output_factor.diagonal(), powered.input_factor.diagonal()).reshape(-1)


class LearningTrajectory:
    """Per-update Lagrangian quantities of a run, with the running action (THEORY §1, §5).

    For update ``k`` with loss ``V_k`` (the potential, a mean per observation), gradient ``g`` and the
    optimizer's metric ``M`` (``M^{-ρ}`` is its preconditioner), after ``t_k`` observations:

    - ``kinetic``    ``T = (1/2P) gᵀ M⁻¹ g`` (Eq. 26 with ``F = M``), summed over ``M``'s blocks;
    - ``lagrangian`` ``L = T − V`` (Eq. 26); ``hamiltonian`` ``T + V``;
    - ``action``     ``S_k = Σ_{j≤k} L_j (t_j − t_{j−1})``, time in observations (our discretisation);
    - ``momentum_norm``  ``|p|`` of the Legendre momentum ``p = m θ̇ = −(1/P) M^{-½} g`` (THEORY §5);
    - ``preconditioner_min|mean|max``  over the diagonal of ``M^{-ρ}``;
    - ``kinematics/velocity``  the loss per observation ``V_k`` (THEORY §1 applied to the learning
      curve; for RL losses this is our reading, not a code length), and ``acceleration``
      ``(V_k − V_{k−1}) / (t_k − t_{k−1})`` (from the second update on).
    """

    def __init__(self) -> None:
        self.action = 0.0
        self._last: tuple[float, int] | None = None  # (velocity, observations) of the previous update

    @torch.no_grad()
    def record(
        self, potential: float, gradients: Mapping[Tensor, Tensor], blocks: Sequence[MetricBlock], observations: int
    ) -> dict[str, float]:
        """The scalars of one update, keyed by :data:`TAGS`; advances the action."""
        num_params = sum(p.numel() for block in blocks for p in block.params)
        kinetic, momentum_sq, diagonals = 0.0, 0.0, []
        for block in blocks:
            g = _block_vector(block, gradients)
            if block.metric is None:
                kinetic += float(g.square().sum()) / (2 * num_params)
                momentum = -g / num_params
            else:
                kinetic += float(kinetic_energy(g, block.metric, num_params, damping=block.damping))
                velocity = velocity_from_gradient(g, block.metric, rho=0.5, damping=block.damping)
                momentum = momentum_from_velocity(velocity, num_params)
            momentum_sq += float(momentum.square().sum())
            diagonals.append(_preconditioner_diagonal(block, g).to(torch.float64))
        diagonal = torch.cat(diagonals)
        elapsed = observations - (self._last[1] if self._last else 0)
        lagrangian = kinetic - potential
        self.action += lagrangian * elapsed
        scalars = {
            "lagrangian/potential": potential,
            "lagrangian/kinetic": kinetic,
            "lagrangian/lagrangian": lagrangian,
            "lagrangian/hamiltonian": kinetic + potential,
            "lagrangian/action": self.action,
            "lagrangian/momentum_norm": math.sqrt(momentum_sq),
            "lagrangian/preconditioner_min": float(diagonal.min()),
            "lagrangian/preconditioner_mean": float(diagonal.mean()),
            "lagrangian/preconditioner_max": float(diagonal.max()),
            "kinematics/velocity": potential,
        }
        if self._last is not None and elapsed > 0:
            scalars["kinematics/acceleration"] = (potential - self._last[0]) / elapsed
        self._last = (potential, observations)
        return scalars


class TrajectoryWriter:
    """Scalars per step under ``prefix/name`` in ``logdir``; use as ``with TrajectoryWriter(d) as w:``."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def scalars(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        """Log ``values`` at ``step`` under ``prefix/name`` (non-finite values are logged as they are)."""
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log one scalar under its full tag."""
        self._writer.add_scalar(tag, float(value), step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of ``values`` (e.g. a parameter tensor)."""
        self._writer.add_histogram(tag, values.detach().cpu(), step)

    def hparams(self, settings: Mapping[str, float | int | str | bool], metrics: Mapping[str, float]) -> None:
        """The run's settings for TensorBoard's HParams tab, with ``metrics`` naming its logged scalar tags.

        Unlike ``SummaryWriter.add_hparams`` this writes no extra scalars (which would add a point at
        step 0 to each curve): the tab reads the metrics from the run's own series.
        """
        file_writer = self._writer._get_file_writer()
        for summary in hparams(dict(settings), dict(metrics)):
            file_writer.add_summary(summary)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
