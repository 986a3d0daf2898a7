"""LeNet-5 on MNIST (LeCun et al. 1998 report 0.95% test error for LeNet-5).

Question: does our LeNet-5 reach the paper's accuracy on the real MNIST files,
and in under a minute on a 2-core CPU?
Command: python scripts/train.py --config experiments/lenet5_mnist.py --workdir runs/lenet5_mnist
  (MNIST is read from $RESEARCH_DATA_DIR, a folder laid out like shared/data;
  on a connected machine without it, the original files are downloaded.)
Expected: test accuracy >= 0.990 for every seed (seeds 0-4: 0.9918, 0.9919,
  0.9914, 0.9912, 0.9921; mean 0.9917).
Run time: 6 epochs of 429 steps. On the shared 2-core CPU at load 8.5: 65 s
  wall, 35 s of CPU; with an empty compilation cache 84 s wall, 42 s of CPU
  (load 9). On 2 idle cores it should take about half that wall time (the
  table in docs/training.md is refreshed there).
"""

from research.config import get_base_config


def get_config():
    config = get_base_config()
    config.model.name = "lenet5"  # the paper's architecture, unchanged
    config.model.overrides.padding = 2  # 28x28 MNIST -> the paper's 28x28 C1 maps
    config.data.name = "mnist"
    config.data.val_size = 5000  # validation images carved from the 60,000 training images
    config.batch_size = 128
    config.num_epochs = 6
    config.optim.name = "adam"
    config.optim.learning_rate = 3e-3  # epsilon at the end of the warmup
    config.optim.schedule = "warmup_cosine"  # linear warmup, then cosine decay to 0
    config.optim.warmup_epochs = 0.5
    config.log_every_steps = 0  # one scanned chunk (and one compiled program) per epoch
    config.checkpoint_every_epochs = 0  # only the final checkpoint: the run is short
    return config
