"""The filters-and-features study's report: classic kernels, learned kernels, feature maps.

`report(workdir, trials, config)` (registered as "filters_and_features" in
`research.sweep.reports`) takes the first finished trial of the sweep (a CNN
trained on MNIST, experiments/filters_and_features.py) and writes:

  classic_filters.png   the lectures' fixed kernels (`research.layers.filters`:
                        vertical/horizontal edge, Sobel, Scharr, line detectors)
                        applied with `research.layers.conv2d` to a test image of
                        the trial's dataset and to a CIFAR-10 test image in grayscale
  learned_kernels.png   the first convolution layer's kernels (LeNet-5: six 5x5)
  feature_maps.png      each convolution layer's output maps for one test image
                        (the lectures' "network visualization")
  filters.csv           per classic filter and image: mean |response|
  summary.md/.csv       that table, plus the trained model's test accuracy and
                        whether its validation curve reached its plateau
                        (`research.sweep.plateau`; † if it was still improving)

Each figure is drawn from arrays a function returns (`filter_responses`,
`first_layer_kernels`, `feature_maps`), so tests assert on the numbers.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research.layers import conv2d, filters
from research.studies.autoencoder import build_model, load_splits, restore_params
from research.sweep import aggregate, plateau

NATURAL_DATASET = "cifar10"  # the second example image: a natural photo, in grayscale
EXAMPLE_INDEX = 0  # which test image is shown (and fed through the network)


def grayscale(image: np.ndarray) -> np.ndarray:
    """`(H, W, C)` uint8 or float -> `(H, W)` float32 in [0, 1] (ITU-R 601 luma for RGB)."""
    x = np.asarray(image, np.float32)
    if image.dtype == np.uint8:
        x = x / 255.0
    if x.shape[-1] == 3:
        return x @ np.array([0.299, 0.587, 0.114], np.float32)
    return x[..., 0]


def filter_responses(image: np.ndarray, names=None) -> dict[str, np.ndarray]:
    """Each classic filter's "VALID" cross-correlation with a grayscale `(H, W)` image.

    Returns name -> `(H - 2, W - 2)` response, in `filters.FILTERS` order.
    """
    names = list(filters.FILTERS) if names is None else list(names)
    kernel = filters.as_kernel(*(filters.FILTERS[n] for n in names))  # (3, 3, 1, F)
    x = jnp.asarray(image, jnp.float32)[None, :, :, None]  # (1, H, W, 1)
    out = np.asarray(conv2d(x, jnp.asarray(kernel), padding="VALID"))[0]  # (H-2, W-2, F)
    return {n: out[..., i] for i, n in enumerate(names)}


def first_layer_kernels(params: dict) -> np.ndarray:
    """The first convolution's kernels as `(C_out, f_h, f_w)` (input channels averaged)."""
    conv = params["conv1"]["kernel"]  # HWIO
    return np.transpose(np.asarray(conv).mean(axis=2), (2, 0, 1))


def feature_maps(model, params: dict, image: np.ndarray) -> dict[str, np.ndarray]:
    """Each sown convolution output for one normalized `(H, W, C)` image: name -> `(h, w, C)`."""
    _, state = model.apply({"params": params}, jnp.asarray(image)[None], mutable=["features"])
    maps = {}
    for name, value in state["features"].items():
        if name.startswith("conv") and name.endswith("_out"):
            maps[name.removesuffix("_out")] = np.asarray(value[0])[0]
    return maps


def _figure(rows: int, cols: int, figsize: tuple[float, float]):
    """A figure and its (rows, cols) axes, drawn without pyplot: the caller's backend is kept."""
    from matplotlib.figure import Figure  # heavy: matplotlib loads only to draw

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_classic(images: dict[str, np.ndarray], path: str) -> dict[str, dict[str, np.ndarray]]:
    """One row per image: the image, then each filter's response (diverging colour map)."""
    responses = {label: filter_responses(img) for label, img in images.items()}
    cols = 1 + len(filters.FILTERS)
    fig, axes = _figure(len(images), cols, (cols * 1.2, len(images) * 1.45))
    for r, (label, img) in enumerate(images.items()):
        axes[r, 0].imshow(img, cmap="gray")
        axes[r, 0].set_title(label, fontsize=7)
        for c, (name, resp) in enumerate(responses[label].items(), start=1):
            limit = float(np.abs(resp).max()) or 1.0
            axes[r, c].imshow(resp, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[r, c].set_title(name.replace("_", " "), fontsize=6)
        for ax in axes[r]:
            _bare(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return responses


def plot_kernels(kernels: np.ndarray, path: str) -> None:
    fig, axes = _figure(1, len(kernels), (len(kernels) * 1.1, 1.4))
    for i, k in enumerate(kernels):
        limit = float(np.abs(k).max()) or 1.0
        axes[0, i].imshow(k, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, i].set_title(f"conv1[{i}]", fontsize=7)
        _bare(axes[0, i])
    fig.suptitle("first-layer kernels learned (red +, blue -)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_feature_maps(image: np.ndarray, maps: dict[str, np.ndarray], path: str) -> None:
    """The input, then one block of rows per layer, 8 maps per row."""
    per_row = 8
    rows = 1 + sum(-(-m.shape[-1] // per_row) for m in maps.values())
    fig, axes = _figure(rows, per_row, (per_row * 0.9, rows * 1.0))
    for ax in axes.flat:
        _bare(ax)
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title("input", fontsize=7)
    r = 1
    for name, m in maps.items():
        for i in range(m.shape[-1]):
            ax = axes[r + i // per_row, i % per_row]
            ax.imshow(m[..., i], cmap="viridis")
            ax.set_title(f"{name}[{i}]", fontsize=6)
        r += -(-m.shape[-1] // per_row)
    fig.suptitle("feature maps of each convolution layer (after the activation)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _first_finished(trials):
    for trial in trials:
        if trial.finished:
            return trial, trial.results
    return None, None


def write_report(workdir: str, trials, config, *, natural_dataset: str | None) -> dict:
    """The report, with a test image of `natural_dataset` beside the trial's (None: none)."""
    trial, results = _first_finished(trials)
    if trial is None:
        aggregate.write_text(os.path.join(workdir, "summary.md"), "No finished trials yet.\n")
        return {}
    splits = load_splits(trial.config)
    raw = data_lib.load(
        trial.config.data.name,
        data_dir=trial.config.data.data_dir or None,
        cache_dir=trial.config.data.cache_dir or None,
    )
    label = int(raw.test_labels[EXAMPLE_INDEX])
    images = {
        f"{trial.config.data.name} test[{EXAMPLE_INDEX}] ({label})": grayscale(
            raw.test_images[EXAMPLE_INDEX]
        )
    }
    if natural_dataset:
        nat = data_lib.load(
            natural_dataset,
            data_dir=trial.config.data.data_dir or None,
            cache_dir=trial.config.data.cache_dir or None,
        )
        name = nat.class_names[int(nat.test_labels[EXAMPLE_INDEX])]
        images[f"{natural_dataset} test[{EXAMPLE_INDEX}] ({name}, gray)"] = grayscale(
            nat.test_images[EXAMPLE_INDEX]
        )
    responses = plot_classic(images, os.path.join(workdir, "classic_filters.png"))

    folder = os.path.join(workdir, "trials", trial.id)
    params = restore_params(folder)
    model = build_model(trial.config, splits.num_classes)
    kernels = first_layer_kernels(params)
    plot_kernels(kernels, os.path.join(workdir, "learned_kernels.png"))
    image = splits.test.images[EXAMPLE_INDEX]
    maps = feature_maps(model, params, image)
    plot_feature_maps(grayscale(image), maps, os.path.join(workdir, "feature_maps.png"))

    rows = []
    for name in filters.FILTERS:
        row = {"filter": name}
        for img_label, per_filter in responses.items():
            row[img_label] = float(np.mean(np.abs(per_filter[name])))
        rows.append(row)
    aggregate.write_csv(rows, os.path.join(workdir, "filters.csv"))
    summary = [
        {
            "trial_id": trial.id,
            "model": trial.config.model.name,
            "dataset": trial.config.data.name,
            "train_examples": results.get("train_examples"),
            "epochs": results.get("epochs"),
            "test_accuracy": results.get("test_accuracy"),
            "plateau": plateau.of([trial.values]),
            "first_layer_kernels": "x".join(str(d) for d in kernels.shape),
            "feature_maps": " ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in maps.items()),
        }
    ]
    aggregate.write_csv(summary, os.path.join(workdir, "summary.csv"))
    s = summary[0]
    accuracy = plateau.cell(f"{s['test_accuracy']:.4f}", s["plateau"])
    lines = [
        f"{s['model']} on {s['dataset']} ({s['train_examples']} training images, "
        f"{s['epochs']:g} epochs): test accuracy {accuracy}; "
        f"validation curve {s['plateau']}; "
        f"first-layer kernels {s['first_layer_kernels']}; feature maps {s['feature_maps']}.",
        f"{plateau.rule()}.",
        "",
        "Classic filters: mean |response| (VALID cross-correlation, pixels in [0, 1]).",
        "",
        "| filter | " + " | ".join(responses) + " |",
        "| --- |" + " ---: |" * len(responses),
    ]
    for row in rows:
        values = " | ".join(f"{row[k]:.3f}" for k in responses)
        lines.append(f"| {row['filter']} | {values} |")
    aggregate.write_text(os.path.join(workdir, "summary.md"), "\n".join(lines) + "\n")
    return {"responses": responses, "kernels": kernels, "maps": maps, "rows": rows}


def report(workdir: str, trials, config) -> None:
    """Writes the figures and tables listed in the module doc."""
    write_report(workdir, trials, config, natural_dataset=NATURAL_DATASET)
