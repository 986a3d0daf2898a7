"""A group's first states besides `Programs.init`: data-dependent and pretrained.

Both run once per trial before the first step of a fresh start (a resumed group
takes its states from its checkpoints) and hand their parameters to
`Programs.reinit`, which rebuilds each trial's optimizer state around them.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from research.train import outputs
from research.train import transfer as transfer_lib
from research.train.assemble import Run
from research.train.programs import Programs, put_like


def data_init(run: Run, programs: Programs, states, hps):
    """The model's data-dependent initialisation, once per trial before the first step.

    A zoo model may define `data_init(variables, train_images) -> variables` (e.g.
    airbench's whitening layer, set from patches of the training images);
    `train_images` are the normalized training split's (N, H, W, C) host images.
    """
    host = jax.device_get((states.params, states.batch_stats))
    done = []
    for i in range(states.step.shape[0]):  # each trial of the (padded) group
        params, batch_stats = jax.tree_util.tree_map(lambda x, i=i: x[i], host)
        out = run.model.data_init(
            {"params": params, "batch_stats": batch_stats}, run.splits.train.images
        )
        done.append((out["params"], out.get("batch_stats", batch_stats)))
    params, batch_stats = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *done)
    params = put_like(params, states.params)
    batch_stats = put_like(batch_stats, states.batch_stats)
    return programs.reinit(states, params, batch_stats, hps)


def from_pretrained(run: Run, programs: Programs, states, hps, members):
    """Loads the pretrained parameters into every trial; writes each transfer.json."""
    cfg = run.config.transfer
    host = jax.device_get(states)
    params, batch_stats = [], []
    n = np.shape(host.step)[0]
    source = transfer_lib.read_pretrained(cfg.pretrained)
    for i in range(n):
        p, b, report = transfer_lib.load_pretrained(
            cfg.pretrained,
            jax.tree_util.tree_map(lambda x, i=i: x[i], host.params),
            jax.tree_util.tree_map(lambda x, i=i: x[i], host.batch_stats),
            head=cfg.head,
            reset_head=cfg.reset_head,
            source=source,
        )
        params.append(p)
        batch_stats.append(b)
        if i < len(members) and members[i].workdir and outputs.is_writer():
            for d in run.freeze_decisions:
                {"freeze": report.frozen, "train": report.trained}.get(
                    d.rule, report.scaled
                ).append(d.path)
            outputs.atomic_write_json(
                os.path.join(members[i].workdir, "transfer.json"), report.as_dict()
            )
    stack = functools.partial(jax.tree_util.tree_map, lambda *xs: np.stack(xs))
    params = put_like(stack(*params), states.params)
    batch_stats = put_like(stack(*batch_stats), states.batch_stats)
    return programs.reinit(states, params, batch_stats, hps)
