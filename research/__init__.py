"""research: a JAX/Flax codebase for convolutional neural networks.

Subpackages: `layers` (pure conv/pool functions and Flax modules), `models` (the
zoo), `data`, `optim`, `train`, `sweep`, `viz`. See README.md.
"""

__version__ = "0.1.0"
