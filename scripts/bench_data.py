"""Data-loader benchmark: the stream loader's host throughput, and what streaming costs training.

    python scripts/bench_data.py                                # both parts, the defaults
    python scripts/bench_data.py --part host --workers 0,1,2 --host-steps 60
    python scripts/bench_data.py --part train --models lenet5,resnet18 --chunks 4 --repeats 3

Needs the datasets (RESEARCH_DATA_DIR, or a connected machine) and, for the
PyTorch row, `torch` (requirements-bench.txt).

Part "host": images per second delivered on the host by the stream loader's grain
pipeline (`research.data.stream`) on CIFAR-10 train: batches of `--batch` random
examples read from the array_record files, normalized, and augmented on the host
(random crop after 4-pixel zero padding, horizontal flip: `data.augment_on="host"`),
with 0, 1 and 2 worker processes (`read_threads` threads in each). For comparison,
PyTorch's DataLoader over the same uint8 arrays held in memory, doing the same work
per image (normalize, pad, crop, flip, in torch ops, one image per `__getitem__`),
with the same batch and the same numbers of workers. Startup (worker processes
started, first batch) is timed apart from the steady rate.

Part "train": training examples per second of LeNet-5 on MNIST and of a narrow
ResNet-18 (width 16, CIFAR stem) on CIFAR-10 with augmentation on the device,
`data.loader="device"` (the split on the device, each step gathering its batch)
against `"stream"` (`TrainStream`, workers 0, read_threads 2, prefetch 2: each
chunk read and put on the device ahead of the step). Both are one epoch of the
training engine (`loop.train_and_evaluate`, evaluation included but not timed)
over `(chunks + 1) * chunk_steps * batch` training examples: the same batches, so
the same parameters; its `examples_per_second` leaves out the first chunk
(compilation, pipeline start). The paths alternate, `--repeats` times, and the
median is reported. The cost is `1 - stream / device`.

Prints markdown tables with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

from research.config import get_base_config  # light: no JAX until a part runs

TRAIN_MODELS = {
    # name: (dataset, model overrides, augment on the device)
    "lenet5": ("mnist", {"padding": 2}, False),
    "resnet18": ("cifar10", {"cifar_stem": True, "width": 16}, True),
}


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _data_config(name: str):
    config = get_base_config()
    config.data.name = name
    return config.data


# ------------------------------------------------------------------ host throughput


def bench_stream_host(workers: int, steps: int, batch: int, threads: int) -> dict:
    """The grain pipeline alone: read, normalize, augment; no device transfer."""
    # Imported here: only the part that runs loads JAX, so --help and a bad flag answer at once.
    import jax

    from research.data import stream, stream_splits
    from research.train.steps import make_mesh

    splits = stream_splits.open_splits(_data_config("cifar10"))
    reader = stream._Reader(  # noqa: SLF001 - the pipeline without the device transfer
        splits.train,
        mesh=make_mesh(),
        workers=workers,
        read_threads=threads,
        augment_seed=stream.seed_of(jax.random.PRNGKey(0)),
    )
    rng = np.random.default_rng(0)
    columns = np.arange(batch)
    elements = [
        (s, rng.choice(len(splits.train), batch, replace=False), columns, batch)
        for s in range(steps)
    ]
    start = time.perf_counter()
    it = reader.iterate(elements)
    images, _ = next(it)
    first = time.perf_counter() - start
    assert images.shape == (batch, 32, 32, 3) and images.dtype == np.float32
    start = time.perf_counter()
    for _ in range(steps - 1):
        next(it)
    steady = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return {"startup_s": first, "images_per_s": (steps - 1) * batch / steady}


def bench_torch_host(workers: int, steps: int, batch: int) -> dict:
    """PyTorch's DataLoader over the CIFAR-10 uint8 arrays, the same work per image."""
    # Imported here: torch is optional (requirements-bench.txt), and JAX loads with this part only.
    import torch

    from research import data
    from research.data import pipeline

    # DataLoader forks its workers from this process, which has JAX loaded and warns.
    warnings.filterwarnings("ignore", message=".*os.fork.*", category=RuntimeWarning)
    raw = data.load("cifar10")
    mean, std = pipeline.mean_std(pipeline.pixel_histogram(raw.train_images))
    dataset = _TorchCifar(raw.train_images, raw.train_labels, mean, std)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    it = iter(loader)
    images, _ = next(it)
    first = time.perf_counter() - start
    assert tuple(images.shape) == (batch, 3, 32, 32)
    start = time.perf_counter()
    for _ in range(steps - 1):
        next(it)
    steady = time.perf_counter() - start
    del it
    return {"startup_s": first, "images_per_s": (steps - 1) * batch / steady}


class _TorchCifar:
    """torchvision's CIFAR recipe in plain torch ops (ToTensor, Normalize, RandomCrop(32,
    padding=4), RandomHorizontalFlip), one image per call, as a map-style Dataset."""

    def __init__(self, images, labels, mean, std):
        import torch  # optional: only the PyTorch row needs it

        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import torch  # optional: only the PyTorch row needs it

        x = torch.tensor(self.images[i]).permute(2, 0, 1).float() / 255  # (3, 32, 32)
        x = torch.nn.functional.pad((x - self.mean) / self.std, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        x = x[:, dy : dy + 32, dx : dx + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return x, int(self.labels[i])


def run_host(args) -> list[dict]:
    rows = []
    for workers in args.workers:
        for framework in ("stream", "torch"):
            if framework == "torch":
                try:
                    import torch  # noqa: F401 - optional: is it installed?
                except ImportError:
                    print("torch is not installed: pip install -r requirements-bench.txt")
                    continue
            rates, startups = [], []
            for _ in range(args.repeats):
                if framework == "stream":
                    r = bench_stream_host(workers, args.host_steps, args.batch, args.read_threads)
                else:
                    r = bench_torch_host(workers, args.host_steps, args.batch)
                rates.append(r["images_per_s"])
                startups.append(r["startup_s"])
            rows.append(
                {
                    "loader": framework,
                    "workers": workers,
                    "images_per_s": statistics.median(rates),
                    "spread": (min(rates), max(rates)),
                    "startup_s": statistics.median(startups),
                }
            )
            print(_host_row(rows[-1], args), flush=True)
    return rows


def _host_row(row, args) -> str:
    what = (
        f"stream (grain, {args.read_threads} read threads each)"
        if row["loader"] == "stream"
        else "PyTorch DataLoader (in-memory arrays)"
    )
    lo, hi = row["spread"]
    return (
        f"| {what} | {row['workers']} | {row['images_per_s']:,.0f} | {lo:,.0f}-{hi:,.0f} "
        f"| {row['startup_s']:.2f} |"
    )


# ------------------------------------------------------------------ training throughput


def bench_train(model_name: str, args) -> dict:
    """Runs the engine (`loop.train_and_evaluate`) on each path and reads its throughput.

    `examples_per_second` of results.json excludes the first chunk (compilation,
    pipeline start); the paths alternate, `--repeats` times, each in a new workdir.
    """
    # Imported here: only the part that runs loads JAX, so --help and a bad flag answer at once.
    import tempfile

    from research.train import loop

    dataset, overrides, augment = TRAIN_MODELS[model_name]
    rates = {"device": [], "stream": []}
    shas = set()
    for _ in range(args.repeats):
        for loader in ("device", "stream"):
            config = _data_config(dataset)
            config.model.name = model_name
            config.model.overrides = overrides
            config.data.augment = augment
            config.data.loader = loader
            config.data.train_size = (args.chunks + 1) * args.chunk_steps * args.batch
            config.data.read_threads = args.read_threads
            config.batch_size = args.batch
            config.log_every_steps = args.chunk_steps
            config.num_epochs = 1
            config.checkpoint_every_epochs = 0
            config.eval_batch_size = 1000
            config.progress = False
            config.optim.name = "momentum"
            config.optim.learning_rate = 0.01
            with tempfile.TemporaryDirectory() as workdir:
                results = loop.train_and_evaluate(config, workdir)
            rates[loader].append(results["examples_per_second"])
            shas.add(results["params_sha256"])
    device, streamed = (statistics.median(rates[k]) for k in ("device", "stream"))
    return {
        "model": model_name,
        "dataset": dataset,
        "device": device,
        "stream": streamed,
        "device_spread": (min(rates["device"]), max(rates["device"])),
        "stream_spread": (min(rates["stream"]), max(rates["stream"])),
        "cost": 1 - streamed / device,
        "same_params": len(shas) == 1,
    }


def run_train(args) -> list[dict]:
    rows = []
    for model_name in args.models:
        row = bench_train(model_name, args)
        rows.append(row)
        print(_train_row(row, args), flush=True)
    return rows


def _train_row(row, args) -> str:
    (dlo, dhi), (slo, shi) = row["device_spread"], row["stream_spread"]
    return (
        f"| {row['model']} on {row['dataset']} | {args.batch} | {row['device']:,.0f} "
        f"({dlo:,.0f}-{dhi:,.0f}) | {row['stream']:,.0f} ({slo:,.0f}-{shi:,.0f}) "
        f"| {row['cost']:+.1%} | {'yes' if row['same_params'] else 'NO'} |"
    )


def _csv(kind):
    return lambda text: [kind(t) for t in text.split(",") if t]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("host", "train", "all"), default="all")
    parser.add_argument("--workers", type=_csv(int), default=[0, 1, 2])
    parser.add_argument("--read-threads", type=int, default=2, help="threads per process")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--host-steps", type=int, default=60, help="batches per host repeat")
    parser.add_argument("--models", type=_csv(str), default=list(TRAIN_MODELS))
    parser.add_argument("--chunk-steps", type=int, default=5, help="steps per training chunk")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many")
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(TRAIN_MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; known: {', '.join(TRAIN_MODELS)}")
    print(f"load average before: {_load()} ({os.cpu_count()} CPUs)\n")
    if args.part in ("host", "all"):
        print(
            f"Host images/s, CIFAR-10 train, batch {args.batch}, augmentation on the host, "
            f"median of {args.repeats} x {args.host_steps} batches:\n"
        )
        print("| loader | workers | images/s | range | startup s |")
        print("|---|---:|---:|---:|---:|")
        run_host(args)
        print()
    if args.part in ("train", "all"):
        print(
            f"Training examples/s, median of {args.repeats} (range), {args.chunks} timed chunks "
            f"of {args.chunk_steps} steps:\n"
        )
        print("| model | batch | device | stream | cost of streaming | same params |")
        print("|---|---:|---:|---:|---:|---|")
        run_train(args)
        print()
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
