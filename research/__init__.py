"""research: a JAX/Flax codebase for convolutional neural networks.

Subpackages: `layers` (pure conv/pool functions and Flax modules), `models` (the
zoo), `data`, `optim`, `train`, `sweep`, `studies`, `viz`, `bench`. From Python:
`research.fit`, `research.run_sweep` and `research.restore` (`research/api.py`;
docs/python.md). See README.md.
"""

__version__ = "0.1.0"

_SUBPACKAGES = ("bench", "data", "layers", "models", "optim", "studies", "sweep", "train", "viz")
_API = ("load_config", "fit", "run_sweep", "restore", "RunResult", "SweepResult", "Restored")


def __getattr__(name: str):
    # The Python API on first use: `import research` stays light (no JAX), and the
    # command line, which never uses it, does not import it.
    if name in _API:
        from research import api  # late on purpose: see above

        return getattr(api, name)
    if name in _SUBPACKAGES:  # `research.data.load(...)` after a plain `import research`
        import importlib  # not at the top: dir(research) lists the API, not importlib

        return importlib.import_module(f"research.{name}")
    raise AttributeError(f"module 'research' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, *_SUBPACKAGES])
