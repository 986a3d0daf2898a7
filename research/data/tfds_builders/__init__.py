"""The project's own TFDS builders, which run without TensorFlow.

`Mnist`, `FashionMnist` and `Cifar10` read the ORIGINAL files (IDX `.gz`; CIFAR-10 binary
`.bin` or `.bin.xz`), check their md5s, and write `array_record` files that are read back
with `builder.as_data_source()` (random access, no TensorFlow). `research.data.load` is
the way in; use the builders directly only to inspect `builder.info`.

What works without TensorFlow, and what does not (tensorflow-datasets 4.9.10, measured):
  * `tfds.features.Image` needs TF to PNG-encode, so images are
    `tfds.features.Tensor(dtype=uint8, encoding=BYTES)`: raw pixels, no codec.
  * Only `file_format="array_record"` can be written and read back without TF
    (`as_dataset` returns a `tf.data.Dataset`; the default tfrecord needs TF too).
  * `as_data_source(deserialize_method=DESERIALIZE_NO_DECODE)` calls
    `tf.train.Example.FromString`; RAW_BYTES and the default DESERIALIZE_AND_DECODE work.
  * `dl_manager.download` works (plain `requests`) but `dl_manager.extract` and
    `download_and_extract` use `tf.io.gfile`, so the CIFAR-10 archive is read with `tarfile`.
  * `dl_manager.manual_dir` only accepts a non-empty folder and raises an AssertionError
    otherwise, so the local folder is passed to the builder itself (`source_dir=`) to give
    errors that name the missing file and the fix.
  * `dataset_info_from_configs` reads README/CITATIONS from the package folder; the
    builders build `tfds.core.DatasetInfo` directly and set `pkg_dir_path`.
  * Builders are not registered in the TFDS catalog (`skip_registration=True`) and are
    named `research_*`, so they never clash with the catalog's `mnist` in a shared cache.
"""

from research.data.tfds_builders.base import SourceBuilder
from research.data.tfds_builders.cifar10 import Cifar10
from research.data.tfds_builders.mnist import FashionMnist, Mnist

__all__ = ["Cifar10", "FashionMnist", "Mnist", "SourceBuilder"]
