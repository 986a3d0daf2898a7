"""Reading and checking the original dataset files, locally or from their canonical URLs.

Every byte a builder turns into examples passes through `check_md5` first, whether it
came from a local folder (`data_dir`, laid out like shared/data) or from a download.
Errors name the file, what was expected and how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
from collections.abc import Sequence

from etils import epath

# The one-line fix that every "file not found / wrong file" message ends with.
FIX_HINT = (
    "Fix: pass data_dir=... (config.data.data_dir) or set RESEARCH_DATA_DIR to a folder laid "
    "out like shared/data (mnist/, fashion_mnist/, cifar10/cifar-10-batches-bin/) holding the "
    "original files, or leave both unset on a connected machine to download them."
)


def md5_hex(data: bytes) -> str:
    """Returns the hex md5 of `data`."""
    return hashlib.md5(data).hexdigest()


def check_md5(data: bytes, expected: str, *, path: str, what: str = "file") -> None:
    """Raises ValueError naming `path` unless md5(`data`) == `expected`.

    Args:
      data: the bytes to check (raw file or decompressed content, see `what`).
      expected: the published md5 in hex.
      path: where the bytes came from (a file path or a URL), for the message.
      what: what was hashed, e.g. "file" or "decompressed content".
    """
    got = md5_hex(data)
    if got != expected:
        raise ValueError(
            f"checksum mismatch for {path}: md5 of the {what} is {got}, expected {expected} "
            f"(the published md5 of the original). The file is corrupt, truncated or a different "
            f"version; replace it with the original. {FIX_HINT}"
        )


def find_file(folder: epath.Path, names: Sequence[str]) -> epath.Path:
    """Returns `folder / name` for the first of `names` that exists.

    Raises:
      FileNotFoundError: naming the folder (or the missing folder) and every accepted name.
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {folder} does not exist; expected it to hold {' or '.join(names)}. "
            f"{FIX_HINT}"
        )
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"missing file in {folder}: expected {' or '.join(names)}. "
        f"Found: {sorted(p.name for p in folder.iterdir()) or 'nothing'}. {FIX_HINT}"
    )


def decompress(data: bytes, *, path: str) -> bytes:
    """Decompresses gzip (`.gz`) or xz (`.xz`) bytes by `path`'s suffix; other paths pass through.

    A corrupt stream is reported as a ValueError naming `path` (xz carries its own CRC, so a
    flipped byte usually fails here before any md5 is computed).
    """
    try:
        if path.endswith(".gz"):
            return gzip.decompress(data)
        if path.endswith(".xz"):
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(
            f"cannot decompress {path}: {e}. The file is corrupt or truncated; replace it with "
            f"the original. {FIX_HINT}"
        ) from e
    return data


def download(dl_manager, urls: Sequence[str], md5: str) -> tuple[str, bytes]:
    """Downloads one file, trying mirror `urls` in order, and checks its md5.

    Uses TFDS's download manager (plain `requests`, no TensorFlow), so downloads are
    cached under `<cache_dir>/downloads` and not fetched twice.

    Returns:
      (the URL that worked, the file's bytes).

    Raises:
      ValueError: a mirror served bytes with the wrong md5 (not retried: the mirrors
        serve the same file, so a mismatch means something is wrong on this side).
      OSError: every mirror failed; the message lists each mirror's error.
    """
    errors = []
    for url in urls:
        try:
            path = dl_manager.download(url)
        except Exception as e:  # any network failure: try the next mirror
            errors.append(f"{url}: {type(e).__name__}: {e}")
            continue
        data = epath.Path(path).read_bytes()
        check_md5(data, md5, path=f"{url} (downloaded to {os.fspath(path)})")
        return url, data
    raise OSError("could not download from any mirror:\n  " + "\n  ".join(errors) + f"\n{FIX_HINT}")
