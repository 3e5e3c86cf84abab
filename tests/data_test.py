"""Tests of lowrank_distill.data: IDX, npz, digits, ZCA, sampling, errors.

The tensorflow-datasets paths are in data_tfds_test.py.
"""

import gzip
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lowrank_distill import data
from lowrank_distill.data import digits

_CODES = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}


def _write_idx(path, array, *, gz=False):
  array = np.asarray(array)
  header = bytes([0, 0, _CODES[array.dtype.type], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  path.write_bytes(gzip.compress(raw) if gz else raw)
  return path


def _tiny_split(rng, n, *, hw=(6, 5), num_classes=3):
  images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
  labels = (np.arange(n) % num_classes).astype(np.uint8)
  return images, labels


def _write_idx_folder(folder, rng, *, gz):
  folder.mkdir(exist_ok=True)
  arrays = (*_tiny_split(rng, 12), *_tiny_split(rng, 6))
  for stem, array in zip(data.IDX_FILES, arrays):
    _write_idx(folder / (stem + (".gz" if gz else "")), array, gz=gz)
  return arrays


def test_import_is_lazy(fresh_python):
  code = (
    "import sys\n"
    "import lowrank_distill.data\n"
    "heavy = ('tensorflow', 'tensorflow_datasets', 'sklearn', 'torch')\n"
    "print([m for m in heavy if m in sys.modules])\n"
  )
  assert fresh_python(code).strip() == "[]"


# IDX ------------------------------------------------------------------------


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
  path = _write_idx(tmp_path / "a-idx", array, gz=gz)
  out = data.read_idx(path)
  assert out.dtype == array.dtype.newbyteorder("=")
  np.testing.assert_array_equal(out, array)


def test_read_idx_truncated_names_file_and_sizes(tmp_path):
  path = _write_idx(tmp_path / "t-idx", np.zeros((4, 3, 3), np.uint8))
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(
    ValueError, match=r"t-idx is truncated: 31 data bytes.*36"
  ):
    data.read_idx(path)


def test_read_idx_too_long_and_short_header(tmp_path):
  path = _write_idx(tmp_path / "l-idx", np.zeros((2,), np.uint8))
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
  path = _write_idx(tmp_path / "g.gz", np.zeros((50,), np.uint8), gz=True)
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
  _write_idx(folder / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
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


# npz ------------------------------------------------------------------------


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


# digits ---------------------------------------------------------------------


def test_digits_shapes_split_and_stats():
  from sklearn.datasets import load_digits

  ds = data.load("digits")
  chex.assert_shape(ds.train_images, (1438, 8, 8, 1))
  chex.assert_shape(ds.test_images, (359, 8, 8, 1))
  assert ds.num_classes == 10 and ds.source == "digits"
  assert set(np.unique(ds.test_labels)) == set(range(10))

  bunch = load_digits()
  expected_test = []
  for c in range(10):
    members = np.flatnonzero(bunch.target == c)
    num_test = int(len(members) * 0.2 + 0.5)
    expected_test += members[len(members) - num_test :].tolist()
    assert (ds.test_labels == c).sum() == num_test
  expected_test = np.sort(expected_test)
  np.testing.assert_array_equal(ds.test_labels, bunch.target[expected_test])
  np.testing.assert_allclose(
    ds.to_unit_range(ds.test_images)[..., 0],
    bunch.images[expected_test] / 16.0,
    atol=1e-6,
  )

  train_x, *_ = digits.load_digits_split()
  spec = data.DATASETS["digits"]
  np.testing.assert_allclose(spec.mean, [train_x.mean(dtype=float)], rtol=1e-9)
  np.testing.assert_allclose(spec.std, [train_x.std(dtype=float)], rtol=1e-6)
  np.testing.assert_allclose(ds.train_images.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_images.std(), 1.0, atol=1e-5)


def test_metadata_is_json_and_deterministic():
  meta = data.load("digits", zca="kip").metadata()
  assert json.loads(json.dumps(meta)) == meta
  assert meta["zca"] == {"flavour": "kip", "eps": 0.1}
  assert meta["standardize"] is True
  assert meta["num_train"] == 1438 and meta["image_shape"] == [8, 8, 1]
  np.testing.assert_array_equal(
    data.load("digits").train_images, data.load("digits").train_images
  )


# unknown names --------------------------------------------------------------


def test_unknown_names_list_valid_values():
  with pytest.raises(ValueError, match=r"dataset 'foo' is not known; valid: "):
    data.load("foo")
  with pytest.raises(ValueError, match="'cifar10', 'cifar100'"):
    data.load("foo")
  with pytest.raises(
    ValueError,
    match=r"source 'ftp' is not known; "
    r"valid: \['digits', 'tfds', 'idx', 'npz'\]",
  ):
    data.load("digits", source="ftp")
  with pytest.raises(
    ValueError,
    match=r"zca flavour 'pca' is not known; valid: \['none', 'mtt', 'kip'\]",
  ):
    data.load("digits", zca="pca")
  with pytest.raises(
    ValueError, match=r"zca flavour 'none' .* valid: \['mtt', 'kip'\]"
  ):
    data.fit_zca(np.zeros((3, 2, 2, 1)), flavour="none")
  with pytest.raises(ValueError, match="tfds dataset 'digits' is not known"):
    data.prepare_tfds("digits", data_dir=None)
  with pytest.raises(ValueError, match="serves only dataset 'digits'"):
    data.load("mnist", source="digits")


# ZCA ------------------------------------------------------------------------


def _correlated_images(n, *, seed=0, shape=(2, 2, 3)):
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  mixing = rng.normal(size=(d, d)) * 0.1 + np.eye(d)
  flat = rng.uniform(size=(n, d)) @ mixing / 3 + 0.2
  return flat.reshape(n, *shape).astype(np.float32)


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_zca_inverse_returns_input(flavour):
  images = _correlated_images(300)
  zca = data.fit_zca(images, flavour=flavour)
  assert zca.whiten.shape == (12, 12) and zca.mean.shape == (12,)
  assert zca.flavour == flavour and zca.eps == 0.1
  white = data.apply_zca(zca, images)
  assert white.shape == images.shape and isinstance(white, np.ndarray)
  np.testing.assert_allclose(data.invert_zca(zca, white), images, atol=1e-4)
  # jax arrays, under jit, with the transform as a pytree argument.
  round_trip = jax.jit(lambda z, x: data.invert_zca(z, data.apply_zca(z, x)))
  out = round_trip(zca, jnp.asarray(images))
  assert isinstance(out, jax.Array)
  np.testing.assert_allclose(out, images, atol=1e-4)
  np.testing.assert_allclose(
    data.apply_zca(zca, jnp.asarray(images)), white, atol=1e-4
  )


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_zca_whitened_covariance_is_identity_for_tiny_eps(flavour):
  images = _correlated_images(2000, seed=1)
  zca = data.fit_zca(images, flavour=flavour, eps=1e-8)
  white = data.apply_zca(zca, images).reshape(len(images), -1)
  cov = np.cov(white, rowvar=False, ddof=1 if flavour == "mtt" else 0)
  np.testing.assert_allclose(cov, np.eye(12), atol=1e-3)
  # ZCA is the symmetric whitening: the closest to the identity map.
  np.testing.assert_allclose(zca.whiten, zca.whiten.T, atol=1e-5)


def test_zca_regulariser_flavours_differ_as_specified():
  images = _correlated_images(500, seed=2)
  flat = images.reshape(500, -1).astype(np.float64)
  cov = np.cov(flat, rowvar=False, ddof=0)
  eigvals = np.linalg.eigvalsh(cov)
  kip = data.fit_zca(images, flavour="kip", eps=0.1)
  reg = 0.1 * np.trace(cov) / 12
  np.testing.assert_allclose(
    np.linalg.eigvalsh(kip.unwhiten.astype(float)) ** 2,
    eigvals + reg,
    rtol=1e-4,
  )
  mtt = data.fit_zca(images, flavour="mtt", eps=0.1)
  np.testing.assert_allclose(
    np.linalg.eigvalsh(mtt.unwhiten.astype(float)) ** 2,
    eigvals * 500 / 499 + 0.1,
    rtol=1e-4,
  )


def test_zca_shape_mismatch():
  zca = data.fit_zca(_correlated_images(10), flavour="kip")
  with pytest.raises(
    ValueError, match=r"fitted on images of shape \(2, 2, 3\)"
  ):
    data.apply_zca(zca, np.zeros((1, 3, 2, 2)))


@pytest.mark.parametrize("flavour", ["mtt", "kip"])
def test_load_with_zca_and_back_to_unit_range(flavour):
  raw = data.load("digits", standardize=False)
  ds = data.load("digits", zca=flavour)
  assert ds.zca is not None and ds.zca.flavour == flavour
  # mtt whitens the [0, 1] images (MTT reference); kip standardises first.
  assert ds.standardize == (flavour == "kip")
  assert ds.metadata()["standardize"] == (flavour == "kip")
  np.testing.assert_allclose(
    ds.to_unit_range(ds.train_images), raw.train_images, atol=1e-4
  )
  np.testing.assert_allclose(
    ds.to_unit_range(jnp.asarray(ds.test_images[:5])),
    raw.test_images[:5],
    atol=1e-4,
  )
  np.testing.assert_allclose(
    ds.to_unit_range(ds.test_images[0]), raw.test_images[0], atol=1e-4
  )
  np.testing.assert_allclose(
    jax.jit(ds.to_unit_range)(ds.test_images[:3]),
    raw.test_images[:3],
    atol=1e-4,
  )
  # Fitted on train only: the train split, not test, has zero feature mean.
  flat = ds.train_images.reshape(len(ds.train_images), -1)
  np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)


# sampling -------------------------------------------------------------------


def _labels():
  # Class sizes 5, 3, 8, 4: class 1 is the smallest.
  return np.array([0] * 5 + [1] * 3 + [2] * 8 + [3] * 4)[
    np.random.default_rng(0).permutation(20)
  ]


class SamplingTest(chex.TestCase, parameterized.TestCase):
  def test_class_index_table(self):
    labels = _labels()
    index = data.class_index(labels, 5)
    chex.assert_shape(index.table, (5, 8))
    np.testing.assert_array_equal(index.counts, [5, 3, 8, 4, 0])
    for c in range(4):
      members = np.asarray(index.table[c, : index.counts[c]])
      np.testing.assert_array_equal(members, np.flatnonzero(labels == c))

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_per_class(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    sample = self.variant(lambda k, i: data.sample_per_class(k, i, n=3))
    idx = np.asarray(sample(jax.random.key(0), index))
    chex.assert_shape(idx, (4, 3))
    assert idx.dtype == np.int32
    for c in range(4):
      np.testing.assert_array_equal(labels[idx[c]], c)
      assert len(set(idx[c].tolist())) == 3  # without replacement
    same = np.asarray(sample(jax.random.key(0), index))
    other = np.asarray(sample(jax.random.key(1), index))
    np.testing.assert_array_equal(idx, same)
    assert not np.array_equal(idx, other)

  @chex.variants(with_jit=True, without_jit=True)
  def test_whole_class_is_a_permutation(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    idx = self.variant(lambda k: data.sample_class(k, index, 1, n=3))(
      jax.random.key(3)
    )
    self.assertCountEqual(np.asarray(idx).tolist(), np.flatnonzero(labels == 1))

  def test_vmap_over_keys_and_traced_class(self):
    labels = _labels()
    index = data.class_index(labels, 4)
    keys = jax.random.split(jax.random.key(0), 300)
    draws = jax.jit(
      jax.vmap(lambda k, c: data.sample_class(k, index, c, n=2)),
    )(keys, jnp.full((300,), 2, jnp.int32))
    chex.assert_shape(draws, (300, 2))
    draws = np.asarray(draws)
    assert (labels[draws] == 2).all()
    assert (draws[:, 0] != draws[:, 1]).all()
    # Every member of the class gets drawn: the subsets really vary.
    self.assertCountEqual(np.unique(draws), np.flatnonzero(labels == 2))
    first = np.bincount(draws[:, 0], minlength=20)[labels == 2]
    assert first.min() > 300 / 8 / 3  # roughly uniform (expected 37.5)

  def test_check_images_per_class(self):
    labels = _labels()
    data.check_images_per_class(labels, 3)
    data.check_images_per_class(data.class_index(labels, 4), 3, field="x")
    with self.assertRaisesRegex(
      ValueError, r"distill.batch_real=4 exceeds .* class 1, which has 3"
    ):
      data.check_images_per_class(labels, 4, field="distill.batch_real")
    with self.assertRaisesRegex(ValueError, r"ipc=1 exceeds .* class 4.* 0"):
      data.check_images_per_class(data.class_index(labels, 5), 1)
    with self.assertRaisesRegex(ValueError, r"ipc=1 exceeds .* class 4"):
      data.check_images_per_class(labels, 1, num_classes=5)
    with self.assertRaisesRegex(ValueError, "ipc must be >= 1"):
      data.check_images_per_class(labels, 0)
