"""Looking inside a CNN: classic kernels, the kernels LeNet-5 learns, and its feature maps.

Question: what do the lectures' hand-made kernels (vertical/horizontal edge,
Sobel, Scharr, line detectors) pick out of a real digit and a real photo, and
what does a trained LeNet-5 learn in their place? One LeNet-5 is trained on
MNIST (one trial, seed 0, through the sweep machinery); the report then draws

  classic_filters.png  each classic kernel applied (research.layers.conv2d) to an
                       MNIST test digit and a CIFAR-10 test image in grayscale
  learned_kernels.png  the six 5x5 kernels of LeNet-5's first convolution
  feature_maps.png     conv1 (6 maps, 28x28) and conv2 (16 maps, 10x10) for one test digit

and summary.md: the model's test accuracy and, per classic filter, the mean
absolute response on each image (research/studies/filters.py).

Command (small: 6,000 training images, 15 epochs, to the validation plateau):
  python scripts/sweep.py --config experiments/filters_and_features.py:small \
      --workdir runs/filters_and_features_small
Command (full, for a GPU: all 55,000 training images, 12 epochs):
  python scripts/sweep.py --config experiments/filters_and_features.py:full \
      --workdir runs/filters_and_features

Expected: the x-kernels (vertical edge, Sobel x, Scharr x) light up the
vertical strokes, the y-kernels the horizontal ones; Scharr responds ~16/4 = 4x
as strongly as Sobel (weights 3-10-3 vs 1-2-1) with the same pattern. The
learned first-layer kernels are smooth oriented edge and blob detectors, and
the conv1 maps look like filtered copies of the digit while conv2's are coarser
part detectors. Test accuracy: 0.975 (small, measured; validation accuracy at
its plateau), ~0.99 (full).
Run time on a 2-core CPU: small 22 s wall with nothing else running (24 s of CPU
time; docs/results.md); full ~15-25 min (not yet measured).
"""

from research.sweep import get_sweep_config


def get_config(arg: str = "small"):
    config = get_sweep_config()
    config.sweep.report = "research.studies.filters:report"
    config.model.name = "lenet5"
    config.model.overrides.padding = 2  # 28x28 MNIST -> the paper's 28x28 C1 maps
    config.data.name = "mnist"
    config.optim.name = "adam"
    config.optim.learning_rate = 2e-3  # epsilon
    config.progress = False
    config.sweep.parallel = "sequential"  # one trial
    if arg == "small":
        config.data.val_size = 1000  # validation images carved from the training images
        config.data.train_size = 6000  # training images kept (a fixed subset)
        config.batch_size = 128  # 46 steps per epoch (the remainder is dropped)
        config.num_epochs = 15  # validation accuracy levels off at ~0.98 by epoch ~10
        config.log_every_steps = 0  # one log line per epoch
    elif arg == "full":
        config.data.val_size = 5000
        config.batch_size = 128
        config.num_epochs = 12
        config.optim.schedule = "cosine"
        config.log_every_steps = 100
    else:
        raise ValueError(f"filters_and_features.py:{arg}: unknown variant; use small or full")
    config.sweep.axes = {"seed": (0,)}
    return config
