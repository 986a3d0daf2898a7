"""One way to time the engine's training chunk: the set-up every measurement shares.

    group = measure.Group.build(run, configs, "vmap")   # programs, keys, hyperparameters
    group.init()                                        # the trials' states
    group.place(images, labels, rows)                   # data and example rows on the mesh
    times = group.time(calls=3)                         # seconds per call, blocked on each

A `Group` holds what the engine's training chunk needs besides its code: the
compiled programs (`engine.build_programs`), the per-trial keys
(`engine.trial_keys`) and injected hyperparameters (`engine.hyperparams`), the
initialized states, and the chunk's inputs placed once on the programs' mesh
(`engine.chunk_inputs`). Its users: the sweep's probe (`research.sweep.vmapped`),
the compile-time mode (`compile_time`), the framework peers' "ours"
(`frameworks`) and the accelerator check's throughputs (`research.bench.accel`).
Every timed call goes through `engine.time_chunk`, so all of them time the same
thing the same way: one call of the compiled chunk, blocked on until its states
and metrics are ready.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from research.data import batching
from research.train import engine


@dataclasses.dataclass
class Group:
    """A group of trials ready to time.

    Attributes:
      programs: the engine's programs of the group (`engine.Programs`).
      init_keys, data_keys, train_keys: `(T, 2)` per-trial keys (data keys may be None).
      hyperparams: name -> `(T,)` injected hyperparameters.
      states: the trials' states after `init` (and after each timed call).
      inputs: the chunk's inputs after `place`.
      metrics: the last timed call's metrics.
    """

    programs: engine.Programs
    init_keys: Any
    data_keys: Any
    train_keys: Any
    hyperparams: dict
    states: Any = None
    inputs: engine.ChunkInputs | None = None
    metrics: Any = None

    @classmethod
    def build(cls, run, configs: Sequence, parallel: str = "sequential", *, devices=None) -> Group:
        """The programs of `run` for `parallel`, and the keys and hyperparameters of `configs`,
        the last config repeated up to a multiple of the programs' trial axis (the devices)."""
        programs = engine.build_programs(run, parallel, devices=devices)
        configs = list(configs) + list(configs[-1:]) * (-len(configs) % programs.multiple)
        init_keys, data_keys, train_keys = engine.trial_keys(configs)
        hps = engine.hyperparams(configs, run.steps_per_epoch)
        return cls(programs, init_keys, data_keys, train_keys, hps)

    @property
    def trials(self) -> int:
        return int(np.shape(self.init_keys)[0])

    def init_args(self) -> tuple:
        """The init program's arguments: init keys, train keys, hyperparameters."""
        return self.init_keys, self.train_keys, self.hyperparams

    def init(self):
        """Runs the init program; returns (and keeps) the states."""
        self.states = self.programs.init(*self.init_args())
        return self.states

    def place(self, images, labels, rows) -> engine.ChunkInputs:
        """Puts `images`, `labels` and `rows` (`(T, S, B)`, or a list cycled call by call)
        on the mesh once; returns (and keeps) the chunk's inputs."""
        self.inputs = engine.chunk_inputs(self.programs.mesh, images, labels, rows)
        return self.inputs

    def chunk_args(self, i: int = 0) -> tuple:
        """The chunk's arguments of call `i`: states, alive, images, labels, rows."""
        return (self.states, *self.inputs.args(i))

    def time(self, calls: int, chunk=None) -> list[float]:
        """Seconds of each of `calls` calls of the chunk (`chunk`: an ahead-of-time
        compiled one; default the programs', whose first call compiles). The states
        go on from call to call; the last call's metrics are kept."""
        times, self.states, self.metrics = engine.time_chunk(
            chunk or self.programs.chunk, self.states, self.inputs, calls=calls
        )
        return times


def steady(times: Sequence[float]) -> tuple[float, float]:
    """`(seconds, compile)`: the median of the calls after the first, and how much
    longer the first (compiling) call took; one call alone is its own steady time."""
    later = list(times[1:]) or list(times)
    seconds = float(statistics.median(later))
    return seconds, max(times[0] - seconds, 0.0)


def first_chunk_rows(configs: Sequence, data_keys, n: int, steps: int) -> np.ndarray:
    """`(T, steps, B)` example rows: the first chunk of each trial's first epoch, as the
    engine plans it from the trial's data key (`batching.plan_chunks`)."""
    c = configs[0]
    first = [
        next(
            batching.plan_chunks(
                k,
                n=n,
                batch_size=c.batch_size,
                remainder=c.data.remainder,
                chunk=steps,
                num_epochs=1,
            )
        )
        for k in data_keys
    ]
    return np.stack([p.rows for p in first])


def cycled_rows(trials: int, steps: int, batch: int, n: int) -> np.ndarray:
    """`(trials, steps, batch)` rows 0, 1, 2, ... of `n` examples, cycled: every trial
    the same batches (throughput measurements on synthetic data)."""
    rows = np.arange(steps * batch, dtype=np.int32) % n
    return np.broadcast_to(rows.reshape(1, steps, batch), (trials, steps, batch)).copy()
