"""TensorBoard trajectories: one scalar series per quantity, written so that nothing is lost.

A thin layer over ``torch.utils.tensorboard.SummaryWriter``: tags are ``prefix/name``; the writer is
a context manager that flushes and closes on normal exit, on an exception and on Ctrl-C
(``KeyboardInterrupt`` is an exception too), so the event files hold every scalar logged before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from torch.utils.tensorboard import SummaryWriter


class TrajectoryWriter:
    """Scalars per step under ``prefix/name`` in ``logdir``; use as ``with TrajectoryWriter(d) as w:``."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def scalars(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        """Log ``values`` at ``step`` under ``prefix/name`` (non-finite values are logged as they are)."""
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

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
