"""Profile mode of `scripts/bench.py`: where each framework's training step spends its time.

For each model and framework, in a fresh worker process (`workers.result`),
`repeats` calls of `steps` steps under the framework's profiler, after two warm-up
calls: "ours" as a table per layer, forward and backward (`profile.by_layer`: XLA's
thunks charged to the layers by the HLO's op_name metadata), then its longest
events; PyTorch as its operators by input shape (self time); the other JAX
frameworks as their longest events. Milliseconds per step.
"""

from __future__ import annotations

import json
import sys

from research.bench import frameworks, profile, train_mode, workers


def worker(job: dict) -> None:
    """Profiles one framework in this process; prints `RESULT {...}` (ms per call)."""
    model_name, batch, framework = job["spec"].split(",")
    runner = frameworks.build(framework, model_name, int(batch), job["steps"], job["torch_threads"])
    for _ in range(2):  # warm-up: allocation, kernel choice
        runner.run()
    result = {"model": model_name, "batch": int(batch), "framework": framework}
    result["notes"] = runner.notes
    if framework == "torch":
        result["ops"] = profile.torch_top_ops(runner.run, calls=job["repeats"], top=PROFILE_TOP)
    else:
        events = profile.top_events(runner.run, calls=job["repeats"], top=None)
        if runner.hlo is not None:
            result["layers"] = profile.by_layer(events, runner.hlo)
        result["events"] = events[:PROFILE_TOP]
    workers.answer(result)


PROFILE_TOP = 15  # longest events / operators listed per framework


def run_profile(args) -> list[dict]:
    """The "profile" mode: one worker process per (model, batch, framework), one after another."""
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            for framework in args.frameworks:
                if not train_mode.available(framework):
                    continue
                print(f"profiling {model_name} batch {batch} {framework} ...", file=sys.stderr)
                job = {
                    "spec": f"{model_name},{batch},{framework}",
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "torch_threads": args.torch_threads,
                }
                row = workers.result("profile_mode", job)
                row["steps"] = args.steps
                rows.append(row)
    return rows


def profile_tables(rows: list[dict], backend: str) -> str:
    lines = [f"backend: {backend}; ms per step under each framework's profiler"]
    for r in rows:
        steps = r["steps"]
        lines += ["", f"### {r['model']}, batch {r['batch']}, {r['framework']} ({r['notes']})", ""]
        if "layers" in r:
            lines += [profile.layer_markdown(r["layers"], per=steps)]
        if "events" in r:
            lines += [profile.markdown(r["events"], per=steps, unit="step")]
        if "ops" in r:
            lines += [profile.torch_markdown(r["ops"], per=steps, unit="step")]
    return "\n".join(lines)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
