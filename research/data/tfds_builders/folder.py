"""`folder:PATH`: a user's own images as a TFDS builder (Pillow decoding, no TensorFlow).

Layout: `PATH/train/<class>/*.png|jpg|jpeg`, with optional `PATH/val/<class>/...` and
`PATH/test/<class>/...`. Class names are the folder names of train/, in sorted order;
label i is the i-th name. val/ and test/ may hold a subset of those classes.

Policies (each a stated choice, not an accident):
  * Size: `image_size=0` (the default of `config.data.image_size`) keeps pixels as they
    are and requires every image to have one size; otherwise the error names two files
    of different sizes. `image_size=N` scales each image so that it covers N x N and
    crops the centre (`resize.fit`, the policy every dataset's `data.image_size` uses):
    the aspect ratio is kept, the borders of the longer side are cut.
  * Orientation: a photo's EXIF orientation is applied first (`ImageOps.exif_transpose`),
    as a viewer shows it.
  * Channels: 1 (grayscale) if every image is grayscale, else 3 (RGB); an alpha channel
    is dropped and palette images are expanded.
  * Test split: without test/, for each class, the first round(TEST_FRACTION * n) of its
    training images ordered by the SHA-256 of their relative path are held out as test.
    Deterministic, and adding an image moves no other image between splits. The
    dataset's notes say so.
  * Symbolic links: a link to an image or class folder inside PATH is followed; one
    leading outside PATH is refused with one line naming it (what is trained on stays
    under the folder given); a dangling link is skipped with a warning naming it.
  * Errors: an unreadable or corrupt image stops the build with one line naming the
    file. TFDS writes into a temporary folder renamed at the end, so a failed build
    leaves nothing behind that a later run could take for a finished one.

Images are decoded once, when the dataset is built, and stored as raw uint8 pixels in
the same `array_record` layout as every other builder of this project (one reader
for all). The cache is keyed by the folder's absolute path and a fingerprint of its
files (relative names, sizes, modification times) and the size policy: a changed
folder is built again under a new key, an unchanged one is never rebuilt. Raw pixels
take room: 150 KB per 224 x 224 RGB image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow_datasets as tfds

from research.data.tfds_builders import resize
from research.data.tfds_builders.base import SourceBuilder

log = logging.getLogger(__name__)

PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared in lower case
TEST_FRACTION = 0.2  # of each class, held out as test when there is no test/ folder
# Part of the cache key: bump it when the same files would now give different records.
BUILD_FORMAT = 1
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_DECODE_BLOCK = 256  # images decoded ahead of the writer (bounds memory)


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a folder holds, found by listing it (no image is opened).

    Attributes:
      root: the folder's absolute path.
      classes: class names (train/'s subfolders), sorted.
      files: split -> [(path relative to root, label)], classes in order, names sorted.
      fingerprint: SHA-256 of every listed file's relative path, size and mtime.
      ignored: files in class folders that are not .png/.jpg/.jpeg images.
    """

    root: str
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]
    fingerprint: str
    ignored: int


def _fail(root: str, message: str):
    raise ValueError(f"{PREFIX}{root}: {message}")


def scan(root: str | os.PathLike) -> FolderScan:
    """Lists `root`'s images and fingerprints them.

    Raises:
      FileNotFoundError: `root` or `root/train` is missing.
      ValueError: no class folders, a class without images, or a val/test class
        that train/ does not have.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(os.path.join(root, "train")):
        what = "has no train/ folder" if os.path.isdir(root) else "does not exist"
        raise FileNotFoundError(
            f"{PREFIX}{root} {what}; expected {root}/train/<class>/*.png|jpg|jpeg "
            "(and optionally val/ and test/ laid out the same way)"
        )
    real_root = os.path.realpath(root)
    dangling: list[str] = []

    def kept(entry: os.DirEntry, kind: str) -> bool:
        """Whether `entry` is a `kind` ("dir" or "file") to use; refuses links leaving root."""
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            relative = os.path.relpath(entry.path, root)
            if not os.path.exists(target):
                dangling.append(relative)
                return False
            if os.path.commonpath([real_root, target]) != real_root:
                _fail(
                    root,
                    f"{relative} is a symbolic link to {target}, outside the folder; "
                    "copy it in, or give a folder that holds both",
                )
        return entry.is_dir() if kind == "dir" else entry.is_file()

    digest = hashlib.sha256()
    files: dict[str, list[tuple[str, int]]] = {}
    ignored = 0
    classes: tuple[str, ...] = ()
    for split in ("train", "val", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        names = sorted(e.name for e in os.scandir(split_dir) if e.name[0] != "." and kept(e, "dir"))
        if split == "train":
            classes = tuple(names)
            if not classes:
                _fail(root, "train/ has no class folders; expected train/<class>/<images>")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            _fail(root, f"{split}/ has classes that train/ lacks: {', '.join(unknown)}")
        files[split] = []
        for name in names:
            entries = sorted(
                (e for e in os.scandir(os.path.join(split_dir, name)) if kept(e, "file")),
                key=lambda e: e.name,
            )
            images = [e for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES)]
            ignored += sum(1 for e in entries if e.name[0] != ".") - len(images)
            if split == "train" and not images:
                _fail(root, f"class folder train/{name} has no .png/.jpg/.jpeg images")
            for entry in images:
                stat = entry.stat()
                relative = f"{split}/{name}/{entry.name}"
                digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
                files[split].append((relative, classes.index(name)))
        if split != "train" and not files[split]:
            del files[split]  # an empty val/ or test/ is as good as none
    if dangling:
        log.warning(
            "%s%s: skipped %d dangling symbolic link(s): %s",
            PREFIX,
            root,
            len(dangling),
            ", ".join(dangling[:5]) + (", ..." if len(dangling) > 5 else ""),
        )
    return FolderScan(root, classes, files, digest.hexdigest(), ignored)


def config_name(folder: FolderScan, image_size: int) -> str:
    """The cache key: the folder's name, then a hash of path, files and size policy."""
    key = hashlib.sha256(
        f"{BUILD_FORMAT}\n{folder.root}\n{image_size}\n{TEST_FRACTION}\n{folder.fingerprint}".encode()
    ).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(folder.root)).strip("_")[:40]
    return f"{slug or 'folder'}_{key[:16]}"


def carve_test(folder: FolderScan) -> tuple[list, list]:
    """(train, test) file lists when there is no test/: TEST_FRACTION of each class to test."""
    train, test = [], []
    for label in range(len(folder.classes)):
        members = [f for f in folder.files["train"] if f[1] == label]
        by_hash = sorted(members, key=lambda f: hashlib.sha256(f[0].encode()).hexdigest())
        held = {f[0] for f in by_hash[: round(TEST_FRACTION * len(members))]}
        train += [f for f in members if f[0] not in held]
        test += [f for f in members if f[0] in held]
    return train, test


def _cannot_read(root: str, relative: str, err: Exception):
    path = os.path.join(root, relative)
    _fail(root, f"cannot read image {path} ({type(err).__name__}: {err}); fix or remove it")


def _header(root: str, relative: str) -> tuple[str, int, int]:
    """(mode, width, height) as shown, from the file's header and EXIF orientation."""
    from PIL import Image  # noqa: PLC0415 - only building needs Pillow

    try:
        with Image.open(os.path.join(root, relative)) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _ROTATED:
                width, height = height, width
            return image.mode, width, height
    except Exception as err:  # noqa: BLE001 - any failure: name the file, one line
        _cannot_read(root, relative, err)


def image_geometry(folder: FolderScan, image_size: int) -> tuple[int, int, int]:
    """`(H, W, C)` of the stored images, from the files' headers (no pixel is decoded).

    Raises:
      ValueError: an unreadable file, or (image_size=0) two files of different sizes.
    """
    gray = True
    first = None
    for split_files in folder.files.values():
        for relative, _ in split_files:
            mode, width, height = _header(folder.root, relative)
            gray = gray and mode in _GRAY_MODES
            if image_size:
                continue
            if first is None:
                first = (relative, width, height)
            elif (width, height) != first[1:]:
                _fail(
                    folder.root,
                    f"images differ in size: {first[0]} is {first[1]}x{first[2]}, {relative} is "
                    f"{width}x{height}. Set data.image_size=N to scale and centre-crop all to "
                    "N x N, or make them one size",
                )
    channels = 1 if gray else 3
    if image_size:
        return (image_size, image_size, channels)
    return (first[2], first[1], channels)


def decode(root: str, relative: str, shape: tuple[int, int, int], image_size: int) -> np.ndarray:
    """One image file -> uint8 `shape` pixels, by the module's policies."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    try:
        with Image.open(os.path.join(root, relative)) as image:
            image = ImageOps.exif_transpose(image)
            image = image.convert("L" if shape[2] == 1 else "RGB")
            if image_size:
                image = resize.fit(image, image_size)
            pixels = np.asarray(image, np.uint8)
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt file
        _cannot_read(root, relative, err)
    if pixels.shape[:2] != shape[:2]:
        _fail(root, f"{relative} decoded to {pixels.shape[:2]}, expected {shape[:2]}")
    return pixels.reshape(shape)


class Folder(SourceBuilder, skip_registration=True):
    """A folder of images, one subfolder per class (see the module docstring).

    Args:
      folder: the `scan` of the folder.
      image_size: the size policy (0: keep one common size; N: N x N).
      **kwargs: passed to `SourceBuilder` (`data_dir` is the cache).
    """

    name = "research_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Pillow-decoded images as uint8 Tensor features."}
    DESCRIPTION = "A user's folder of images, one subfolder per class."
    HOMEPAGE = ""
    CITATION = ""
    LICENSE = "the folder owner's"

    def __init__(self, *, folder: FolderScan, image_size: int, **kwargs):
        self.folder = folder
        self.image_size = image_size
        # Per-instance features: the class names and image shape of this folder.
        self.CLASS_NAMES = folder.classes
        self.IMAGE_SHAPE = image_geometry(folder, image_size)
        config = tfds.core.BuilderConfig(
            name=config_name(folder, image_size), description=f"images of {folder.root}"
        )
        super().__init__(source_dir=None, config=config, **kwargs)

    def reads_local_files(self) -> bool:
        return True  # never downloads

    def _read_splits(self, dl_manager):
        raise NotImplementedError  # examples are generated file by file instead

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        files = dict(self.folder.files)
        notes = []
        if "test" not in files:
            files["train"], files["test"] = carve_test(self.folder)
            notes.append(
                f"{PREFIX}{self.folder.root} has no test/ folder: {len(files['test'])} of "
                f"{len(self.folder.files['train'])} train/ images ({TEST_FRACTION:.0%} of each "
                "class, the first by SHA-256 of their path) are held out as the test split, "
                "defined in research.data.tfds_builders.folder"
            )
        if self.folder.ignored:
            notes.append(f"{self.folder.ignored} files that are not .png/.jpg/.jpeg were ignored")
        if self.image_size:
            notes.append(resize.note(self.image_size))
        self.info.metadata["source"] = self.folder.root
        self.info.metadata["fingerprint"] = self.folder.fingerprint
        self.info.metadata["notes"] = notes
        return {split: self._generate(split_files) for split, split_files in files.items()}

    def _generate(self, split_files: list[tuple[str, int]]) -> Iterator:
        def one(item):
            return decode(self.folder.root, item[0], self.IMAGE_SHAPE, self.image_size)

        # Pillow releases the GIL while decoding: one thread per core.
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for start in range(0, len(split_files), _DECODE_BLOCK):
                block = split_files[start : start + _DECODE_BLOCK]
                for offset, (pixels, (_, label)) in enumerate(
                    zip(pool.map(one, block), block, strict=True)
                ):
                    yield start + offset, {"image": pixels, "label": label}
