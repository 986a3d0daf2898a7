"""Import published ImageNet weights (torchvision, Keras) as a finished run of ours.

    python scripts/import_weights.py --source torchvision --model resnet50 --out DIR
    python scripts/import_weights.py --source keras --model xception --out DIR
    python scripts/import_weights.py --source torchvision --model resnet18 --out DIR \
        --weights-file resnet18-f37072fd.pth        # offline: a local .pth or .safetensors

Without --weights-file the published weights come through torchvision's or
Keras's own download and cache (`torch.hub`, `keras.utils.get_file`; ~/.cache
/torch/hub/checkpoints and ~/.keras/models). Keras takes `.h5` / `.weights.h5`
files. Files are read as data, never as code (see research/models/pretrained/files.py).

DIR then holds a checkpoint, config.json, results.json and pretrained.json (the
source's preprocessing, the weights file's sha256), and a training run starts
from it with `--config.transfer.pretrained=DIR`.

Exit codes: 0 done; 2 bad input (one line: an unknown model, a missing file,
a weight missing or of the wrong shape, a file that would run code, DIR not
empty). Nothing is written to DIR unless everything succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from urllib.parse import urlparse


def _download(source: str, entry) -> str:
    """The published weights file, through the source library's own download and cache."""
    filename = os.path.basename(urlparse(entry.url).path)
    if source == "torchvision":
        import torch

        # torch.hub caches in <hub dir>/checkpoints and checks the sha256 prefix in the name.
        torch.hub.load_state_dict_from_url(
            entry.url, progress=True, check_hash=True, weights_only=True
        )
        return os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    return keras.utils.get_file(
        filename, entry.url, cache_subdir="models", file_hash=entry.file_hash or None
    )


def _is_published(source: str, entry, path: str, sha256: str) -> bool:
    """Whether `path` is the published file: torchvision's names carry a sha256 prefix,
    Keras checks an md5."""
    filename = os.path.basename(urlparse(entry.url).path)
    if source == "torchvision":
        prefix = re.search(r"-([a-f0-9]+)\.", filename)
        return bool(prefix) and sha256.startswith(prefix.group(1))
    if entry.file_hash:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest() == entry.file_hash
    return os.path.basename(path) == filename


def main(argv: list[str] | None = None) -> int:
    from research import models
    from research.models import pretrained
    from research.train import imported

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, choices=sorted(pretrained.SOURCES))
    parser.add_argument("--model", required=True, help="a zoo name, e.g. resnet50")
    parser.add_argument("--out", required=True, help="the run folder to create (new or empty)")
    parser.add_argument("--weights-file", default="", help="a local weights file (offline)")
    args = parser.parse_args(argv)

    try:
        entry = pretrained.SOURCES[args.source].get(args.model)
        models.spec(args.model)  # in this checkout's zoo, before anything is downloaded
        out = os.path.abspath(args.out)
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise ValueError(f"--out {args.out!r} already exists and is not empty")
        if args.weights_file:
            path = args.weights_file
        else:
            try:
                path = _download(args.source, entry)
            except ImportError:
                raise
            except Exception as err:  # noqa: BLE001 - Keras's get_file raises a bare Exception
                detail = re.sub(r"\s+", " ", str(err))[:200]
                raise ValueError(
                    f"could not download {entry.url} ({type(err).__name__}: {detail}); "
                    f"offline, pass --weights-file PATH"
                ) from None
        if args.source == "torchvision":
            variables = pretrained.from_torchvision(
                args.model, pretrained.files.read_state_dict(path)
            )
        else:
            variables = pretrained.from_keras(args.model, path)
        sha256 = pretrained.files.sha256_file(path)
        published = _is_published(args.source, entry, path, sha256)
        record = {
            "source": args.source,
            # A local file is named as such unless its hash shows it is the published one.
            "weights": entry.weights if published else "local file",
            "published_weights": entry.weights,
            "weights_url": entry.url,
            "weights_file": os.path.abspath(path),
            "weights_sha256": sha256,
            "is_published_file": published,
            "preprocessing": entry.preprocessing.as_dict(),
        }
        imported.write_run(out, model=args.model, variables=variables, record=record)
    except ImportError as err:
        print(
            f"error: {err.name or err} is needed to read these weights: "
            f"pip install -r requirements-test.txt",
            file=sys.stderr,
        )
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    count = models.param_count(variables)
    print(f"{args.source} {args.model}: {count:,} parameters, weights sha256 {sha256[:16]}…")
    print(f"wrote {out}; train from it with --config.transfer.pretrained={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
