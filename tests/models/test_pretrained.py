"""Pretrained weights (research.models.pretrained): the zoo computes the source models' logits.

Equality: random weights, random BatchNorm statistics and random biases (the
defaults 0 / 1 / 0 would hide a swapped or missing statistic), converted, and
the zoo's logits compared with the source's in eval mode, float32, relative
error max|ours - theirs| / max|theirs| < 1e-4, at the paper's input size and at
193x193 (odd sizes: padding, ceil-mode and adaptive pooling differ). The full
tier checks every model; the fast tier ResNet-18 at 49x49.

Also: weights files are data (a pickle that would run code is refused and does
not run). A run written by scripts/import_weights.py in use through
`transfer.load_pretrained`, and the preprocessing record and policy:
test_pretrained_transfer.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from research import models
from research.models import pretrained
from research.models.pretrained import files, keras_zoo, torchvision_zoo
from research.models.pretrained.preprocessing import normalize
from tests.helpers.pretrained import SCRIPT
from tests.helpers.pretrained import assert_same_tree as _assert_same_tree
from tests.helpers.pretrained import keras as _keras
from tests.helpers.pretrained import randomize_torch as _randomize_torch
from tests.helpers.pretrained import restored as _restored
from tests.helpers.pretrained import torchvision as _torchvision
from tests.helpers.pretrained import torchvision_model as _torchvision_model
from tests.helpers.requirements import requires

TOLERANCE = 1e-4  # relative error in float32
ODD = 193  # an odd size where SAME / symmetric padding, ceil mode and adaptive bins differ


# --------------------------------------------------------------------------- helpers


def _randomize_keras(model, seed: int):
    """The same for a Keras model: BatchNorm gamma, beta, moving mean/variance and biases."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            n = weights[0].shape[0]
            gamma, mean, var = (
                rng.uniform(0.5, 1.5, n),
                rng.normal(0, 0.2, n),
                rng.uniform(0.5, 1.5, n),
            )
            layer.set_weights([gamma, rng.normal(0, 0.1, n), mean, var])
        elif getattr(layer, "use_bias", False) and weights:
            layer.set_weights([*weights[:-1], rng.normal(0, 0.1, weights[-1].shape)])
    return model


def _ours(name: str, variables, x: np.ndarray, **overrides) -> np.ndarray:
    model = models.create(name, num_classes=1000, **overrides)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def _rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _images(size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    torch = requires("torch")

    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()  # NHWC -> NCHW


def _check_torchvision(name: str, sizes) -> dict[int, float]:
    source = _torchvision_model(name)
    variables = pretrained.from_torchvision(name, source.state_dict())
    errors = {}
    for size in sizes:
        x = _images(size)
        errors[size] = _rel_err(_ours(name, variables, x), _torch_logits(source, x))
    print(f"torchvision {name}: relative error {errors}")
    return errors


# --------------------------------------------------------------------------- equality


def test_resnet18_matches_torchvision_at_a_small_odd_size():
    errors = _check_torchvision("resnet18", (49,))  # 49 -> 25 -> 13 -> 7 -> 4 -> 2
    assert errors[49] < TOLERANCE, errors


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["alexnet", "vgg11", "vgg16", "googlenet", "resnet18", "resnet34", "resnet50"]
)
def test_torchvision_logits_match(name):
    errors = _check_torchvision(name, (224, ODD))
    assert max(errors.values()) < TOLERANCE, errors


KERAS_APPLICATIONS = {"xception": "Xception", "vgg16": "VGG16", "mobilenet_v1": "MobileNet"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xception", "vgg16", "mobilenet_v1"])
def test_keras_logits_match(name):
    keras = _keras()
    if name not in models.names():
        pytest.skip(f"the zoo has no {name!r} yet (being added on branch `zoo`)")
    paper = models.spec(name).paper_input_shape[0]
    errors = {}
    for size in (paper, ODD):
        application = getattr(keras.applications, KERAS_APPLICATIONS[name])
        keras.utils.set_random_seed(size)  # Keras's own initial kernels, reproducibly
        source = _randomize_keras(
            application(weights=None, input_shape=(size, size, 3), classifier_activation=None),
            seed=size,
        )
        # Keras's VGG16 flattens its last map as is (no adaptive pooling): at 193x193 its
        # fc1 has 6*6*512 inputs, the zoo's `pooled_size=None`.
        overrides = {"pooled_size": None} if name == "vgg16" and size != 224 else {}
        variables = pretrained.from_keras(
            name, source, overrides=overrides, input_shape=(size, size, 3)
        )
        x = _images(size)
        theirs = np.asarray(source(x, training=False))
        errors[size] = _rel_err(_ours(name, variables, x, **overrides), theirs)
    print(f"keras {name}: relative error {errors}")
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.slow
def test_googlenet_published_input_transform_is_its_preprocessing():
    # torchvision builds the published GoogLeNet with transform_input=True on
    # ImageNet-normalized input; the zoo's network without it on the recorded
    # preprocessing (0.5 / 0.5) is the same function.
    torch = requires("torch")

    torch.manual_seed(0)
    source = _randomize_torch(
        _torchvision().googlenet(aux_logits=False, init_weights=True, transform_input=True), 1
    )
    variables = pretrained.from_torchvision("googlenet", source.state_dict())
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    imagenet = normalize(pixels, torchvision_zoo.MODELS.get("resnet18").preprocessing.as_dict())
    recorded = torchvision_zoo.MODELS.get("googlenet").preprocessing.as_dict()
    ours = _ours("googlenet", variables, normalize(pixels, recorded))
    assert _rel_err(ours, _torch_logits(source, imagenet)) < TOLERANCE


# --------------------------------------------------------------------------- conversion errors


def test_mismatched_or_missing_weight_names_the_parameter_and_both_shapes():
    torch = requires("torch")

    tv = _torchvision()
    narrow = tv.resnet18().state_dict()
    narrow["layer1.0.conv1.weight"] = torch.zeros(64, 32, 3, 3)
    with pytest.raises(ValueError) as err:
        pretrained.from_torchvision("resnet18", narrow)
    assert str(err.value) == (
        "torchvision resnet18: 'layer1.0.conv1.weight' has shape (64, 32, 3, 3) but "
        "params/stage1_block1/conv1/kernel needs (64, 64, 3, 3) as OIHW, (3, 3, 64, 64) in "
        "the zoo's layout"
    )
    ten_classes = tv.resnet18(num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"'fc.bias' has shape \(10,\) but params/head/bias "):
        pretrained.from_torchvision("resnet18", ten_classes)

    missing = tv.resnet18().state_dict()
    del missing["layer2.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"no 'layer2\.0\.bn1\.running_var', needed for "):
        pretrained.from_torchvision("resnet18", missing)

    with pytest.raises(ValueError, match=r"'layer1\.2\.conv1\.weight' .* no place for"):
        pretrained.from_torchvision("resnet18", tv.resnet34().state_dict())
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'.*'resnet18'"):
        pretrained.from_torchvision("resnet19", {})


def test_keras_unnamed_layers_are_taken_in_creation_order():
    names = ["block1_conv1", "conv2d_10", "conv2d_2", "conv2d", "batch_normalization_1"]
    assert keras_zoo._unnamed(names, "conv2d") == ["conv2d", "conv2d_2", "conv2d_10"]
    assert keras_zoo._unnamed(names, "batch_normalization") == ["batch_normalization_1"]


# --------------------------------------------------------------------------- files are data


class _RunsCodeWhenUnpickled:
    """A pickled object whose loading calls `_touch(marker)`: what a malicious file does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("code ran")


def _import_script():
    """scripts/import_weights.py as a module, to call its `main` in this process."""
    sys.path.insert(0, os.path.dirname(SCRIPT))  # its `import _checkout`
    try:
        spec = importlib.util.spec_from_file_location("import_weights", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    return module


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, capsys):
    torch = requires("torch")
    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"conv1.weight": _RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(ValueError, match=r"would need to run code to load \(GLOBAL .*_touch\)"):
        files.read_state_dict(str(path))

    out = tmp_path / "run"
    argv = ["--source=torchvision", "--model=resnet18", f"--out={out}"]
    assert _import_script().main([*argv, f"--weights-file={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: weights file") and "refused" in err and err.count("\n") == 1
    assert not marker.exists(), "the pickle's code ran"
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["model.pth"]


def test_wrong_weights_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    torch = requires("torch")
    path = tmp_path / "resnet34.pth"
    torch.save(_torchvision().resnet34().state_dict(), path)
    out = tmp_path / "run"
    argv = ["--source=torchvision", "--model=resnet18", f"--out={out}", f"--weights-file={path}"]
    assert _import_script().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: torchvision resnet18: the weights have 'layer1.2.conv1.weight'")
    assert err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["resnet34.pth"]  # no DIR, no temporary folder


@pytest.mark.slow
def test_keras_weight_files_read_like_the_model(tmp_path):
    keras = _keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = layers.Input((12, 12, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="block1_conv1")(inputs)
    x = layers.BatchNormalization(name="block1_conv1_bn")(x)
    shortcut = layers.BatchNormalization()(layers.Conv2D(5, 1, strides=2, padding="same")(x))
    x = layers.SeparableConv2D(5, 3, padding="same", use_bias=False, name="sep")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.add([layers.MaxPooling2D(3, 2, padding="same")(x), shortcut])
    outputs = layers.Dense(3, name="predictions")(layers.GlobalAveragePooling2D()(x))
    model = _randomize_keras(keras.Model(inputs, outputs), seed=0)
    model.save_weights(tmp_path / "m.weights.h5")  # Keras 3 layout
    model.save(tmp_path / "m.h5")  # legacy layout (the published files')
    want = files.read_keras_model(model)
    assert len(want) == 7 and [w.shape for w in want["sep"]] == [(3, 3, 4, 1), (1, 1, 4, 5)]
    for name in ("m.weights.h5", "m.h5"):
        got = files.read_keras_h5(str(tmp_path / name))
        assert sorted(got) == sorted(want), name
        for layer in want:
            assert len(got[layer]) == len(want[layer])
            for a, b in zip(got[layer], want[layer], strict=True):
                np.testing.assert_array_equal(a, b)
    (tmp_path / "m.pth").write_bytes((tmp_path / "m.h5").read_bytes())
    with pytest.raises(ValueError, match="expected a Keras .h5 or .weights.h5 file"):
        files.read_keras_h5(str(tmp_path / "m.pth"))


@pytest.mark.slow
def test_keras_weights_h5_and_safetensors_through_the_script(tmp_path, capsys):
    keras = _keras()
    requires("safetensors")
    from safetensors.numpy import save_file

    script = _import_script()
    # Keras 3 `.weights.h5` of a random Xception (the input size does not change its weights).
    keras.utils.set_random_seed(2)
    source = _randomize_keras(keras.applications.Xception(weights=None, input_shape=(71, 71, 3)), 2)
    source.save_weights(tmp_path / "xception.weights.h5")
    out = tmp_path / "xception"
    argv = ["--source=keras", "--model=xception", f"--out={out}"]
    assert script.main([*argv, f"--weights-file={tmp_path / 'xception.weights.h5'}"]) == 0
    want = pretrained.from_keras("xception", source)
    _assert_same_tree(_restored(out), want)

    # A torchvision state_dict as .safetensors (no torch needed to read it).
    state_dict = {k: v.numpy() for k, v in _torchvision_model("resnet18").state_dict().items()}
    save_file(state_dict, str(tmp_path / "resnet18.safetensors"))
    out = tmp_path / "resnet18"
    argv = ["--source=torchvision", "--model=resnet18", f"--out={out}"]
    assert script.main([*argv, f"--weights-file={tmp_path / 'resnet18.safetensors'}"]) == 0
    want = pretrained.from_torchvision("resnet18", state_dict)
    _assert_same_tree(_restored(out), want)
    assert "wrote" in capsys.readouterr().out
