"""A convolutional autoencoder on MNIST and Fashion-MNIST, sweeping the latent size.

Question: how small can the code of a convolutional autoencoder be before the
reconstructions fall apart, and how much of the class is in the code? For
latent sizes 2, 8 and 32 (and more in :full) we report the test reconstruction
MSE (mean ± std over seeds), a figure of test images above their
reconstructions, and a linear probe: a logistic regression fitted on the codes
of the training images, scored on the test images' codes.

Command (small: MNIST, widths 16/32, 2,000 training images, 50 epochs at Adam 3e-3,
latent 2/8/32, 2 seeds = 6 trials):
  python scripts/sweep.py --config experiments/autoencoder.py:small --workdir runs/autoencoder_small
Command (full, for a GPU: MNIST and Fashion-MNIST, widths 32/64, all 55,000 training
images, 20 epochs, latent 2/4/8/16/32, 3 seeds = 30 trials):
  python scripts/sweep.py --config experiments/autoencoder.py:full --workdir runs/autoencoder

Writes summary.md/.csv (per dataset × latent size), trials.csv and
reconstructions.png into the workdir (research/studies/autoencoder.py).

Expected: the reconstruction error falls steadily from latent 2 to 8 to 32
(blurry class averages at 2, recognisable digits and garments at 32), and the
probe's test accuracy rises with the latent size, far above chance (0.10): the
codes, learned without labels, separate the classes nearly linearly. Small run
(docs/results.md): MNIST pixel MSE 0.053 / 0.027 / 0.010 and probe 0.42 / 0.84 / 0.88
for latent 2 / 8 / 32; latent 2 and 8 at their plateau, latent 32 still
improving (-1.5 % validation loss over the last 10 of 50 epochs, marked †).
Run time on a 2-core CPU: small 151 s wall with nothing else running (189 s of
CPU); full: hours on a CPU, use a GPU.
"""

from research.sweep import get_sweep_config


def get_config(arg: str = "small"):
    config = get_sweep_config()
    config.sweep.report = "research.studies.autoencoder:report"
    config.model.name = "conv_autoencoder"
    config.model.overrides.latent_dim = 32  # size of the code; swept below
    # The pipeline standardizes pixels (mean 0, std 1), outside a sigmoid's [0, 1].
    config.model.overrides.output = "linear"
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3  # epsilon: Adam's usual step size
    config.optim.schedule = "constant"
    config.progress = False
    config.sweep.parallel = "sequential"  # one compiled program per latent size anyway
    if arg == "small":
        config.model.overrides.widths = (16, 32)  # half the default widths: CPU minutes
        config.data.val_size = 500  # validation images carved from the training images
        config.data.train_size = 2000  # training images kept (a fixed subset)
        config.batch_size = 64  # 31 steps per epoch (the remainder is dropped)
        # 3x Adam's usual step: at 1e-3, latent 32's validation loss still fell 5 % over
        # the last 6 of 30 epochs; at 3e-3 it levels off within 50.
        config.optim.learning_rate = 3e-3
        config.num_epochs = 50
        config.log_every_steps = 0  # one log line per epoch
        datasets, latents, seeds = ("mnist",), (2, 8, 32), (0, 1)
    elif arg == "full":
        config.data.val_size = 5000
        config.batch_size = 128
        config.num_epochs = 20
        config.log_every_steps = 200
        datasets, latents, seeds = ("mnist", "fashion_mnist"), (2, 4, 8, 16, 32), (0, 1, 2)
    else:
        raise ValueError(f"autoencoder.py:{arg}: unknown variant; use small or full")
    config.sweep.axes = {
        "data": {"name": datasets},
        "model": {"overrides": {"latent_dim": latents}},
        "seed": seeds,
    }
    return config
