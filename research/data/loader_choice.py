"""Which loader a run uses: `data.loader` resolved to "device" or "stream", and why.

Both loaders feed the same batches (`research.data.stream`), so "auto" decides by
memory only: the "device" path when the prepared train and validation splits fit
in `data.device_fraction` of device memory, else the "stream" path. The reason
is recorded in results.json.
"""

from __future__ import annotations

import math
import os

import jax

from research import data as data_lib
from research.data import stream_splits


def device_memory_budget(fraction: float) -> tuple[int, str]:
    """Bytes the "device" path may use, and what they are a fraction of.

    An accelerator's own limit (`memory_stats()["bytes_limit"]`); on the CPU
    backend, which reports none, the host's RAM (or its cgroup limit, if lower).
    """
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        total, what = int(stats["bytes_limit"]), f"{device.device_kind} memory"
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        try:
            with open("/sys/fs/cgroup/memory.max") as f:
                limit = f.read().strip()
            total = min(total, int(limit)) if limit.isdigit() else total
        except OSError:
            pass
        what = "host RAM (CPU backend)"
    return int(total * fraction), f"{fraction:g} of {total / 2**30:.1f} GiB {what}"


def choose_loader(data_cfg) -> tuple[str, str]:
    """`data.loader` resolved to "device" or "stream", and the reason (for results.json).

    "auto" compares the bytes of the prepared float32 train and validation splits
    (what the device path holds during training) with `data.device_fraction` of
    device memory. Both paths give the same numbers, so the choice is about speed
    and memory only. Opening the dataset may prepare it; no image is loaded.
    """
    d = data_cfg
    if d.loader in ("device", "stream"):
        return d.loader, f"data.loader={d.loader!r}"
    if d.loader != "auto":
        raise ValueError(
            f"config.data.loader={d.loader!r} is invalid: 'device', 'stream' or 'auto'"
        )
    try:
        prepared = data_lib.open_records(
            d.name,
            data_dir=d.data_dir or None,
            cache_dir=d.cache_dir or None,
            image_size=d.image_size,
        )
    except ValueError as err:
        if "not stored as array_record" not in str(err):
            raise
        return "device", f"auto: {d.name} is not stored as array_record files (only device)"
    carved = stream_splits.carve(prepared, d)
    examples = len(carved.train) + len(carved.val)
    need = examples * (math.prod(prepared.image_shape) * 4 + 4)  # float32 pixels + int32 label
    budget, what = device_memory_budget(d.device_fraction)
    choice = "device" if need <= budget else "stream"
    sign = "<=" if choice == "device" else ">"
    return choice, (
        f"auto: train+val splits {need / 2**20:,.0f} MiB (float32, {examples:,} examples) "
        f"{sign} {budget / 2**20:,.0f} MiB ({what}, data.device_fraction)"
    )
