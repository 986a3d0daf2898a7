"""Benchmark worker processes: one measurement in a fresh process, its answer read back.

A benchmark measures each framework, model or compile variant in a process of its
own, so its threads, XLA flags, compilation cache and peak memory stay its own. A
mode module (`train_mode`, `sweep_mode`, `profile_mode`, `compile_time`) is run as

    python -m research.bench.<mode> '{"spec": ..., "steps": ..., ...}'

and prints `RESULT {...}` (one-shot workers, `result`) or talks over stdin/stdout
(`Interactive`, the train mode's timed repeats).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peak_memory_mb() -> float:
    """Peak memory of this process: the device's peak bytes on GPU, else peak RSS."""
    try:
        import jax  # lazy: the drivers and PyTorch's workers import this module too

        stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    except ImportError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def command(module: str, job: dict) -> list[str]:
    """The command line of a worker of `research.bench.<module>` for `job`."""
    return [sys.executable, "-m", f"research.bench.{module}", json.dumps(job)]


def environment(env: dict | None = None) -> dict:
    """`env` (default this process's) with this checkout first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def result(module: str, job: dict, env: dict | None = None):
    """Runs a worker to its end; its `RESULT` line's JSON, or raises.

    The error names the worker and ends with its stderr.
    """
    proc = subprocess.run(
        command(module, job),
        capture_output=True,
        text=True,
        env=environment(env),
        cwd=ROOT,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"benchmark worker {job.get('spec')} failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def answer(payload) -> None:
    """A one-shot worker's answer, as `result` reads it."""
    print("RESULT " + json.dumps(payload), flush=True)


class Interactive:
    """A worker process that stays up: started, then asked one line at a time.

    It prints `TAG {json}` lines; `read(tag)` waits for the next one of `tag`.
    """

    def __init__(self, name: str, module: str, job: dict, env: dict | None = None):
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finish)
        self._proc = subprocess.Popen(
            command(module, job),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=environment(env),
            cwd=ROOT,
        )

    def read(self, tag: str):
        while True:
            line = self._proc.stdout.readline()
            if not line:  # the worker died: show why
                self._proc.wait()
                self._stderr.seek(0)
                raise RuntimeError(
                    f"benchmark {self.name} failed (exit {self._proc.returncode}):\n"
                    f"{self._stderr.read()[-3000:]}"
                )
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])

    def send(self, line: str) -> None:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def finish(self, tag: str):
        """Sends `quit`; the worker's last `tag` line, once it has exited."""
        self.send("quit")
        done = self.read(tag)
        self._proc.wait()
        self._stderr.close()
        return done
