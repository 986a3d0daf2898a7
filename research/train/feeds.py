"""The data feeds of the training loop, and evaluation over a whole split.

A feed yields the chunks of steps of a group (`chunks(start)`), each as its plan
(`batching.ChunkPlan`: epoch, position, rows) and a `run_chunk(states, alive)`
that runs the compiled chunk on it:

  * `DeviceFeed`: the training split lives on the devices; each trial's rows of
    a chunk come from `batching.plan_chunks` with its own data key (epoch e's
    order is `fold_in(data_key, e)`), stacked over the trial axis;
  * `StreamFeed`: one trial's batches read from the array_record files
    (`data.loader="stream"`); its position is saved with each checkpoint
    (`state`) and checked on resume (`check`).

Chunks end at multiples of `log_every_steps` (and at a shape change: a kept
remainder batch runs alone), so a run resumed mid-epoch cuts the epoch exactly
where the first run did.

`evaluate` gives each trial's mean metrics over a split, every example once
(padded slots masked).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np

from research.data import batching, stream
from research.train.assemble import Run
from research.train.programs import Programs, on_mesh


def evaluate(run: Run, programs: Programs, states, split) -> list[dict[str, float]]:
    """Per trial, the mean loss (and accuracy) over a whole split, every example once.

    The batches of `batching.eval_batches` (padded slots masked), gathered from the
    device-resident split, or read by the stream loader (`data.loader="stream"`).
    """
    mesh = programs.mesh
    n_dev = run.steps.mesh.devices.size
    if run.loader == "stream":
        totals = None
        with stream.eval_chunks(
            split,
            batch_size=run.config.eval_batch_size,
            mesh=mesh,
            read_threads=run.config.data.read_threads,
            prefetch=run.config.data.prefetch,
        ) as chunks:
            for images, labels, mask in chunks:
                sums = programs.evaluate_batches(
                    states.params, states.batch_stats, images, labels, mask
                )
                sums = jax.device_get(sums)
                totals = sums if totals is None else jax.tree_util.tree_map(np.add, totals, sums)
    else:
        idx, mask = batching.eval_batches(len(split), run.config.eval_batch_size, n_dev)
        totals = programs.evaluate(
            states.params,
            states.batch_stats,
            on_mesh(split.images, mesh),
            on_mesh(split.labels, mesh),
            on_mesh(idx, mesh),
            on_mesh(mask, mesh),
        )
        totals = jax.device_get(totals)
    return [
        {k: float(v[i]) / float(totals["count"][i]) for k, v in totals.items() if k != "count"}
        for i in range(len(totals["count"]))
    ]


class DeviceFeed:
    """Chunks of steps over device-resident data: each trial's index rows, stacked."""

    def __init__(self, run: Run, programs: Programs, data_keys, chunk: int):
        self.programs, self.mesh = programs, programs.mesh
        train, cfg = run.splits.train, run.config
        self.images = on_mesh(train.images, self.mesh)
        self.labels = on_mesh(train.labels, self.mesh)
        self.plan = functools.partial(
            batching.plan_chunks,
            n=len(train),
            batch_size=cfg.batch_size,
            remainder=cfg.data.remainder,
            chunk=chunk,
            num_epochs=cfg.num_epochs,
            last_epoch_fraction=cfg.last_epoch_fraction,
        )
        self.data_keys = data_keys

    @contextlib.contextmanager
    def chunks(self, start: int):
        """Yields `(plan, run_chunk)`: the chunk's plan and `run_chunk(states, alive)`."""

        def gen():
            plans_per_trial = [self.plan(k, start_step=start) for k in self.data_keys]
            for plans in zip(*plans_per_trial, strict=True):
                idx = on_mesh(np.stack([p.rows for p in plans]), self.mesh)  # (T, S, B)
                yield plans[0], self._runner(idx)

        yield gen()

    def _runner(self, idx):
        def run_chunk(states, alive):
            return self.programs.chunk(states, alive, self.images, self.labels, idx)

        return run_chunk

    def state(self, step: int) -> dict | None:
        return None

    def check(self, record: dict, step: int) -> None:
        pass


class StreamFeed:
    """Chunks of steps read from the array_record files (one trial: `data.loader="stream"`)."""

    def __init__(self, run: Run, programs: Programs, data_keys, chunk: int):
        cfg = run.config
        self.programs = programs
        self.stream = stream.TrainStream(
            run.splits.train,
            data_key=data_keys[0],
            batch_size=cfg.batch_size,
            remainder=cfg.data.remainder,
            chunk=chunk,
            num_epochs=cfg.num_epochs,
            last_epoch_fraction=cfg.last_epoch_fraction,
            mesh=programs.mesh,
            workers=cfg.data.workers,
            read_threads=cfg.data.read_threads,
            prefetch=cfg.data.prefetch,
            augment_seed=(
                stream.seed_of(data_keys[0])
                if cfg.data.augment and cfg.data.augment_on == "host"
                else None
            ),
            dataset_fingerprint=run.splits.fingerprint,
        )

    @contextlib.contextmanager
    def chunks(self, start: int):
        with self.stream.chunks(start) as chunks:

            def gen():
                for c in chunks:
                    yield c.plan, self._runner(c)

            yield gen()

    def _runner(self, c):
        def run_chunk(states, alive):
            return self.programs.chunk_batches(states, alive, c.images, c.labels)

        return run_chunk

    def state(self, step: int) -> dict:
        return self.stream.state(step)

    def check(self, record: dict, step: int) -> None:
        if "data" in record:
            self.stream.check_state(record["data"], step)


def open_feed(run: Run, programs: Programs, data_keys, chunk: int):
    """The feed of `run`'s loader: `StreamFeed` for "stream", else `DeviceFeed`."""
    feed = StreamFeed if run.loader == "stream" else DeviceFeed
    return feed(run, programs, data_keys, chunk)
