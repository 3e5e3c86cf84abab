"""Reader for the IDX files of MNIST-format datasets (plain or gzipped).

The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code,
the number of dimensions `k`, then `k` big-endian uint32 sizes, then the
values in big-endian C order.
"""

import gzip
import os
import zlib

import numpy as np

_DTYPES = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}

# (train images, train labels, test images, test labels), without `.gz`.
IDX_FILES = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(
      f"IDX file {path} is not a readable gzip stream ({e})"
    ) from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzip detected from its content).

  Args:
    path: the file.

  Returns:
    The array with the file's shape, in native byte order.

  Raises:
    ValueError: naming the file and what is wrong (magic number, dtype code,
      dimensions or byte length).
  """
  path = os.fspath(path)
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise ValueError(f"IDX file {path} is too short for a header")
  if raw[:2] != b"\x00\x00":
    raise ValueError(
      f"IDX file {path} has a bad magic number 0x{raw[:4].hex()} "
      "(expected 0x0000 followed by a dtype code and the rank)"
    )
  code, ndim = raw[2], raw[3]
  if code not in _DTYPES:
    raise ValueError(
      f"IDX file {path} has unknown dtype code 0x{code:02x}; "
      f"valid: {', '.join(f'0x{c:02x}' for c in _DTYPES)}"
    )
  if ndim == 0:
    raise ValueError(f"IDX file {path} declares 0 dimensions")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
      f"IDX file {path} is truncated inside its header ({len(raw)} bytes, "
      f"the header of {ndim} dimensions needs {header})"
    )
  shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, offset=4))
  dtype = _DTYPES[code]
  expected = int(np.prod(shape)) * dtype.itemsize
  got = len(raw) - header
  if got != expected:
    problem = "truncated" if got < expected else "longer than declared"
    raise ValueError(
      f"IDX file {path} is {problem}: {got} data bytes, but shape {shape} "
      f"of {dtype.name} needs {expected}"
    )
  array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def find_idx_files(folder: str | os.PathLike) -> tuple[str, ...]:
  """The paths of the four IDX files in `folder`, each plain or `.gz`.

  Raises:
    FileNotFoundError: naming the folder and the files it looked for.
  """
  folder = os.fspath(folder)
  found, missing = [], []
  for stem in IDX_FILES:
    candidates = [os.path.join(folder, stem + ext) for ext in ("", ".gz")]
    hits = [p for p in candidates if os.path.isfile(p)]
    if hits:
      found.append(hits[0])
    else:
      missing.append(f"{stem}[.gz]")
  if missing:
    raise FileNotFoundError(
      f"IDX folder {folder} lacks {', '.join(missing)}; it needs "
      f"{', '.join(s + '[.gz]' for s in IDX_FILES)}"
    )
  return tuple(found)


def load_idx_folder(folder: str | os.PathLike):
  """Reads an MNIST-format folder.

  Returns:
    `(train_images [n, h, w] uint8, train_labels [n], test_images [m, h, w],
    test_labels [m])`.

  Raises:
    FileNotFoundError: files are missing.
    ValueError: a file is corrupt, or images and labels disagree.
  """
  paths = find_idx_files(folder)
  arrays = [read_idx(p) for p in paths]
  for images_path, labels_path, images, labels in (
    (paths[0], paths[1], arrays[0], arrays[1]),
    (paths[2], paths[3], arrays[2], arrays[3]),
  ):
    if images.ndim != 3:
      raise ValueError(
        f"IDX images {images_path} have shape {images.shape}, expected "
        "[n, h, w]"
      )
    if labels.ndim != 1 or len(labels) != len(images):
      raise ValueError(
        f"IDX labels {labels_path} have shape {labels.shape}, expected "
        f"[{len(images)}] to match {images_path}"
      )
  return tuple(arrays)
