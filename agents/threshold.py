"""When a run counts as solved: the first step at which its 100-episode training mean reaches a threshold."""

from __future__ import annotations

import statistics

from stable_baselines3.common.callbacks import BaseCallback


class ThresholdWatch(BaseCallback):
    """Records the first step at which the mean return of the last 100 training episodes reaches ``threshold``.

    SB3 adds a step's finished episodes to ``ep_info_buffer`` after ``on_step``, so the buffer is checked at the
    next step (or at the rollout's end) and the step that finished the episodes is the one recorded.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.reached: int | None = None
        self.pending: int | None = None  # the last step that finished an episode, not yet checked

    def _on_step(self) -> bool:
        self._check()
        if self.locals["dones"].any():
            self.pending = self.num_timesteps
        return True

    def _on_rollout_end(self) -> None:
        self._check()

    def _check(self) -> None:
        episodes = self.model.ep_info_buffer
        if self.pending is not None and self.reached is None and len(episodes) == episodes.maxlen:
            if statistics.fmean(info["r"] for info in episodes) >= self.threshold:
                self.reached = self.pending
        self.pending = None
