"""Tests for what a sweep's table cannot claim: research/sweep/plateau.py and caveats.py,
applied by research/sweep/aggregate.py to every sweep's summary.md and summary.csv.

The sweeps here are synthetic: storage records with hand-made results and
validation curves, fed to the aggregation exactly as the runner feeds a
finished sweep's records, so each flag is shown on a table a worked example
can check, and each counter-case shows none.
"""

from __future__ import annotations

import csv
import math

import pytest

from research.sweep import aggregate, caveats, plateau, run_sweep, space, storage
from research.sweep.space import get_sweep_config
from tests.helpers.curves import FINETUNE_LOWER_LR_100, LENET5_MNIST, RESNET18_MNIST, curve

# ------------------------------------------------------------------ plateau


def test_plateau_reached_by_a_flat_curve_and_not_by_a_climbing_one():
    # 20 epochs: the window is the last 4; the last epoch is held against the best of 1-16.
    flat = plateau.judge(curve(RESNET18_MNIST))
    assert flat.reached is True and (flat.window, flat.epochs) == (4, 20)
    assert flat.gain == pytest.approx(0.939 - 0.945)  # below its best: past the plateau
    assert flat.mark == "" and str(flat) == (
        "reached its plateau (accuracy -0.6 pp over the last 4 of 20 epochs)"
    )
    slow = plateau.judge(curve(LENET5_MNIST))  # still creeping up, by less than 0.5 pp
    assert slow.reached is True and slow.gain == pytest.approx(0.96 - 0.956)
    climbing = plateau.judge(curve(FINETUNE_LOWER_LR_100))
    assert climbing.reached is False and climbing.gain == pytest.approx(0.768 - 0.730)
    assert climbing.mark == plateau.IMPROVING == "†"
    assert climbing.describe() == "accuracy +3.8 pp over the last 4 of 20 epochs"


def test_plateau_of_a_loss_one_epoch_and_the_mean_over_seeds():
    # Loss: lower is better, the gain is relative; 5 epochs -> a window of 1.
    falling = plateau.judge(curve([0.80, 0.60, 0.50, 0.45, 0.44]), higher_is_better=False)
    assert falling.reached is False and falling.gain == pytest.approx(0.01 / 0.45)
    assert falling.describe() == "loss -2.2 % over the last 1 of 5 epochs"
    level = plateau.judge(curve([0.80, 0.60, 0.50, 0.45, 0.448]), higher_is_better=False)
    assert level.reached is True  # -0.4 %: under LOSS_GAIN
    one = plateau.judge({1: 0.9})
    assert one.reached is None and one.mark == plateau.UNJUDGED
    assert str(one) == "not judged (1 epoch: no curve to judge)"
    # Seeds are averaged epoch by epoch (a diverged seed's NaN left out) before judging.
    seeds = [{1: 0.90, 2: 0.94}, {1: 0.92, 2: float("nan")}, {1: 0.91, 2: 0.92}]
    assert plateau.mean_curve(seeds) == pytest.approx({1: 0.91, 2: 0.93})
    assert plateau.of(seeds).gain == pytest.approx(0.02)


# ------------------------------------------------------------------ the rules, one by one


def test_grid_edge_top_bottom_inside_and_a_single_value():
    top = caveats.edge([0.01, 0.03, 0.1], 0.1)
    assert (top.side, top.mark, top.next) == ("top", "ε↑", pytest.approx(0.1 * 0.1 / 0.03))
    assert str(top) == "best ε 0.1 is the top of its grid (0.01 0.03 0.1): extend it up (e.g. 0.33)"
    bottom = caveats.edge([0.1, 0.3, 1.0], 0.1)
    assert (bottom.side, bottom.mark, bottom.next) == ("bottom", "ε↓", pytest.approx(0.1 / 3))
    assert str(bottom).endswith("extend it down (e.g. 0.033)")
    assert caveats.edge([0.01, 0.03, 0.1], 0.03) is None  # inside
    assert caveats.edge([0.1], 0.1) is None  # one value: no choice was made
    # A grid that is not positive steps by its difference: 0, 1, 2 -> 3 above, -1 below.
    assert caveats.edge([0, 1, 2], 2, axis="depth").next == 3
    assert caveats.edge([0, 1, 2], 0, axis="depth").next == -1
    assert caveats.edge([0, 1, 2], 0, axis="depth").mark == "depth↓"


def test_seed_interval_is_the_t_interval_of_the_mean():
    # Mean 0.92, sample std 0.02, 3 seeds: half-width t(0.975, 2) * 0.02 / sqrt(3).
    low, high = caveats.interval([0.90, 0.92, 0.94])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (low, high) == (pytest.approx(0.92 - half, abs=1e-6), pytest.approx(0.92 + half))
    assert all(math.isnan(v) for v in caveats.interval([0.9]))  # one seed: no interval


def test_ranking_overlap_and_separation():
    # Two seeds each, as in the researcher's sweep: t(0.975, 1) = 12.7 makes wide intervals.
    tied = caveats.ranking({"sgd": [0.95, 0.97], "adam": [0.94, 0.955], "rmsprop": [0.5, 0.51]})
    assert tied.top == "sgd" and tied.overlapping == ("adam",) and not tied.resolved
    assert [tied.overlaps_top(k) for k in ("sgd", "adam", "rmsprop")] == ["top", "yes", "no"]
    assert tied.note().startswith(
        "Ranking not resolved by 2 seeds: the 95 % t-interval of the mean test accuracy of "
        "the top row (sgd 0.8329..1.0871) overlaps adam "
    )
    clear = caveats.ranking({"sgd": [0.95, 0.951, 0.952], "adam": [0.90, 0.901, 0.902]})
    assert clear.resolved and clear.overlapping == () and clear.note() is None
    one_seed = caveats.ranking({"sgd": [0.95], "adam": [0.90]})
    assert (
        one_seed.note()
        == "A row with one seed has no interval: the ranking by test accuracy is not tested."
    )
    assert one_seed.overlaps_top("adam") == "untested"
    # A row with a diverged seed (no test accuracy) has no mean: it takes no part.
    assert caveats.ranking({"sgd": [0.95, None], "adam": [0.9, 0.91]}).top == "adam"


def test_diverged_rule():
    ten = [str(i) for i in range(10)]  # ln 10 = 2.303: diverged above 4.605
    assert caveats.divergence({"status": "done", "final_train_loss": 4e29, "class_names": ten}) == (
        "final training loss 4e+29 > 2 × ln 10 = 4.61"
    )
    assert (
        caveats.divergence({"status": "done", "final_train_loss": 4.6, "class_names": ten}) is None
    )
    assert (
        caveats.divergence({"status": "done", "final_train_loss": 2.3, "num_classes": 10}) is None
    )
    assert caveats.divergence({"status": "diverged", "diverged_step": 40}) == (
        "loss non-finite at step 40"
    )
    # No class count (no classifier), or no loss logged: only the engine's status counts.
    assert caveats.divergence({"status": "done", "final_train_loss": 1e9}) is None
    assert caveats.divergence({"status": "done", "class_names": ten}) is None


# ------------------------------------------------------------------ a sweep's tables

LEARNING_RATES = {"sgd": (0.01, 0.1, 1.0), "adam": (1e-3, 1e-2, 1e6)}
FLAT = [0.5, 0.9, 0.95, 0.951, 0.95]  # reached its plateau
CLIMBING = [0.3, 0.5, 0.7, 0.8, 0.9]  # +10 pp in the last epoch: still improving


def sweep_records(outcomes, seeds=(0, 1, 2)):
    """Finished records of a digits sweep over `LEARNING_RATES` x `seeds`.

    `outcomes(name, lr, seed)` gives (val accuracy, test accuracy, final train loss,
    validation curve); a loss of None means the engine stopped the trial on a NaN.
    """
    config = get_sweep_config()
    config.data.name = "digits"
    config.sweep.grids = tuple(
        {"optim.name": (name,), "optim.learning_rate": lrs} for name, lrs in LEARNING_RATES.items()
    )
    config.sweep.axes = {"seed": seeds}
    records = []
    for i, trial in enumerate(space.expand(config)):
        c = trial.config
        val, test, loss, values = outcomes(c.optim.name, c.optim.learning_rate, c.seed)
        results = {
            "status": "done" if loss is not None else "diverged",
            "val_accuracy": val,
            "test_accuracy": test,
            "final_train_loss": loss,
            "class_names": [str(d) for d in range(10)],
            "steps_per_epoch": 20,
        }
        if loss is None:
            results.update(val_accuracy=None, test_accuracy=None, diverged_step=7)
        records.append(storage.Record(trial, "complete", results, curve(values), i))
    return records


def tables(tmp_path, records):
    out = aggregate.write_tables(str(tmp_path), records, target_accuracy=0.9)
    with open(tmp_path / "summary.csv") as f:
        summary_csv = {r["optim.name"]: r for r in csv.DictReader(f)}
    with open(tmp_path / "trials.csv") as f:
        trials_csv = list(csv.DictReader(f))
    return out, summary_csv, trials_csv, (tmp_path / "summary.md").read_text()


def test_a_best_rate_on_the_grid_edge_is_flagged_and_one_inside_is_not(tmp_path):
    # sgd is best at 1.0, the top of its grid; adam at 1e-2, inside (1e6 explodes).
    def outcomes(name, lr, seed):
        if name == "adam" and lr == 1e6:
            return 0.1, 0.1, 4e29, FLAT
        best = {"sgd": 1.0, "adam": 1e-2}[name]
        acc = (0.95 if lr == best else 0.90) + 0.001 * seed
        return acc, acc, 0.1, FLAT

    out, summary, trials, text = tables(tmp_path, sweep_records(outcomes))
    assert summary["sgd"]["best_learning_rate"] == "1.0" and summary["sgd"]["flags"] == "ε↑"
    assert summary["sgd"]["grid_edge"] == (
        "best ε 1 is the top of its grid (0.01 0.1 1): extend it up (e.g. 10)"
    )
    assert summary["adam"]["grid_edge"] == "" and "ε" not in summary["adam"]["flags"]
    assert "| sgd | 1 | 3 | 0.9510 | 0.9510 ± 0.0010 | 0.1000 ± 0.0000 | 40 (3/3) | ε↑ |" in text
    assert "- ε↑ sgd: best ε 1 is the top of its grid (0.01 0.1 1): extend it up (e.g. 10)" in text
    caption, table, rules, notes = text.split("\n\n")
    assert "ε↓" not in table and "†" not in table and "‡" not in table  # no other flag
    assert "Ranking not resolved by 3 seeds" in notes  # 0.951 ± 0.001 against 0.951 ± 0.001
    # The diverged rule: adam at 1e6 ends "done" with a finite loss of 4e29.
    exploded = [r for r in trials if r["optim.learning_rate"] == "1000000.0"]
    assert [r["status"] for r in exploded] == ["done"] * 3  # results.json's status is kept
    assert {r["diverged"] for r in exploded} == {"final training loss 4e+29 > 2 × ln 10 = 4.61"}
    assert all(r["diverged"] == "" for r in trials if r not in exploded)
    why = "(final training loss 4e+29 > 2 × ln 10 = 4.61)"  # the same for the three seeds
    assert summary["adam"]["diverged"] == f"ε=1e+06: 3/3 seeds {why}"
    assert f"- ✗ adam: diverged at ε=1e+06: 3/3 seeds {why}" in text
    assert "✗" not in summary["adam"]["flags"]  # its chosen ε did not diverge


def test_a_diverged_rate_never_wins_and_marks_its_row(tmp_path):
    # adam at 1e6 "reports" 0.99 validation accuracy with a loss of 4e29: by the rule it is
    # diverged and counts as 0, so 1e-2 wins. sgd at 1.0 diverged (NaN) for seed 2 only,
    # and is still chosen on its mean (0.99 + 0.99 + 0) / 3 = 0.66 over 0.6: marked ✗.
    def outcomes(name, lr, seed):
        if name == "adam":
            return (0.99, 0.99, 4e29, FLAT) if lr == 1e6 else (0.9, 0.9, 0.2, FLAT)
        if lr == 1.0:
            return (0.99, 0.99, 0.1, FLAT) if seed < 2 else (None, None, None, FLAT[:2])
        return 0.6, 0.6, 0.5, FLAT

    out, summary, trials, text = tables(tmp_path, sweep_records(outcomes))
    assert summary["adam"]["best_learning_rate"] == "0.001"  # ties: the smallest ε
    assert summary["sgd"]["best_learning_rate"] == "1.0"
    assert float(summary["sgd"]["val_accuracy_mean"]) == pytest.approx(0.66)
    assert summary["sgd"]["flags"] == "ε↑ ✗"
    assert summary["sgd"]["diverged"] == "ε=1: 1/3 seeds (loss non-finite at step 7)"
    assert "loss non-finite at step 7" in {r["diverged"] for r in trials}
    assert summary["sgd"]["overlaps_top"] == ""  # no mean test accuracy: no part in the ranking


def test_rows_still_improving_are_flagged(tmp_path):
    def outcomes(name, lr, seed):
        best = {"sgd": 0.1, "adam": 1e-2}[name]
        acc = 0.95 if lr == best else 0.5
        return acc, acc - 0.1 * (name == "adam"), 0.1, CLIMBING if name == "sgd" else FLAT

    out, summary, trials, text = tables(tmp_path, sweep_records(outcomes))
    assert summary["sgd"]["flags"] == "†" and summary["adam"]["flags"] == ""
    assert summary["sgd"]["plateau"] == (
        "still improving (accuracy +10.0 pp over the last 1 of 5 epochs)"
    )
    assert summary["adam"]["plateau"].startswith("reached its plateau")
    assert (
        "| 100 (3/3) | † |" in text
        and "- † sgd: accuracy +10.0 pp over the last 1 of 5 epochs" in text
    )
    # Both rows constant over seeds: zero-width intervals, 0.95 against 0.85: resolved.
    assert (summary["sgd"]["overlaps_top"], summary["adam"]["overlaps_top"]) == ("top", "no")
    assert "Ranking not resolved" not in text


def test_overlapping_seed_intervals_add_the_note(tmp_path):
    # Test accuracy over 3 seeds: sgd 0.95 ± 0.01, adam 0.94 ± 0.01: 95 % t-intervals of
    # half-width 4.30 * 0.01 / sqrt(3) = 0.0248 overlap. rmsprop-like separation is absent.
    def outcomes(name, lr, seed):
        best = {"sgd": 0.1, "adam": 1e-2}[name]
        centre = {"sgd": 0.95, "adam": 0.94}[name] if lr == best else 0.5
        return centre, centre + 0.01 * (seed - 1), 0.1, FLAT

    out, summary, trials, text = tables(tmp_path, sweep_records(outcomes))
    assert (summary["sgd"]["overlaps_top"], summary["adam"]["overlaps_top"]) == ("top", "yes")
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert float(summary["adam"]["test_accuracy_ci95_low"]) == pytest.approx(0.94 - half)
    assert (
        "- Ranking not resolved by 3 seeds: the 95 % t-interval of the mean test accuracy of "
        "the top row (sgd 0.9252..0.9748) overlaps adam 0.9152..0.9648." in text
    )
    assert all(s["flags"] == "" for s in out["summary"])  # inside the grids, at their plateau


@pytest.mark.slow
def test_a_real_sweep_marks_adam_at_1e6_diverged(tmp_path):
    # issue 21: Adam at ε = 1e6 on digits ends with a huge (or non-finite) training loss.
    config = get_sweep_config()
    config.model.name = "simple_cnn"
    config.data.name = "digits"  # 8x8, embedded: no data folder needed
    config.batch_size = 64
    config.num_epochs = 2
    config.log_every_steps = 0
    config.progress = False
    config.sweep.parallel = "sequential"
    config.sweep.axes = {"optim": {"name": ("adam",), "learning_rate": (1e-3, 1e6)}, "seed": (0,)}
    run_sweep(config, str(tmp_path))
    with open(tmp_path / "trials.csv") as f:
        trials = {float(r["optim.learning_rate"]): r for r in csv.DictReader(f)}
    assert trials[1e-3]["diverged"] == ""
    exploded = trials[1e6]
    if exploded["status"] == "done":  # a finite loss, far above a uniform guess's
        loss = float(exploded["final_train_loss"])
        assert exploded["diverged"] == f"final training loss {loss:.3g} > 2 × ln 10 = 4.61"
    else:  # the engine stopped it on a NaN
        assert exploded["status"] == "diverged"
        assert exploded["diverged"].startswith("loss non-finite at step ")
    with open(tmp_path / "summary.csv") as f:
        (summary,) = list(csv.DictReader(f))
    assert summary["best_learning_rate"] == "0.001"
    assert summary["diverged"] == f"ε=1e+06: 1/1 seeds ({exploded['diverged']})"
    assert summary["flags"].split()[0] == "ε↓"  # 1e-3 is the bottom of (1e-3, 1e6)
    text = (tmp_path / "summary.md").read_text()
    assert f"- ✗ adam: diverged at ε=1e+06: 1/1 seeds ({exploded['diverged']})" in text
