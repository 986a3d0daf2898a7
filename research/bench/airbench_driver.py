"""Runs airbench94.py (PyTorch) `runs` times after its own warm-up run; one JSON line per run.

    python research/bench/airbench_driver.py SOURCE WORKDIR RUNS

SOURCE is airbench94.py (`.peers/airbench94.py`, `make accel-peers`); WORKDIR holds
`cifar10/train.pt` and `cifar10/test.pt` (the accelerator check writes them from
shared/data, so both sides see the same images). Each run prints
`{"run", "accuracy", "seconds"}`, the seconds from airbench94's own timer (its last
"eval" row). Run as a subprocess: it imports torch, and airbench94 changes the
working folder's files and torch's global settings.
"""

import contextlib
import importlib.util
import io
import json
import os
import sys


def main(source: str, workdir: str, runs: int) -> None:
    os.chdir(workdir)
    spec = importlib.util.spec_from_file_location("airbench94", source)
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)

    def run(name):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            acc = ab.main(name)
        last = [line for line in buffer.getvalue().splitlines() if "eval" in line][-1]
        return acc, float(last.strip().strip("|").split("|")[-1])

    run("warmup")  # cudnn autotuning and CUDA start-up, random labels (airbench's own warmup)
    for i in range(runs):
        acc, seconds = run(i)
        print(json.dumps({"run": i, "accuracy": acc, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
