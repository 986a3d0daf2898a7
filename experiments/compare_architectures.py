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

Expected: the convolutional models reach the MLP's accuracy with a fraction
of its parameters (weight sharing) at several times its FLOPs; with enough
training (full variant) they pull ahead on CIFAR-10. The small variant trains
on 2,000 images for 3 epochs (93 steps), so its deep, narrow models are not at
their best: read it for parameters, FLOPs and throughput and for the shallow
models' accuracies. Measured (small): MNIST mlp 0.895 (235k parameters), lenet5
0.916 (61.7k), lecture_cnn 0.933, resnet18 0.920; CIFAR-10 mlp 0.367 (821k),
lenet5 0.362 (62k), lecture_cnn 0.378; VGG11 and GoogLeNet far from converged.
Run time on a 2-core CPU: small ~55 min (42 trials, shared CPU at load 5-6;
GoogLeNet's first compile ~6 min, Xception's ~1-2 min; seeds, and MNIST and
Fashion-MNIST, share compiled programs). Full: hours, on a GPU.
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
