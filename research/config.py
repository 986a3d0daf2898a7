"""The base config: every field an experiment can set, with its default and meaning.

An experiment file (`experiments/<study>.py`) defines `get_config()` that starts
from `get_base_config()` and sets only what differs. Field names are the same in
every experiment, so `--config.optim.learning_rate=0.1` means the same thing
everywhere. Defaults live here and nowhere else.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """Returns the base config with every field at its default."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # one integer; every random key of the run is split from it
    c.batch_size = 128  # examples per optimizer step (global, over all devices and hosts)
    c.num_epochs = 10  # passes over the training split
    c.eval_batch_size = 1000  # examples per evaluation step (no effect on results)
    c.log_every_steps = 50  # host sync + metrics.jsonl line every this many steps (0: per epoch)
    c.checkpoint_every_epochs = 1  # orbax checkpoint cadence; 0 disables periodic checkpoints
    c.keep_checkpoints = 2  # how many recent checkpoints to keep
    c.progress = True  # a tqdm progress bar on stderr
    c.deterministic = True  # XLA deterministic ops on GPU (CPU is deterministic anyway)
    c.compute_dtype = "float32"  # "float32" or "bfloat16": activations/matmuls; params stay float32

    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet5"  # a name from research.models.names()
    # Keyword overrides passed to the model constructor, e.g. {"cifar_stem": True}.
    c.model.overrides = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | mnist | fashion_mnist | cifar10 | tfds:NAME
    c.data.data_dir = ""  # folder laid out like shared/data; "" = $RESEARCH_DATA_DIR or download
    c.data.cache_dir = ""  # prepared TFDS files; "" = $RESEARCH_CACHE_DIR or ~/.cache/research
    c.data.val_size = 0.1  # validation carved from train: a fraction (<1) or a count (>=1)
    c.data.train_size = 0  # keep only this many training examples after the split (0: all)
    c.data.classes = ()  # keep only these labels, relabelled 0..k-1 in this order (): all
    c.data.augment = False  # random crop (pad 4) + horizontal flip, on device (CIFAR-style)
    c.data.remainder = "drop"  # last partial training batch: "drop" it, or "keep" it (smaller)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | momentum | nesterov | adagrad | rmsprop | adam
    c.optim.learning_rate = 0.1  # epsilon in the lecture's update rules
    c.optim.momentum = 0.9  # alpha: velocity decay for momentum and nesterov
    c.optim.decay = 0.9  # rho: RMSProp's moving-average decay of squared gradients
    c.optim.b1 = 0.9  # rho_1: Adam's first-moment decay
    c.optim.b2 = 0.999  # rho_2: Adam's second-moment decay
    # delta: the small constant of AdaGrad/RMSProp/Adam. A negative value means the
    # optimizer's own default from the lecture's source (1e-7 AdaGrad, 1e-6 RMSProp, 1e-8 Adam).
    c.optim.eps = -1.0
    c.optim.weight_decay = 0.0  # lambda: L2 penalty lambda/2 * sum(W^2) over weights, not biases
    c.optim.schedule = "constant"  # constant | step | cosine | warmup_cosine
    c.optim.warmup_epochs = 0.0  # linear warmup length for warmup_cosine (epochs)
    c.optim.step_every_epochs = 0.0  # step schedule: multiply by step_factor every this many
    c.optim.step_factor = 0.1  # step schedule multiplier
    c.optim.clip_norm = 0.0  # global gradient-norm clipping threshold (0: off)
    return c
