"""The progress of a lone run (`config.progress`), shown by process 0 only.

Where it is shown decides how:

  * a terminal or a notebook: a `tqdm.auto` bar (a widget in Jupyter, a bar
    redrawn in place on a terminal);
  * anything else (a log file, a pipe, a batch job's output): plain lines, one
    each time the run passes a tenth of its steps, so a log holds about ten
    short lines instead of one megabyte-long line of carriage returns.
"""

from __future__ import annotations

import sys
from typing import TextIO

from research.train import outputs

LINES = 10  # plain lines per run when the output is not a terminal


class PlainProgress:
    """Progress as plain lines: `update`, `set_postfix` and `close` like a tqdm bar."""

    def __init__(self, total: int, start: int, stream: TextIO, lines: int = LINES):
        self.total, self.n, self.stream = total, start, stream
        self.every = max(1, -(-total // lines))  # steps between lines, rounded up
        self.postfix: dict[str, str] = {}
        self.due = False  # a line waits for the chunk's metrics (`set_postfix`)

    def update(self, steps: int) -> None:
        """`steps` more done; a line is due when a tenth (or the end) was passed."""
        before, self.n = self.n, self.n + steps
        if self.n // self.every > before // self.every or self.n >= self.total > before:
            self.due = True

    def set_postfix(self, values: dict[str, str]) -> None:
        """The latest metrics (set right after `update`): a due line is written with them."""
        self.postfix = dict(values)
        if self.due:
            self._line()

    def close(self) -> None:
        if self.due:
            self._line()

    def _line(self) -> None:
        self.due = False
        percent = 100 * self.n // max(self.total, 1)
        metrics = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.stream.write(f"step {self.n}/{self.total} ({percent}%) {metrics}".rstrip() + "\n")
        self.stream.flush()


def progress_bar(cfg, total: int, start: int, stream: TextIO | None = None):
    """Progress over the run's `total` steps from `start`; None when progress is off.

    Args:
      cfg: the run's config (`cfg.progress`).
      total: the run's steps.
      start: the step it starts (or resumes) at.
      stream: where it goes (default: `sys.stderr` at the time of the call).
    """
    if not cfg.progress or not outputs.is_writer():
        return None
    stream = sys.stderr if stream is None else stream
    if _in_notebook() or _is_terminal(stream):
        from tqdm.auto import tqdm  # late: the notebook flavour loads only when it is used

        return tqdm(
            total=total, initial=start, unit="step", dynamic_ncols=True, leave=False, file=stream
        )
    return PlainProgress(total, start, stream)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython is looked up, never imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
