"""The GDumb protocol: class orders, step subsets, labels and storage.

Pure functions of arrays and datasets: no config is read, nothing is
written. `class_order` and `class_groups` fix which classes arrive at each
step, `class_subset` is what a step's memory is built from, `global_labels`
and `merge_memories` turn memories of several steps into one training set,
and `budget_floats`/`check_storage` are the storage every memory may use.

Conventions:
- The network has C outputs at every step, as in GDumb's class-incremental
  setting; logits of unseen classes are not masked at test time (no
  training example has them, so cross-entropy drives them down).
- Memory labels are global class ids. Soft label logits [n, k] of a
  distilled memory are scattered into [n, C] with `ABSENT_LOGIT` in the
  other columns: their softmax is the memory's own distribution over its k
  classes and exactly zero elsewhere. Storage counts the [n, k] logits that
  were learned (the filled columns are constants).
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from lowrank_distill import data
from lowrank_distill import synset as synset_lib

# Logit of the classes a soft-labelled memory does not cover: its softmax
# weight is exactly 0 in float32 next to logits of ordinary size.
ABSENT_LOGIT = -1e9

# ---------------------------------------------------------------------------
# Class orders, steps and subsets.


def class_order(seed: int, *, num_classes: int) -> np.ndarray:
  """[C] class ids in arrival order: `RandomState(seed).permutation(C)`."""
  return np.random.RandomState(seed).permutation(num_classes)


def check_steps(steps, *, num_classes: int) -> None:
  """Raises ValueError unless `steps` splits the classes into equal groups."""
  if (
    isinstance(steps, bool)
    or not isinstance(steps, int)
    or steps < 1
    or num_classes % steps
  ):
    divisors = [d for d in range(1, num_classes + 1) if num_classes % d == 0]
    raise ValueError(
      f"continual.steps {steps!r} must split the {num_classes} classes into "
      f"equal groups; valid: {divisors}"
    )


def class_groups(order, *, steps: int) -> np.ndarray:
  """The classes arriving at each step.

  Args:
    order: [C] class ids in arrival order.
    steps: T, a divisor of C.

  Returns:
    [T, C // T] int class ids; row t arrives at step t + 1.
  """
  order = np.asarray(order)
  check_steps(steps, num_classes=order.size)
  return order.reshape(steps, -1)


def class_members(labels, classes) -> np.ndarray:
  """[m] indices of the examples labelled with one of `classes`, in order."""
  return np.flatnonzero(np.isin(np.asarray(labels), np.asarray(classes)))


def class_subset(dataset: data.Dataset, classes) -> data.Dataset:
  """The examples of `classes` only, relabelled by position in `classes`.

  Preprocessing (mean, std, ZCA) is the full dataset's, so images of every
  subset live in one input space.

  Args:
    dataset: the full dataset.
    classes: [k] distinct global class ids; `classes[j]` becomes label j.

  Returns:
    A dataset of k classes holding the train and test examples of `classes`
    in their original order.
  """
  classes = np.asarray(classes)
  local = np.full((dataset.num_classes,), -1, np.int32)
  local[classes] = np.arange(classes.size, dtype=np.int32)
  train = class_members(dataset.train_labels, classes)
  test = class_members(dataset.test_labels, classes)
  return dataclasses.replace(
    dataset,
    train_images=dataset.train_images[train],
    train_labels=local[dataset.train_labels[train]],
    test_images=dataset.test_images[test],
    test_labels=local[dataset.test_labels[test]],
    num_classes=int(classes.size),
    class_names=tuple(dataset.class_names[c] for c in classes),
  )


def seen_test_set(dataset: data.Dataset, seen):
  """Test images of the seen classes: ([m, h, w, c], [m] global ids)."""
  members = class_members(dataset.test_labels, seen)
  return dataset.test_images[members], dataset.test_labels[members]


# ---------------------------------------------------------------------------
# Labels and storage.


def global_labels(labels, classes, *, num_classes: int) -> np.ndarray:
  """A memory's labels from step-local ids to global class ids.

  Args:
    labels: [n] int local ids, or [n, k] float label logits.
    classes: [k] global ids; local id j is `classes[j]`.
    num_classes: C.

  Returns:
    [n] int32 global ids, or [n, C] float32 logits: the k columns of
    `classes` hold `labels`, the others `ABSENT_LOGIT`.
  """
  labels, classes = np.asarray(labels), np.asarray(classes)
  if np.issubdtype(labels.dtype, np.integer):
    return classes[labels].astype(np.int32)
  logits = np.full((labels.shape[0], num_classes), ABSENT_LOGIT, np.float32)
  logits[:, classes] = labels
  return logits


def hard_logits(labels, *, num_classes: int) -> np.ndarray:
  """[n] int ids -> [n, C] logits whose softmax is the one-hot vector."""
  onehot = np.eye(num_classes, dtype=bool)[np.asarray(labels)]
  return np.where(onehot, 0.0, ABSENT_LOGIT).astype(np.float32)


def merge_memories(memories: Sequence[synset_lib.SyntheticSet], *, num_classes):
  """The accumulated training set of several memories.

  Args:
    memories: sets with global labels ([n_i] int or [n_i, C] logits).
    num_classes: C.

  Returns:
    (images [sum n_i, h, w, c], labels): [N] int32 when every memory has
    hard labels, else [N, C] float32 logits (hard ones as `hard_logits`).
  """
  images = np.concatenate([np.asarray(m.images) for m in memories])
  labels = [np.asarray(m.labels) for m in memories]
  if all(lab.ndim == 1 for lab in labels):
    return images, np.concatenate(labels).astype(np.int32)
  return images, np.concatenate(
    [
      lab.astype(np.float32)
      if lab.ndim == 2
      else hard_logits(lab, num_classes=num_classes)
      for lab in labels
    ]
  )


def budget_floats(*, ipc: int, num_classes: int, image_shape) -> int:
  """The storage every memory may use: `ipc * classes * h * w * c` floats."""
  return int(ipc) * int(num_classes) * math.prod(image_shape)


def check_storage(
  name: str, storage_floats: int, *, ipc: int, num_classes: int, image_shape
) -> None:
  """Raises ValueError if memory `name` of `num_classes` exceeds the budget."""
  allowed = budget_floats(
    ipc=ipc, num_classes=num_classes, image_shape=image_shape
  )
  if storage_floats > allowed:
    raise ValueError(
      f"continual.memories.{name} stores {storage_floats / num_classes:g} "
      f"floats per class, above the budget of continual.ipc={ipc} images "
      f"per class ({allowed // num_classes} floats per class); every memory "
      f"must fit the same storage"
    )
