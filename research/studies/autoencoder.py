"""The autoencoder study's report: reconstruction error, reconstructions and a linear probe.

`report(workdir, trials, config)` (registered as "autoencoder" in
`research.sweep.reports`) reads each finished trial of a latent-size sweep of
`conv_autoencoder` (experiments/autoencoder.py) and writes:

  trials.csv          one row per finished trial: dataset, latent size, seed, test
                      MSE (standardized and pixel units), probe test accuracy
  summary.csv/.md     one row per dataset x latent size: mean ± std over seeds
  reconstructions.png per dataset, test images above their reconstructions,
                      one row per latent size (the first seed's model)

The probe: the trained encoder maps the trial's training and test images to
codes; a multinomial logistic regression (scikit-learn, on standardized codes)
is fitted on the training codes and scored on the test codes. The labels play
no part in training the autoencoder, so the probe measures how linearly the
classes separate in a code learned without them.

MSE units: the pipeline standardizes pixels, so the training loss (and
`test_loss`) is in units of the training split's pixel variance; `test_mse_pixels`
= `test_loss * std**2` is the MSE of [0, 1] pixels, comparable across datasets.

Each row is also judged on its mean validation loss curve over seeds (the
storage's per-epoch validation loss) by `research.sweep.plateau`: a row whose
mean validation loss still fell by 1 % or more over the last fifth of its
epochs is marked † in summary.md, with its gain listed under the table;
summary.csv's `plateau` column gives every row's verdict and gain.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

from research import models
from research.data import pipeline
from research.sweep import aggregate, plateau
from research.train import checkpoint

NUM_SHOWN = 8  # test images per dataset in reconstructions.png
PROBE_MAX_ITER = 500  # L-BFGS iterations of the logistic-regression probe


def load_splits(config, cache: dict | None = None) -> pipeline.Splits:
    """The prepared splits of a trial's `config.data` (cached by its fields in `cache`)."""
    return pipeline.from_config(config.data, cache)


def restore_params(run_dir: str) -> dict:
    """The parameters of the newest good checkpoint under `run_dir` (checksum verified)."""
    return checkpoint.read(run_dir, what="trial folder").state["params"]


def build_model(config, num_classes: int = 10):
    return models.create(config.model.name, num_classes=num_classes, **dict(config.model.overrides))


def batched(fn, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """`fn` applied to `images` in batches, results concatenated on the host."""
    fn = jax.jit(fn)
    return np.concatenate(
        [np.asarray(fn(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


def encode(model, params, images: np.ndarray) -> np.ndarray:
    """Codes `(N, latent_dim)` of images `(N, H, W, C)`."""
    return batched(lambda x: model.apply({"params": params}, x, method=model.encode), images)


def linear_probe(
    train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the training codes."""
    # heavy: scikit-learn (and the OpenMP settings it sets) loads only for the probe
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
    probe.fit(train_codes, train_labels)
    return float(probe.score(test_codes, test_labels))


def _setting(trial) -> tuple[str, int]:
    return trial.config.data.name, int(trial.config.model.overrides.latent_dim)


def trial_row(workdir: str, trial, cache: dict) -> dict[str, Any] | None:
    """The trial's row (probe included), or None if it has not finished.

    The numbers come from the storage (`trial.results`); the probe needs the
    trained parameters, from the trial's folder.
    """
    if not trial.finished:
        return None
    folder = os.path.join(workdir, "trials", trial.id)
    results = trial.results
    dataset, latent = _setting(trial)
    row = {
        "trial_id": trial.id,
        "dataset": dataset,
        "latent_dim": latent,
        "seed": trial.config.seed,
        "status": "done",
        "test_loss": results.get("test_loss"),
        "val_loss": results.get("val_loss"),
        "test_mse_pixels": math.nan,
        "probe_test_accuracy": math.nan,
        "params": results.get("params"),
        "train_examples": results.get("train_examples"),
        "wall_seconds": results.get("wall_seconds"),
    }
    splits = load_splits(trial.config, cache)
    row["test_mse_pixels"] = float(results["test_loss"]) * float(np.mean(splits.std) ** 2)
    model = build_model(trial.config, splits.num_classes)
    params = restore_params(folder)
    row["probe_test_accuracy"] = linear_probe(
        encode(model, params, splits.train.images),
        splits.train.labels,
        encode(model, params, splits.test.images),
        splits.test.labels,
    )
    return row


def summarize(rows: list[dict], curves: dict[str, dict[int, float]] | None = None) -> list[dict]:
    """One row per (dataset, latent size): mean ± std over seeds, sorted by both.

    Args:
      rows: trial rows (`trial_row`).
      curves: trial id -> its validation loss per epoch (`storage.Record.values`),
        for the plateau verdict (`plateau.of`); a row without curves is not judged.
    """
    curves = curves or {}
    out = []
    for (dataset, latent), members in aggregate.group_by(rows, "dataset", "latent_dim").items():
        entry = {"dataset": dataset, "latent_dim": latent, "seeds": len(members)}
        for metric in ("test_loss", "test_mse_pixels", "probe_test_accuracy"):
            mean, std = aggregate.mean_std([m[metric] for m in members])
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean, std
        entry["params"] = members[0]["params"]
        entry["trial_ids"] = " ".join(m["trial_id"] for m in members)
        entry["plateau"] = plateau.of(
            (curves.get(m["trial_id"], {}) for m in members), higher_is_better=False
        )
        out.append(entry)
    return sorted(out, key=lambda e: (e["dataset"], e["latent_dim"]))


def markdown(summary: list[dict], *, finished: int, total: int) -> str:
    if not summary:
        return "No finished trials yet.\n"
    lines = [
        f"Convolutional autoencoder, latent-size sweep ({finished}/{total} trials finished). "
        "MSE on the test split, mean ± std over seeds; probe = logistic regression on the codes. "
        f"{plateau.rule(higher_is_better=False)}.",
        "",
        "| dataset | latent | seeds | test MSE (std. units) | test MSE (pixels) "
        "| probe test accuracy |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for s in summary:
        loss = plateau.cell(f"{s['test_loss_mean']:.4f} ± {s['test_loss_std']:.4f}", s["plateau"])
        lines.append(
            f"| {s['dataset']} | {s['latent_dim']} | {s['seeds']} | {loss} "
            f"| {s['test_mse_pixels_mean']:.4f} ± {s['test_mse_pixels_std']:.4f} "
            f"| {s['probe_test_accuracy_mean']:.3f} ± {s['probe_test_accuracy_std']:.3f} |"
        )
    notes = plateau.legend(
        (f"{s['dataset']} latent {s['latent_dim']}", s["plateau"]) for s in summary
    )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def reconstruction_grid(workdir: str, trials, cache: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset: "original" `(NUM_SHOWN, H, W, C)` and one entry per latent size, in [0, 1].

    Uses the first finished seed of each (dataset, latent size); images are the
    first `NUM_SHOWN` test images, un-standardized for display.
    """
    grid: dict[str, dict[str, np.ndarray]] = {}
    for trial in trials:
        folder = os.path.join(workdir, "trials", trial.id)
        if not trial.finished:
            continue
        dataset, latent = _setting(trial)
        entry = grid.setdefault(dataset, {})
        if f"latent {latent}" in entry:
            continue
        splits = load_splits(trial.config, cache)
        mean, std = np.asarray(splits.mean), np.asarray(splits.std)
        x = splits.test.images[:NUM_SHOWN]
        model = build_model(trial.config, splits.num_classes)
        recon = np.asarray(model.apply({"params": restore_params(folder)}, x))
        entry.setdefault("original", np.clip(x * std + mean, 0, 1))
        entry[f"latent {latent}"] = np.clip(recon * std + mean, 0, 1)
    for dataset, entry in grid.items():
        latents = sorted((k for k in entry if k != "original"), key=lambda k: int(k.split()[1]))
        grid[dataset] = {"original": entry["original"], **{k: entry[k] for k in latents}}
    return grid


def plot_reconstructions(grid: dict[str, dict[str, np.ndarray]], path: str) -> str:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    rows = sum(len(entry) for entry in grid.values())
    cols = max(len(next(iter(e.values()))) for e in grid.values())
    fig = Figure(figsize=(cols * 0.9, rows * 0.95))
    axes = fig.subplots(rows, cols, squeeze=False)
    r = 0
    for dataset, entry in grid.items():
        for label, images in entry.items():
            for c in range(cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(images):
                    image = images[c]
                    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
            axes[r, 0].set_ylabel(
                f"{dataset}\n{label}" if label == "original" else label, fontsize=7
            )
            r += 1
    fig.suptitle("test images (top) and reconstructions per latent size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def report(workdir: str, trials, config) -> dict:
    """Writes trials.csv, summary.csv, summary.md and reconstructions.png (see the module doc)."""
    cache: dict = {}
    rows = [r for t in trials if (r := trial_row(workdir, t, cache)) is not None]
    summary = summarize(rows, plateau.curves(trials))
    aggregate.save_tables(
        workdir, rows, summary, markdown(summary, finished=len(rows), total=len(trials))
    )
    if rows:
        plot_reconstructions(
            reconstruction_grid(workdir, trials, cache),
            os.path.join(workdir, "reconstructions.png"),
        )
    return {"rows": rows, "summary": summary}
