"""Command-line plumbing shared by the scripts: flag parsing with one-line errors,
and the process-wide settings that must precede the first use of a device."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import sys

from absl import flags

from research.environment import (  # noqa: F401  (the scripts' set-up, one place)
    CACHE_ENV_VAR,
    compilation_cache_dir,
    setup_environment,
)

# Model constructor overrides given on the command line as --config.model.overrides.NAME=VALUE.
# `model.overrides` starts empty, and config_flags can only set fields that exist, so
# these are taken out of argv before absl parses it and set on the loaded config.
_MODEL_OVERRIDE = re.compile(r"--config\.model\.overrides\.([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_model_overrides: dict[str, str] = {}

EXIT_BAD_INPUT = 2  # a bad flag, config field, path or value: one line names it
EXIT_DIVERGED = 3  # the loss became NaN/Inf (train.py)
EXIT_TRIALS_FAILED = 4  # some trials failed sweep.max_retries times; the rest finished (sweep.py)
EXIT_OS_ERROR = 74  # the operating system refused a write (disk full, read-only): EX_IOERR


def fail(message: str, code: int = EXIT_BAD_INPUT):
    """Prints `error: message` on stderr (one line) and exits with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: what failed, where, and why."""
    where = f" {err.filename}" if err.filename else ""
    return f"cannot write{where}: {err.strerror or err}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override reported as one line.

    A `--config.a.b=value` naming a field that does not exist raises deep inside
    ml_collections, and a config file that fails to load hides its error in a
    flattened traceback; this turns those (and any other flag error) into
    `error: ...` on stderr and exit status 2, without a traceback.
    """
    _stop_on_sigterm()
    kept = []
    for arg in argv:
        match = _MODEL_OVERRIDE.fullmatch(arg)
        if match:
            _model_overrides[match.group(1)] = match.group(2)
        else:
            kept.append(arg)
    if len(kept) != len(argv):
        sys.argv[:] = kept  # config_flags reads sys.argv itself to find override flags
    try:
        return flags.FLAGS(kept)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        text = str(err).replace("\\n", " ").replace("\\'", "'")
        if "Error whilst parsing config file" in text:
            fail(_config_file_error(text, kept))
        detail = re.sub(r"\s+", " ", text).strip()
        while len(detail) > 1 and detail[0] == detail[-1] and detail[0] in "'\"":
            detail = detail[1:-1]  # a KeyError's quotes (`"'optim'"`), not the value's
        overrides = [a.split("=")[0] for a in kept[1:] if re.match(r"--config\.", a)]
        bad = [o for o in overrides if o.rsplit(".", 1)[-1] in detail]
        # A missing section names only its first missing part (`sweep.axes.optim.x`: 'optim').
        bad = bad or [o for o in overrides if detail in o.split(".")[1:]]
        where = f"bad config override {bad[0]}: " if bad else ""
        if isinstance(err, (AttributeError, KeyError)):
            hint = re.search(r'Did you mean "[^"]+"', text)
            detail = "the config has no such field" + (f"; {hint.group(0)}?" if hint else "")
        fail(f"{where}{detail}")


def _stop_on_sigterm() -> None:
    """SIGTERM outside the training loop (start-up: imports, data, compiling) ends the
    command at once, as before, but with one line saying so, and exit 143. The training
    loop installs its own handler, which checkpoints first.

    An exception raised here could land in a garbage-collector callback, which Python
    prints and ignores: the process ends as the default action would (the workdir's
    lock is an flock, released by the operating system)."""

    def stop(signum, frame):
        print("stopped: SIGTERM outside training (nothing to save)", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)

    with contextlib.suppress(ValueError):  # only the main thread may install one
        signal.signal(signal.SIGTERM, stop)


def _config_file_error(text: str, argv: list[str]) -> str:
    """One line from config_flags' flattened traceback of a config file that failed to load."""
    given = _config_flag_value(argv)
    path, _, variant = given.partition(":")
    last = re.findall(r"(\w+(?:Error|Exception)): (.*?)(?=\s+\w+(?:Error|Exception): |$)", text)
    kind, message = last[-1] if last else ("", text)
    if kind == "TypeError" and "positional argument" in message and variant:
        return (
            f"--config={given}: {path} has no variants (its get_config() takes no "
            f"argument); drop ':{variant}'"
        )
    return f"--config={given}: {message.strip()}"


def _config_flag_value(argv: list[str]) -> str:
    """What `--config=FILE` or `--config FILE` gave (the last one, as absl reads it)."""
    given = "--config"
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            given = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            given = argv[i + 1]
    return given


def load_config(config_flag):
    """The parsed config, or one line on stderr and exit 2 if its file does not load.

    Also applies the `--config.model.overrides.NAME=VALUE` arguments (VALUE read as
    a Python literal: `True`, `16`, `(1, 1)`, or else as a string).
    """
    try:
        config = config_flag.value
        config.get("seed")  # config_flags reports a failed load only on first access
    except (OSError, ValueError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[1:]) or str(err)
        detail = detail.replace(
            "Configuration is not available because of an earlier failure to load: ", ""
        )
        fail(f"--config could not be loaded: {detail}")
    if _model_overrides:
        if "model" not in config or "overrides" not in config.model:
            fail("--config.model.overrides.*: the config has no model.overrides section")
        with config.unlocked():
            for name, text in _model_overrides.items():
                config.model.overrides[name] = _literal(text)
    return config


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
