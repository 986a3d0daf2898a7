"""Where a compiled program spends its time: `jax.profiler`'s trace, summed by event name.

    events = profile.top_events(lambda: step_and_block(), calls=3)
    print(profile.markdown(events))

On GPU the trace holds the kernels (CUPTI); on CPU the XLA thunks (fusions, dots)
by their HLO names. Python frames and the runtime's wrappers are left out, so
what remains is the program's own operations. For the check of one program at a time: the
profiler is process-wide.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
from collections.abc import Callable

# Events that wrap the program's operations rather than being one of them.
WRAPPERS = (
    "ThunkExecutor::",
    "SlinkyThreadPool::",
    "PjRt",
    "CommonPjRt",
    "AllocateOutputBuffers",
    "PjitFunction",
    "TfrtCpu",
    "Execute",
    "Thread",
)


def top_events(
    run: Callable[[], object], *, calls: int = 1, top: int = 15, folder: str | None = None
) -> list[dict]:
    """The `top` events that took the most time over `calls` calls of `run`.

    `run` must block until its work is done (`jax.block_until_ready`). Returns
    `{"name", "ms_per_call", "count_per_call"}` rows, longest first; durations of
    events of one name are summed (so work on several threads or streams adds up),
    and an event that contains others (a loop's) counts as well as they do. The
    trace is written to `folder` if given (kept), else to a temporary folder.
    """
    import jax

    with tempfile.TemporaryDirectory(prefix="research-profile-") as scratch:
        folder = folder or scratch
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(calls):
                run()
        pattern = os.path.join(folder, "**", "*perfetto_trace.json.gz")
        path = sorted(glob.glob(pattern, recursive=True))[-1]
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith("$") or name.startswith(WRAPPERS):
            continue
        total[name] += event.get("dur", 0)
        count[name] += 1
    return [
        {"name": name, "ms_per_call": us / calls / 1e3, "count_per_call": count[name] / calls}
        for name, us in total.most_common(top)
    ]


def markdown(events: list[dict]) -> str:
    """`top_events` as a markdown table."""
    lines = ["| event | ms per call | times per call |", "|---|---:|---:|"]
    for e in events:
        name = e["name"].replace("|", "/")[:120]
        lines.append(f"| {name} | {e['ms_per_call']:.3f} | {e['count_per_call']:g} |")
    return "\n".join(lines) + "\n"
