"""CIFAR-10 speedrun: airbench94 (K. Jordan 2024) ported to this codebase's one engine.

Question: does airbench94's recipe ("94% on CIFAR-10 in 3.29 Seconds on a Single
GPU", arXiv:2404.00498, and its public `legacy/airbench94.py`: 94.01% mean test
accuracy over 1,000 runs, 3.83 s per run on an A100 in PyTorch without
torch.compile) reach >= 94.0% mean test accuracy over >= 10 seeds when expressed
as a config of `research/`, and is it faster than airbench94 itself on the same GPU?

Commands (run from the repository root; RESEARCH_DATA_DIR names the data folder):
  one run (GPU):
    python scripts/train.py --config experiments/cifar10_speedrun.py --workdir runs/speedrun
  10 seeds (GPU), one after another:
    python scripts/sweep.py --config experiments/cifar10_speedrun.py:seeds --workdir runs/sr10
  10 seeds side by side with airbench94 itself on the same GPU (docs/accelerators.md):
    python scripts/accelerator_check.py --parts speedrun --out accel
  CPU, the full recipe on 10,000 training images (the documented CPU run, below):
    python scripts/train.py --config experiments/cifar10_speedrun.py:cpu_subset \
        --workdir runs/speedrun_cpu
  CPU smoke test (narrow network, 2,048 images, 1 epoch; tests/studies/test_speedrun.py):
    python scripts/train.py --config experiments/cifar10_speedrun.py:smoke --workdir runs/sr_smoke

The recipe, every value from airbench94.py's `hyp` (PyTorch) and how it is said here:

  network       widths 64/256/256, whitened frozen 2x2 first layer, GELU, max pooling,
                BatchNorm momentum 0.6 (Flax) / eps 1e-12 / no scale, logits x 1/9:
                model "airbench" (research/models/airbench.py, its docstring lists each).
  whitening     eigenvectors of the 2x2 patch covariance of the first 5,000 training
                images: the model's `data_init`, called by the engine before step 1;
                kernel frozen, bias trained for 3 epochs (`whiten_bias_epochs`): the
                rules "freeze" and "freeze_after:3".
  loss          cross-entropy with label smoothing 0.2: loss.label_smoothing.
  optimizer     SGD with Nesterov momentum 0.85 in PyTorch's form: optim.name
                "sgd_nesterov". airbench sums the loss over the batch and sets
                lr = 11.5 / (1024 (1 + 1/(1 - 0.85))), wd = 0.0153 * 1024 / (1024 (1 +
                1/(1 - 0.85))) per PyTorch parameter group as weight_decay = wd / lr; with
                the mean loss used here that is epsilon = 1024 lr = 11.5 * 0.15 / 1.15 =
                1.5 and an L2 term lambda = wd / (1024 lr) = 0.0153 / 11.5 on every
                parameter (biases too: optim.weight_decay_mask "all").
  bias_scaler   BatchNorm biases learn 64x faster, their decay unchanged: the rule
                "grad_scale:64" (gradient x 64 before L2 and momentum, exactly PyTorch's
                lr x 64 with weight_decay = wd / (64 lr)).
  schedule      warmup 0.2 -> 1 over int(0.23 T) steps, then linear to 0.07 at T:
                optim.schedule "warmup_linear" (warmup_epochs = 0.23 x 9.9 epochs,
                which rounds to int(0.23 T) steps at batch 1024 and at 10,000 images).
  batch, length batch 1024, 9.9 epochs = ceil(9.9 x 48) = 476 steps: num_epochs 10 with
                last_epoch_fraction 0.9; the last partial batch of each epoch is dropped.
  lookahead     every 5 steps slow <- lerp(slow, fast, 1 - 0.95^5 (t/T)^3), fast <- slow,
                on parameters and BatchNorm statistics, and fast <- slow at the end:
                optim.lookahead_every/decay/power (research/optim/lookahead.py).
  augmentation  alternating flip (each image mirrored in every other epoch, from a
                random start per image) + translate by up to 2 pixels, reflect padding:
                data.augment_policy "airbench".
  TTA           the image and its mirror (1/4 each) and both shifted one pixel up-left
                and down-right (1/8 each): eval_tta "flip_translate".
  data          all 50,000 training images, no validation split; normalized with the
                training split's measured per-channel mean/std.

Differences from airbench94.py, and why:
  * Precision: float32 parameters, bfloat16 compute (compute_dtype); airbench runs
    float16 parameters and activations with float32 BatchNorm. bf16 is this
    codebase's mixed precision (no loss scaling needed); same speed on H100/H200.
  * Normalization: the measured mean/std of the training split (the pipeline's rule)
    instead of airbench's rounded constants (0.4914, 0.4822, 0.4465) / (0.2470,
    0.2435, 0.2616); on the full training split they agree to 1e-4.
  * Randomness: JAX keys (`seed`) instead of torch's global generator; the base flip
    of each image is a coin per (run, image) instead of one random pre-flip of the
    array; the translation is drawn per step for the batch's images instead of once
    per epoch for the whole array (the same distribution); crops come from a
    reflect-padded batch with the flip applied first (flip and a uniform shift commute
    in distribution).
  * BatchNorm's running variance: Flax updates it with the biased batch variance,
    PyTorch with the unbiased one (a factor n/(n-1), n >= 9,216).
  * The whitening eigendecomposition runs in float64 on the host (airbench: float32 on
    the GPU), the patch covariance in float32 at full precision on the device.
  * Timing: the engine's wall_seconds of a run cover the whitening, placing the data
    on the device, the 476 steps and the TTA test evaluation (airbench times the
    whitening, the training and the TTA evaluation, not its per-epoch evaluations;
    this recipe has none: no validation split). The first run also compiles; later
    runs of the same process reuse the compiled programs.

Test data: shared/data holds only the FIRST 1,000 of CIFAR-10's 10,000 test images
(`data_notes` in results.json says so). A run's accuracy on 1,000 images has a
binomial standard error of sqrt(0.94 x 0.06 / 1000) = 0.75 points (0.24 on 10,000),
and, more important, averaging seeds does not shrink the part of it that comes from
which 1,000 images these are: the mean over seeds estimates the accuracy on this
subset, which may sit about +-0.7 points (1 sigma, with the finite-population
correction) from the full test set's. So ">= 94.0% mean" on these images is a claim
about them, not the full set, and the meaningful comparison is airbench94 itself
evaluated on the same 1,000 images (scripts/accelerator_check.py does that), whose
difference with this port is paired and far tighter.

Expected: GPU (full recipe, 10 seeds): test accuracy on the 1,000 images close to
airbench94's on the same images, and about 94%; a run in a few seconds on an
H100/H200 (airbench94: 3.83 s on an A100). Not yet measured on a GPU: docs/accelerators.md and
scripts/accelerator_check.py say how to measure it.
CPU (the documented run, `cpu_subset`: the full recipe and network, float32, on a
fixed subset of 10,000 training images: 9 steps per epoch, so 9.9 epochs round up
to 90 steps = 10 epochs, exactly as airbench's ceil(9 x 9.9) = 90): test accuracy
84.4% on the 1,000 test images with the flip + translate TTA (83.6% without TTA),
training accuracy 91.4% in the last epoch; 2,415 s wall (356 s of it compiling,
41 training images/s) on the 2-core CPU shared with other jobs (load 6-9).
Measured 2026-11-29 (the run's results.json records 84.6%: its TTA weighted the
image and its mirror 1/2 each instead of 1/4, a bug fixed since; the saved final
state re-evaluated with the fixed TTA gives 84.4%; training does not involve TTA).
"""

from research.config import get_base_config
from research.sweep import get_sweep_config

VARIANTS = ("full", "seeds", "cpu_subset", "smoke")


def recipe(config):
    """airbench94's recipe on `config` (the module docstring says where each value comes from)."""
    config.model.name = "airbench"
    config.data.name = "cifar10"
    config.data.val_size = 0  # airbench trains on all 50,000 images; no validation split
    config.data.augment = True
    config.data.augment_policy = "airbench"  # alternating flip + translate 2 (reflect)
    config.data.loader = "device"  # the alternating flip needs each example's index
    config.batch_size = 1024
    config.num_epochs = 10
    config.last_epoch_fraction = 0.9  # 9.9 epochs: ceil(9.9 * steps per epoch) steps
    config.eval_batch_size = 1000  # shared/data has 1,000 test images
    config.eval_tta = "flip_translate"  # airbench's tta_level=2
    config.loss.label_smoothing = 0.2
    momentum = 0.85
    config.optim.name = "sgd_nesterov"  # PyTorch's SGD(nesterov=True)
    config.optim.momentum = momentum
    config.optim.learning_rate = 11.5 * (1 - momentum) / (2 - momentum)  # = 1.5: epsilon
    config.optim.weight_decay = 0.0153 / 11.5  # lambda of the L2 term, on every parameter
    config.optim.weight_decay_mask = "all"
    config.optim.schedule = "warmup_linear"
    config.optim.warmup_epochs = 0.23 * 9.9  # int(0.23 * total steps) steps
    config.optim.start_factor = 0.2
    config.optim.end_factor = 0.07
    config.optim.lookahead_every = 5
    config.optim.lookahead_decay = 0.95**5
    config.optim.lookahead_power = 3.0
    config.transfer.rules = (
        ("^whiten/kernel$", "freeze"),  # set by the model's data_init, never trained
        ("^whiten/bias$", "freeze_after:3"),  # whiten_bias_epochs
        (r"/norm\d/bias$", "grad_scale:64"),  # bias_scaler
        (".*", "train"),
    )
    config.compute_dtype = "bfloat16"
    config.log_every_steps = 0  # one host sync per epoch
    config.checkpoint_every_epochs = 0  # a checkpoint at the end only
    config.progress = False
    return config


def get_config(variant: str = "full"):
    if variant not in VARIANTS:
        raise ValueError(
            f"cifar10_speedrun.py:{variant}: unknown variant; choose one of {', '.join(VARIANTS)}"
        )
    config = recipe(get_sweep_config() if variant == "seeds" else get_base_config())
    if variant == "seeds":
        config.sweep.axes.seed = list(range(10))
        config.sweep.parallel = "sequential"  # one run at a time: each run's own time
        config.sweep.report = "optimizers"  # test accuracy mean +- std over the seeds
    elif variant == "cpu_subset":
        config.data.train_size = 10_000  # a fixed subset (data.split_seed)
        config.compute_dtype = "float32"  # XLA's CPU bfloat16 convolutions are slow
    elif variant == "smoke":
        config.model.overrides.widths = (16, 32, 32)
        config.model.overrides.whiten_images = 500
        config.data.train_size = 2048
        config.batch_size = 256
        config.num_epochs = 1
        config.last_epoch_fraction = 1.0
        config.optim.warmup_epochs = 0.25
        config.transfer.rules = (
            ("^whiten/kernel$", "freeze"),
            ("^whiten/bias$", "freeze_after:0.5"),
            (r"/norm\d/bias$", "grad_scale:64"),
            (".*", "train"),
        )
        config.compute_dtype = "float32"
    return config
