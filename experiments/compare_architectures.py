"""Why convolution instead of dense layers: MLP vs LeNet-5 vs CNNs, in numbers.

Question: on MNIST, Fashion-MNIST and CIFAR-10, what does each architecture buy
in test accuracy, and what does it cost in parameters, FLOPs per example and
training throughput? An MLP has the most parameters per FLOP (every pixel wired
to every unit); convolutions share weights across positions, so the CNNs spend
their FLOPs on few parameters.

Command (small: MNIST only, 5 models trained to their plateau x 2 seeds = 10 trials):
  python scripts/sweep.py --config experiments/compare_architectures.py:small \
      --workdir runs/compare_architectures_small
Command (full, for a GPU: 3 datasets x 7 models, full data, 10 epochs, paper-shaped
small-input models, 3 seeds = 63 trials):
  python scripts/sweep.py --config experiments/compare_architectures.py:full \
      --workdir runs/compare_architectures

Expected: the convolutional models reach the MLP's accuracy with a fraction
of its parameters (weight sharing) at several times its FLOPs; with enough
training (full variant) they pull ahead on CIFAR-10. The small variant asks the
narrower question on MNIST alone, with every model trained to its plateau
(2,000 images, 20 epochs, 620 steps; rows still improving would be marked †):
VGG11 and GoogLeNet are left to `full`, since at widths a CPU trains in minutes
they were far from converged. Measured (small): mlp 0.925 (235k parameters),
lenet5 0.961 (61.7k), lecture_cnn 0.972 (539k, still improving: †),
resnet18 0.947 (176k), xception 0.912 (44.3k), the others at their plateau
(2 seeds: differences under about 1 pp are noise; the lecture CNN's mean has
moved by up to 1.1 pp between CPU convolutions that differ only in rounding).
Run time on a 2-core CPU: small 237 s wall with nothing else running (seeds
share compiled programs). Full: hours, on a GPU.
The report (research/studies/architectures.py) writes summary.md/.csv,
trials.csv and accuracy_vs_flops.png.
"""

from research.sweep import get_sweep_config

DATASETS = ("mnist", "fashion_mnist", "cifar10")  # full
SMALL_DATASETS = ("mnist",)  # small: one dataset, every model trained to its plateau


def _models(small: bool) -> dict[str, dict]:
    """Model name -> constructor overrides (the zoo's small-input settings, narrowed on CPU)."""
    if small:
        # The models that reach their plateau on 2,000 MNIST images within the CPU budget.
        # VGG11 (no BatchNorm) and GoogLeNet are left to `full`: at widths a CPU trains in
        # minutes they were still far from converged (VGG11 at 1/8 width: 0.61 on
        # Fashion-MNIST after 20 epochs and rising; GoogLeNet's first compile alone ~6 min).
        return {
            "mlp": {},
            "lenet5": {},  # padding set per dataset below
            "lecture_cnn": {},
            "resnet18": {"cifar_stem": True, "width": 8},
            # BatchNorm momentum 0.9, not Keras's 0.99: the running statistics keep
            # momentum**steps of their initial values, so with 0.99 evaluation lags training
            # by hundreds of steps (at chance after ~100 steps, train accuracy 0.92).
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
    for dataset in SMALL_DATASETS if small else DATASETS:
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
    config.sweep.report = "research.studies.architectures:report"
    config.optim.name = "adam"  # one optimizer that works for every model without tuning
    config.optim.learning_rate = 1e-3  # epsilon
    config.optim.schedule = "constant"
    if arg == "small":
        config.data.train_size = 2000  # training images kept after the split
        config.data.val_size = 1000  # validation images carved from train (the plateau's curve)
        config.batch_size = 64  # 31 steps per epoch
        config.num_epochs = 20  # 620 steps: every model's validation accuracy levels off by ~15
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
