"""Training: state and pure steps (`steps`), the engine (`engine`: one loop for one
trial or a group of trials), building a run (`loop`), checkpoints, outputs, transfer."""

from research.train import engine, transfer
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.engine import Interrupted, Member, TrainingDiverged, group_key
from research.train.loop import Run, build_run, train_and_evaluate
from research.train.steps import TrainState, make_mesh, make_steps

__all__ = [
    "Checkpointer",
    "Interrupted",
    "Member",
    "Run",
    "TrainState",
    "TrainingDiverged",
    "build_run",
    "engine",
    "group_key",
    "make_mesh",
    "make_steps",
    "train_and_evaluate",
    "transfer",
    "tree_sha256",
]
