"""Each trial's status in a group: still training, or diverged, pruned or stopped early."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class TrialStatus:
    """Per trial of a group's (padded) trial axis: still training, or where it stopped.

    The trials past `count` pad the axis to a multiple of the devices: they repeat
    the last trial and share its fate.
    """

    count: int  # the group's own trials
    alive: np.ndarray  # (padded,) bool: still training
    diverged: list[int | None]  # the step whose loss was non-finite
    pruned: list[int | None]  # the step `on_epoch` stopped it at
    # A callback's stop (`research.train.callbacks`): {"epoch", "step", "reason"}.
    stopped: list[dict | None] = dataclasses.field(default_factory=list)

    @classmethod
    def fresh(cls, count: int, padded: int) -> TrialStatus:
        return cls(count, np.ones(padded, bool), [None] * padded, [None] * padded, [None] * padded)

    def any_alive(self) -> bool:
        """Whether any of the group's own trials still trains."""
        return bool(self.alive[: self.count].any())

    def after_chunk(self, alive, losses, step: int) -> None:
        """Takes the chunk's `alive`; a trial it stopped diverged at its first bad loss.

        `losses` is the chunk's (T, S) losses and `step` the step the chunk started at.
        """
        was_alive, self.alive = self.alive, np.array(alive, bool)
        for i in np.flatnonzero(was_alive & ~self.alive):
            bad = np.flatnonzero(~np.isfinite(losses[i]))
            self.diverged[i] = step + int(bad[0]) + 1

    def prune(self, i: int, step: int) -> None:
        self.alive[i] = False
        self.pruned[i] = step
        if i == self.count - 1:
            self.alive[self.count :] = False  # the padding repeats the last trial

    def stop(self, i: int, step: int, epoch: int, reason: str) -> None:
        """Trial `i` stopped early (frozen like a pruned one, but finished: tested, done)."""
        self.alive[i] = False
        self.stopped[i] = {"epoch": int(epoch), "step": int(step), "reason": str(reason)}
        if i == self.count - 1:
            self.alive[self.count :] = False

    def checkpoint_record(self, i: int) -> dict[str, Any]:
        """What trial `i`'s checkpoints keep of its status."""
        record = {
            "alive": bool(self.alive[i]),
            "diverged_step": self.diverged[i],
            "pruned_step": self.pruned[i],
        }
        if self.stopped[i] is not None:
            record["stopped_early"] = self.stopped[i]
        return record

    def restore(self, checkpoint_records: Sequence[dict]) -> None:
        """The status saved with each trial's checkpoint (`checkpoint_record`)."""
        n = len(checkpoint_records)
        for i, r in enumerate(checkpoint_records):
            self.alive[i] = bool(r.get("alive", True))
            self.diverged[i] = r.get("diverged_step")
            self.pruned[i] = r.get("pruned_step")
            self.stopped[i] = r.get("stopped_early")
        self.alive[n:] = self.alive[n - 1]  # the padding repeats the last trial
