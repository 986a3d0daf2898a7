"""Command-line plumbing shared by the scripts: flag parsing with one-line errors,
and the process-wide settings that must precede the first use of a device."""

from __future__ import annotations

import os
import re
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override reported as one line.

    A `--config.a.b=value` naming a field that does not exist raises deep inside
    ml_collections; this turns that (and any other flag error) into
    `error: ...` on stderr and exit status 2, without a traceback.
    """
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        text = str(err).replace("\\n", " ").replace("\\'", "'")
        detail = re.sub(r"\s+", " ", text).strip(" '\"")
        overrides = [a.split("=")[0] for a in argv[1:] if re.match(r"--config\.", a)]
        bad = [o for o in overrides if o.rsplit(".", 1)[-1] in detail]
        where = f"bad config override {bad[0]}: " if bad else ""
        if isinstance(err, (AttributeError, KeyError)):
            hint = re.search(r'Did you mean "[^"]+"', text)
            detail = "the config has no such field" + (f"; {hint.group(0)}?" if hint else "")
        print(f"error: {where}{detail}", file=sys.stderr)
        sys.exit(2)


def load_config(config_flag):
    """The parsed config, or one line on stderr and exit 2 if its file does not load."""
    try:
        config = config_flag.value
        config.get("seed")  # config_flags reports a failed load only on first access
    except OSError as err:
        first = " ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        print(f"error: --config could not be loaded: {first or err}", file=sys.stderr)
        sys.exit(2)
    return config


CACHE_ENV_VAR = "RESEARCH_COMPILATION_CACHE"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "research", "xla")


def compilation_cache_dir() -> str | None:
    """Where compiled programs are kept between processes, or None when switched off.

    `RESEARCH_COMPILATION_CACHE` names the folder; "off" (or "0", "") switches the
    cache off; unset means `~/.cache/research/xla`. The cache keys on the whole
    program (HLO, compile options, backend, jax version), so a hit runs the very
    executable a fresh compile would give: same numbers, no compile time. It is
    what lets a sweep's trials that differ only in seed, or MNIST and
    Fashion-MNIST trials of one model (same shapes), compile once.
    """
    value = os.environ.get(CACHE_ENV_VAR, DEFAULT_CACHE_DIR).strip()
    if value.lower() in ("", "0", "off", "false", "no"):
        return None
    return os.path.expanduser(value)


def setup_environment(config) -> None:
    """Process-wide settings that must precede the first use of a device.

    Deterministic GPU ops when `config.deterministic`; the persistent compilation
    cache (`compilation_cache_dir`); multi-host initialisation from
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (gloo collectives
    on CPU).
    """
    if config.deterministic and "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
        # Deterministic reductions and convolutions on GPU (CPU is deterministic already).
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"
        ).strip()
    import jax

    cache = compilation_cache_dir()
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)
        # Keep every program that took over a second to compile (tiny ones are not worth a file).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # Multi-host: the usual environment (one process per host, or per group of devices).
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
