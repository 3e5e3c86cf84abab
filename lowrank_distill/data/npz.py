"""Reader for datasets stored as `.npz` arrays."""

import os
import zipfile

import numpy as np

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike):
  """Reads `x_train, y_train, x_test, y_test` from an `.npz` file.

  Images are uint8 in 0..255 or floats in [0, 1], shaped [n, h, w] or
  [n, h, w, c]; labels are integers [n].

  Returns:
    `(train_images, train_labels, test_images, test_labels)` as stored.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: unreadable file, missing keys or malformed arrays; the message
      names the file and the expected keys.
  """
  path = os.fspath(path)
  expected = ", ".join(NPZ_KEYS)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"npz file {path} does not exist (expected keys: {expected})"
    )
  unreadable = (OSError, ValueError, zipfile.BadZipFile, EOFError)
  try:
    npz = np.load(path, allow_pickle=False)
  except unreadable as e:
    raise ValueError(
      f"npz file {path} is not readable ({e}); expected an npz archive with "
      f"keys {expected}"
    ) from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise ValueError(
      f"npz file {path} holds a single array; expected an npz archive with "
      f"keys {expected}"
    )
  with npz:
    missing = [k for k in NPZ_KEYS if k not in npz.files]
    if missing:
      raise ValueError(
        f"npz file {path} lacks keys {', '.join(missing)}; expected keys: "
        f"{expected} (found: {', '.join(npz.files) or 'none'})"
      )
    try:
      arrays = tuple(npz[k] for k in NPZ_KEYS)
    except unreadable as e:
      raise ValueError(f"npz file {path} is corrupt ({e})") from None
  for i in (0, 2):
    images_key, labels_key = NPZ_KEYS[i], NPZ_KEYS[i + 1]
    images, labels = arrays[i], arrays[i + 1]
    if images.ndim not in (3, 4):
      raise ValueError(
        f"npz file {path}: {images_key} has shape {images.shape}, expected "
        "[n, h, w] or [n, h, w, c]"
      )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (
      len(images),
    ):
      raise ValueError(
        f"npz file {path}: {labels_key} has shape {labels.shape} and dtype "
        f"{labels.dtype}, expected integers of shape [{len(images)}]"
      )
  return arrays
