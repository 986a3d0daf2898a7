"""Training: state and pure steps (`steps`), the loop (`loop`), checkpoints, outputs."""

from research.train import transfer
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.loop import (
    Interrupted,
    TrainingDiverged,
    build_run,
    fit,
    train_and_evaluate,
)
from research.train.steps import TrainState, make_mesh, make_steps

__all__ = [
    "Checkpointer",
    "Interrupted",
    "TrainState",
    "TrainingDiverged",
    "build_run",
    "fit",
    "make_mesh",
    "make_steps",
    "train_and_evaluate",
    "transfer",
    "tree_sha256",
]
