"""The six lecture optimizers at speedrun scale: airbench94's network and recipe on CIFAR-10.

Question: on the airbench network with its recipe (augmentation, label
smoothing 0.2, 9.9 epochs, warmup-then-linear schedule, lookahead, L2), each
optimizer at its own best learning rate (chosen on validation), how do sgd,
momentum, nesterov, adagrad, rmsprop and adam compare in test accuracy, and
how many epochs and seconds does each need to reach 94% validation accuracy?

Command (GPU: 6 optimizers x 6 learning rates x 3 seeds = 108 trials, in six
vmapped groups of 18, one compiled program per optimizer, deterministic ops):
  python scripts/sweep.py --config experiments/optimizers_cifar10.py --workdir runs/opt_c10
CPU variant (the same code at a test-tier size: a narrow network on 1,024
images, 2 epochs, 6 optimizers x 2 learning rates x 2 seeds = 24 trials;
tests/test_experiments.py):
  python scripts/sweep.py --config experiments/optimizers_cifar10.py:cpu --workdir DIR

Setup: `cifar10_speedrun.recipe` (its docstring gives every value's source), with
  * a validation split of 5,000 of the 50,000 training images (the rate is
    chosen on it; the recipe itself trains on all 50,000 and has none), so 43
    steps per epoch and ceil(9.9 x 43) = 426 steps;
  * `optim.name` swept over the lecture's six rules (`research/optim/lecture.py`):
    α = 0.85 for momentum and Nesterov (airbench's), the lecture's defaults
    otherwise; every other recipe value is shared (schedule shape, lookahead,
    L2 λ = 0.0153/11.5 on every parameter, BatchNorm biases' gradient x 64);
  * per optimizer, 6 learning rates ε half a decade apart (x sqrt(10)), `GRIDS`,
    centred where that rule works on this network: Nesterov's at airbench's ε =
    1.5 (the mean-loss form of its PyTorch rate), heavy-ball momentum at the
    same, plain SGD at 1.5 / (1 - α) = 10 (the same step without momentum), and
    the adaptive rules at their usual ranges (AdaGrad 3e-3..0.3, RMSProp
    3e-5..3e-3, Adam 1e-4..3e-2). summary.md flags a best rate on a grid's edge: then the
    grid moves half a decade that way and the sweep runs again;
  * 3 seeds; `sweep.target_accuracy` 0.94 on validation.

Report (`research.studies.speedrun_optimizers`): summary.md (the generic table:
best ε on validation, test accuracy mean ± std over the seeds, steps to 94%),
and optimizers.md: per optimizer, test accuracy mean ± std, and the epochs and
seconds to 94% validation accuracy where its seeds reach it.

Expected: Nesterov at ε near 1.5 reaches about airbench94's accuracy (94% on
test with TTA; validation without TTA a little lower) and momentum close to it;
plain SGD, tuned, a little lower; the adaptive rules lower still under this
recipe, which was tuned for Nesterov SGD. Not yet measured: no GPU in the
session that wrote it (issue 25, item 4).

Run time (GPU, estimated, not measured): at most 10 minutes on one H100/H200
when vmapped airbench trials reach issue 25's scaling. Basis: one speedrun (476
steps, one trial) took 1.87 s, or 5.98 s with deterministic ops, on an H200
(commit bd3be74); a trial here runs 426 steps plus 10 validations, ~0.95 of
that. 108 trials one by one, deterministic, would take ~108 x 5.7 = 615 s; a
vmapped group of 18 at item 1's goal (16 trials >= 12x one trial) takes ~1.5
trials' time, so the six groups ~6 x 1.5 x 5.7 = 51 s, plus six compilations
(~30-60 s each, the vmapped program of one optimizer): 4-7 minutes. At the
first GPU run's LeNet-5 scaling (~2.2x for 16 trials) the training alone would
take ~280 s. CPU variant: about a minute of compiling and training on 2 cores.
"""

from experiments.cifar10_speedrun import recipe
from research.sweep import get_sweep_config

VARIANTS = ("full", "cpu")
SQRT10 = 10**0.5


def half_decades(centre: float, below: int = 3, above: int = 2) -> tuple[float, ...]:
    """`centre * sqrt(10)**k` for k = -below..above, to 3 significant digits."""
    return tuple(float(f"{centre * SQRT10**k:.3g}") for k in range(-below, above + 1))


# Learning rate ε per optimizer: 6 values, half a decade apart (see the docstring).
GRIDS = {
    "sgd": half_decades(10.0),  # 0.316 .. 31.6: Nesterov's step without momentum
    "momentum": half_decades(1.5),  # 0.0474 .. 4.74; α = 0.85
    "nesterov": half_decades(1.5),  # airbench94's ε = 1.5 (mean loss) at the 4th value
    "adagrad": half_decades(0.1),  # 0.00316 .. 0.316
    "rmsprop": half_decades(1e-3),  # 3.16e-5 .. 3.16e-3; ρ = 0.9
    "adam": half_decades(1e-3, below=2, above=3),  # 1e-4 .. 3.16e-2; ρ1 = 0.9, ρ2 = 0.999
}
CPU_GRID = slice(3, 5)  # the CPU variant: the centre value and the one above


def _grids(keep: slice = slice(None)) -> tuple:
    # Tuples, not lists: config_flags can override tuples from the command line.
    return tuple(
        {"optim.name": (name,), "optim.learning_rate": lrs[keep]} for name, lrs in GRIDS.items()
    )


def get_config(variant: str = "full"):
    if variant not in VARIANTS:
        raise ValueError(
            f"optimizers_cifar10.py:{variant}: unknown variant; choose one of {', '.join(VARIANTS)}"
        )
    config = recipe(get_sweep_config())
    config.data.val_size = 5000  # the rate is chosen on these held-out training images
    config.deterministic = True  # bit-identical trials (GPU); CPU is deterministic anyway
    config.sweep.report = "research.studies.speedrun_optimizers:report"
    config.sweep.grids = _grids()
    config.sweep.axes = {"seed": (0, 1, 2)}
    config.sweep.target_accuracy = 0.94  # epochs and seconds to 94% validation accuracy
    config.sweep.parallel = "vmap"  # trials at once: one program per optimizer
    config.sweep.group_size = 18  # an optimizer's 6 rates x 3 seeds in one program
    if variant == "cpu":
        config.model.overrides.widths = (8, 16, 16)
        config.model.overrides.whiten_images = 256
        config.data.train_size = 1024  # after the validation split
        config.data.val_size = 512
        config.batch_size = 256  # 4 steps per epoch
        config.num_epochs = 2
        config.last_epoch_fraction = 1.0
        config.optim.warmup_epochs = 0.5
        config.transfer.rules = (
            ("^whiten/kernel$", "freeze"),
            ("^whiten/bias$", "freeze_after:1"),
            (r"/norm\d/bias$", "grad_scale:64"),
            (".*", "train"),
        )
        config.compute_dtype = "float32"  # XLA's CPU bfloat16 convolutions are slow
        config.sweep.grids = _grids(CPU_GRID)
        config.sweep.axes = {"seed": (0, 1)}
        config.sweep.target_accuracy = 0.2  # reachable by a narrow net in 2 epochs
        config.sweep.parallel = "sequential"  # CPU: the plain program (see sweep.vmapped)
        config.sweep.group_size = 4
    return config
