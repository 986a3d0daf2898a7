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

Command (small: LeNet-5, 2 pairs x 7 strategies x 100/1,000 target examples x 2 seeds
= 56 trials + 2 pretrainings on 5,000 source images):
  python scripts/sweep.py --config experiments/compare_freezing.py:small \
      --workdir runs/compare_freezing_small
Command (full, for a GPU: 100 / 1,000 / all target examples, longer training, 3 seeds):
  python scripts/sweep.py --config experiments/compare_freezing.py:full \
      --workdir runs/compare_freezing

Expected: on the similar pair the pretrained linear probe is far above the
random-init linear probe at every size, and with 100 target examples every
pretrained strategy beats scratch; as the target data grows the gap to scratch
shrinks, and on the different pair freezing many layers (linear probe) falls
behind fine-tuning once there is much data.
Run time on a 2-core CPU: measured on a *shared* 2-core CPU (load ~10): each
pretraining stage ~80 s, each transfer trial ~100 s (most of it compilation:
every transfer trial compiles its own program), so the 56 trials take ~1.5 h
under that load (expect several times less on an idle machine; not measured).
Full: a GPU.
The report (research/sweep/study_freezing.py) writes summary.md/.csv,
trials.csv and accuracy_vs_target_size.png.
"""

from research.sweep import get_sweep_config

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)

# (source -> target): the target's data fields and the stage it starts from.
PAIRS = {
    "similar": {"data.name": "mnist", "data.classes": TARGET_CLASSES, "pretrain": "mnist_0to4"},
    "different": {"data.name": "fashion_mnist", "data.classes": (), "pretrain": "mnist"},
}


def strategies(freeze_n=(1, 2, 3)) -> dict[str, dict]:
    """Strategy label -> transfer fields; "pretrained": False trains from random init."""
    return {
        "scratch": {"strategy": "scratch", "n": 0, "pretrained": False},
        "linear_probe_random_init": {"strategy": "linear_probe", "n": 0, "pretrained": False},
        "linear_probe": {"strategy": "linear_probe", "n": 0, "pretrained": True},
        **{
            f"freeze_first_{n}": {"strategy": "freeze_first_n", "n": n, "pretrained": True}
            for n in freeze_n
        },
        "finetune": {"strategy": "finetune", "n": 0, "pretrained": True},
        "finetune_lower_lr": {"strategy": "finetune_lower_lr", "n": 0, "pretrained": True},
    }


def _grids(sizes: dict[int, dict], freeze_n):
    """Every pair x strategy x target size, with the size's batch size and epochs."""
    grids = []
    for pair in PAIRS.values():
        for s in strategies(freeze_n).values():
            for size, schedule in sizes.items():
                grids.append(
                    {
                        "data.name": (pair["data.name"],),
                        "data.classes": (pair["data.classes"],),
                        "data.train_size": (size,),
                        "batch_size": (schedule["batch_size"],),
                        "num_epochs": (schedule["num_epochs"],),
                        "transfer.strategy": (s["strategy"],),
                        "transfer.n": (s["n"],),
                        "transfer.pretrained": (
                            f"pretrain:{pair['pretrain']}" if s["pretrained"] else "",
                        ),
                    }
                )
    return tuple(grids)


def get_config(arg: str = "small"):
    config = get_sweep_config()
    config.sweep.report = "freezing"
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3  # epsilon: the head's rate (and everyone's but the backbone
    config.transfer.backbone_lr_scale = 0.1  # in finetune_lower_lr, which uses 0.1 epsilon)
    # The target's labels mean something else than the source's (digits 5-9 vs 0-4, or
    # clothes vs digits), even where the class count matches: start from a fresh head.
    config.transfer.reset_head = True
    config.optim.schedule = "constant"
    config.data.val_size = 1000  # validation images carved from each training set
    config.log_every_steps = 0  # one log line per epoch
    config.checkpoint_every_epochs = 0  # the final checkpoint only (stages need it)
    config.progress = False
    if arg == "small":
        # LeNet-5 (2 convolution layers: N = 1, 2) is ~10x cheaper than lecture_cnn on a CPU,
        # where every transfer trial compiles its own program.
        config.model.name = "lenet5"
        config.model.overrides.padding = 2  # 28x28 inputs -> the paper's 28x28 C1 maps
        freeze_n = (1, 2)
        source = {"data": {"train_size": 5000}, "num_epochs": 1, "batch_size": 64}
        # target examples -> schedule; about 40-80 steps each, so small sizes still train.
        sizes = {
            100: {"batch_size": 25, "num_epochs": 10},  # 40 steps
            1000: {"batch_size": 50, "num_epochs": 3},  # 60 steps
        }
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
        raise ValueError(f"compare_freezing.py:{arg}: unknown variant; use small or full")
    config.sweep.pretrain = {
        "mnist_0to4": {
            **source,
            "data": {**source.get("data", {}), "name": "mnist", "classes": SOURCE_CLASSES},
        },
        "mnist": {**source, "data": {**source.get("data", {}), "name": "mnist"}},
    }
    config.sweep.grids = _grids(sizes, freeze_n)
    config.sweep.axes = {"seed": seeds}
    config.sweep.parallel = "sequential"
    return config
