"""Real validation curves that the plateau and table tests share."""

from __future__ import annotations

# Real validation curves (accuracy at each epoch end, 1,000 validation images), from
# exploratory runs of this branch: LeNet-5's family on MNIST with 2,000 training images
# and 20 epochs of batch 64 (compare_architectures), and finetune_lower_lr on 100
# examples of digits 5-9, 20 epochs of batch 25 (compare_freezing's old small variant).
RESNET18_MNIST = [0.652, 0.853, 0.916, 0.922, 0.934, 0.938, 0.935, 0.936, 0.937, 0.94]
RESNET18_MNIST += [0.94, 0.945, 0.944, 0.942, 0.942, 0.943, 0.944, 0.937, 0.944, 0.939]
LENET5_MNIST = [0.806, 0.896, 0.91, 0.919, 0.942, 0.931, 0.949, 0.946, 0.947, 0.956]
LENET5_MNIST += [0.953, 0.946, 0.946, 0.955, 0.95, 0.956, 0.962, 0.961, 0.958, 0.96]
FINETUNE_LOWER_LR_100 = [0.374, 0.383, 0.404, 0.426, 0.442, 0.456, 0.479, 0.521, 0.554, 0.587]
FINETUNE_LOWER_LR_100 += [0.611, 0.638, 0.66, 0.687, 0.707, 0.73, 0.738, 0.751, 0.761, 0.768]


def curve(values):
    """Epoch (from 1) -> value, as the sweep storage holds a trial's validation curve."""
    return {epoch: v for epoch, v in enumerate(values, start=1)}
