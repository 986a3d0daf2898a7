"""What the pretrained-weight tests share: the source frameworks, random sources, restored runs."""

from __future__ import annotations

import os

import jax
import numpy as np

from tests.helpers.requirements import requires

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "import_weights.py")


def torchvision():
    """torchvision.models (through torch_compat), or a skip naming the missing package."""
    requires("torch")
    from research.models.torch_compat import import_torchvision_models

    try:
        return import_torchvision_models()
    except ImportError:
        requires("torchvision")  # skips (fails under CI) with the install hint
        raise


def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = requires("keras")
    requires("h5py")
    return keras


def randomize_torch(model, seed: int):
    """Random biases and BatchNorm scale, shift, running mean and variance, in place."""
    torch = requires("torch")

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return model.eval()


def torchvision_model(name: str, seed: int = 0):
    torch = requires("torch")

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return randomize_torch(getattr(torchvision(), name)(**kwargs), seed + 1)


def restored(out) -> dict:
    """The variables of the run in `out`, read as any run's are (checksum verified)."""
    from research.train import checkpoint

    restored = checkpoint.read(str(out))
    assert restored.step == 0
    return {"params": restored.state["params"], "batch_stats": restored.state["batch_stats"]}


def assert_same_tree(got, want):
    got_flat = dict(jax.tree_util.tree_leaves_with_path(got))
    want_flat = dict(jax.tree_util.tree_leaves_with_path(want))
    assert got_flat.keys() == want_flat.keys()
    for path, value in want_flat.items():
        np.testing.assert_array_equal(np.asarray(got_flat[path]), value, err_msg=str(path))
