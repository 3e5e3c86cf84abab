"""Datasets, preprocessing (standardisation, ZCA) and class-balanced sampling.

`load(name, ...)` returns a `Dataset` from one of four sources: the embedded
scikit-learn digits (no network), tensorflow-datasets builders (offline from a
`manual_dir` of original archives, read back without TensorFlow), a folder of
MNIST-format IDX files, or an `.npz` file.
"""

from lowrank_distill.data.dataset import Dataset, load
from lowrank_distill.data.idx import IDX_FILES, load_idx_folder, read_idx
from lowrank_distill.data.npz import NPZ_KEYS, load_npz
from lowrank_distill.data.registry import DATASETS, SOURCES, DatasetSpec
from lowrank_distill.data.sampling import (
  ClassIndex,
  check_images_per_class,
  class_index,
  sample_class,
  sample_per_class,
)
from lowrank_distill.data.tfds_source import load_tfds, prepare_tfds
from lowrank_distill.data.zca import (
  ZCA,
  ZCA_FLAVOURS,
  apply_zca,
  fit_zca,
  invert_zca,
)

__all__ = [
  "DATASETS",
  "IDX_FILES",
  "NPZ_KEYS",
  "SOURCES",
  "ZCA",
  "ZCA_FLAVOURS",
  "ClassIndex",
  "Dataset",
  "DatasetSpec",
  "apply_zca",
  "check_images_per_class",
  "class_index",
  "fit_zca",
  "invert_zca",
  "load",
  "load_idx_folder",
  "load_npz",
  "load_tfds",
  "prepare_tfds",
  "read_idx",
  "sample_class",
  "sample_per_class",
]
