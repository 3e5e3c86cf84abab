"""`load`: one entry point over every source, returning a `Dataset`."""

import dataclasses
import os

import jax
import numpy as np

from lowrank_distill import checks
from lowrank_distill.data import digits, idx, npz, registry, tfds_source
from lowrank_distill.data import zca as zca_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Train and test splits, preprocessed, with their provenance.

  Attributes:
    name: the dataset name given to `load`.
    train_images: [n, h, w, c] float32, standardised (and ZCA-whitened if
      asked).
    train_labels: [n] int32.
    test_images: [m, h, w, c] float32, preprocessed like the train split.
    test_labels: [m] int32.
    num_classes: number of classes.
    image_shape: `(h, w, c)`.
    mean: per-channel mean subtracted (zeros when not standardised).
    std: per-channel std divided by (ones when not standardised).
    zca: the fitted whitening, or None.
    class_names: one name per class.
    source: `digits`, `tfds`, `idx` or `npz`.
    standardize: whether `mean`/`std` were applied.
    path: the file or folder read (`idx`, `npz`), the tfds data dir, or None.
    evaluation_split: 'test', or 'validation' when `test_images` are the
      images held out of the train split (`load(validation_per_class=...)`).
    validation_per_class: images of each class held out of the train split
      (0: none; the test split is the dataset's own).
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  zca: zca_lib.ZCA | None
  class_names: tuple[str, ...]
  source: str
  standardize: bool = True
  path: str | None = None
  evaluation_split: str = "test"
  validation_per_class: int = 0

  def to_unit_range(self, images):
    """Undoes ZCA, then standardisation: images [..., h, w, c] -> ~[0, 1].

    Works on numpy and jax arrays (and under jit); values are not clipped.
    """
    if not isinstance(images, jax.Array):
      images = np.asarray(images, np.float32)
    if self.zca is not None:
      images = zca_lib.invert_zca(self.zca, images)
    shape = (1,) * (images.ndim - 1) + (-1,)
    std = np.asarray(self.std, np.float32).reshape(shape)
    mean = np.asarray(self.mean, np.float32).reshape(shape)
    return images * std + mean

  def metadata(self) -> dict:
    """JSON-serialisable provenance of the preprocessing."""
    zca = self.zca
    return {
      "name": self.name,
      "source": self.source,
      "path": self.path,
      "image_shape": list(self.image_shape),
      "num_classes": self.num_classes,
      "num_train": int(len(self.train_labels)),
      "num_test": int(len(self.test_labels)),
      "standardize": self.standardize,
      "mean": list(self.mean),
      "std": list(self.std),
      "zca": None if zca is None else {"flavour": zca.flavour, "eps": zca.eps},
      "class_names": list(self.class_names),
      "evaluation_split": self.evaluation_split,
      "validation_per_class": self.validation_per_class,
    }


def _unit_float(images: np.ndarray, what: str) -> np.ndarray:
  """uint8 0..255 or float [0, 1] -> float32 [n, h, w, c] in [0, 1]."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"{what}: shape {images.shape} is not [n, h, w(, c)]")
  if np.issubdtype(images.dtype, np.integer):
    if images.size and (images.min() < 0 or images.max() > 255):
      raise ValueError(f"{what}: integer images must lie in 0..255")
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"{what}: dtype {images.dtype} is not integer or float")
  images = images.astype(np.float32)
  if images.size and not (
    np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
  ):
    raise ValueError(
      f"{what}: float images must be finite and lie in [0, 1], got range "
      f"[{np.nanmin(images)}, {np.nanmax(images)}]"
    )
  return images


def _read(name, source, path, data_dir, manual_dir):
  """Raw splits from `source` and the file/folder they came from."""
  if source == "digits":
    if name != "digits":
      raise ValueError(
        f"source 'digits' serves only dataset 'digits', not {name!r}"
      )
    return digits.load_digits_split(), None
  if source == "tfds":
    arrays = tfds_source.load_tfds(
      name, data_dir=data_dir, manual_dir=manual_dir
    )
    return arrays, None if data_dir is None else os.fspath(data_dir)
  if path is None:
    raise ValueError(f"path is required with source {source!r}")
  path = os.fspath(path)
  read = idx.load_idx_folder if source == "idx" else npz.load_npz
  return read(path), path


def _check_labels(labels: np.ndarray, num_classes: int, what: str):
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f"{what}: labels span [{labels.min()}, {labels.max()}], outside "
      f"[0, {num_classes})"
    )
  return labels.astype(np.int32)


# The held-out split is the same for every run and seed: settings chosen on
# it never depend on which run drew it.
VALIDATION_SEED = 0


def hold_out(labels: np.ndarray, per_class: int, *, num_classes: int):
  """Indices of a class-balanced held-out split and of the rest.

  Args:
    labels: [n] int class ids of the train split.
    per_class: images held out of each class (>= 1).
    num_classes: C.

  Returns:
    (held_out, kept): sorted int index arrays, `per_class * C` held out,
    drawn per class with the fixed `VALIDATION_SEED`; a class must keep at
    least one image.
  """
  counts = np.bincount(labels, minlength=num_classes)
  smallest = int(np.argmin(counts))
  if counts[smallest] <= per_class:
    raise ValueError(
      f"dataset.validation_per_class={per_class} leaves class {smallest} "
      f"(of {counts[smallest]} train images) nothing to train on; valid: "
      f"0..{counts[smallest] - 1}"
    )
  rng = np.random.default_rng(VALIDATION_SEED)
  held = [
    rng.permutation(np.flatnonzero(labels == c))[:per_class]
    for c in range(num_classes)
  ]
  held_out = np.sort(np.concatenate(held))
  kept = np.setdiff1d(np.arange(len(labels)), held_out)
  return held_out, kept


def _preprocess(train_x, test_x, mean, std, *, zca: str):
  """Standardises with `mean`/`std`, then fits ZCA on train, applies to both."""
  shape = (1, 1, 1, -1)
  mean = np.asarray(mean, np.float32).reshape(shape)
  std = np.asarray(std, np.float32).reshape(shape)
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  if zca == "none":
    return train_x, test_x, None
  fitted = zca_lib.fit_zca(train_x, flavour=zca)
  return (
    zca_lib.apply_zca(fitted, train_x),
    zca_lib.apply_zca(fitted, test_x),
    fitted,
  )


def load(
  name: str,
  *,
  source: str | None = None,
  path: str | os.PathLike | None = None,
  data_dir: str | os.PathLike | None = None,
  manual_dir: str | os.PathLike | None = None,
  zca: str = "none",
  standardize: bool = True,
  validation_per_class: int = 0,
) -> Dataset:
  """Loads and preprocesses a dataset.

  Args:
    name: a `DATASETS` name, or any name with `source='idx'`/`'npz'` (then
      mean/std come from the train split and the class count from labels).
    source: `digits`, `tfds`, `idx` or `npz`; default: the dataset's own
      (`digits` for digits, `tfds` for the others).
    path: the IDX folder or `.npz` file.
    data_dir: tfds data dir; an unprepared builder is prepared there.
    manual_dir: folder of original archives for offline tfds preparation.
    zca: `none`, `mtt` (whiten [0, 1] images, no standardisation) or `kip`
      (standardise, then whiten with a trace-relative regulariser).
    standardize: per-channel standardisation (ignored by `zca='mtt'`).
    validation_per_class: hold this many images of each class out of the
      train split and evaluate on them instead of the test split (for
      choosing settings; the same images for every run, `hold_out`). 0:
      the dataset's own test split.

  Returns:
    The dataset; ZCA is fitted on the (remaining) train split and applied to
    both.
  """
  checks.check_choice("zca flavour", zca, zca_lib.ZCA_FLAVOURS)
  checks.check_range(
    "dataset.validation_per_class",
    validation_per_class,
    checks.Range(low=0, integer=True),
  )
  if source is not None:
    checks.check_choice("source", source, registry.SOURCES)
  if source not in ("idx", "npz"):
    checks.check_choice("dataset", name, tuple(registry.DATASETS))
  spec = registry.DATASETS.get(name)
  source = source or spec.default_source
  arrays, origin = _read(name, source, path, data_dir, manual_dir)
  what = f"dataset {name!r} ({source}{', ' + origin if origin else ''})"
  if len(arrays[0]) == 0 or len(arrays[2]) == 0:
    raise ValueError(f"{what}: the train or test split is empty")
  train_x = _unit_float(np.asarray(arrays[0]), f"{what} train images")
  test_x = _unit_float(np.asarray(arrays[2]), f"{what} test images")
  image_shape = tuple(int(s) for s in train_x.shape[1:])
  if test_x.shape[1:] != image_shape:
    raise ValueError(
      f"{what}: test images {test_x.shape[1:]} differ from train images "
      f"{image_shape}"
    )
  if spec is not None and image_shape != spec.image_shape:
    raise ValueError(
      f"{what}: images have shape {image_shape}, but {name!r} is registered "
      f"with {spec.image_shape}"
    )
  if spec is not None:
    num_classes, class_names = spec.num_classes, spec.class_names
  else:
    num_classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    class_names = tuple(str(c) for c in range(num_classes))
  train_y = _check_labels(np.asarray(arrays[1]), num_classes, what)
  test_y = _check_labels(np.asarray(arrays[3]), num_classes, what)
  evaluation_split = "test"
  if validation_per_class:
    held_out, kept = hold_out(
      train_y, validation_per_class, num_classes=num_classes
    )
    train_x, test_x = train_x[kept], train_x[held_out]
    train_y, test_y = train_y[kept], train_y[held_out]
    evaluation_split = "validation"
  if spec is not None:
    mean, std = spec.mean, spec.std
  else:
    mean = tuple(float(m) for m in train_x.mean(axis=(0, 1, 2), dtype=float))
    std = tuple(float(s) for s in train_x.std(axis=(0, 1, 2), dtype=float))
  standardize = standardize and zca != "mtt"
  if not standardize:
    mean, std = (0.0,) * image_shape[2], (1.0,) * image_shape[2]
  elif min(std) <= 0:
    raise ValueError(f"{what}: a channel is constant; use standardize=False")
  train_x, test_x, fitted = _preprocess(train_x, test_x, mean, std, zca=zca)
  return Dataset(
    name=name,
    train_images=train_x,
    train_labels=train_y,
    test_images=test_x,
    test_labels=test_y,
    num_classes=num_classes,
    image_shape=image_shape,
    mean=tuple(mean),
    std=tuple(std),
    zca=fitted,
    class_names=tuple(class_names),
    source=source,
    standardize=standardize,
    path=origin,
    evaluation_split=evaluation_split,
    validation_per_class=int(validation_per_class),
  )
