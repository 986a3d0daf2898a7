"""Why convolution instead of dense layers: MLP vs LeNet-5 vs CNNs, in numbers.

Question: on MNIST, Fashion-MNIST and CIFAR-10, what does each architecture buy
in test accuracy, and what does it cost in parameters, FLOPs per example and
training throughput? An MLP has the most parameters per FLOP (every pixel wired
to every unit); convolutions share weights across positions, so the CNNs spend
their FLOPs on few parameters.

Command (small: CPU-sized subsets and model widths, 7 models x 3 datasets x 2 seeds = 42 trials):
  python scripts/sweep.py --config experiments/compare_architectures.py:small \
      --workdir runs/compare_architectures_small
Command (full, for a GPU: full datasets, 10 epochs, paper-shaped small-input models, 3 seeds):
  python scripts/sweep.py --config experiments/compare_architectures.py:full \
      --workdir runs/compare_architectures

Expected: on MNIST every model is within a few points (the dense MLP is already
~0.97 at full size), while it has ~4x LeNet-5's parameters at ~1/2 of its FLOPs;
on CIFAR-10 the convolutional models pull clearly ahead of the MLP, which has
the most parameters of all. The small variant trains on 2,000 images for 2
epochs, so its accuracies are low and the deep models (few steps, narrow) are
not at their best: read it for parameters, FLOPs and throughput, and for the
MLP-vs-CNN gap on CIFAR-10.
Run time on a 2-core CPU: measured on a *shared* 2-core CPU (load ~10, so each
process had ~1/5 of it): the first 10 trials (MNIST: mlp, lenet5, lecture_cnn,
vgg11, resnet18, 2 seeds each) took 25 min: mlp 8 s, lenet5 26 s, vgg11 90 s,
lecture_cnn 164 s, resnet18 269 s per trial, compilation included. The whole
small variant is ~1.5-2 h under that load (expect ~5x less on an idle 2-core
machine; not measured). Full: hours, on a GPU.
The report (research/sweep/study_architectures.py) writes summary.md/.csv,
trials.csv and accuracy_vs_flops.png.
"""

from research.sweep import get_sweep_config

DATASETS = ("mnist", "fashion_mnist", "cifar10")


def _models(small: bool) -> dict[str, dict]:
    """Model name -> constructor overrides (the zoo's small-input settings, narrowed on CPU)."""
    if small:
        return {
            "mlp": {},
            "lenet5": {},  # padding set per dataset below
            "lecture_cnn": {},
            # No dropout and 1/8 width: at 1/16 width with dropout 0.5 VGG11 stayed at
            # chance after 62 steps.
            "vgg11": {
                "pool_padding": "SAME",
                "pooled_size": None,
                "fc_width": 128,
                "width_multiplier": 0.125,
                "dropout": 0.0,
            },
            "resnet18": {"cifar_stem": True, "width": 8},
            "googlenet": {"small_input": True, "width_multiplier": 0.0625},
            # ~100 steps: Keras's BatchNorm momentum 0.99 leaves the running statistics
            # ~40% at their initial values, and evaluation at chance (train acc 0.92).
            "xception": {
                "small_input": True,
                "middle_blocks": 1,
                "width_multiplier": 0.0625,
                "bn_momentum": 0.9,
            },
        }
    return {
        "mlp": {},
        "lenet5": {},
        "lecture_cnn": {},
        "vgg11": {
            "pool_padding": "SAME",
            "pooled_size": None,
            "fc_width": 512,
            "width_multiplier": 0.25,
        },
        "resnet18": {"cifar_stem": True, "width": 16},
        "googlenet": {"small_input": True, "width_multiplier": 0.25},
        "xception": {"small_input": True, "middle_blocks": 2, "width_multiplier": 0.125},
    }


def _grids(small: bool):
    grids = []
    for dataset in DATASETS:
        for name, overrides in _models(small).items():
            overrides = dict(overrides)
            if name == "lenet5":  # 28x28 inputs padded to the paper's 32x32 C1 maps
                overrides["padding"] = 0 if dataset == "cifar10" else 2
            grids.append(
                {"data.name": (dataset,), "model.name": (name,), "model.overrides": (overrides,)}
            )
    return tuple(grids)


def get_config(arg: str = "small"):
    config = get_sweep_config()
    config.sweep.report = "architectures"
    config.optim.name = "adam"  # one optimizer that works for every model without tuning
    config.optim.learning_rate = 1e-3  # epsilon
    config.optim.schedule = "constant"
    if arg == "small":
        config.data.train_size = 2000  # training images kept after the split
        config.data.val_size = 500  # validation images carved from train
        config.batch_size = 64  # 31 steps per epoch
        config.num_epochs = 3
        config.log_every_steps = 0  # log once per epoch (fewer host syncs)
        config.sweep.grids = _grids(small=True)
        config.sweep.axes = {"seed": (0, 1)}
    elif arg == "full":
        config.data.val_size = 5000
        config.batch_size = 128
        config.num_epochs = 10
        config.log_every_steps = 100
        config.sweep.grids = _grids(small=False)
        config.sweep.axes = {"seed": (0, 1, 2)}
    else:
        raise ValueError(f"compare_architectures.py:{arg}: unknown variant; use small or full")
    config.sweep.parallel = "sequential"  # different models: nothing to vmap but seeds
    config.checkpoint_every_epochs = 0  # the last epoch's checkpoint only
    config.progress = False
    return config
