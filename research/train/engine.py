"""The training engine's public names, in one place.

The engine is in parts, one concept each:

  * `programs`: the compiled programs of a group of trials (`build_programs`),
    its mesh, keys, hyperparameters and chunk inputs;
  * `feeds`: the data feeds of the loop (device-resident or streamed) and
    evaluation over a split;
  * `starts`: data-dependent and pretrained first states;
  * `records`: the `results.json` schema and the files a finished run leaves;
  * `loop`: the loop itself (train, resume, save, signals);
  * `assemble`: building a run from its config (`build_run`).

This module imports them and holds nothing of its own, so that
`from research.train import engine; engine.train(...)` keeps working.
"""

from research.train.feeds import evaluate
from research.train.loop import (
    Interrupted,
    OnEpoch,
    Outcome,
    TrainingDiverged,
    TrialStatus,
    train,
)
from research.train.programs import (
    PARALLEL_PATHS,
    TRIAL_AXIS_FIELDS,
    ChunkInputs,
    Member,
    Programs,
    build_programs,
    chunk_inputs,
    group_key,
    hyperparams,
    on_mesh,
    time_chunk,
    trial_keys,
    trials_mesh,
)
from research.train.records import Timing, results_record

__all__ = [
    "PARALLEL_PATHS",
    "TRIAL_AXIS_FIELDS",
    "ChunkInputs",
    "Interrupted",
    "Member",
    "OnEpoch",
    "Outcome",
    "Programs",
    "Timing",
    "TrainingDiverged",
    "TrialStatus",
    "build_programs",
    "chunk_inputs",
    "evaluate",
    "group_key",
    "hyperparams",
    "on_mesh",
    "results_record",
    "time_chunk",
    "train",
    "trial_keys",
    "trials_mesh",
]
