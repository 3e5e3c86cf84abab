"""Distilled sets that travel: other codebases' sets in, ours out.

Formats (`FORMATS`):
  dc_pt   the PyTorch reference code of DC / DSA / DM (and the low-rank
          plugin built on it): `torch.save({'data': [[images, labels], ...],
          'accs_all_exps': ...})`, one [images, labels] pair per experiment
          (`experiment` picks one); images [n, c, h, w].
  mtt_pt  MTT's `images_best.pt` (a tensor [n, c, h, w]) with its labels in
          the `labels_best.pt` beside it (or `labels_path`), and the learned
          lr, when kept, in `learning_rate_best.pt` (or `lr_path`).
  factors a `.pt` or `.npz` dict of low-rank factors 'A' [n, c, h, r] and
          'B' [n, c, r, w] (image = A @ B per channel) with 'labels'; the
          images are rebuilt from them and the factors kept as the set's
          params.
  npz     `.npz` arrays (keys 'images'/'labels', or FRePo's
          'x_proto'/'y_proto', or 'x'/'y'), NCHW or NHWC.
  npy     a `.npy` of images with its labels in `labels_path`.

What a file does not carry is given explicitly (`ReleasedFormat`): the
channel order (or 'auto' when only one reading fits the dataset), the label
encoding (hard ids, one-hot rows, probabilities or logits), the value range
the images were saved in (the dataset's normalised space, [0, 1] or
[0, 255]) and, through the evaluation's `dataset` section, the
normalisation and ZCA flavour the distillation used. A file that does not
fit the dataset (shape, classes, channels, value range) is refused with an
error naming the field, before any compute.

Out: `save_npz` (one self-describing `.npz`, written beside every
distillation's export) and `save_torch` (the reference code's `.pt` layouts).

Reading `.pt` needs no PyTorch: `read_torch_file` unpickles the zip format
torch >= 1.6 writes with an unpickler that only rebuilds tensors, dicts and
lists from the archive's raw storages. Two reasons: the multi-gigabyte torch
install is not needed to evaluate a set (CI and most users have none), and,
unlike `torch.load` without `weights_only`, a downloaded file cannot run code
while it is read. The tests check it against files written by PyTorch
(committed fixtures) and, where torch is installed, against `torch.load`.
"""

import dataclasses
import io
import json
import pathlib
import pickle
import zipfile

import numpy as np

from lowrank_distill import checks, data
from lowrank_distill import identity as identity_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill.data import zca as zca_lib

# ----------------------------------------------------------------------------
# PyTorch's zip format, without PyTorch.

_TORCH_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": None,  # refused: numpy has no bfloat16
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str


class _Storage:
  def __init__(self, array: np.ndarray):
    self.array = array


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  flat = storage.array
  if not size:
    return flat[offset].copy()
  itemsize = flat.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
    flat[offset:],
    shape=tuple(size),
    strides=tuple(s * itemsize for s in stride),
  ).copy()


def _rebuild_parameter(tensor, *unused):
  del unused
  return tensor


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds tensors (as numpy arrays), dicts, lists and plain values."""

  _ALLOWED = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._path = path

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _TORCH_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
      f"{self._path}: refusing to load {module}.{name}; a released set "
      f"holds only tensors, dicts, lists and numbers"
    )

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self._path}: unknown storage {pid!r}")
    dtype = _TORCH_DTYPES[storage_type.name]
    if dtype is None:
      raise ValueError(
        f"{self._path}: {storage_type.name} tensors cannot be read without "
        f"PyTorch; save the set as float32"
      )
    raw = self._archive.read(f"{self._prefix}data/{key}")
    return _Storage(np.frombuffer(raw, dtype=dtype, count=numel))


def read_torch_file(path):
  """The object `torch.save` wrote to `path`, tensors as numpy arrays.

  Raises:
    ValueError: not a zip-format torch file (torch < 1.6 wrote another), a
      big-endian one, or one holding something else than data.
  """
  path = pathlib.Path(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(
      f"{path} is not a PyTorch zip file (torch >= 1.6 writes one; re-save "
      f"older files with torch.save(torch.load(f), f))"
    )
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one data.pkl, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    order = f"{prefix}byteorder"
    if order in archive.namelist() and archive.read(order) != b"little":
      raise ValueError(f"{path}: big-endian tensors are not supported")
    with archive.open(pickles[0]) as file:
      return _TorchUnpickler(
        io.BytesIO(file.read()), archive, prefix, path
      ).load()


# ----------------------------------------------------------------------------
# Released formats.

LAYOUTS = ("auto", "nchw", "nhwc")
LABEL_ENCODINGS = ("auto", "hard", "onehot", "probs", "logits")
VALUE_RANGES = ("normalized", "unit", "uint8")


@dataclasses.dataclass(frozen=True)
class ReleasedFormat:
  """What a released file does not say about itself.

  Attributes:
    format: a `FORMATS` name.
    layout: 'nchw', 'nhwc' or 'auto' (the one that fits the dataset).
    labels: 'hard' ids, 'onehot' rows, 'probs', 'logits', or 'auto'
      (integers: hard; rows that are one-hot: onehot; else refused).
    value_range: the images' space: 'normalized' (the dataset's, as the
      reference code saves them), 'unit' ([0, 1]) or 'uint8' ([0, 255]).
    experiment: which experiment of a `dc_pt` file.
    labels_path: the labels of an `mtt_pt` / `npy` file ('': beside it).
    lr_path: a file holding the learned lr; it replaces any lr the file
      holds ('': the file's own, e.g. MTT's learning_rate_best.pt beside it).
  """

  format: str
  layout: str = "auto"
  labels: str = "auto"
  value_range: str = "normalized"
  experiment: int = 0
  labels_path: str = ""
  lr_path: str = ""

  def validate(self) -> None:
    checks.check_choice("released.format", self.format, FORMATS)
    checks.check_choice("released.layout", self.layout, LAYOUTS)
    checks.check_choice("released.labels", self.labels, LABEL_ENCODINGS)
    checks.check_choice("released.value_range", self.value_range, VALUE_RANGES)
    checks.check_range(
      "released.experiment",
      self.experiment,
      checks.Range(low=0, integer=True),
    )


@dataclasses.dataclass
class _Raw:
  images: np.ndarray
  labels: np.ndarray
  lr: float | None = None
  params: dict | None = None


def _pick(arrays: dict, names, path, what: str):
  for name in names:
    if name in arrays:
      return np.asarray(arrays[name])
  raise ValueError(
    f"{path}: no {what} (looked for keys {list(names)}; found {sorted(arrays)})"
  )


def _beside(path: pathlib.Path, given: str, default: str):
  return pathlib.Path(given) if given else path.with_name(default)


def _read_scalar(path) -> float:
  path = pathlib.Path(path)
  value = read_torch_file(path) if path.suffix == ".pt" else np.load(path)
  value = np.asarray(value, np.float64)
  if value.size != 1:
    raise ValueError(f"{path}: expected one learned lr, got {value.shape}")
  return float(value.reshape(()))


def _read_dc(path, fmt: ReleasedFormat) -> _Raw:
  saved = read_torch_file(path)
  if not isinstance(saved, dict) or "data" not in saved:
    raise ValueError(
      f"{path}: not a DC/DSA/DM results file (a dict with 'data'); "
      f"released.format 'dc_pt'"
    )
  runs = saved["data"]
  if not 0 <= fmt.experiment < len(runs):
    raise ValueError(
      f"released.experiment {fmt.experiment}: {path} holds {len(runs)} "
      f"experiments (0..{len(runs) - 1})"
    )
  images, labels = runs[fmt.experiment][:2]
  return _Raw(np.asarray(images), np.asarray(labels))


def _read_mtt(path, fmt: ReleasedFormat) -> _Raw:
  images = read_torch_file(path)
  labels_path = _beside(
    path, fmt.labels_path, path.name.replace("images", "labels")
  )
  if not labels_path.exists():
    raise ValueError(
      f"released.labels_path: {labels_path} does not exist (MTT saves the "
      f"labels beside the images as labels_best.pt)"
    )
  labels = read_torch_file(labels_path)
  lr_path = path.with_name("learning_rate_best.pt")
  lr = _read_scalar(lr_path) if lr_path.exists() else None
  return _Raw(np.asarray(images), np.asarray(labels), lr=lr)


def _read_arrays(path) -> dict:
  if path.suffix == ".pt":
    arrays = read_torch_file(path)
    if not isinstance(arrays, dict):
      raise ValueError(f"{path}: expected a dict of tensors")
    return arrays
  with np.load(path, allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files if k != "metadata"}


def _read_factors(path, fmt: ReleasedFormat) -> _Raw:
  arrays = _read_arrays(path)
  a = _pick(arrays, ("A", "a"), path, "factor A")
  b = _pick(arrays, ("B", "b"), path, "factor B")
  if a.ndim != 4 or b.ndim != 4 or a.shape[:2] != b.shape[:2]:
    raise ValueError(
      f"{path}: factors A {a.shape} and B {b.shape} must be [n, c, h, r] "
      f"and [n, c, r, w]"
    )
  if a.shape[3] != b.shape[2]:
    raise ValueError(f"{path}: rank of A {a.shape} != rank of B {b.shape}")
  images = np.einsum("nchr,ncrw->nchw", a, b)
  labels = _pick(arrays, ("labels", "label", "y"), path, "labels")
  # Our factors layout: A [n, h, r, c], B [n, r, w, c] (parameterize.factors).
  params = {
    "a": np.ascontiguousarray(a.transpose(0, 2, 3, 1), np.float32),
    "b": np.ascontiguousarray(b.transpose(0, 2, 3, 1), np.float32),
  }
  return _Raw(images, labels, params=params)


def _read_npz(path, fmt: ReleasedFormat) -> _Raw:
  arrays = _read_arrays(path)
  images = _pick(arrays, ("images", "x_proto", "x", "image"), path, "images")
  labels = _pick(arrays, ("labels", "y_proto", "y", "label"), path, "labels")
  lr = None
  if "lr" in arrays:
    lr = float(np.asarray(arrays["lr"]).reshape(()))
  return _Raw(images, labels, lr=lr)


def _read_npy(path, fmt: ReleasedFormat) -> _Raw:
  if not fmt.labels_path:
    raise ValueError(
      "released.labels_path: a .npy file holds the images only; name the "
      "file of its labels"
    )
  images = np.load(path, allow_pickle=False)
  labels = np.load(fmt.labels_path, allow_pickle=False)
  return _Raw(images, labels)


FORMATS = {
  "dc_pt": _read_dc,
  "mtt_pt": _read_mtt,
  "factors": _read_factors,
  "npz": _read_npz,
  "npy": _read_npy,
}


# ----------------------------------------------------------------------------
# Fitting the arrays to the dataset.


def _to_nhwc(images: np.ndarray, layout: str, dataset: data.Dataset, path):
  h, w, c = dataset.image_shape
  if images.ndim == 3 and c == 1:
    images = images[..., None] if layout != "nchw" else images[:, None]
  if images.ndim != 4:
    raise ValueError(
      f"{path}: images of shape {images.shape} are not [n, c, h, w] or "
      f"[n, h, w, c]"
    )
  fits = {
    "nchw": tuple(images.shape[1:]) == (c, h, w),
    "nhwc": tuple(images.shape[1:]) == (h, w, c),
  }
  if layout == "auto":
    matching = [name for name, ok in fits.items() if ok]
    where = f"dataset {dataset.name!r} ({h}x{w}x{c})"
    if not matching:
      raise ValueError(
        f"released.layout: images {images.shape[1:]} fit neither [c, h, w] "
        f"nor [h, w, c] of {where}: another image size or channel count"
      )
    if len(matching) == 2:
      raise ValueError(
        f"released.layout: images {images.shape[1:]} fit both layouts of "
        f"{where}; set released.layout to 'nchw' or 'nhwc'"
      )
    layout = matching[0]
  if not fits[layout]:
    raise ValueError(
      f"released.layout {layout!r}: images {images.shape[1:]} do not fit "
      f"dataset {dataset.name!r} ({h}x{w}x{c})"
    )
  if layout == "nchw":
    images = images.transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images, np.float32)


def _labels(labels: np.ndarray, encoding: str, num_classes: int, n: int, path):
  labels = np.asarray(labels)
  if encoding == "auto":
    if np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1:
      encoding = "hard"
    elif labels.ndim == 2 and np.all(np.isin(labels, (0, 1))):
      encoding = "onehot"
    else:
      raise ValueError(
        f"released.labels: the labels of {path} ({labels.dtype} "
        f"{labels.shape}) are not integer ids or one-hot rows; say whether "
        f"they are 'probs' or 'logits'"
      )
  if encoding == "hard":
    if labels.ndim != 1 or not np.all(labels == np.round(labels)):
      raise ValueError(f"released.labels 'hard': {path} labels {labels.shape}")
    labels = labels.astype(np.int32)
    if labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(
        f"released.labels: class ids {labels.min()}..{labels.max()} outside "
        f"the dataset's {num_classes} classes"
      )
  else:
    if labels.ndim != 2 or labels.shape[1] != num_classes:
      raise ValueError(
        f"released.labels {encoding!r}: {path} labels {labels.shape} are not "
        f"[n, {num_classes}] (the dataset's classes)"
      )
    labels = labels.astype(np.float32)
    if encoding == "onehot":
      labels = np.argmax(labels, axis=1).astype(np.int32)
    elif encoding == "probs":
      if np.any(labels < 0) or not np.allclose(labels.sum(1), 1, atol=1e-3):
        raise ValueError(
          f"released.labels 'probs': rows of {path} are not distributions"
        )
      labels = np.log(np.maximum(labels, 1e-12))
  if labels.shape[0] != n:
    raise ValueError(f"{path}: {labels.shape[0]} labels for {n} images")
  return labels


# Values beyond this many spans of the real images' range mean the file's
# images are in another space than `value_range` says.
_RANGE_SPANS = 3.0


def _to_dataset_space(images, value_range: str, dataset: data.Dataset, path):
  if value_range == "uint8":
    images = images / 255.0
  if value_range in ("unit", "uint8"):
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
      raise ValueError(
        f"released.value_range {value_range!r}: {path} images span "
        f"[{images.min():.3g}, {images.max():.3g}]"
      )
    mean = np.asarray(dataset.mean, np.float32)
    std = np.asarray(dataset.std, np.float32)
    images = (images - mean) / std
    if dataset.zca is not None:
      images = np.asarray(zca_lib.apply_zca(dataset.zca, images))
  real = dataset.train_images
  low, high = float(real.min()), float(real.max())
  margin = _RANGE_SPANS * (high - low)
  if images.min() < low - margin or images.max() > high + margin:
    raise ValueError(
      f"released.value_range {value_range!r}: {path} images span "
      f"[{images.min():.3g}, {images.max():.3g}], far from the dataset's "
      f"[{low:.3g}, {high:.3g}] in that space; check released.value_range "
      f"and the dataset's normalisation / zca"
    )
  if not np.all(np.isfinite(images)):
    raise ValueError(f"{path}: images hold non-finite values")
  return images.astype(np.float32)


def load(path, fmt: ReleasedFormat, dataset: data.Dataset):
  """A released set as a `SyntheticSet` on `dataset`, or a ValueError.

  Args:
    path: the released file.
    fmt: what the file does not say (`ReleasedFormat`).
    dataset: the loaded dataset the set was distilled from (its shape,
      classes, normalisation and ZCA are the evaluation's).
  """
  fmt.validate()
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"synset: {path} is not a file")
  raw = FORMATS[fmt.format](path, fmt)
  if fmt.lr_path:
    # Given explicitly, it replaces any lr the file itself holds.
    if not pathlib.Path(fmt.lr_path).is_file():
      raise ValueError(f"released.lr_path: {fmt.lr_path} is not a file")
    raw.lr = _read_scalar(fmt.lr_path)
  images = _to_nhwc(np.asarray(raw.images), fmt.layout, dataset, path)
  labels = _labels(
    raw.labels, fmt.labels, dataset.num_classes, images.shape[0], path
  )
  images = _to_dataset_space(images, fmt.value_range, dataset, path)
  if raw.lr is not None and not raw.lr > 0:
    raise ValueError(f"{path}: the learned lr {raw.lr!r} is not > 0")
  storage = int(images.size)
  if raw.params is not None:
    storage = int(sum(np.asarray(p).size for p in raw.params.values()))
  if labels.ndim == 2:
    storage += int(labels.size)
  return synset_lib.SyntheticSet(
    images=images,
    labels=labels,
    param="factors" if raw.params is not None else "pixels",
    params=raw.params,
    storage_floats=storage + (raw.lr is not None),
    dataset=dataset.metadata(),
    lr=raw.lr,
    info={
      "released": {"path": str(path), **dataclasses.asdict(fmt)},
    },
  )


# ----------------------------------------------------------------------------
# Our sets out, for other codebases.


def _portable_metadata(synset: synset_lib.SyntheticSet) -> str:
  return json.dumps(
    identity_lib.to_json_types(
      {
        "format": "lowrank_distill portable set",
        "layout": "images [n, h, w, c] float32 in the dataset's preprocessed "
        "space; labels [n] ids or [n, C] logits",
        "param": synset.param,
        "storage_floats": synset.storage_floats,
        "lr": synset.lr,
        "dataset": synset.dataset,
        "info": synset.info,
      }
    ),
    indent=1,
  )


def save_npz(path, synset: synset_lib.SyntheticSet) -> None:
  """Writes `synset` as one `.npz` any numpy reads (and `load` reads back).

  Keys: 'images' [n, h, w, c] float32, 'labels', 'lr' when learned, and
  'metadata', a JSON string: the dataset's preprocessing and the set's
  recipe (`distill.export.recipe`: normalisation, ZCA, network, protocol,
  label form, storage).
  """
  arrays = {
    "images": np.asarray(synset.images, np.float32),
    "labels": np.asarray(synset.labels),
    "metadata": np.asarray(_portable_metadata(synset)),
  }
  if synset.lr is not None:
    arrays["lr"] = np.float32(synset.lr)
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)


TORCH_LAYOUTS = ("dc", "mtt")


def save_torch(path, synset: synset_lib.SyntheticSet, *, layout: str = "dc"):
  """Writes `synset` as the PyTorch reference code saves and loads sets.

  'dc': one file, `{'data': [[images, labels]], 'accs_all_exps': {},
  'metadata': <JSON>}` with images [n, c, h, w], as DC / DSA / DM's
  `res_*.pt` (their evaluation reads `data[exp]`). 'mtt': a folder of
  `images_best.pt`, `labels_best.pt` and, when learned,
  `learning_rate_best.pt`, as MTT's `eval.py` reads them.

  Needs torch (whoever loads the files runs PyTorch anyway).
  """
  checks.check_choice("layout", layout, TORCH_LAYOUTS)
  try:
    import torch
  except ImportError:
    raise ImportError(
      "save_torch writes files for PyTorch code and needs torch: pip "
      "install torch (or the `bench` extra); save_npz needs nothing"
    ) from None
  images = torch.from_numpy(
    np.ascontiguousarray(np.asarray(synset.images).transpose(0, 3, 1, 2))
  )
  labels = np.asarray(synset.labels)
  labels = torch.from_numpy(
    labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32)
  )
  path = pathlib.Path(path)
  if layout == "dc":
    torch.save(
      {
        "data": [[images, labels]],
        "accs_all_exps": {},
        "metadata": _portable_metadata(synset),
      },
      path,
    )
    return
  path.mkdir(parents=True, exist_ok=True)
  torch.save(images, path / "images_best.pt")
  torch.save(labels, path / "labels_best.pt")
  if synset.lr is not None:
    torch.save(torch.tensor(float(synset.lr)), path / "learning_rate_best.pt")
