"""Checkpoints with orbax, verified on restore.

Each checkpoint holds the `TrainState` and a small JSON record with the state's
SHA-256. Orbax writes a step to a temporary folder and renames it when complete,
so a run killed mid-save leaves no half-written step behind; a step whose files
were damaged afterwards fails to restore or fails the checksum, and `restore`
then falls back to the previous step with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def tree_sha256(tree: Any) -> str:
    """SHA-256 of every array's bytes, leaves in flattened-path order (`tree_flatten`).

    Two runs that end with the same `params_sha256` have bit-identical parameters.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        digest.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf))).tobytes())
    return digest.hexdigest()


class Checkpointer:
    """Saves and restores `TrainState`s under `directory/<step>`.

    Args:
      directory: the checkpoint folder (created if needed).
      keep: how many of the most recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state, *, step: int) -> None:
        """Writes `state` as checkpoint `step` and waits until it is on disk."""
        if step in self._manager.all_steps():
            return
        record = {"step": int(step), "state_sha256": tree_sha256(state)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
        )
        self._manager.wait_until_finished()

    def restore(self, like) -> tuple[Any, int] | None:
        """The newest checkpoint that restores and verifies, shaped and sharded like `like`.

        Returns `(state, step)`, or None when there is no usable checkpoint.
        Damaged checkpoints are skipped with a warning naming them.
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
                    ),
                )
                state, record = restored["state"], restored["record"]
                if tree_sha256(state) != record["state_sha256"]:
                    raise ValueError("checksum mismatch")
                return state, step
            except Exception as err:  # noqa: BLE001 - any failure means "unusable"
                message = (
                    f"checkpoint {os.path.join(self.directory, str(step))} is damaged or "
                    f"incomplete ({type(err).__name__}: {str(err)[:200]}); trying an older one"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
        return None

    def close(self) -> None:
        self._manager.close()
