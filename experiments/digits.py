"""The quick start: a small CNN on the embedded `digits` data (no download).

Question: does the whole pipeline (data, jit-compiled steps, checkpoints,
results) work on this machine, end to end, in under a minute?
Command: python scripts/train.py --config experiments/digits.py --workdir runs/digits
Expected: test accuracy >= 0.95 (typically ~0.97-0.99) on the 359 held-out digits.
Run time: ~15-30 s on a 2-core CPU, most of it compilation.
"""

from research.config import get_base_config


def get_config():
    config = get_base_config()
    config.model.name = "simple_cnn"
    config.data.name = "digits"
    config.batch_size = 64
    config.num_epochs = 15
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3  # epsilon
    config.log_every_steps = 10
    return config
