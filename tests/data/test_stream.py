"""The streaming loader (`research.data.stream`): the device path's batches, read from disk.

Most tests use a small folder dataset of generated PNGs (3 classes, 8x8 RGB), so they
need no downloaded data: the folder is built once per session as array_record files.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import data, models
from research.config import get_base_config
from research.data import augmentation, batching, loader_choice, pipeline, stream, stream_splits
from research.train.checkpoint import tree_sha256
from research.train.steps import make_mesh, make_steps
from tests.helpers.images import write_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("cat", "dog", "eel")
PER_CLASS = 40  # 120 images: 24 carved as test, 96 train -> 72 train + 24 validation
BATCH = 12  # 72 = 6 full batches: every epoch covers the training split exactly


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_image_folder(root, classes=CLASSES, per_class=PER_CLASS)
    return root


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("stream_cache")


def data_config(folder, cache, **changes) -> ml_collections.ConfigDict:
    config = get_base_config()
    config.data.name = f"folder:{folder}"
    config.data.cache_dir = str(cache)
    config.data.val_size = 0.25
    for key, value in changes.items():
        config.data[key] = value
    return config.data


@pytest.fixture(scope="session")
def both(folder, cache):
    """(device-path Splits, StreamSplits) of the folder dataset."""
    cfg = data_config(folder, cache)
    return pipeline.from_config(cfg), stream_splits.open_splits(cfg)


def train_stream(splits, **kwargs) -> stream.TrainStream:
    args = dict(
        data_key=jax.random.PRNGKey(7),
        batch_size=BATCH,
        remainder="drop",
        chunk=4,
        num_epochs=3,
        mesh=make_mesh(),
        read_threads=2,
        dataset_fingerprint=splits.fingerprint,
    )
    return stream.TrainStream(splits.train, **{**args, **kwargs})


# ------------------------------------------------------------------ the same data


def test_splits_match_the_device_path(both):
    device, streamed = both
    assert (len(streamed.train), len(streamed.val), len(streamed.test)) == (72, 24, 24)
    assert (len(device.train), len(device.val), len(device.test)) == (72, 24, 24)
    assert streamed.mean == device.mean and streamed.std == device.std  # exact, not close
    assert streamed.class_names == device.class_names == CLASSES
    assert streamed.input_shape == device.input_shape == (8, 8, 3)
    assert streamed.num_classes == 3
    assert any("no test/ folder: 24 of 120" in n for n in streamed.notes)
    for name in ("train", "val", "test"):
        images, labels = getattr(streamed, name).read(np.arange(len(getattr(device, name))))
        np.testing.assert_array_equal(images, getattr(device, name).images)  # bit for bit
        np.testing.assert_array_equal(labels, getattr(device, name).labels)


@pytest.mark.parametrize("remainder", ["drop", "keep"])
def test_stream_chunks_are_the_device_batches(both, remainder):
    device, streamed = both
    n, batch = len(device.train), 10  # 72 = 7 * 10 + 2: "keep" adds a batch of 2
    loader = train_stream(streamed, batch_size=batch, remainder=remainder, num_epochs=2)
    seen: dict[int, list] = {0: [], 1: []}
    steps = []
    with loader.chunks() as chunks:
        for chunk in chunks:
            rows = chunk.plan.rows
            np.testing.assert_array_equal(np.asarray(chunk.images), device.train.images[rows])
            np.testing.assert_array_equal(np.asarray(chunk.labels), device.train.labels[rows])
            seen[chunk.plan.epoch] += rows.ravel().tolist()
            steps.append((chunk.step, chunk.steps))
    spe = batching.steps_per_epoch(n, batch, remainder)
    assert sum(s for _, s in steps) == 2 * spe
    assert [s for s, _ in steps] == list(np.cumsum([0] + [s for _, s in steps])[:-1])
    data_key = jax.random.PRNGKey(7)
    for epoch in (0, 1):
        # The device path's epoch: the same examples, each once.
        expected = batching.epoch_batches(jax.random.fold_in(data_key, epoch), n, batch, remainder)
        assert sorted(seen[epoch]) == sorted(np.concatenate([b.ravel() for b in expected]))
        assert len(set(seen[epoch])) == (n if remainder == "keep" else n - n % batch)


def per_step(chunks) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{global step: (images, labels)} of every step the chunks hold."""
    out = {}
    for c in chunks:
        for s in range(c.steps):
            out[c.step + s] = (np.asarray(c.images[s]), np.asarray(c.labels[s]))
    return out


@pytest.mark.parametrize("restart", [10, 9])  # a chunk boundary, and any step, mid-epoch 1
def test_resume_mid_epoch_reads_the_same_remaining_batches(both, restart):
    _, streamed = both
    with train_stream(streamed).chunks() as chunks:
        full = per_step(chunks)
    assert sorted(full) == list(range(18))  # 3 epochs of 6 steps
    saved = json.loads(json.dumps(train_stream(streamed).state(restart)))  # through JSON
    assert (saved["epoch"], saved["position"], saved["step"]) == (1, restart - 6, restart)
    fresh = train_stream(streamed)
    fresh.check_state(saved, restart)
    with fresh.chunks(restart) as chunks:
        starts = []
        rest = per_step(c for c in chunks if not starts.append(c.step))
    # Chunks end where the uninterrupted run's end (every 4 steps of an epoch, and its end).
    assert starts == ([10, 12, 16] if restart == 10 else [9, 10, 12, 16])
    assert sorted(rest) == list(range(restart, 18))
    for step, (images, labels) in rest.items():
        np.testing.assert_array_equal(images, full[step][0])
        np.testing.assert_array_equal(labels, full[step][1])


def test_check_state_refuses_another_plan(both):
    _, streamed = both
    saved = train_stream(streamed).state(5)
    with pytest.raises(ValueError, match=r"batch_size: saved 12, now 8") as err:
        train_stream(streamed, batch_size=8).check_state(saved, 5)
    assert "same data config" in str(err.value)
    with pytest.raises(ValueError, match=r"data_key"):
        train_stream(streamed, data_key=jax.random.PRNGKey(8)).check_state(saved, 5)
    with pytest.raises(ValueError, match=r"step: saved 5, now 6"):
        train_stream(streamed).check_state(saved, 6)
    other = {**saved, "process_count": 4}  # another number of hosts reads the same batches
    train_stream(streamed).check_state(other, 5)


@pytest.mark.slow
def test_streamed_training_equals_device_training_and_resumes(both):
    """Same parameters, bit for bit: device gather, stream, and stream killed mid-epoch."""
    device, streamed = both
    model = models.create("simple_cnn", num_classes=3, widths=(8,), dense=16)
    steps = make_steps(model, optax.sgd(0.05, momentum=0.9), input_shape=(8, 8, 3), augment=True)
    init_key, data_key, train_key = jax.random.split(jax.random.PRNGKey(3), 3)
    loader = train_stream(streamed, data_key=data_key, num_epochs=2, chunk=3)  # one shape

    train_chunk, train_batches = jax.jit(steps.train_chunk), jax.jit(steps.train_batches)
    alive = jnp.asarray(True)
    state = steps.init(init_key, train_key)
    images, labels = jnp.asarray(device.train.images), jnp.asarray(device.train.labels)
    for plan in loader.plans():
        state, _, _ = train_chunk(state, alive, images, labels, jnp.asarray(plan.rows))
    on_device = tree_sha256(state.params)

    def run(state, start, stop=None):
        again = train_stream(streamed, data_key=data_key, num_epochs=2, chunk=3)
        with again.chunks(start) as chunks:
            for chunk in chunks:
                if chunk.step == stop:
                    return state, chunk.step
                state, _, _ = train_batches(state, alive, chunk.images, chunk.labels)
        return state, None

    streamed_state, _ = run(steps.init(init_key, train_key), 0)
    assert tree_sha256(streamed_state.params) == on_device

    first, at = run(steps.init(init_key, train_key), 0, stop=3)  # killed after 3 of 6 steps
    saved = json.loads(json.dumps(loader.state(at)))
    restored = jax.tree_util.tree_map(lambda x: jnp.array(np.asarray(x)), first)
    again = train_stream(streamed, data_key=data_key, num_epochs=2, chunk=3)
    again.check_state(saved, int(restored.step))
    resumed, _ = run(restored, saved["step"])
    assert int(resumed.step) == 12
    assert tree_sha256(resumed.params) == on_device


def test_host_augmentation_is_independent_of_how_the_batch_is_cut(both):
    _, streamed = both
    seed = stream.seed_of(jax.random.PRNGKey(7))
    images, _ = streamed.train.read(np.arange(BATCH))
    whole = augmentation.augment_host(
        images, seed=seed, step=5, columns=np.arange(BATCH), batch_size=BATCH
    )
    half = augmentation.augment_host(
        images[6:], seed=seed, step=5, columns=np.arange(6, BATCH), batch_size=BATCH
    )
    np.testing.assert_array_equal(half, whole[6:])
    # A crop of the zero-padded image: some rows or columns at the border are zero
    # (the training mean), and every image keeps its own pixels otherwise.
    assert whole.shape == images.shape
    assert not np.array_equal(whole, images)
    other_step = augmentation.augment_host(
        images, seed=seed, step=6, columns=np.arange(BATCH), batch_size=BATCH
    )
    assert not np.array_equal(other_step, whole)
    # Through the loader: the same as augmenting the device path's batch by hand.
    loader = train_stream(streamed, augment_seed=seed, num_epochs=1)
    with loader.chunks() as chunks:
        chunk = next(iter(chunks))
    rows = chunk.plan.rows
    for s in range(chunk.steps):
        raw, _ = streamed.train.read(rows[s])
        want = augmentation.augment_host(
            raw, seed=seed, step=s, columns=np.arange(BATCH), batch_size=BATCH
        )
        np.testing.assert_array_equal(np.asarray(chunk.images[s]), want)


def test_augment_host_is_a_padded_crop_maybe_flipped():
    image = np.arange(1, 37, dtype=np.float32).reshape(1, 6, 6, 1)  # distinct, nonzero
    padded = np.pad(image[0, ..., 0], 2)

    def candidates():
        for dy in range(5):
            for dx in range(5):
                crop = padded[dy : dy + 6, dx : dx + 6]
                yield (dy, dx, False), crop
                yield (dy, dx, True), crop[:, ::-1]

    seen = []
    for step in range(60):
        out = augmentation.augment_host(
            image, seed=(0,), step=step, columns=np.arange(1), batch_size=1, pad=2
        )
        assert out.shape == (1, 6, 6, 1) and out.dtype == np.float32
        matches = [how for how, crop in candidates() if np.array_equal(out[0, ..., 0], crop)]
        assert matches, f"step {step}: not a crop of the padded image"
        seen.append(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10  # offsets in 0..4 both ways


def test_eval_chunks_cover_the_split_once_padded_and_masked(both):
    device, streamed = both
    got_images, got_labels, got_mask = [], [], []
    with stream.eval_chunks(streamed.val, batch_size=10, mesh=make_mesh(), chunk=2) as chunks:
        for images, labels, mask in chunks:
            got_images.append(np.asarray(images).reshape(-1, 8, 8, 3))
            got_labels.append(np.asarray(labels).ravel())
            got_mask.append(np.asarray(mask).ravel())
    images, labels, mask = map(np.concatenate, (got_images, got_labels, got_mask))
    assert len(mask) == 30 and mask.sum() == 24  # 3 batches of 10 for 24 examples
    np.testing.assert_array_equal(images[:24], device.val.images)
    np.testing.assert_array_equal(labels[:24], device.val.labels)
    np.testing.assert_array_equal(images[24:], np.repeat(device.val.images[-1:], 6, axis=0))
    assert mask[24:].sum() == 0


def test_an_error_in_the_reader_reaches_the_loop(both):
    _, streamed = both
    broken = stream_splits.RecordSplit(
        streamed.train.reader,
        streamed.train.records + 10_000,  # no such records
        None,
        streamed.train.table,
    )
    loader = stream.TrainStream(
        broken,
        data_key=jax.random.PRNGKey(0),
        batch_size=BATCH,
        remainder="drop",
        chunk=2,
        num_epochs=1,
        mesh=make_mesh(),
    )
    with pytest.raises(IndexError, match="record ids outside"), loader.chunks() as chunks:
        next(iter(chunks))


# ------------------------------------------------------------------ device or stream


def test_auto_chooses_device_when_the_splits_fit_and_says_why(folder, cache):
    choice, reason = loader_choice.choose_loader(data_config(folder, cache, loader="auto"))
    need = 96 * (8 * 8 * 3 * 4 + 4) / 2**20  # train + val, float32 pixels + labels
    assert choice == "device"
    assert f"train+val splits {need:,.0f} MiB" in reason and "96 examples" in reason
    assert "data.device_fraction" in reason
    tiny = data_config(folder, cache, loader="auto", device_fraction=1e-12)
    choice, reason = loader_choice.choose_loader(tiny)
    assert choice == "stream" and " > 0 MiB" in reason
    assert loader_choice.choose_loader(data_config(folder, cache, loader="stream")) == (
        "stream",
        "data.loader='stream'",
    )
    digits = get_base_config().data
    choice, reason = loader_choice.choose_loader(digits)
    assert choice == "device" and "digits is not stored as array_record" in reason


def test_device_memory_budget_on_cpu_is_host_ram():
    budget, what = loader_choice.device_memory_budget(0.5)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < budget <= total // 2
    assert "host RAM (CPU backend)" in what and what.startswith("0.5 of ")


def test_stream_needs_array_record_files():
    with pytest.raises(ValueError, match="not stored as array_record") as err:
        data.open_records("digits")
    assert "cifar10, fashion_mnist, mnist or folder:PATH" in str(err.value)


# ------------------------------------------------------------------ two hosts


CHILD = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from research.config import get_base_config
from research.data import stream, stream_splits
from research.train.steps import make_mesh

cfg = get_base_config().data
cfg.name, cfg.cache_dir, cfg.val_size = sys.argv[3], sys.argv[4], 0.25
splits = stream_splits.open_splits(cfg)
mesh = make_mesh()
loader = stream.TrainStream(splits.train, data_key=jax.random.PRNGKey(7), batch_size=12,
    remainder="drop", chunk=4, num_epochs=2, mesh=mesh)
loader.reader.read_log = []
step_sums = jax.jit(lambda x: x.sum(axis=(1, 2, 3, 4)), out_shardings=NamedSharding(mesh, P()))
out = []
with loader.chunks() as chunks:
    for chunk in chunks:
        out.append({"epoch": chunk.plan.epoch, "rows": chunk.plan.rows.tolist(),
                    "sums": np.asarray(step_sums(chunk.images)).tolist()})
for record, read in zip(out, loader.reader.read_log, strict=True):
    record["read"] = read.tolist()
with open(sys.argv[5], "w") as f:
    json.dump({"devices": jax.device_count(), "chunks": out}, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_covering_each_epoch(both, folder, cache, tmp_path):
    device, _ = both  # the dataset is built and its statistics cached before the children start
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    address = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), address, str(i), f"folder:{folder}", str(cache), outs[i]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    results = [json.loads(o.read_text()) for o in outs]
    assert [r["devices"] for r in results] == [2, 2]
    chunks0, chunks1 = results[0]["chunks"], results[1]["chunks"]
    assert [c["rows"] for c in chunks0] == [c["rows"] for c in chunks1]  # one global plan
    for epoch in (0, 1):
        reads = [
            np.concatenate([np.ravel(c["read"]) for c in chunks if c["epoch"] == epoch])
            for chunks in (chunks0, chunks1)
        ]
        assert len(reads[0]) == len(reads[1]) == 36  # half of each batch each
        assert not set(reads[0]) & set(reads[1])  # disjoint
        assert sorted(np.concatenate(reads)) == list(range(72))  # the split, once
    for c0, c1 in zip(chunks0, chunks1, strict=True):
        # Row halves: process 0 the first 6 of each batch of 12, process 1 the rest.
        np.testing.assert_array_equal(np.asarray(c0["read"]), np.asarray(c0["rows"])[:, :6])
        np.testing.assert_array_equal(np.asarray(c1["read"]), np.asarray(c1["rows"])[:, 6:])
        # The assembled global batch is the device path's batch (summed across processes).
        want = device.train.images[np.asarray(c0["rows"])].sum(axis=(1, 2, 3, 4), dtype=np.float64)
        np.testing.assert_allclose(c0["sums"], want, rtol=1e-4, atol=1e-3)
        assert c0["sums"] == c1["sums"]


# ------------------------------------------------------------------ config and end to end


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("loader", "disk", "must be 'device', 'stream' or 'auto'"),
        ("device_fraction", 0.0, "must be a fraction in (0, 1]"),
        ("augment_on", "host", "'host' needs data.loader='stream'"),
        ("augment_on", "gpu", "must be 'device' or 'host'"),
        ("image_size", -1, "must be an integer >= 0"),
        ("loader", "stream", "'stream' reads array_record files: cifar10, fashion_mnist, mnist"),
        ("workers", -1, "must be an integer >= 0"),
        ("prefetch", 0, "must be an integer >= 1"),
    ],
)
def test_bad_data_fields_are_named(field, value, message):
    from research import config as config_lib

    config = get_base_config()  # digits
    config.data[field] = value
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        config_lib.validate(config)
    assert f"config.data.{field}={value!r}" in str(err.value)


@pytest.mark.slow  # a whole run of the engine (~20 s on the loaded 2-core machine)
def test_folder_dataset_trains_end_to_end(tmp_path):
    from PIL import Image

    from research import train

    rng = np.random.default_rng(0)
    root = tmp_path / "shades"
    for label, (low, high) in {"dark": (0, 90), "light": (165, 256)}.items():
        (root / "train" / label).mkdir(parents=True)
        for i in range(30):
            pixels = rng.integers(low, high, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / label / f"{i}.png")
    config = get_base_config()
    config.data.name = f"folder:{root}"
    config.data.cache_dir = str(tmp_path / "cache")
    config.model.name = "simple_cnn"
    config.model.overrides = ml_collections.ConfigDict({"widths": (8,), "dense": 16})
    config.batch_size, config.num_epochs, config.log_every_steps = 8, 4, 0
    config.optim.name, config.optim.learning_rate = "adam", 1e-2
    config.progress = False
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["train_examples"] == 43 and results["test_examples"] == 12  # 48 - 5 val
    assert results["test_accuracy"] == 1.0
    assert any("no test/ folder: 12 of 60" in n for n in results["data_notes"])


def test_host_augmentation_is_not_applied_again_in_the_step(tmp_path):
    """data.augment_on="host": the stream's workers augment, so the step must not; its
    train_batches is then the same function as a run's without augmentation."""
    from research.config import get_base_config
    from research.train import loop
    from tests.helpers.images import write_image_folder

    write_image_folder(tmp_path / "photos", per_class=8)

    def built(augment: bool):
        c = get_base_config()
        c.model.name = "simple_cnn"
        c.model.overrides = {"widths": (4,), "dense": 8}
        c.data.name = f"folder:{tmp_path / 'photos'}"
        c.data.cache_dir = str(tmp_path / "cache")
        c.data.loader = "stream"
        c.data.augment = augment
        c.data.augment_on = "host"
        c.batch_size = 4
        return loop.build_run(c)

    host, plain = built(True), built(False)
    state = jax.jit(plain.steps.init)(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    images, labels = host.splits.train.read(np.arange(8))
    images, labels = images.reshape(2, 4, 8, 8, 3), labels.reshape(2, 4)
    alive = jnp.asarray(True)
    a, _, _ = jax.jit(host.steps.train_batches)(state, alive, images, labels)
    b, _, _ = jax.jit(plain.steps.train_batches)(state, alive, images, labels)
    assert tree_sha256(a.params) == tree_sha256(b.params)
