"""Imported weights on disk as a finished run, so `transfer.pretrained=DIR` takes them.

The importers (`research.models.pretrained`) give the variables; this module gives
them the layout of a run of ours (`outputs`, `checkpoint`).

`write_run(out, ...)` lays out DIR like a finished training run:

  checkpoints/0/     the variables as a `TrainState` (step 0, no optimizer state),
                     written by `research.train.checkpoint.Checkpointer` with its
                     SHA-256 record, verified on restore like any checkpoint
  config.json        the base config with `model.name` and `data.name`
                     ("tfds:imagenet2012") set
  results.json       model, params, params_sha256, source, weights_sha256, git commit
  pretrained.json    model, source, weights (name, file, sha256) and the source's
                     preprocessing (`research.models.pretrained.preprocessing`)

Nothing partial is left: everything is written into a temporary folder beside
DIR, which is renamed to DIR at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from research import config as config_lib
from research import models
from research.models.pretrained.preprocessing import RECORD_FILE
from research.train import outputs
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.steps import TrainState


def write_run(out: str, *, model: str, variables: dict[str, Any], record: dict[str, Any]) -> None:
    """Writes `variables` of zoo model `model` (1000 classes) as a finished run in `out`.

    Args:
      out: the run folder to create; it must not exist yet (or be empty).
      model: the zoo name.
      variables: `{"params": ..., "batch_stats": ...}` from an importer.
      record: what `pretrained.json` says besides the model: "source", "weights",
        "weights_file", "weights_sha256", "preprocessing" (a dict).

    Raises:
      ValueError: `out` exists and is not empty.
    """
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out {out!r} already exists and is not empty; choose a new folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 -> what os.makedirs would give
    try:
        params = jax.tree_util.tree_map(np.asarray, variables["params"])
        batch_stats = jax.tree_util.tree_map(np.asarray, variables.get("batch_stats", {}))
        state = TrainState(
            step=np.zeros((), np.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=(),
            key=np.zeros((2,), np.uint32),
        )
        checkpointer = Checkpointer(os.path.join(tmp, "checkpoints"))
        checkpointer.save(state, step=0)
        checkpointer.close()

        config = config_lib.get_base_config()
        config.model.name = model
        config.data.name = "tfds:imagenet2012"
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True) + "\n")
        pretrained = {"model": model, "num_classes": 1000, **record}
        results = {
            "status": "done",
            "model": model,
            "dataset": "tfds:imagenet2012",
            "num_classes": 1000,
            "params": models.param_count(params),
            "params_sha256": tree_sha256(params),
            "steps": 0,
            "imported": True,
            "source": record["source"],
            "weights": record["weights"],
            "weights_sha256": record["weights_sha256"],
            "git_commit": outputs.git_commit(),
        }
        for name, obj in ((RECORD_FILE, pretrained), ("results.json", results)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=2, sort_keys=True)
                f.write("\n")
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above): rename needs it gone
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
