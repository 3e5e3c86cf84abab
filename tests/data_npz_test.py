"""Tests of lowrank_distill.data.npz."""

import chex
import numpy as np
import pytest

from lowrank_distill import data


def _tiny_split(rng, n, *, hw=(6, 5), num_classes=3):
  images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.uint8)
  return images, labels


def test_npz_uint8_without_channel(tmp_path):
  rng = np.random.default_rng(0)
  train_x, train_y = _tiny_split(rng, 9, num_classes=4)
  test_x, test_y = _tiny_split(rng, 4, num_classes=4)
  path = tmp_path / "d.npz"
  np.savez(path, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
  ds = data.load("mine", source="npz", path=path, standardize=False)
  chex.assert_shape(ds.train_images, (9, 6, 5, 1))
  np.testing.assert_allclose(ds.train_images[..., 0], train_x / 255.0)
  assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3")
  assert ds.mean == (0.0,) and ds.std == (1.0,) and ds.source == "npz"


def test_npz_float_with_channels_standardises_per_channel(tmp_path):
  rng = np.random.default_rng(0)
  train_x = rng.uniform(size=(20, 4, 4, 3)) * np.array([0.5, 1.0, 0.2])
  test_x = rng.uniform(size=(5, 4, 4, 3)).astype(np.float32)
  labels = np.arange(20) % 2
  path = tmp_path / "f.npz"
  np.savez(
    path, x_train=train_x, y_train=labels, x_test=test_x, y_test=labels[:5]
  )
  ds = data.load("mine", source="npz", path=path)
  assert ds.image_shape == (4, 4, 3)
  np.testing.assert_allclose(ds.mean, train_x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(
    ds.train_images.mean(axis=(0, 1, 2)), np.zeros(3), atol=1e-5
  )
  np.testing.assert_allclose(
    ds.train_images.std(axis=(0, 1, 2)), np.ones(3), atol=1e-5
  )


def test_npz_errors_name_file_and_keys(tmp_path):
  path = tmp_path / "partial.npz"
  np.savez(path, x_train=np.zeros((2, 3, 3)), y_train=np.zeros(2, int))
  with pytest.raises(ValueError) as err:
    data.load("mine", source="npz", path=path)
  assert str(path) in str(err.value)
  assert "lacks keys x_test, y_test" in str(err.value)
  assert "x_train, y_train, x_test, y_test" in str(err.value)

  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not an archive at all")
  with pytest.raises(ValueError, match="garbage.npz is not readable"):
    data.load("mine", source="npz", path=garbage)

  with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
    data.load("mine", source="npz", path=tmp_path / "missing.npz")

  with pytest.raises(ValueError, match="path is required with source 'npz'"):
    data.load("mine", source="npz")


def test_npz_bad_values(tmp_path):
  path = tmp_path / "v.npz"
  x = np.full((2, 3, 3), 2.0)
  y = np.zeros(2, int)
  np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
  with pytest.raises(ValueError, match=r"float images must .* lie in \[0, 1\]"):
    data.load("mine", source="npz", path=path)
  np.savez(path, x_train=x / 2, y_train=y + 0.5, x_test=x / 2, y_test=y)
  with pytest.raises(
    ValueError, match="y_train has shape .* expected integers"
  ):
    data.load("mine", source="npz", path=path)
