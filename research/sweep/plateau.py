"""Has a published row reached its plateau? The one rule every sweep's table uses.

A row of a sweep's table (an optimizer at its best learning rate, a model, a
strategy at a target size, a latent size: one setting, over seeds) is judged
on its *mean validation curve*: the sweep storage's intermediate values (the
validation metric at each epoch end, `storage.Record.values`) averaged over
the row's seeds, epoch by epoch. Its *gain* is what the last epoch adds to the
best earlier epoch outside the *window*, the last fifth of the epochs (at
least one):

    accuracy (higher is better):  gain = last - max(earlier),  in percentage points
    loss (lower is better):       gain = (min(earlier) - last) / min(earlier),  in %

The row is **still improving** when its gain is at least the threshold
(`ACCURACY_GAIN` = 0.5 pp, `LOSS_GAIN` = 1 %) and has **reached its plateau**
otherwise; with a single epoch there is no earlier value and the row is
**not judged**. Comparing with the best earlier epoch, not the previous one,
keeps the epoch-to-epoch noise of a flat curve from reading as progress, and a
curve that peaked and fell (overfitting) counts as having reached its plateau.
The window is a fraction of training, not one epoch, so a slow climb over many
short epochs still shows.

Tables mark a row that is still improving with `IMPROVING` (†) and one not
judged with `UNJUDGED` (‡), and list each marked row's gain under the table
(`legend`); summary.csv shows the verdict as text (`str(Plateau)`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

WINDOW = 0.2  # the last fifth of the epochs (at least one) is the window
ACCURACY_GAIN = 0.005  # still improving at a gain of 0.5 percentage points or more
LOSS_GAIN = 0.01  # still improving at a relative loss reduction of 1 % or more
IMPROVING = "†"
UNJUDGED = "‡"


@dataclasses.dataclass(frozen=True)
class Plateau:
    """The verdict on one row's mean validation curve.

    Attributes:
      reached: True at its plateau, False still improving, None not judged
        (fewer than two epochs).
      gain: the window's gain (accuracy: a fraction, 0.013 = 1.3 pp; loss: a
        relative reduction, 0.02 = 2 %); NaN when not judged.
      window: epochs in the window.
      epochs: epochs in the curve.
      higher_is_better: accuracy (True) or loss (False).
    """

    reached: bool | None
    gain: float
    window: int
    epochs: int
    higher_is_better: bool

    @property
    def mark(self) -> str:
        """The table mark: none at the plateau, else `IMPROVING` or `UNJUDGED`."""
        return {True: "", False: IMPROVING, None: UNJUDGED}[self.reached]

    def describe(self) -> str:
        """The window's change in words: "accuracy +1.3 pp over the last 4 of 20 epochs"."""
        if self.reached is None:
            return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}: no curve to judge"
        change = (
            f"accuracy {100 * self.gain:+.1f} pp"
            if self.higher_is_better
            else f"loss {-100 * self.gain:+.1f} %"
        )
        return f"{change} over the last {self.window} of {self.epochs} epochs"

    def __str__(self) -> str:
        """E.g. "still improving (accuracy +1.3 pp over the last 4 of 20 epochs)" (summary.csv)."""
        state = {True: "reached its plateau", False: "still improving", None: "not judged"}
        return f"{state[self.reached]} ({self.describe()})"


def mean_curve(curves: Iterable[Mapping[int, float]]) -> dict[int, float]:
    """Epoch -> mean over the curves that have a finite value at that epoch."""
    sums: dict[int, list[float]] = {}
    for curve in curves:
        for epoch, value in curve.items():
            if value is not None and math.isfinite(value):
                sums.setdefault(int(epoch), []).append(float(value))
    return {e: sum(v) / len(v) for e, v in sorted(sums.items())}


def judge(curve: Mapping[int, float], higher_is_better: bool = True) -> Plateau:
    """The verdict on one mean validation curve (epoch -> value), by the module's rule."""
    values = [curve[e] for e in sorted(curve)]
    n = len(values)
    if n < 2:
        return Plateau(None, math.nan, 0, n, higher_is_better)
    window = max(1, round(WINDOW * n))
    window = min(window, n - 1)
    earlier, last = values[: n - window], values[-1]
    if higher_is_better:
        gain = last - max(earlier)
        threshold = ACCURACY_GAIN
    else:
        best = min(earlier)
        gain = (best - last) / abs(best) if best else math.nan
        threshold = LOSS_GAIN
    return Plateau(not gain >= threshold, gain, window, n, higher_is_better)


def curves(trials) -> dict[str, dict[int, float]]:
    """Trial id -> its validation curve (`storage.Record.values`), finished trials only."""
    return {t.id: t.values for t in trials if t.finished}


def of(curves: Iterable[Mapping[int, float]], higher_is_better: bool = True) -> Plateau:
    """The verdict on the mean of several seeds' validation curves."""
    return judge(mean_curve(curves), higher_is_better)


def rule(higher_is_better: bool = True) -> str:
    """The rule in one sentence, for a table's caption."""
    what = (
        f"its mean validation accuracy over seeds rose by {100 * ACCURACY_GAIN:g} pp or more"
        if higher_is_better
        else f"its mean validation loss over seeds fell by {100 * LOSS_GAIN:g} % or more"
    )
    return (
        f"{IMPROVING} still improving: {what} in the last {100 * WINDOW:g} % of its epochs "
        f"(last epoch against the best before them); {UNJUDGED} one epoch, not judged; "
        "unmarked rows reached their plateau"
    )


def cell(text: str, p: Plateau) -> str:
    """A table cell with the row's mark: "0.9120 ± 0.0030 †"."""
    return f"{text} {p.mark}" if p.mark else text


def legend(marked: Iterable[tuple[str, Plateau]]) -> list[str]:
    """One line per marked row ("† mnist resnet18: accuracy +1.3 pp over ..."), none if none."""
    return [f"{p.mark} {label}: {p.describe()}" for label, p in marked if p.mark]
