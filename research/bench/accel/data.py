"""shared/data in pieces a device call can carry (under 64 MiB each), and merged back.

    pack_data("../shared/data", ".gpu-data")   # .gpu-data/1, 2, 3 (`make accel-data`)
    data_root(".gpu-data")                     # .gpu-data/merged: one tree of links

A machine given back loses what earlier calls carried, so `missing_pieces` lets the
check refuse a folder that holds only some of them.
"""

from __future__ import annotations

import os
import shutil

# Data pieces for the device machine (`make accel-data`): each under 64 MiB with the tree.
DATA_PIECES = {
    "1": [
        "mnist",
        "cifar10/cifar-10-batches-bin/batches.meta.txt",
        "cifar10/cifar-10-batches-bin/test_batch_first1000.bin.xz",
        "cifar10/cifar-10-batches-bin/data_batch_1.bin.xz",
    ],
    "2": [f"cifar10/cifar-10-batches-bin/data_batch_{i}.bin.xz" for i in (2, 3)],
    "3": [f"cifar10/cifar-10-batches-bin/data_batch_{i}.bin.xz" for i in (4, 5)],
}


def pack_data(source: str, dest: str) -> None:
    """Copies `source` (laid out like shared/data) into `dest/1`, `dest/2`, `dest/3`."""
    for piece, paths in DATA_PIECES.items():
        size = 0
        for rel in paths:
            src, dst = os.path.join(source, rel), os.path.join(dest, piece, rel)
            if not os.path.exists(src):
                raise FileNotFoundError(f"{src} is missing (is --pack-data a shared/data folder?)")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(src):
                shutil.copytree(src, dst, dirs_exist_ok=True)
                size += sum(
                    os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs
                )
            else:
                shutil.copy2(src, dst)
                size += os.path.getsize(dst)
        print(f"{os.path.join(dest, piece)}: {size / 2**20:.1f} MiB")


def missing_pieces(path: str) -> tuple[list[str], list[str]]:
    """`(present, missing)` pieces of `path`; both empty for a folder not made of pieces."""
    present = [p for p in DATA_PIECES if os.path.isdir(os.path.join(path, p))]
    if not present:
        return [], []
    return present, sorted(set(DATA_PIECES) - set(present))


def data_root(path: str) -> str:
    """`path` itself, or, if it holds the pieces of `pack_data`, a merged tree of links."""
    pieces = [os.path.join(path, p) for p in DATA_PIECES if os.path.isdir(os.path.join(path, p))]
    if not pieces:
        return path
    merged = os.path.join(path, "merged")
    for piece in pieces:
        for folder, _, files in os.walk(piece):
            for name in files:
                src = os.path.join(folder, name)
                dst = os.path.join(merged, os.path.relpath(src, piece))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if not os.path.lexists(dst):
                    os.symlink(os.path.abspath(src), dst)
    return merged
