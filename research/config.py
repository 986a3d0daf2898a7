"""The base config: every field an experiment can set, with its default and meaning.

An experiment file (`experiments/<study>.py`) defines `get_config()` that starts
from `get_base_config()` and sets only what differs. Field names are the same in
every experiment, so `--config.optim.learning_rate=0.1` means the same thing
everywhere. Defaults live here and nowhere else.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
    """Returns the base config with every field at its default."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # one integer; every random key of the run is split from it
    c.batch_size = 128  # examples per optimizer step (global, over all devices and hosts)
    c.num_epochs = 10  # passes over the training split
    # Share of the last epoch that is trained, in (0, 1]: num_epochs=10 with 0.9 trains
    # 9.9 epochs, 9 whole ones and ceil(0.9 x steps per epoch) steps of the tenth
    # (airbench94's count); schedules end with the cut epoch. 1.0: whole epochs.
    c.last_epoch_fraction = 1.0
    c.eval_batch_size = 1000  # examples per evaluation step (no effect on results)
    c.log_every_steps = 50  # host sync + metrics.jsonl line every this many steps (0: per epoch)
    c.checkpoint_every_epochs = 1  # orbax checkpoint cadence; 0 disables periodic checkpoints
    c.keep_checkpoints = 2  # how many recent checkpoints to keep
    # Also keep the checkpoint of the best epoch by this validation metric, beside the
    # latest ones (orbax's BestN policy; ties go to the later epoch): "" (off),
    # "val_accuracy" (highest) or "val_loss" (lowest). When on, a checkpoint is saved at
    # every epoch's end. `research.restore(workdir, which="best")` reads it.
    c.checkpoint_best = ""
    c.progress = True  # a tqdm progress bar on stderr
    c.deterministic = True  # bit-identical results on GPU too (CPU is deterministic anyway)
    # How `deterministic` holds on GPU (research/environment.py): "ops" uses
    # --xla_gpu_deterministic_ops, which switches XLA's autotuning off; "pinned" keeps
    # autotuning and pins its choices in a file that every later process loads.
    c.determinism = "ops"
    c.compute_dtype = "float32"  # "float32" or "bfloat16": activations/matmuls; params stay float32
    # Test-time augmentation of every evaluation (validation and test): the logits are a
    # weighted mean over views of each image (research.data.augmentation.TTA). "none"; "flip":
    # the image and its mirror, 1/2 each; "flip_translate": airbench94's, 1/4 each on
    # those two, 1/8 each on both shifted by one pixel up-left and down-right (reflect).
    c.eval_tta = "none"

    c.early_stopping = ml_collections.ConfigDict()
    # Stop a run (each trial of a group on its own) when this validation metric has not
    # improved for `patience` epochs: "" (off), "val_accuracy" or "val_loss". A stopped
    # run is still tested and checkpointed; results.json has `stopped_early`.
    c.early_stopping.metric = ""
    c.early_stopping.patience = 3  # epochs in a row without improvement before stopping
    # An improvement is a change by more than this, in the metric's units (0: any).
    c.early_stopping.min_delta = 0.0

    c.loss = ml_collections.ConfigDict()
    # alpha: classification targets (1 - alpha) * one_hot + alpha / classes (0: plain
    # cross-entropy; PyTorch's CrossEntropyLoss(label_smoothing=alpha)).
    c.loss.label_smoothing = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet5"  # a name from research.models.names()
    # Keyword overrides passed to the model constructor, e.g. {"cifar_stem": True}.
    c.model.overrides = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | mnist | fashion_mnist | cifar10 | folder:PATH | tfds:NAME
    c.data.data_dir = ""  # folder laid out like shared/data; "" = $RESEARCH_DATA_DIR or download
    c.data.cache_dir = ""  # prepared TFDS files; "" = $RESEARCH_CACHE_DIR or ~/.cache/research
    c.data.val_size = 0.1  # validation carved from train: a fraction (<1) or a count (>=1)
    c.data.split_seed = 0  # seed of the train/validation split (not `seed`: all runs share it)
    c.data.train_size = 0  # keep only this many training examples after the split (0: all)
    c.data.classes = ()  # keep only these labels, relabelled 0..k-1 in this order (): all
    c.data.augment = False  # augment training batches with data.augment_policy
    # What data.augment does (research.data.augmentation.AUGMENTATIONS): "crop_flip", random
    # crop after zero padding 4 + random horizontal flip (CIFAR-style); "airbench",
    # airbench94's alternating flip (each image mirrored in every other epoch) + random
    # translation by up to 2 pixels with reflect padding (needs data.loader="device").
    c.data.augment_policy = "crop_flip"
    # Where data.augment runs: "device" (inside the step: a streamed run then equals a
    # device run bit for bit) or "host" (numpy, in the stream loader's workers; other
    # random draws, so other numbers; needs data.loader="stream").
    c.data.augment_on = "device"
    c.data.remainder = "drop"  # last partial training batch: "drop" it, or "keep" it (smaller)
    # 0: keep the images' size (a folder:PATH's must all have one); N: scale each image to
    # cover N x N and crop the centre (bicubic), any dataset (data/tfds_builders/resize.py).
    c.data.image_size = 0
    # How batches reach the step. "device": the normalized splits live on the device
    # whole and each step gathers its batch there. "stream": each step's records are
    # read from the array_record files by host threads/workers and put on the device
    # ahead of time (research.data.stream); the same batches, bit for bit. "auto":
    # "device" when the prepared float32 train+val splits fit in data.device_fraction
    # of device memory (CPU backend: of host RAM), else "stream"; results.json says
    # which was chosen and why.
    c.data.loader = "auto"
    c.data.device_fraction = 0.25  # "auto": share of device memory the splits may take
    c.data.workers = 0  # "stream": grain worker processes reading batches (0: threads only)
    c.data.read_threads = 2  # "stream": threads reading batches in each process
    c.data.prefetch = 2  # "stream": chunks of steps read ahead and put on the device

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | momentum | nesterov | adagrad | rmsprop | adam
    c.optim.learning_rate = 0.1  # epsilon in the lecture's update rules
    c.optim.momentum = 0.9  # alpha: velocity decay for momentum and nesterov
    c.optim.decay = 0.9  # rho: RMSProp's moving-average decay of squared gradients
    c.optim.b1 = 0.9  # rho_1: Adam's first-moment decay
    c.optim.b2 = 0.999  # rho_2: Adam's second-moment decay
    # delta: the small constant of AdaGrad/RMSProp/Adam (>= 0). None (the default) means the
    # optimizer's own default from the lecture's source (1e-7 AdaGrad, 1e-6 RMSProp, 1e-8 Adam).
    c.optim.eps = config_dict.placeholder(float)
    c.optim.weight_decay = 0.0  # lambda: L2 penalty lambda/2 * sum(W^2) over weights, not biases
    # Which parameters weight_decay covers: "weights" (kernels: the lecture's L2) or "all"
    # (biases and BatchNorm parameters too, as PyTorch's SGD weight_decay does).
    c.optim.weight_decay_mask = "weights"
    c.optim.schedule = "constant"  # constant | step | cosine | warmup_cosine | warmup_linear
    c.optim.warmup_epochs = 0.0  # linear warmup length for warmup_cosine/warmup_linear (epochs)
    c.optim.step_every_epochs = 0.0  # step schedule: multiply by step_factor every this many
    c.optim.step_factor = 0.1  # step schedule multiplier
    c.optim.start_factor = 0.0  # warmup_linear: learning rate at step 0, times epsilon
    c.optim.end_factor = 0.0  # warmup_linear: learning rate at the last step, times epsilon
    # Lookahead (Zhang et al. 2019) with airbench94's EMA schedule: every k steps the
    # slow copy of the variables (parameters and BatchNorm statistics) moves towards the
    # trained ones, slow <- slow + (1 - d_t)(fast - slow) with d_t = decay * (t / T)^power
    # (t: steps taken, T: the run's steps), and training goes on from slow. After the last
    # step the variables are the slow copy (what is evaluated and saved). k = 0: off.
    c.optim.lookahead_every = 0
    c.optim.lookahead_decay = 0.95**5  # decay d at the end of the run
    c.optim.lookahead_power = 3.0  # d_t grows as (t / T)^power
    c.optim.clip_norm = 0.0  # global gradient-norm clipping threshold (0: off)

    c.transfer = ml_collections.ConfigDict()
    # Workdir of a finished run whose newest checkpoint gives the starting parameters
    # ("": random init). The head is replaced when the number of classes differs.
    c.transfer.pretrained = ""
    # scratch | linear_probe | freeze_first_n | finetune | finetune_lower_lr
    c.transfer.strategy = "scratch"
    c.transfer.n = 0  # freeze_first_n: convolution layers frozen, counted in network order
    c.transfer.backbone_lr_scale = 0.1  # finetune_lower_lr: backbone lr = this * head lr
    # BatchNorm in frozen layers: "frozen" = normalise with running averages and keep
    # them fixed (as in evaluation); "update" = keep using and updating batch statistics.
    c.transfer.batch_norm = "frozen"
    c.transfer.head = "head"  # name of the classification layer (the zoo's models: "head")
    # Re-initialise the head even when its shape matches: the target's labels mean
    # something else (e.g. digits 0-4 -> 5-9). A changed class count always resets it.
    c.transfer.reset_head = False
    # Explicit (regex, rule) pairs, first match wins; used instead of `strategy` when set.
    c.transfer.rules = ()
    return c


def _fail(field: str, value, valid: str):
    raise ValueError(f"config.{field}={value!r} is invalid: {valid}")


def _check_int(config, field: str, minimum: int):
    value = config
    for part in field.split("."):
        value = value[part]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(field, value, f"must be an integer >= {minimum}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field that can be checked without loading data.

    Raises:
      ValueError: naming the field (`config.<path>`), the value and what is valid.
    """
    # heavy (JAX, TFDS): experiment files build configs before setup_environment
    from research import data, models, optim
    from research.data import augmentation

    for field, minimum in (
        ("seed", 0),
        ("batch_size", 1),
        ("num_epochs", 1),
        ("eval_batch_size", 1),
        ("log_every_steps", 0),
        ("checkpoint_every_epochs", 0),
        ("keep_checkpoints", 1),
        ("data.split_seed", 0),
        ("data.train_size", 0),
        ("data.image_size", 0),
        ("data.workers", 0),
        ("data.read_threads", 0),
        ("data.prefetch", 1),
        ("optim.lookahead_every", 0),
        ("early_stopping.patience", 1),
    ):
        _check_int(config, field, minimum)
    if not 0 < config.last_epoch_fraction <= 1:
        _fail("last_epoch_fraction", config.last_epoch_fraction, "must be in (0, 1]")
    if config.eval_tta not in augmentation.TTA:
        _fail("eval_tta", config.eval_tta, f"one of {', '.join(augmentation.TTA.names())}")
    if not 0 <= config.loss.label_smoothing < 1:
        _fail("loss.label_smoothing", config.loss.label_smoothing, "must be in [0, 1)")
    validated = ("val_accuracy", "val_loss")
    for field, value in (
        ("checkpoint_best", config.checkpoint_best),
        ("early_stopping.metric", config.early_stopping.metric),
    ):
        if value not in ("", *validated):
            _fail(field, value, "must be '' (off), 'val_accuracy' or 'val_loss'")
        if value and not config.data.val_size:
            _fail(field, value, "needs a validation split: data.val_size > 0, or leave it ''")
    min_delta = config.early_stopping.min_delta
    if isinstance(min_delta, bool) or not isinstance(min_delta, int | float) or not min_delta >= 0:
        _fail("early_stopping.min_delta", min_delta, "must be a number >= 0")
    if config.determinism not in ("pinned", "ops"):
        _fail("determinism", config.determinism, "must be 'pinned' or 'ops'")
    if config.compute_dtype not in ("float32", "bfloat16"):
        _fail("compute_dtype", config.compute_dtype, "must be 'float32' or 'bfloat16'")
    if config.model.name not in models.MODELS:
        _fail("model.name", config.model.name, f"known models: {', '.join(models.names())}")
    d = config.data
    name = d.name
    prefixed = isinstance(name, str) and name.startswith(("tfds:", "folder:"))
    if not (name in data.DATASETS or prefixed):
        _fail(
            "data.name",
            name,
            f"known datasets: {', '.join(data.names())}, folder:PATH or tfds:NAME",
        )
    if d.remainder not in ("drop", "keep"):
        _fail("data.remainder", d.remainder, "must be 'drop' or 'keep'")
    if d.loader not in ("device", "stream", "auto"):
        _fail("data.loader", d.loader, "must be 'device', 'stream' or 'auto'")
    if d.loader == "stream" and not (name in data.BUILDERS or str(name).startswith("folder:")):
        streamable = ", ".join(sorted(data.BUILDERS))
        _fail(
            "data.loader", d.loader, f"'stream' reads array_record files: {streamable}, folder:PATH"
        )
    if not 0 < d.device_fraction <= 1:
        _fail("data.device_fraction", d.device_fraction, "must be a fraction in (0, 1]")
    if d.augment_on not in ("device", "host"):
        _fail("data.augment_on", d.augment_on, "must be 'device' or 'host'")
    if d.augment_on == "host" and d.loader != "stream":
        _fail("data.augment_on", d.augment_on, "'host' needs data.loader='stream'")
    if d.augment_policy not in augmentation.AUGMENTATIONS:
        _fail(
            "data.augment_policy", d.augment_policy, f"one of {augmentation.AUGMENTATIONS.names()}"
        )
    if d.augment and d.augment_on == "host" and d.augment_policy != "crop_flip":
        _fail("data.augment_policy", d.augment_policy, "host augmentation has only 'crop_flip'")
    if (
        d.augment
        and augmentation.AUGMENTATIONS.get(d.augment_policy).needs_rows
        and d.loader == "stream"
    ):
        _fail("data.augment_policy", d.augment_policy, "needs data.loader='device' (or 'auto')")
    if not config.data.val_size >= 0:
        _fail("data.val_size", config.data.val_size, "must be a fraction in [0, 1) or a count")
    if config.optim.name not in optim.OPTIMIZERS:
        _fail("optim.name", config.optim.name, f"known optimizers: {', '.join(optim.names())}")
    if not config.optim.learning_rate > 0:
        _fail("optim.learning_rate", config.optim.learning_rate, "must be > 0 (epsilon)")
    if config.optim.weight_decay_mask not in optim.WEIGHT_DECAY_MASKS:
        _fail("optim.weight_decay_mask", config.optim.weight_decay_mask, "'weights' or 'all'")
    if not 0 <= config.optim.lookahead_decay <= 1:
        _fail("optim.lookahead_decay", config.optim.lookahead_decay, "must be in [0, 1]")
    if not config.optim.lookahead_power >= 0:
        _fail("optim.lookahead_power", config.optim.lookahead_power, "must be >= 0")
    from research.optim import freeze  # heavy, as above

    t = config.transfer
    if t.strategy not in freeze.STRATEGIES:
        _fail("transfer.strategy", t.strategy, f"one of {', '.join(freeze.STRATEGIES)}")
    if t.batch_norm not in freeze.BATCH_NORM_POLICIES:
        _fail("transfer.batch_norm", t.batch_norm, f"one of {freeze.BATCH_NORM_POLICIES}")
    _check_int(config, "transfer.n", 0)
    if t.pretrained and not os.path.isdir(os.path.join(t.pretrained, "checkpoints")):
        _fail(
            "transfer.pretrained", t.pretrained, "the workdir of a finished run (no checkpoints/)"
        )
