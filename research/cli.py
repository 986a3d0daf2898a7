"""Command-line plumbing shared by the scripts: flag parsing with one-line errors."""

from __future__ import annotations

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
