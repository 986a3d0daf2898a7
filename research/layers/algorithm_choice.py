"""How a layer call picks its conv or max-pool algorithm, and the record of what ran.

`conv_algorithms` and `pool_algorithms` hold two families ("conv", "pool") of
interchangeable algorithms that compute the same function at different speeds.
`functional.conv2d(..., algorithm=None)` and `functional.max_pool` pick one of
their family this way (`resolve`), first match wins:

  1. the `algorithm=` keyword of the call;
  2. an enclosing `with override(conv=..., pool=...)` block, active while a
     function is traced (the sweep's vmapped programs use it);
  3. the environment variable, `RESEARCH_CONV_ALGORITHM` (`CONV_ENV_VAR`) or
     `RESEARCH_POOL_ALGORITHM` (`POOL_ENV_VAR`), read at trace time;
  4. the family's default for the backend: `conv_algorithms.default_conv_algorithm()`,
     `pool_algorithms.default_pool_algorithm()`.

A name that is not in the family's registry raises a ValueError that says where
it came from and lists the known ones. Each algorithm module hands its registry
to this one when it is imported (`register_family`): they import this module to
record what ran, so it cannot import them.

Vmapped trials (`research.train.engine`, "vmap") are traced inside
`vmapped_override()`, which picks by backend (`VMAPPED_ALGORITHMS`): on GPU conv
"trials" and pool "reshape" (issue 25: no batch-grouped or grouped
kernel-gradient convolutions, no select_and_scatter); on CPU pool
"reduce_window" and the default conv ("onednn"), unchanged. An environment
variable still wins for its kind; results.json records what ran.

What ran is what computed each layer after any fallback ("reshape" pooling of
overlapping windows is "reduce_window"; "onednn" leaves convs of few input
channels to "tiled"): `recording()` collects it per layer kind while a model is
traced (the algorithms call `record`, the dispatchers `conv` and `max_pool` set
the kind with `layer_kind`), and `summarize` makes it a results field, one name
where one algorithm ran, else `{layer kind: name}`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import jax

from research.registry import Registry

CONV_ENV_VAR = "RESEARCH_CONV_ALGORITHM"
POOL_ENV_VAR = "RESEARCH_POOL_ALGORITHM"
_ENV_VARS = {"conv": CONV_ENV_VAR, "pool": POOL_ENV_VAR}

# --------------------------------------------------------------------------- choice


# The algorithm an enclosing `override` block chose, per kind (None: no block).
_CONV_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conv_override", default=None
)
_POOL_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pool_override", default=None
)
_OVERRIDES = {"conv": _CONV_OVERRIDE, "pool": _POOL_OVERRIDE}

# Each family's registry of algorithms, handed over by the module that holds it.
_REGISTRIES: dict[str, Registry[Callable[..., jax.Array]]] = {}


def register_family(family: str, registry: Registry[Callable[..., jax.Array]]) -> None:
    """Makes `registry` the algorithms of `family` ("conv" or "pool").

    Called once, when it is imported, by the module that holds them
    (`conv_algorithms`, `pool_algorithms`); `resolve` and `override` check names
    against it.
    """
    if family not in _OVERRIDES:
        raise ValueError(f"unknown algorithm family {family!r}; known: {', '.join(_OVERRIDES)}")
    _REGISTRIES[family] = registry


def resolve(family: str, algorithm: str | None, default: Callable[[], str]) -> str:
    """`family`'s algorithm: keyword, else `override` block, else env variable, else `default()`."""
    registry, env_var = _REGISTRIES[family], _ENV_VARS[family]
    overridden = _OVERRIDES[family].get()
    if algorithm is not None:
        source = "algorithm="
    elif overridden is not None:
        algorithm, source = overridden, "override"
    elif os.environ.get(env_var):
        algorithm, source = os.environ[env_var], f"environment variable {env_var}"
    else:
        algorithm, source = default(), "default"
    if algorithm not in registry:
        raise ValueError(
            f"{source} gives unknown {registry.kind} {algorithm!r}; "
            f"known: {', '.join(registry.names())}"
        )
    return algorithm


@contextlib.contextmanager
def override(*, conv: str | None = None, pool: str | None = None) -> Iterator[None]:
    """Within the block, calls without `algorithm=` use these algorithms.

    Takes effect where the layers run in Python, i.e. while a function is traced:
    wrap the traced body, not the call of an already compiled function. JAX
    caches traces per function object and the block is not part of that key, so
    trace inside it only functions that are not also traced outside it.

        with algorithm_choice.override(pool="reduce_window"):
            y = jax.vmap(step)(...)  # traced here, pooled with reduce_window
    """
    for name, registry in ((conv, _REGISTRIES["conv"]), (pool, _REGISTRIES["pool"])):
        if name is not None and name not in registry:
            raise ValueError(
                f"override gives unknown {registry.kind} {name!r}; "
                f"known: {', '.join(registry.names())}"
            )
    # A kind the block does not name keeps the enclosing block's choice.
    tokens = [
        var.set(name)
        for var, name in ((_CONV_OVERRIDE, conv), (_POOL_OVERRIDE, pool))
        if name is not None
    ]
    try:
        yield
    finally:
        for token in reversed(tokens):
            token.var.reset(token)


# The algorithms of the vmapped trial programs (`research.train.engine`, "vmap"), by
# backend; a kind not named keeps the plain programs' choice, and a kind whose
# environment variable is set keeps that. Both choices compute the same function.
VMAPPED_ALGORITHMS: dict[str, dict[str, str]] = {
    # CPU: "reshape" pooling, the plain step's default, is slower under vmap
    # (docs/performance-cpu.md).
    "cpu": {"pool": "reduce_window"},
    # GPU: no convolution with batch groups (the vmapped kernel gradient of "xla")
    # and no select_and_scatter (the gradient of "reduce_window"); issue 25.
    "gpu": {"conv": "trials", "pool": "reshape"},
}


def vmapped_override(backend: str | None = None):
    """The `override` block that vmapped trial programs are traced in on `backend`.

    `backend` defaults to `jax.default_backend()`; see `VMAPPED_ALGORITHMS`.
    """
    chosen = VMAPPED_ALGORITHMS.get(backend or jax.default_backend(), {})
    return override(
        **{kind: name for kind, name in chosen.items() if not os.environ.get(_ENV_VARS[kind])}
    )


# --------------------------------------------------------------------------- what ran


# What ran, per layer kind, while a `recording()` block traces (None: not recording),
# and the kind of the layer being traced (set by `conv` and `max_pool`).
_RAN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ran", default=None)
_KIND: contextvars.ContextVar[str] = contextvars.ContextVar("kind", default="")


@contextlib.contextmanager
def recording() -> Iterator[dict[str, dict[str, set[str]]]]:
    """Collects, while layers are traced in the block, the algorithms each kind of layer ran.

    Yields `{"conv": {kind: {algorithm, ...}}, "pool": {...}}`, filled as calls are
    traced, with the algorithm that computed them after any fallback: "reshape"
    pooling of overlapping windows is "reduce_window", "onednn" on a conv of few
    input channels is "tiled" (or "im2col"). Kinds: "conv", "conv shallow" (fewer
    than `conv_algorithms.ONEDNN_MIN_IN_CHANNELS` input channels), "conv grouped"
    (depthwise too), "conv dilated"; "max_pool non-overlapping", "max_pool
    overlapping or padded". `summarize` turns one family into a results field.
    """
    ran: dict[str, dict[str, set[str]]] = {"conv": {}, "pool": {}}
    token = _RAN.set(ran)
    try:
        yield ran
    finally:
        _RAN.reset(token)


def record(family: str, algorithm: str) -> None:
    """Notes, inside a `recording()` block, that `algorithm` computes the layer being traced."""
    ran = _RAN.get()
    if ran is not None:
        ran[family].setdefault(_KIND.get() or family, set()).add(algorithm)


@contextlib.contextmanager
def layer_kind(kind: str) -> Iterator[None]:
    """Within the block, `record` files what ran under layer kind `kind`."""
    token = _KIND.set(kind)
    try:
        yield
    finally:
        _KIND.reset(token)


def summarize(ran: dict[str, set[str]], resolved: str) -> str | dict[str, str]:
    """A results field: the one algorithm that ran, else `{layer kind: algorithm(s)}`.

    E.g. "reshape", or `{"max_pool non-overlapping": "reshape", "max_pool overlapping
    or padded": "reduce_window"}`; a kind that ran several is "a+b". `resolved` (the
    algorithm chosen) stands when no such layer ran.
    """
    algorithms = set().union(*ran.values()) if ran else set()
    if len(algorithms) > 1:
        return {kind: "+".join(sorted(names)) for kind, names in sorted(ran.items())}
    return algorithms.pop() if algorithms else resolved
