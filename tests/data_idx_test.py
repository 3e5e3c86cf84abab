"""Tests of lowrank_distill.data.idx."""

import chex
import numpy as np
import pytest
from idx_helpers import write_idx

from lowrank_distill import data


def _tiny_split(rng, n, *, hw=(6, 5), num_classes=3):
  images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.uint8)
  return images, labels


def _write_idx_folder(folder, rng, *, gz):
  folder.mkdir(exist_ok=True)
  arrays = (*_tiny_split(rng, 12), *_tiny_split(rng, 6))
  for stem, array in zip(data.IDX_FILES, arrays):
    write_idx(folder / (stem + (".gz" if gz else "")), array, gz=gz)
  return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
  "array",
  [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-5, 0, 70000], np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
  ],
  ids=["uint8", "int32", "float32"],
)
def test_read_idx_round_trip(tmp_path, array, gz):
  path = write_idx(tmp_path / "a-idx", array, gz=gz)
  out = data.read_idx(path)
  assert out.dtype == array.dtype.newbyteorder("=")
  np.testing.assert_array_equal(out, array)


def test_read_idx_truncated_names_file_and_sizes(tmp_path):
  path = write_idx(tmp_path / "t-idx", np.zeros((4, 3, 3), np.uint8))
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(
    ValueError, match=r"t-idx is truncated: 31 data bytes.*36"
  ):
    data.read_idx(path)


def test_read_idx_too_long_and_short_header(tmp_path):
  path = write_idx(tmp_path / "l-idx", np.zeros((2,), np.uint8))
  path.write_bytes(path.read_bytes() + b"\x00")
  with pytest.raises(ValueError, match="l-idx is longer than declared"):
    data.read_idx(path)
  path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
  with pytest.raises(ValueError, match="truncated inside its header"):
    data.read_idx(path)


def test_read_idx_bad_magic_and_dtype(tmp_path):
  path = tmp_path / "m-idx"
  path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="m-idx has a bad magic number 0x1234"):
    data.read_idx(path)
  path.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
  with pytest.raises(ValueError, match="unknown dtype code 0x07; valid: 0x08"):
    data.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
  path = write_idx(tmp_path / "g.gz", np.zeros((50,), np.uint8), gz=True)
  path.write_bytes(path.read_bytes()[:15])
  with pytest.raises(ValueError, match="g.gz is not a readable gzip stream"):
    data.read_idx(path)


def test_idx_folder_missing_files_names_folder_and_files(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "mnistish"
  _write_idx_folder(folder, rng, gz=True)
  (folder / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(FileNotFoundError) as err:
    data.load("tiny", source="idx", path=folder)
  message = str(err.value)
  assert str(folder) in message
  assert "lacks t10k-labels-idx1-ubyte[.gz]" in message
  assert "train-images-idx3-ubyte[.gz]" in message  # the files it looks for


def test_idx_folder_label_count_mismatch(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "bad"
  _write_idx_folder(folder, rng, gz=False)
  write_idx(folder / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte have shape"):
    data.load_idx_folder(folder)


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_unknown_name_computes_stats(tmp_path, gz):
  rng = np.random.default_rng(1)
  train_x, train_y, test_x, test_y = _write_idx_folder(
    tmp_path / "f", rng, gz=gz
  )
  ds = data.load("tiny", source="idx", path=tmp_path / "f")
  chex.assert_shape(ds.train_images, (12, 6, 5, 1))
  chex.assert_shape(ds.test_images, (6, 6, 5, 1))
  assert ds.train_images.dtype == np.float32
  assert ds.train_labels.dtype == np.int32
  assert ds.num_classes == 3 and ds.image_shape == (6, 5, 1)
  assert ds.source == "idx" and ds.path == str(tmp_path / "f")
  unit = train_x / 255.0
  np.testing.assert_allclose(ds.mean, [unit.mean()], rtol=1e-6)
  np.testing.assert_allclose(ds.std, [unit.std()], rtol=1e-6)
  np.testing.assert_allclose(ds.train_images.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_images.std(), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    ds.to_unit_range(ds.test_images)[..., 0], test_x / 255.0, atol=1e-6
  )
  np.testing.assert_array_equal(ds.test_labels, test_y)


def test_load_idx_with_registered_name_checks_shape(tmp_path):
  _write_idx_folder(tmp_path / "f", np.random.default_rng(0), gz=False)
  with pytest.raises(ValueError, match=r"registered with \(28, 28, 1\)"):
    data.load("mnist", source="idx", path=tmp_path / "f")
