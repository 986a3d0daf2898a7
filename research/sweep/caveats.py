"""What a sweep's table cannot claim: the rules that flag its rows.

Every sweep's summary (`aggregate.py`) applies these three rules, beside the
plateau rule (`plateau.py`: † a row still improving at its last epoch). Each
gives a mark for the table's `flags` column, a text for summary.csv and a line
under the table. They are written here once, and only here.

**Grid edge.** A row's value of a swept numeric axis that was chosen as the
best of a grid (the learning rate ε: the best mean validation accuracy over
seeds) may not be the best value when it is the grid's smallest or largest:
the optimum may lie outside. Such a row is marked `ε↓` (extend the grid down)
or `ε↑` (extend it up), with the next value one grid step further (a
positive grid steps by the ratio of the edge value to its neighbour, e.g.
0.033 below 0.1, 0.3; other grids by their difference). A grid of one value
was no choice and is not flagged. The grid is the values the row's finished
trials tried: under `sweep.mode = "tpe"`, the rates TPE sampled.

**Seed intervals.** Each row's test accuracy over its n seeds gets a 95 %
t-interval for its mean:

    mean ± t(0.975, n - 1) · s / √n     (s: the sample standard deviation;
                                         t = 12.71, 4.30, 3.18 for 2, 3, 4 seeds)

The top row (highest mean) is resolved when its interval overlaps no other
row's; otherwise a note under the table names every row whose interval
overlaps the top row's, and summary.csv's `overlaps_top` says "yes" for them:
that many seeds do not rank those rows. A row with one seed has no interval,
and the note says the ranking is not tested. A row with a seed without a finite
test accuracy (a diverged trial) takes no part: its mean is not a number.

**Diverged.** A trial is diverged when the engine stopped it on a non-finite
loss (results.json's `status: "diverged"`), or when its final training loss
is finite but above `DIVERGED_LOSS_FACTOR` (2) times ln(number of classes):
twice the cross-entropy of a uniform guess, where a classifier starts.
Training that ends there has made the model worse than knowing nothing (Adam
at ε = 1e6 ends `done` with a training loss of 4e29). The rule belongs to the
tables, not to results.json: results.json records what the engine saw (a loss
that stayed finite, training that ran to its end); the tables judge it.
trials.csv's `diverged` column gives each diverged trial's reason; a diverged
trial counts as validation accuracy 0 when the learning rate is chosen; a
row whose chosen trials include one is marked `✗`, and every diverged trial
of the sweep is listed under the table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

DIVERGED_LOSS_FACTOR = 2.0  # diverged above this many times ln(classes), a uniform guess's loss
CONFIDENCE = 0.95  # the seed intervals' two-sided confidence
DIVERGED = "✗"


# ------------------------------------------------------------------ grid edge


@dataclasses.dataclass(frozen=True)
class Edge:
    """A chosen value on the edge of its grid.

    Attributes:
      axis: the axis' symbol in the table ("ε").
      side: "bottom" (the smallest value) or "top" (the largest).
      best: the chosen value.
      grid: the grid, sorted.
      next: the value one grid step beyond the edge, to try next.
    """

    axis: str
    side: str
    best: float
    grid: tuple[float, ...]
    next: float

    @property
    def mark(self) -> str:
        """The table's mark: "ε↑" (extend the grid up) or "ε↓" (extend it down)."""
        return f"{self.axis}{'↑' if self.side == 'top' else '↓'}"

    def __str__(self) -> str:
        """E.g. "best ε 0.3 is the top of its grid (0.03 0.1 0.3): extend it up (e.g. 0.9)"."""
        grid = " ".join(f"{v:g}" for v in self.grid)
        way = "up" if self.side == "top" else "down"
        return (
            f"best {self.axis} {self.best:g} is the {self.side} of its grid ({grid}): "
            f"extend it {way} (e.g. {self.next:.2g})"
        )


def edge(grid: Sequence[float], best: float, axis: str = "ε") -> Edge | None:
    """The edge `best` sits on in `grid`, or None (inside it, or a grid of one value)."""
    values = tuple(sorted(set(grid)))
    if len(values) < 2 or best not in values or values[0] < best < values[-1]:
        return None
    top = best == values[-1]
    outer, inner = (values[-1], values[-2]) if top else (values[0], values[1])
    if all(v > 0 for v in values):
        step = outer / inner  # a log grid (learning rates): one ratio further
        return Edge(axis, "top" if top else "bottom", best, values, outer * step)
    return Edge(axis, "top" if top else "bottom", best, values, outer + (outer - inner))


# ------------------------------------------------------------------ seed intervals


def interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % t-interval of the mean of `values` (NaN, NaN for fewer than two)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size < 2:
        return math.nan, math.nan
    half = scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1) * np.std(x, ddof=1)
    half /= math.sqrt(x.size)
    return float(np.mean(x) - half), float(np.mean(x) + half)


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Whether the top row's seed interval is clear of the others'.

    Attributes:
      top: the top row's label (None: no row with a finite mean).
      overlapping: the labels of the rows whose intervals overlap the top's.
      intervals: label -> (low, high) for every row that took part.
      seeds: the fewest seeds of the rows that took part.
    """

    top: str | None
    overlapping: tuple[str, ...]
    intervals: dict[str, tuple[float, float]]
    seeds: int

    @property
    def resolved(self) -> bool:
        return self.top is not None and self.seeds >= 2 and not self.overlapping

    def overlaps_top(self, label: str) -> str:
        """summary.csv's `overlaps_top`: "top", "yes", "no", "untested" (one seed) or ""
        (took no part)."""
        if label == self.top:
            return "top"
        if label not in self.intervals:
            return ""
        if self.seeds < 2:
            return "untested"
        return "yes" if label in self.overlapping else "no"

    def note(self, metric: str = "test accuracy") -> str | None:
        """The line under the table when the ranking is not resolved, else None."""
        if self.top is None or len(self.intervals) < 2 or self.resolved:
            return None
        if self.seeds < 2:
            return f"A row with one seed has no interval: the ranking by {metric} is not tested."

        def span(label):
            low, high = self.intervals[label]
            return f"{label} {low:.4f}..{high:.4f}"

        others = ", ".join(span(label) for label in self.overlapping)
        return (
            f"Ranking not resolved by {self.seeds} seeds: the {100 * CONFIDENCE:g} % "
            f"t-interval of the mean {metric} of the top row ({span(self.top)}) overlaps "
            f"{others}."
        )


def rank(
    summary: list[dict[str, Any]],
    values: Sequence[Sequence[float]],
    *,
    label: Callable[[dict], str],
    group: Callable[[dict], str] = lambda row: "",
) -> None:
    """Adds the interval columns to each summary row, ranking the rows within each group.

    Args:
      summary: a table's rows; each gets `test_accuracy_ci95_low/high` (None if it
        took no part) and `overlaps_top` (`Ranking.overlaps_top`). Needs `seeds`.
      values: each row's values over seeds (test accuracy), in the rows' order.
      label: a row's name, unique within its group ("adam", "resnet18").
      group: the rows ranked against each other share it ("mnist"); "" for one table.
    """
    for key in dict.fromkeys(map(group, summary)):
        mine = [(row, v) for row, v in zip(summary, values, strict=True) if group(row) == key]
        order = ranking({label(row): v for row, v in mine})
        for row, _ in mine:
            low, high = order.intervals.get(label(row), (None, None))
            row.update(
                test_accuracy_ci95_low=low,
                test_accuracy_ci95_high=high,
                overlaps_top=order.overlaps_top(label(row)),
            )


def notes(
    summary: list[dict[str, Any]],
    *,
    label: Callable[[dict], str],
    group: Callable[[dict], str] = lambda row: "",
) -> list[str]:
    """The ranking note of each group not resolved ("mnist: Ranking not ..."), from `rank`'s
    columns (so a table rebuilt from summary.csv's columns gives the same notes)."""
    out = []
    for key in dict.fromkeys(map(group, summary)):
        ranked = {label(r): r for r in summary if group(r) == key and r["overlaps_top"]}
        tops = [name for name, r in ranked.items() if r["overlaps_top"] == "top"]
        order = Ranking(
            tops[0] if tops else None,
            tuple(n for n, r in ranked.items() if r["overlaps_top"] in ("yes", "untested")),
            {
                n: (r["test_accuracy_ci95_low"], r["test_accuracy_ci95_high"])
                for n, r in ranked.items()
            },
            min((r["seeds"] for r in ranked.values()), default=0),
        )
        if note := order.note():
            out.append(f"{key}: {note}" if key else note)
    return out


def ranking(rows: Mapping[str, Sequence[float]]) -> Ranking:
    """Label -> the row's values over seeds (higher is better) -> the top row's `Ranking`."""
    finite = {
        label: [float(v) for v in values]
        for label, values in rows.items()
        if values and all(v is not None and math.isfinite(v) for v in values)
    }
    if not finite:
        return Ranking(None, (), {}, 0)
    top = max(finite, key=lambda label: float(np.mean(finite[label])))
    intervals = {label: interval(values) for label, values in finite.items()}
    seeds = min(len(v) for v in finite.values())
    low, high = intervals[top]
    overlapping = tuple(
        label
        for label, (lo, hi) in intervals.items()
        if label != top and (seeds < 2 or (lo <= high and low <= hi))
    )
    return Ranking(top, overlapping, intervals, seeds)


# ------------------------------------------------------------------ diverged


def divergence(results: Mapping[str, Any]) -> str | None:
    """Why a finished trial counts as diverged (the module's rule), or None.

    Args:
      results: its results.json fields plus `final_train_loss` (a sweep
        record's user attrs, or a trials.csv row with `num_classes`).
    """
    if results.get("status") == "diverged":
        step = results.get("diverged_step")
        return "loss non-finite" + (f" at step {step}" if step is not None else "")
    loss = results.get("final_train_loss")
    classes = results.get("num_classes")
    if classes is None and results.get("class_names"):
        classes = len(results["class_names"])
    if loss is None or not classes or classes < 2:
        return None
    limit = DIVERGED_LOSS_FACTOR * math.log(classes)
    if not math.isfinite(loss) or loss > limit:
        return (
            f"final training loss {loss:.3g} > {DIVERGED_LOSS_FACTOR:g} × ln {classes} "
            f"= {limit:.3g}"
        )
    return None


def rule() -> str:
    """The three rules in one paragraph, for a table's caption."""
    return (
        "Flags: ε↑/ε↓ best ε on the top/bottom edge of its grid (extend the grid that way); "
        f"{DIVERGED} diverged trials, listed below (in the flags column: among the row's "
        "chosen trials): the engine stopped them on a non-finite loss, or their final "
        f"training loss is above {DIVERGED_LOSS_FACTOR:g} × ln(classes), twice a uniform "
        "guess's; a diverged trial counts as validation accuracy 0. Seed intervals: the "
        f"{100 * CONFIDENCE:g} % t-interval of the mean "
        "test accuracy, mean ± t · std / √seeds."
    )
