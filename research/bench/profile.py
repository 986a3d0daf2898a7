"""Where a compiled program spends its time: `jax.profiler`'s trace, summed by event name.

    events = profile.top_events(lambda: step_and_block(), calls=3)
    print(profile.markdown(events))

On GPU the trace holds the kernels (CUPTI); on CPU the XLA thunks (fusions, dots)
by their HLO names. Python frames and the runtime's wrappers are left out, so
what remains is the program's own operations. For the check of one program at a time: the
profiler is process-wide.

By layer: `by_layer(events, compiled.as_text())` charges each event to the
model's layers, forward or backward, from the `op_name` metadata JAX writes
into the HLO (`jvp(LectureCNN)/conv2/dot_general` is conv2's forward,
`transpose(jvp(LectureCNN))/conv2/...` its backward). A fusion is charged to
every layer whose operations it holds ("conv2+pool1": XLA fused them), in the
phase of its root; operations outside the model (loss, optimizer, random
numbers, the loop) are "other". `scripts/bench.py --mode profile` prints these
tables for our step, and PyTorch's operators by input shape beside them
(`torch_top_ops`).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
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
    "end: ",  # the executor's zero-length markers after each thunk
)


def top_events(
    run: Callable[[], object], *, calls: int = 1, top: int | None = 15, folder: str | None = None
) -> list[dict]:
    """The `top` events that took the most time over `calls` calls of `run`.

    `run` must block until its work is done (`jax.block_until_ready`). Returns
    `{"name", "ms_per_call", "count_per_call"}` rows, longest first; durations of
    events of one name are summed (so work on several threads or streams adds up),
    and an event that contains others (a loop's) counts as well as they do. The
    trace is written to `folder` if given (kept), else to a temporary folder.
    """
    import jax  # lazy: PyTorch's workers profile (torch_top_ops) without JAX

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


def markdown(events: list[dict], per: float = 1.0, unit: str = "call") -> str:
    """`top_events` as a markdown table, per `unit`: each call's figures divided by `per`.

    E.g. `per=20, unit="step"` for calls of 20 steps.
    """
    lines = [f"| event | ms per {unit} | times per {unit} |", "|---|---:|---:|"]
    for e in events:
        name = e["name"].replace("|", "/")[:120]
        lines.append(f"| {name} | {e['ms_per_call'] / per:.3f} | {e['count_per_call'] / per:g} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- by layer

# `op_name` metadata inside the model: "[transpose(]jvp(Model)[)]/<layer>/...". A
# layer is a path segment followed by another; the model's own operations
# (activations between named layers) end right after the model's segment.
_IN_MODEL = re.compile(r"(transpose\()?jvp\(([A-Za-z_]\w*)\)\)?/(?:([^/]+)/)?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) ")
_CONTAINERS = ("while", "conditional", "call")  # their thunks are profiled one by one
# Operations that compute nothing: XLA merges identical ones across layers (one zero
# constant serves every ReLU), so their op_name says little about whose work a fusion does.
_BOOKKEEPING = (
    "parameter",
    "constant",
    "broadcast",
    "iota",
    "bitcast",
    "tuple",
    "get-tuple-element",
)
OTHER = "other (loss, optimizer, random numbers, loop)"


def layer_of(op_name: str) -> tuple[str, str] | None:
    """(layer, "forward" or "backward") of one operation's `op_name`, or None outside the model.

    `jit(f)` segments (a function the model calls, e.g. `nn.relu`) name the row `f`;
    operations of the model's own body outside any layer are charged to the model.
    """
    match = _IN_MODEL.search(op_name)
    if match is None:
        return None
    phase = "backward" if match.group(1) else "forward"
    layer = match.group(3) or match.group(2)
    inner = re.fullmatch(r"jit\((\w+)\)", layer)
    return (inner.group(1) if inner else layer), phase


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, list[str]]]:
    """Per instruction of a compiled module's text: (opcode, op_names it computes).

    A fusion's op_names are its own followed by those of its fused computation's
    instructions that compute something (not parameters, constants, broadcasts,
    bitcasts), in the order they appear.
    """
    names: dict[str, list[str]] = collections.defaultdict(list)  # computation -> op_names
    instructions: dict[str, tuple[str, str | None, str | None]] = {}
    computation = None
    for line in hlo_text.splitlines():
        if not line.startswith(" "):
            header = _COMPUTATION.match(line)
            computation = header.group(1) if header and line.rstrip().endswith("{") else None
            continue
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else None
        calls = re.search(r"calls=%([\w.\-]+)", line)
        instructions[match.group(1)] = (match.group(2), op_name, calls.group(1) if calls else None)
        if computation and op_name and match.group(2) not in _BOOKKEEPING:
            names[computation].append(op_name)
    return {
        name: (opcode, [n for n in [op_name, *names.get(calls, [])] if n])
        for name, (opcode, op_name, calls) in instructions.items()
    }


def by_layer(events: list[dict], hlo_text: str) -> list[dict]:
    """`top_events(..., top=None)` summed per layer: `{"layer", "forward", "backward", "other",
    "events"}`.

    ms per call, largest total first. A fusion holding several layers' operations is
    its own row, its root's layer first ("conv2+pool1"), in the phase of its root
    operation (an operation outside the model at the root: its first layer's); loops and calls
    are left out (their operations are events of their own); events the module does
    not name (library kernels on GPU) are "unattributed". Time outside the model's
    layers is "other", neither forward nor backward.
    """
    sources = hlo_sources(hlo_text)
    rows: dict[str, dict] = {}
    for event in events:
        opcode, op_names = sources.get(event["name"], (None, []))
        if opcode in _CONTAINERS:
            continue
        found = [layer_of(n) for n in op_names]
        layers = list(dict.fromkeys(f[0] for f in found if f))
        if opcode is None:
            label, phase = "unattributed", "other"
        elif not layers:
            label, phase = OTHER, "other"
        else:  # the root's layer first, then the others fused with it
            first = next(f for f in found if f)
            label = "+".join([first[0], *sorted(set(layers) - {first[0]})])
            phase = first[1]
        row = rows.setdefault(
            label, {"layer": label, "forward": 0.0, "backward": 0.0, "other": 0.0, "events": 0}
        )
        row[phase] += event["ms_per_call"]
        row["events"] += event["count_per_call"]
    return sorted(rows.values(), key=lambda r: -(r["forward"] + r["backward"] + r["other"]))


def layer_markdown(rows: list[dict], per: float = 1.0) -> str:
    """`by_layer` as a markdown table, times divided by `per` (e.g. the steps per call).

    A last line gives the sum of all events: events on several threads at once add up,
    so it can exceed the wall time they took.
    """

    def ms(value: float) -> str:
        return f"{value / per:.2f}" if value else ""

    lines = [
        "| layer | forward ms | backward ms | other ms | events |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {ms(r['forward'])} | {ms(r['backward'])} | {ms(r['other'])} "
            f"| {r['events'] / per:g} |"
        )
    total = sum(r["forward"] + r["backward"] + r["other"] for r in rows) / per
    lines += ["", f"All events: {total:.2f} ms."]
    return "\n".join(lines) + "\n"


def torch_top_ops(run: Callable[[], object], *, calls: int = 1, top: int = 15) -> list[dict]:
    """PyTorch's operators over `calls` calls of `run`, by name and input shapes.

    `{"name", "shapes", "ms_per_call", "count_per_call"}` rows, largest self time
    first (the operator's own time, without the operators it calls).
    """
    from torch.profiler import ProfilerActivity, profile  # optional (requirements-bench.txt)

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(calls):
            run()
    rows = [
        {
            "name": a.key,
            "shapes": str(a.input_shapes),
            "ms_per_call": a.self_cpu_time_total / calls / 1e3,
            "count_per_call": a.count / calls,
        }
        for a in prof.key_averages(group_by_input_shape=True)
    ]
    return sorted(rows, key=lambda r: -r["ms_per_call"])[:top]


def torch_markdown(ops: list[dict], per: float = 1.0, unit: str = "call") -> str:
    """`torch_top_ops` as a markdown table, per `unit` as in `markdown`."""
    lines = [
        f"| operator | input shapes | ms per {unit} | calls per {unit} |",
        "|---|---|---:|---:|",
    ]
    for o in ops:
        lines.append(
            f"| {o['name']} | {o['shapes'][:100]} | {o['ms_per_call'] / per:.2f} "
            f"| {o['count_per_call'] / per:g} |"
        )
    return "\n".join(lines) + "\n"
