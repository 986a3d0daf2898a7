"""The progress bar of a lone run (`config.progress`), shown by process 0 only."""

from __future__ import annotations

from research.train import outputs


def progress_bar(cfg, total: int, start: int):
    """A bar over the run's `total` steps, at `start`; None when progress is off."""
    if not cfg.progress or not outputs.is_writer():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)
