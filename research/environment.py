"""The process-wide settings a run needs before JAX first uses a device.

`setup_environment(config)` is what the command line and the Python API
(`research.fit`, `research.sweep_run`) both call. It is idempotent: calling it again
with the same config changes nothing. What it touches, and why each is process-wide:

- **XLA_FLAGS** (the environment variable XLA reads once, when the backend starts):
  the determinism flags of `config.determinism` on GPU. Flags the caller already set
  are kept; ours are appended only where absent.
- **the persistent compilation cache** (`jax_compilation_cache_dir`), unless the
  caller already chose one: a hit runs the very executable a fresh compile would.
- **multi-host start-up** (`jax.distributed.initialize`) when JAX_COORDINATOR_ADDRESS
  is set, once per process.

How bitwise reproducibility on GPU is obtained (`config.deterministic=True`):

- `"ops"` (the default): `--xla_gpu_deterministic_ops`. XLA switches its autotuning
  off with this flag, which costs speed (the first H200 run: 3.2x on the speedrun).
- `"pinned"`: `--xla_gpu_exclude_nondeterministic_ops`, which keeps autotuning, plus
  an autotune results file dumped by the first process and loaded by every later one,
  so that all processes run the same algorithms. It becomes the default once the
  accelerator check shows two processes bit-identical with it.

The autotune file is keyed by what decides its contents: the GPU's name, the jax and
jaxlib versions, and the program's config (model, its overrides, batch size, compute
dtype, trial group). It lives under `<compilation cache>/autotune/`, or
`RESEARCH_AUTOTUNE_DIR`. `determinism_record()` gives what pinned the algorithms for
`results.json`: the mode, the flags, and the file with its sha256. On CPU every one
of these flags is a no-op (XLA's CPU programs are deterministic), and no file is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

CACHE_ENV_VAR = "RESEARCH_COMPILATION_CACHE"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "research", "xla")
AUTOTUNE_ENV_VAR = "RESEARCH_AUTOTUNE_DIR"

# The ways `deterministic=True` is made to hold on GPU: XLA flags for each mode.
DETERMINISM_FLAGS = {
    "pinned": ("--xla_gpu_exclude_nondeterministic_ops=true",),
    "ops": ("--xla_gpu_deterministic_ops=true",),
}

# What setup_environment did in this process (the last call's answer): read by
# determinism_record() when a run writes results.json.
_state: dict = {}


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


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from `nvidia-smi`, or None (no GPU, or JAX held to CPU).

    Asked before JAX starts, since the flags must be set before its backend is.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and "cuda" not in platforms and "gpu" not in platforms:
        return None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def _program_key(config) -> dict:
    """The config fields that decide which kernels XLA autotunes (shapes, dtype, model)."""
    model = config.model
    overrides = model.get("overrides", {})
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    sweep = config.get("sweep", None)
    return {
        "model": model.name,
        "overrides": overrides,
        "batch_size": int(config.batch_size),
        "compute_dtype": str(config.get("compute_dtype", "")),
        "dataset": str(config.data.get("name", "")),
        "image_size": str(config.data.get("image_size", "")),
        "parallel": str(sweep.get("parallel", "")) if sweep is not None else "",
        "group_size": str(sweep.get("group_size", "")) if sweep is not None else "",
    }


def autotune_file(config, gpu: str) -> str:
    """The autotune results file for this program on this GPU with these versions."""
    # heavy: this module loads with the command line, before any JAX
    import jax
    import jaxlib

    key = {
        "gpu": gpu,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "program": _program_key(config),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = os.environ.get(AUTOTUNE_ENV_VAR) or os.path.join(
        compilation_cache_dir() or os.path.expanduser(DEFAULT_CACHE_DIR), "autotune"
    )
    return os.path.join(os.path.expanduser(root), f"{model_slug(config)}-{digest}.textproto")


def model_slug(config) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(config.model.name))


def determinism_flags(config, gpu: str | None) -> tuple[str, ...]:
    """The XLA flags `config.deterministic` / `config.determinism` ask for on this machine.

    Raises:
      ValueError: `config.determinism` is not one of DETERMINISM_FLAGS.
    """
    mode = config.get("determinism", "ops")
    if mode not in DETERMINISM_FLAGS:
        raise ValueError(
            f"config.determinism={mode!r} is not a determinism mode; valid: "
            f"{', '.join(sorted(DETERMINISM_FLAGS))}"
        )
    if not config.deterministic:
        return ()
    # The mode's flags are set on CPU too (a no-op there), so results.json's xla_flags
    # read the same on every platform; the autotune file needs a GPU to be about.
    flags = DETERMINISM_FLAGS[mode]
    if mode == "pinned" and gpu is not None:
        path = autotune_file(config, gpu)
        if os.path.exists(path):
            flags += (f"--xla_gpu_load_autotune_results_from={path}",)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            flags += (f"--xla_gpu_dump_autotune_results_to={path}",)
    return flags


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def setup_environment(config) -> dict:
    """Applies the process-wide settings `config` needs; returns what it did.

    Safe to call more than once: flags already in XLA_FLAGS (by name) are left as
    they are, a compilation cache the caller chose is kept, and multi-host
    start-up happens once. Call it before anything uses a device; after that,
    XLA has read its flags and a change would not take effect.
    """
    import jax  # heavy: this module loads with the command line, before any JAX

    gpu = gpu_name()
    current = os.environ.get("XLA_FLAGS", "").split()
    present = {_flag_name(f) for f in current}
    wanted = determinism_flags(config, gpu)
    added = [f for f in wanted if _flag_name(f) not in present]
    if added:
        os.environ["XLA_FLAGS"] = " ".join(current + added)

    cache = compilation_cache_dir()
    # RESEARCH_COMPILATION_CACHE, when set, is the user's choice; otherwise a cache the
    # caller already gave jax is kept, and only a process with none gets the default.
    chosen = CACHE_ENV_VAR in os.environ or not jax.config.jax_compilation_cache_dir
    if cache is not None and chosen and jax.config.jax_compilation_cache_dir != cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        # Keep every program that took over a second to compile (tiny ones are not worth a file).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        # Multi-host: the usual environment (one process per host, or per group of devices).
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    _state.clear()
    _state.update(
        gpu=gpu,
        determinism=config.get("determinism", "ops") if config.deterministic else None,
        flags=[f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_gpu")],
    )
    return dict(_state)


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def determinism_record() -> dict:
    """What pinned the GPU's algorithms in this process, for results.json.

    `determinism`: the mode (None when `deterministic=False` or before
    setup_environment); `determinism_flags`: the GPU flags XLA read;
    `autotune_file` and `autotune_sha256`: the autotune results loaded or dumped
    (None on CPU, or where no program has been autotuned yet).
    """
    flags = list(_state.get("flags") or [])
    path = None
    for flag in flags:
        name, _, value = flag.partition("=")
        if name in ("--xla_gpu_load_autotune_results_from", "--xla_gpu_dump_autotune_results_to"):
            path = value
    return {
        "determinism": _state.get("determinism"),
        "determinism_flags": flags,
        "autotune_file": path,
        "autotune_sha256": _sha256(path) if path else None,
    }
