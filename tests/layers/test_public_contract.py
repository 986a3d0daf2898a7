"""The layer contract's public helpers, and docs/extending.md's recipes run as written."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research.layers as layers
from research import models
from research.layers import LayerSpec
from research.models import ModelSpec

EXTENDING = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def recipe(marker: str) -> str:
    """The ```python block right after `<!-- recipe: MARKER -->` in docs/extending.md."""
    text = EXTENDING.read_text()
    found = re.search(rf"<!-- recipe: {marker} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"docs/extending.md has no '<!-- recipe: {marker} -->' python block"
    return found.group(1)


def test_helpers_are_public_and_private_names_are_gone():
    for name in ("as_nhwc", "pair", "cast"):
        assert name in layers.__all__ and callable(getattr(layers, name))
    for private in ("_as_nhwc", "_pair"):
        assert not hasattr(layers.functional, private)
    assert not hasattr(layers.modules, "_cast")
    x, squeezed = layers.as_nhwc(np.zeros((5, 5, 2)), "f")
    assert x.shape == (1, 5, 5, 2) and squeezed
    assert layers.pair(3, "stride", minimum=1) == (3, 3)
    assert layers.pair((2, 1), "stride", minimum=1) == (2, 1)
    with pytest.raises(ValueError, match=r"^window must be >= 1, got 0 \(input shape \(1, 5\)\)$"):
        layers.pair(0, "window", minimum=1, shape=(1, 5))
    with pytest.raises(ValueError, match=r"f expects x of shape \(N, H, W, C\) or \(H, W, C\)"):
        layers.as_nhwc(np.zeros((5, 5)), "f")
    assert layers.cast(jnp.ones(2), jnp.bfloat16).dtype == jnp.bfloat16
    assert layers.cast(jnp.ones(2), None).dtype == jnp.float32


def test_recipes_import_only_public_names():
    text = EXTENDING.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    imports = [line for b in blocks for line in b.splitlines() if "import" in line]
    assert imports
    for line in imports:
        assert not re.search(r"import .*\b_\w", line), line


def run_as_module(code: str, name: str, monkeypatch) -> tuple[types.ModuleType, str]:
    """Runs `code` as the module `name` (registered in sys.modules for the test); its stdout."""
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # dont_inherit: the recipe runs as written, without this file's __future__ imports.
        exec(compile(code, f"docs/extending.md:{name}", "exec", dont_inherit=True), module.__dict__)
    return module, out.getvalue()


def test_layer_recipe_runs_as_written(monkeypatch):
    blur_pool, printed = run_as_module(recipe("layer"), "research.layers.blur_pool", monkeypatch)
    lines = printed.splitlines()
    assert lines == [
        "[[1.0, 1.0], [1.0, 1.0]]",
        "stride must be >= 1, got 0 (input shape (1, 4, 4, 1))",
    ]
    # Its registry entry, as written, builds and gives the shape it states.
    entry = eval(  # noqa: S307 - our own docs' code
        "{" + recipe("layer entry") + "}",
        {"LayerSpec": LayerSpec, "BlurPool": blur_pool.BlurPool},
    )
    spec = entry["blur_pool"]
    module = spec.build(**spec.example)
    x = jax.random.normal(jax.random.key(0), spec.input_shape)
    variables = module.init(jax.random.key(1), x)
    y = jax.jit(module.apply)(variables, x)
    assert y.shape == spec.output_shape == (2, 3, 3, 4)
    # A constant image stays constant inside (the blur's weights sum to 1).
    ones = module.apply(variables, jnp.ones((1, 6, 6, 1)))
    np.testing.assert_allclose(ones[0, 1:, 1:, 0], 1.0, rtol=1e-6)


def test_model_recipe_runs_as_written(monkeypatch):
    run_as_module(recipe("layer"), "research.layers.blur_pool", monkeypatch)
    blur_lenet, _ = run_as_module(recipe("model"), "research.models.blur_lenet", monkeypatch)
    entry = eval(  # noqa: S307 - our own docs' code
        "{" + recipe("model entry") + "}", {"ModelSpec": ModelSpec, "blur_lenet": blur_lenet}
    )
    spec = entry["blur_lenet"]
    model = spec.build(num_classes=spec.paper_num_classes)
    x = jax.ShapeDtypeStruct((1, *spec.paper_input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert models.param_count(variables) == spec.trainable_params == 61_706
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (1, 10)
    models.check_input("blur_lenet", model, (28, 28, 1))  # accepted
