"""Transfer learning: which layers to freeze, for similar/different tasks and little/much data.

Question: after pretraining on a source task, how should a network be reused on
a target task? The lectures' table: similar dataset + little data -> train a
linear classifier on top (linear probe); similar + much data -> fine-tune;
different + little data -> freeze only the first layers; different + much data
-> fine-tune (or train from scratch). Two (source -> target) pairs cover it:

  * similar:   MNIST digits 0-4 -> digits 5-9 (5 new classes, same kind of image)
  * different: MNIST (10 digits)  -> Fashion-MNIST (clothes)

Every strategy of `research.optim.freeze` is tried at each target-data size:
scratch, linear_probe, freeze_first_n (full: N = 1, 2, 3 of lecture_cnn's 4
convolution layers; small: N = 1, 2 of LeNet-5's 2), finetune, finetune_lower_lr,
plus a baseline: a linear probe on a *randomly initialised* network
(linear_probe without pretrained weights), which shows what the pretrained
features are worth.

The pretraining runs are the sweep's `sweep.pretrain` stages: trained once,
first, in DIR/pretrain/<id>/, then used by every trial that names them with
transfer.pretrained = "pretrain:NAME" (see research/sweep/space.py).

Command (small: LeNet-5, 2 pairs x 6 strategies x 100 / 1,000 / 5,000 target examples
x 2 seeds = 72 trials + 2 pretrainings on 10,000 source images; finetune_lower_lr is
left to full, as it was still 1-3 pp short of its plateau after 250-400 steps):
  python scripts/sweep.py --config experiments/compare_freezing.py:small \
      --workdir runs/compare_freezing_small
Command (full, for a GPU: 100 / 1,000 / all target examples, longer training, 3 seeds):
  python scripts/sweep.py --config experiments/compare_freezing.py:full \
      --workdir runs/compare_freezing

Expected: on the similar pair the pretrained linear probe is well above the
random-init linear probe at every size; on the different pair the pretrained
features are worth little to a probe and the strategies that retrain layers
(freeze_first_n, finetune) pull ahead as target data grows. Measured (small):
similar, probe pretrained vs random init 0.85 / 0.91 / 0.93 vs 0.78 / 0.85 /
0.88 at 100 / 1,000 / 5,000 examples; different, 0.56 / 0.67 / 0.72 vs 0.58 /
0.68 / 0.72; freeze_first_1 = finetune within 0.01 everywhere; 9 of 36 rows are
marked † (still improving, mostly the probes).
Run time on a 2-core CPU: small 243 s wall with nothing else running (347 s of
CPU). Full: a GPU.
The report (research/studies/freezing.py) writes summary.md/.csv,
trials.csv and accuracy_vs_target_size.png.

ImageNet variants (`imagenet_resnet18`, `imagenet_vgg16`; a connected machine
with a GPU): the lectures' study with real pretrained networks. torchvision's
ImageNet weights, imported as a finished run, -> CIFAR-10 (10 classes, a fresh
head) at 100 / 1,000 / all 49,000 target examples, every strategy (scratch,
both linear probes, freeze_first_n at three depths, finetune,
finetune_lower_lr), 3 seeds: 72 trials per model. Commands, from the repo root:
  python scripts/import_weights.py --source torchvision --model resnet18 \
      --out runs/pretrained/resnet18_torchvision
  python scripts/sweep.py --config experiments/compare_freezing.py:imagenet_resnet18 \
      --workdir runs/compare_freezing_imagenet_resnet18
(and the same with vgg16 / vgg16_torchvision / imagenet_vgg16). Inputs follow
research/models/pretrained/preprocessing.py: CIFAR-10 stays 32x32 (no resizing;
ResNet-18's last stage then sees 1x1 maps, VGG-16's adaptive pool repeats its
1x1 map to 7x7), and pixels are normalized with ImageNet's mean/std once the
training engine applies `preprocessing_for(DIR)` (until then with CIFAR-10's
own, which differ by less than 0.03). Expected shape of the result (not yet run,
no GPU here): pretrained beats scratch most where data is scarce, i.e. at 100
examples the pretrained probe and fine-tuning are far above scratch and the
random-init probe, the gap shrinks at 1,000 and is smallest with all 49,000;
freezing more layers costs least with 100 examples and most with all of them.
On this CPU, tests/models/test_pretrained_transfer.py checks the path (import a random-weight
ResNet-18, expand this variant, load the folder into the CIFAR model).
"""

from research.sweep import get_sweep_config

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)

# (source -> target): the target's data fields and the stage it starts from.
LR = 1e-3  # Adam's ε for strategies that train convolution layers (the head's in
# finetune_lower_lr, whose backbone gets transfer.backbone_lr_scale = 0.1 of it)
PROBE_LR = 1e-2  # ε for the linear probes (see `strategies`)

# "pretrained": the `transfer.pretrained` of the pair's transfer trials.
PAIRS = {
    "similar": {
        "data.name": "mnist",
        "data.classes": TARGET_CLASSES,
        "pretrained": "pretrain:mnist_0to4",
    },
    "different": {"data.name": "fashion_mnist", "data.classes": (), "pretrained": "pretrain:mnist"},
}
# Adam's ε per transfer.strategy (see `strategies`).
LRS = {
    "scratch": LR,
    "linear_probe": PROBE_LR,
    "freeze_first_n": LR,
    "finetune": LR,
    "finetune_lower_lr": LR,
}

# The imagenet_* variants: ImageNet-pretrained torchvision networks -> CIFAR-10. The folders
# `scripts/import_weights.py --out` writes (relative to where the sweep runs, the repo root).
IMAGENET_PRETRAINED = {
    "resnet18": "runs/pretrained/resnet18_torchvision",
    "vgg16": "runs/pretrained/vgg16_torchvision",
}
# freeze_first_n's N: ResNet-18 stem_conv / + stage1 (4 convs) / + stage2 (4 convs + the
# projection); VGG-16 block1 (2 convs) / blocks 1-2 / blocks 1-3.
IMAGENET_FREEZE_N = {"resnet18": (1, 5, 10), "vgg16": (2, 4, 7)}
# ε: from random init 1e-3 (scratch and probes); pretrained layers 1e-4, so the first
# steps, driven by a random head, do not wash out the ImageNet features;
# finetune_lower_lr: head 1e-3, backbone 0.1 of it = 1e-4 (transfer.backbone_lr_scale).
IMAGENET_LRS = {
    "scratch": 1e-3,
    "linear_probe": 1e-3,
    "freeze_first_n": 1e-4,
    "finetune": 1e-4,
    "finetune_lower_lr": 1e-3,
}


def strategies(freeze_n=(1, 2, 3), lrs=LRS) -> dict[str, dict]:
    """Strategy label -> transfer fields and ε; "pretrained": False trains from random init.

    A linear probe trains one linear layer on fixed features, a convex problem
    that wants a larger step than training convolutions: at ε = 1e-3 both probes
    were still far from converged after 80-100 steps (pretrained probe 0.57 test
    accuracy on digits 5-9 with 100 examples, vs 0.84 at ε = 1e-2), so in the
    MNIST variants probes use `PROBE_LR` and every strategy that trains
    convolution layers `LR` (`LRS`; the imagenet variants: `IMAGENET_LRS`).
    """

    def strategy(name: str, n: int = 0, pretrained: bool = True) -> dict:
        return {"strategy": name, "n": n, "pretrained": pretrained, "lr": lrs[name]}

    return {
        "scratch": strategy("scratch", pretrained=False),
        "linear_probe_random_init": strategy("linear_probe", pretrained=False),
        "linear_probe": strategy("linear_probe"),
        **{f"freeze_first_{n}": strategy("freeze_first_n", n) for n in freeze_n},
        "finetune": strategy("finetune"),
        "finetune_lower_lr": strategy("finetune_lower_lr"),
    }


def _grids(sizes: dict[int, dict], freeze_n, pairs=PAIRS, lrs=LRS, skip=()):
    """Every pair x strategy (but the labels in `skip`) x target size, with the size's schedule."""
    grids = []
    for pair in pairs.values():
        for label, s in strategies(freeze_n, lrs).items():
            if label in skip:
                continue
            for size, schedule in sizes.items():
                grids.append(
                    {
                        "data.name": (pair["data.name"],),
                        "data.classes": (pair["data.classes"],),
                        "data.train_size": (size,),
                        "batch_size": (schedule["batch_size"],),
                        "num_epochs": (schedule["num_epochs"],),
                        "optim.learning_rate": (s["lr"],),
                        "transfer.strategy": (s["strategy"],),
                        "transfer.n": (s["n"],),
                        "transfer.pretrained": (pair["pretrained"] if s["pretrained"] else "",),
                    }
                )
    return tuple(grids)


def get_config(arg: str = "small"):
    config = get_sweep_config()
    config.sweep.report = "research.studies.freezing:report"
    config.optim.name = "adam"
    config.optim.learning_rate = LR  # per strategy in the grids (`strategies`)
    config.transfer.backbone_lr_scale = 0.1
    # The target's labels mean something else than the source's (digits 5-9 vs 0-4, or
    # clothes vs digits), even where the class count matches: start from a fresh head.
    config.transfer.reset_head = True
    config.optim.schedule = "constant"
    config.data.val_size = 1000  # validation images carved from each training set
    config.log_every_steps = 0  # one log line per epoch
    config.checkpoint_every_epochs = 0  # the final checkpoint only (stages need it)
    config.progress = False
    if arg.removeprefix("imagenet_") in IMAGENET_PRETRAINED:
        return _imagenet(config, arg.removeprefix("imagenet_"))
    skip = ()
    if arg == "small":
        # LeNet-5 (2 convolution layers: N = 1, 2) is ~10x cheaper than lecture_cnn on a CPU,
        # where every transfer trial compiles its own program.
        config.model.name = "lenet5"
        config.model.overrides.padding = 2  # 28x28 inputs -> the paper's 28x28 C1 maps
        freeze_n = (1, 2)
        # ~310 steps on 10,000 source images: 0.99 test accuracy on digits 0-4.
        source = {"data": {"train_size": 10000}, "num_epochs": 2, "batch_size": 64}
        # target examples -> schedule, long enough for every strategy's validation accuracy
        # to level off (`research.sweep.plateau`); 5,000 stands in for "all", whose
        # epochs (~28,000 digits 5-9, 59,000 clothes) a CPU cannot repeat until it does.
        sizes = {
            100: {"batch_size": 10, "num_epochs": 25},  # 250 steps
            1000: {"batch_size": 50, "num_epochs": 15},  # 300 steps
            5000: {"batch_size": 50, "num_epochs": 8},  # 800 steps
        }
        # A backbone at 0.1 ε (head 1e-3, backbone 1e-4) was still 1-3 pp short of its
        # plateau after 250-400 steps: finetune_lower_lr is left to the full variant.
        skip = ("finetune_lower_lr",)
        seeds = (0, 1)
    elif arg == "full":
        config.model.name = "lecture_cnn"  # 4 convolution layers: freeze_first_n N = 1, 2, 3
        freeze_n = (1, 2, 3)
        source = {"num_epochs": 5, "batch_size": 128}
        sizes = {
            100: {"batch_size": 25, "num_epochs": 50},
            1000: {"batch_size": 50, "num_epochs": 20},
            0: {"batch_size": 128, "num_epochs": 5},  # 0: all target examples
        }
        seeds = (0, 1, 2)
    else:
        variants = ", ".join(["small", "full", *(f"imagenet_{m}" for m in IMAGENET_PRETRAINED)])
        raise ValueError(f"compare_freezing.py:{arg}: unknown variant; use one of {variants}")
    config.sweep.pretrain = {
        "mnist_0to4": {
            **source,
            "data": {**source.get("data", {}), "name": "mnist", "classes": SOURCE_CLASSES},
        },
        "mnist": {**source, "data": {**source.get("data", {}), "name": "mnist"}},
    }
    config.sweep.grids = _grids(sizes, freeze_n, skip=skip)
    config.sweep.axes = {"seed": seeds}
    config.sweep.parallel = "sequential"
    return config


def _imagenet(config, model: str):
    """ImageNet-pretrained `model` (torchvision's weights, imported) -> CIFAR-10, for a GPU."""
    config.model.name = model  # the published architecture: no CIFAR stem, so the weights fit
    config.data.augment = True  # random crop + flip, for every strategy alike
    pairs = {
        "imagenet": {
            "data.name": "cifar10",
            "data.classes": (),
            "pretrained": IMAGENET_PRETRAINED[model],
        }
    }
    sizes = {  # target examples -> schedule
        100: {"batch_size": 25, "num_epochs": 40},  # 160 steps
        1000: {"batch_size": 50, "num_epochs": 10},  # 200 steps
        0: {"batch_size": 128, "num_epochs": 3},  # all 49,000: ~1,150 steps
    }
    config.sweep.grids = _grids(sizes, IMAGENET_FREEZE_N[model], pairs, IMAGENET_LRS)
    config.sweep.axes = {"seed": (0, 1, 2)}
    config.sweep.parallel = "sequential"
    return config
