"""Class-balanced sampling of real examples with explicit keys (jittable)."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class ClassIndex:
  """Where each class's examples are.

  Attributes:
    table: [num_classes, max_count] int32; row `c` holds the indices of class
      `c` in its first `counts[c]` entries, then padding (the row's first
      index, or 0 for an empty class) that sampling never selects.
    counts: [num_classes] int32 examples per class.
  """

  table: jnp.ndarray
  counts: jnp.ndarray

  @property
  def num_classes(self) -> int:
    return self.table.shape[0]


def class_index(labels, num_classes: int) -> ClassIndex:
  """Builds the per-class index table on the host.

  Args:
    labels: [n] integer labels in `[0, num_classes)` (concrete, not traced).
    num_classes: number of classes; classes without examples get count 0.

  Returns:
    The index; pass it into jitted functions as an argument.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be [n], got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f"labels must lie in [0, {num_classes}), got range "
      f"[{labels.min()}, {labels.max()}]"
    )
  counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
  table = np.zeros((num_classes, max(int(counts.max(initial=0)), 1)), np.int32)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if members.size:
      table[c] = members[0]
      table[c, : members.size] = members
  return ClassIndex(table=jnp.asarray(table), counts=jnp.asarray(counts))


def sample_class(key, index: ClassIndex, c, *, n: int):
  """`n` distinct examples of class `c`, uniformly without replacement.

  Each class position gets a uniform score and the `n` smallest scores among
  the class's real entries win: a fresh random subset for every key. If `n`
  exceeds the class size, padding is returned (call
  `check_images_per_class` beforehand; a traced function cannot raise).

  Args:
    key: a `jax.random.key`.
    index: from `class_index`.
    c: class id, a Python int or a traced int32 scalar.
    n: static sample size.

  Returns:
    [n] int32 indices into the labels the index was built from.
  """
  row = index.table[c]
  scores = jax.random.uniform(key, row.shape)
  valid = jnp.arange(row.shape[0]) < index.counts[c]
  scores = jnp.where(valid, scores, 2.0)
  return row[jnp.argsort(scores)[:n]]


def sample_per_class(key, index: ClassIndex, *, n: int):
  """`n` distinct examples of every class, one fresh subset per key.

  Args:
    key: a `jax.random.key`; classes use independent subkeys.
    index: from `class_index`.
    n: static sample size per class.

  Returns:
    [num_classes, n] int32 indices; row `c` holds examples of class `c`.
  """
  keys = jax.random.split(key, index.num_classes)
  classes = jnp.arange(index.num_classes)
  return jax.vmap(lambda k, c: sample_class(k, index, c, n=n))(keys, classes)


def check_images_per_class(
  index_or_labels, n: int, *, field: str = "ipc", num_classes: int | None = None
) -> None:
  """Raises ValueError before any compute if a class has fewer than `n`.

  Args:
    index_or_labels: a `ClassIndex`, or [n] integer labels.
    n: images needed per class.
    field: the config field `n` came from, named in the error.
    num_classes: with labels, the class count (default: max label + 1).
  """
  if isinstance(index_or_labels, ClassIndex):
    counts = np.asarray(index_or_labels.counts)
  else:
    labels = np.asarray(index_or_labels)
    minlength = num_classes or 0
    counts = np.bincount(labels.reshape(-1), minlength=minlength)
  if int(n) < 1:
    raise ValueError(f"{field} must be >= 1, got {n}")
  if counts.size == 0:
    raise ValueError(f"{field}={n} cannot be drawn: there are no examples")
  smallest = int(np.argmin(counts))
  if counts[smallest] < n:
    raise ValueError(
      f"{field}={n} exceeds the examples of class {smallest}, which has "
      f"{counts[smallest]}; the smallest class limits {field} to "
      f"{counts[smallest]}"
    )
