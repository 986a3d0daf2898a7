"""Training: state and pure steps (`steps`), building a run (`assemble`), the
compiled programs of a group of trials (`programs`), its data feeds (`feeds`), the
loop (`loop`: one loop for one trial or a group), its records (`records`),
checkpoints, outputs, transfer. `engine` gathers the engine's public names."""

from research.train import engine, loop, outputs, transfer
from research.train.assemble import Run, build_run, prepare_data
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.loop import Interrupted, TrainingDiverged, train_and_evaluate
from research.train.programs import Member, group_key
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
    "loop",
    "make_mesh",
    "make_steps",
    "outputs",
    "prepare_data",
    "train_and_evaluate",
    "transfer",
    "tree_sha256",
]
