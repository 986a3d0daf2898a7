"""What a sweep writes after its trials: one report per kind of study.

`config.sweep.report` names an entry of `REPORTS`. A report is a function
`report(workdir, trials, config) -> None` that reads the finished trials'
folders (`runner.trial_dir`) and writes tables (markdown and CSV) and plots
into `workdir`. It must tolerate unfinished trials (a sweep shared between
processes writes its tables whenever one of them ends) and say how many
trials its numbers cover.

To add a study: write its report function (in its own module under
`research/sweep/`, or next to the study's code) and add one line here.
"""

from __future__ import annotations

from research.registry import Registry
from research.sweep import (
    aggregate,
    study_architectures,
    study_autoencoder,
    study_filters,
    study_freezing,
)


def optimizers(workdir: str, trials, config) -> None:
    """Per optimizer: best learning rate on validation, test accuracy and loss over seeds."""
    aggregate.write_tables(workdir, trials, target_accuracy=config.sweep.target_accuracy)


REPORTS = Registry(
    "report",
    {
        "optimizers": optimizers,
        "architectures": study_architectures.write_report,
        "freezing": study_freezing.write_report,
        "autoencoder": study_autoencoder.report,
        "filters_and_features": study_filters.report,
    },
)
