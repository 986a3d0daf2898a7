"""Transfer learning: start from another run's parameters and decide what trains.

`load_pretrained(workdir, params, batch_stats, head=...)` takes the newest good
checkpoint of a finished run and copies every parameter (and BatchNorm
statistic) whose path and shape match into freshly initialised ones. The head
is replaced (kept at its fresh initialisation) when its shape differs, e.g. 10
classes -> 5. Any other mismatch is an error naming the path and both shapes.
The returned `TransferReport` lists what was loaded, replaced and frozen; the
loop writes it to `transfer.json` in the run's workdir.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.models.pretrained import preprocessing
from research.optim.freeze import param_path
from research.train import checkpoint


@dataclasses.dataclass
class TransferReport:
    source: str = ""
    step: int = 0
    loaded: list[str] = dataclasses.field(default_factory=list)
    replaced: list[str] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)
    scaled: list[str] = dataclasses.field(default_factory=list)
    trained: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pretrained_normalization(workdir: str):
    """The input normalization a transfer from `workdir` must use, or None (ours: measure).

    Imported weights (`scripts/import_weights.py` wrote `pretrained.json`) expect the
    source network's preprocessing: its mean and std, in its channel order (see
    `research.models.pretrained.preprocessing` for the policy).
    """
    pre = preprocessing.preprocessing_for(workdir)
    if pre is None:
        return None
    return preprocessing.normalization(
        pre, source=f"the pretrained network ({os.path.abspath(workdir)})"
    )


def check_pretrained_input(workdir: str, input_shape) -> list[str]:
    """Notes on running the pretrained network of `workdir` on `input_shape` data.

    Raises:
      ValueError: one line when the data cannot be used (another channel count).
    """
    pre = preprocessing.preprocessing_for(workdir)
    return [] if pre is None else preprocessing.check_compatible(pre, input_shape)


def read_pretrained(workdir: str) -> checkpoint.Restored:
    """The newest good checkpoint of the finished run in `workdir` (checksum verified)."""
    return checkpoint.read(workdir, what="config.transfer.pretrained=")


def load_pretrained(
    workdir: str,
    params: Mapping,
    batch_stats: Mapping,
    *,
    head: str = "head",
    reset_head: bool = False,
    source: checkpoint.Restored | None = None,
) -> tuple[Any, Any, TransferReport]:
    """Copies matching parameters from `workdir`'s newest checkpoint into `params`.

    Args:
      workdir: a finished run's workdir (its `checkpoints/` is read).
      params, batch_stats: the new model's freshly initialised variables.
      head: the classification layer's name; its parameters may change shape.
      reset_head: keep the head freshly initialised even when its shape matches
        (a new label set with the same number of classes, e.g. digits 0-4 -> 5-9).

    Returns:
      `(params, batch_stats, report)`.

    Raises:
      ValueError: a parameter whose shape differs (other than the head's), or
        one the checkpoint does not have, naming the path and the shapes.
    """
    source = read_pretrained(workdir) if source is None else source
    state = source.state
    report = TransferReport(source=os.path.abspath(workdir), step=source.step)
    head_re = re.compile(rf"(^|/){re.escape(head)}/")

    def merge(collection: str, fresh_tree: Mapping, old_tree: Mapping):
        old_flat = {
            param_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(old_tree)[0]
        }

        def pick(path, fresh):
            name = param_path(path)
            old = old_flat.get(name)
            is_head = bool(head_re.search(name))
            if is_head and reset_head:
                report.replaced.append(f"{collection}/{name}")
                return fresh
            if old is None or np.shape(old) != fresh.shape:
                if is_head:
                    report.replaced.append(f"{collection}/{name}")
                    return fresh
                if old is None:
                    raise ValueError(
                        f"pretrained checkpoint {report.source} has no {collection} {name!r} "
                        f"(new shape {tuple(fresh.shape)}); is it the same model?"
                    )
                raise ValueError(
                    f"pretrained {collection} {name!r} has shape {tuple(np.shape(old))} but the "
                    f"new model's has shape {tuple(fresh.shape)}"
                )
            report.loaded.append(f"{collection}/{name}")
            return jnp.asarray(old, fresh.dtype)

        return jax.tree_util.tree_map_with_path(pick, fresh_tree)

    params = merge("params", params, state.get("params", {}))
    batch_stats = merge("batch_stats", batch_stats, state.get("batch_stats", {}) or {})
    return params, batch_stats, report
