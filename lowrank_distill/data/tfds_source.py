"""tensorflow-datasets builders: offline preparation and TF-free reading.

Preparation writes ArrayRecord files (TensorFlow is needed for that step
only); reading goes through `tfds.data_source`, which decodes with numpy and
PIL, so training processes never import TensorFlow. `tensorflow_datasets`
itself is imported inside the functions, never when this module loads.
"""

import os

import numpy as np

from lowrank_distill import checks
from lowrank_distill.data import registry

_READ_CHUNK = 10_000


def _tfds_name(name: str) -> str:
  tfds_names = [n for n, s in registry.DATASETS.items() if s.tfds_name]
  checks.check_choice("tfds dataset", name, tfds_names)
  return registry.DATASETS[name].tfds_name


def check_manual_dir(name: str, manual_dir: str | os.PathLike) -> None:
  """Raises FileNotFoundError naming the folder and the missing archives."""
  manual_dir = os.fspath(manual_dir)
  expected = registry.DATASETS[name].manual_files
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
      f"manual_dir {manual_dir} for {name!r} is not a folder; it must hold "
      f"{', '.join(expected)}"
    )
  missing = [
    f for f in expected if not os.path.isfile(os.path.join(manual_dir, f))
  ]
  if missing:
    raise FileNotFoundError(
      f"manual_dir {manual_dir} lacks {', '.join(missing)} for {name!r} "
      f"(expected {', '.join(expected)}); nothing was downloaded"
    )


def prepare_tfds(
  name: str,
  *,
  data_dir: str | os.PathLike | None,
  manual_dir: str | os.PathLike | None = None,
) -> str:
  """Prepares the tfds builder of `name` as ArrayRecord files, if not done.

  With `manual_dir`, every original archive must be there (checked first) and
  nothing is downloaded; without it, tfds downloads the archives.

  Args:
    name: a registered dataset with a tfds builder.
    data_dir: the tfds data dir (None: tfds's default).
    manual_dir: folder with the original archives (`DATASETS[name]`'s
      `manual_files`).

  Returns:
    The prepared dataset's folder.
  """
  tfds_name = _tfds_name(name)
  if manual_dir is not None:
    check_manual_dir(name, manual_dir)
  import tensorflow_datasets as tfds

  builder = tfds.builder(tfds_name, data_dir=_fspath(data_dir))
  if not builder.is_prepared():
    config = tfds.download.DownloadConfig(
      manual_dir=_fspath(manual_dir), try_download_gcs=False
    )
    builder.download_and_prepare(
      download_config=config, file_format="array_record"
    )
  return os.fspath(builder.data_dir)


def _fspath(path):
  return None if path is None else os.fspath(path)


def _read_split(source, image_key: str, label_key: str):
  """Decodes a whole split; `source` is a tfds data source or any sequence."""
  n = len(source)
  # Batched reads are ~3x faster than one record at a time.
  getitems = getattr(source, "__getitems__", None)
  first = source[0]
  images = np.empty((n, *np.shape(first[image_key])), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    keys = range(start, min(start + _READ_CHUNK, n))
    examples = getitems(keys) if getitems else [source[i] for i in keys]
    images[keys.start : keys.stop] = np.stack(
      [ex[image_key] for ex in examples]
    )
    labels[keys.start : keys.stop] = [ex[label_key] for ex in examples]
  return images, labels


def load_tfds(
  name: str,
  *,
  data_dir: str | os.PathLike | None,
  manual_dir: str | os.PathLike | None = None,
):
  """Reads the train and test splits of a tfds builder, preparing if needed.

  Returns:
    `(train_images [n, h, w, c] uint8, train_labels [n] int32, test_images,
    test_labels)`, in the prepared record order (tfds shuffles at
    preparation, deterministically).
  """
  tfds_name = _tfds_name(name)
  import tensorflow_datasets as tfds

  builder = tfds.builder(tfds_name, data_dir=_fspath(data_dir))
  if not builder.is_prepared():
    prepare_tfds(name, data_dir=data_dir, manual_dir=manual_dir)
  elif builder.info.file_format.value != "array_record":
    raise ValueError(
      f"{tfds_name} in {builder.data_dir} was prepared as "
      f"{builder.info.file_format.value}; reading without TensorFlow needs "
      "array_record: prepare it with `prepare_tfds` into another data_dir"
    )
  image_key, label_key = builder.info.supervised_keys
  sources = tfds.data_source(
    tfds_name,
    split=["train", "test"],
    data_dir=_fspath(data_dir),
    download=False,
  )
  return (
    *_read_split(sources[0], image_key, label_key),
    *_read_split(sources[1], image_key, label_key),
  )
