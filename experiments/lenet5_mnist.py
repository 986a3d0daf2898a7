"""LeNet-5 on MNIST (LeCun et al. 1998 report 0.95% test error for LeNet-5).

Question: does our LeNet-5 reach the paper's accuracy on the real MNIST files?
Command: python scripts/train.py --config experiments/lenet5_mnist.py --workdir runs/lenet5_mnist
  (MNIST is read from $RESEARCH_DATA_DIR, a folder laid out like shared/data;
  on a connected machine without it, the original files are downloaded.)
Expected: test accuracy >= 0.990.
Run time: see README (measured on a 2-core CPU).
"""

from research.config import get_base_config


def get_config():
    config = get_base_config()
    config.model.name = "lenet5"
    config.model.overrides.padding = 2  # 28x28 MNIST -> the paper's 28x28 C1 maps
    config.data.name = "mnist"
    config.data.val_size = 5000  # validation images carved from the 60,000 training images
    config.batch_size = 128
    config.num_epochs = 12
    config.optim.name = "adam"
    config.optim.learning_rate = 2e-3  # epsilon
    config.optim.schedule = "cosine"
    config.log_every_steps = 100
    return config
