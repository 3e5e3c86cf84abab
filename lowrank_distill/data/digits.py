"""The embedded default dataset: scikit-learn's bundled 8x8 digits."""

import numpy as np

TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, *, test_fraction: float):
  """Deterministic split: the last `test_fraction` of each class is test.

  Args:
    labels: [n] integer labels, in file order.
    test_fraction: share of each class (rounded half up) that goes to test.

  Returns:
    Boolean mask [n], True for test examples; both splits keep file order.
  """
  is_test = np.zeros(len(labels), dtype=bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    num_test = int(len(members) * test_fraction + 0.5)
    is_test[members[len(members) - num_test :]] = True
  return is_test


def load_digits_split():
  """The 1797 digits, split per class (last 20% of each class is test).

  Returns:
    `(train_images [n, 8, 8] float32 in [0, 1], train_labels [n] int32,
    test_images [m, 8, 8], test_labels [m])` with n + m = 1797.
  """
  # Deferred: scikit-learn is slow to import and only this source needs it.
  from sklearn import datasets as sk_datasets

  bunch = sk_datasets.load_digits()
  images = (bunch.images / 16.0).astype(np.float32)
  labels = bunch.target.astype(np.int32)
  is_test = stratified_split(labels, test_fraction=TEST_FRACTION)
  return images[~is_test], labels[~is_test], images[is_test], labels[is_test]
