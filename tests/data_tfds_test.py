"""Tests of the tensorflow-datasets source of lowrank_distill.data.

Preparation imports TensorFlow (into this test process); reading back must
not, which is checked in a fresh subprocess. Nothing here may reach the
network: the `no_network` fixture makes any socket use fail loudly.
"""

import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import tarfile
import time

import chex
import numpy as np
import pytest

from lowrank_distill import data

tfds = pytest.importorskip("tensorflow_datasets")

_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")

  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)


def _canonical(images, labels):
  """Rows of (label, pixels) as sorted bytes: the split as a multiset."""
  images = np.asarray(images, np.uint8).reshape(len(images), -1)
  rows = np.concatenate([np.asarray(labels, np.uint8)[:, None], images], 1)
  return np.sort(rows.view(f"V{rows.shape[1]}").ravel())


def _to_uint8(ds, images):
  return np.rint(ds.to_unit_range(images) * 255).astype(np.uint8)


def _write_cifar10_archive(folder, rng, *, per_batch=3, num_test=7):
  """A tiny `cifar-10-binary.tar.gz` in the original record format."""
  folder.mkdir(parents=True, exist_ok=True)
  members, splits = {}, {"train": [], "test": []}
  batches = [(f"data_batch_{i}.bin", "train", per_batch) for i in range(1, 6)]
  for file, split, n in batches + [("test_batch.bin", "test", num_test)]:
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    members[file] = np.concatenate([labels[:, None], chw.reshape(n, -1)], 1)
    splits[split].append((chw.transpose(0, 2, 3, 1), labels))
  names = "\n".join(data.DATASETS["cifar10"].class_names) + "\n"
  members["batches.meta.txt"] = names.encode()
  with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
    for file, content in members.items():
      raw = content if isinstance(content, bytes) else content.tobytes()
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{file}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return {
    split: tuple(map(np.concatenate, zip(*parts)))
    for split, parts in splits.items()
  }


def _accept_archive(monkeypatch, archive):
  """Registers the generated archive's checksum in place of the real one."""
  from tensorflow_datasets.core.download import checksums

  builder_cls = tfds.builder_cls("cifar10")
  (url,) = builder_cls.url_infos
  info = checksums.compute_url_info(tfds.core.Path(archive))
  monkeypatch.setattr(
    builder_cls,
    "url_infos",
    {url: checksums.UrlInfo(info.size, info.checksum, archive.name)},
  )


def _load_in_subprocess(name, data_dir):
  """Loads in a fresh interpreter; returns its report (TF imported or not)."""
  code = (
    "import json, sys\n"
    "from lowrank_distill import data\n"
    f"ds = data.load({name!r}, data_dir={str(data_dir)!r})\n"
    "print(json.dumps({'tensorflow': 'tensorflow' in sys.modules,\n"
    "  'train': ds.train_images.shape[0], 'test': ds.test_images.shape[0],\n"
    "  'sum': float(ds.train_images.astype('float64').sum())}))\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_manual_files_match_the_tfds_checksums():
  for name, spec in data.DATASETS.items():
    if spec.tfds_name is None:
      continue
    registered = tfds.builder_cls(spec.tfds_name).url_infos.values()
    assert sorted(spec.manual_files) == sorted(u.filename for u in registered)


def test_registry_is_consistent():
  for name, spec in data.DATASETS.items():
    assert len(spec.class_names) == spec.num_classes, name
    assert len(spec.mean) == len(spec.std) == spec.image_shape[2], name
    assert spec.default_source in data.SOURCES


def test_mock_data_source_cifar10(tmp_path):
  # tfds.testing.mock_data patches data_source, but in tfds 4.9.10 its
  # default mock of `__getitems__` is an unbound partial that raises
  # TypeError; a custom `as_data_source_fn` (plain sequences) works.
  rng = np.random.default_rng(0)
  splits = {
    split: [
      {
        "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "label": int(rng.integers(10)),
        "id": f"{split}_{i}",
      }
      for i in range(n)
    ]
    for split, n in (("train", 12), ("test", 5))
  }

  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return [splits[s] for s in split]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    ds = data.load("cifar10", data_dir=tmp_path)
  chex.assert_shape(ds.train_images, (12, 32, 32, 3))
  chex.assert_shape(ds.test_images, (5, 32, 32, 3))
  assert ds.source == "tfds" and ds.num_classes == 10
  assert ds.class_names[0] == "airplane"
  assert ds.mean == (0.4914, 0.4822, 0.4465)
  assert ds.std == (0.2023, 0.1994, 0.2010)
  np.testing.assert_array_equal(
    ds.train_labels, [ex["label"] for ex in splits["train"]]
  )
  np.testing.assert_array_equal(
    _to_uint8(ds, ds.test_images), [ex["image"] for ex in splits["test"]]
  )


@pytest.mark.slow
def test_cifar10_prepared_offline_from_original_format(
  tmp_path, monkeypatch, no_network
):
  manual = tmp_path / "manual"
  expected = _write_cifar10_archive(manual, np.random.default_rng(0))
  _accept_archive(monkeypatch, manual / "cifar-10-binary.tar.gz")
  data_dir = tmp_path / "tfds"
  ds = data.load("cifar10", data_dir=data_dir, manual_dir=manual)
  assert ds.image_shape == (32, 32, 3) and ds.path == str(data_dir)
  chex.assert_shape(ds.train_images, (15, 32, 32, 3))
  chex.assert_shape(ds.test_images, (7, 32, 32, 3))
  for split, images, labels in (
    ("train", ds.train_images, ds.train_labels),
    ("test", ds.test_images, ds.test_labels),
  ):
    np.testing.assert_array_equal(
      _canonical(_to_uint8(ds, images), labels), _canonical(*expected[split])
    )
  assert any(data_dir.rglob("*.array_record*"))

  # Reading the prepared folder back never imports TensorFlow.
  report = _load_in_subprocess("cifar10", data_dir)
  assert report["tensorflow"] is False
  assert (report["train"], report["test"]) == (15, 7)
  np.testing.assert_allclose(
    report["sum"], ds.train_images.astype(np.float64).sum(), rtol=1e-6
  )

  # tfrecord output cannot be read without TensorFlow: clear error.
  other = tmp_path / "tfrecord"
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual))
  tfds.builder("cifar10", data_dir=other).download_and_prepare(
    download_config=config, file_format="tfrecord"
  )
  with pytest.raises(ValueError, match="prepared as tfrecord.*array_record"):
    data.load("cifar10", data_dir=other)


def test_manual_dir_missing_archives_fails_fast(
  tmp_path, no_network, monkeypatch
):
  # Fast means before tfds prepares anything; a clock would fail under load.
  def refuse_to_prepare(*args, **kwargs):
    raise AssertionError("download_and_prepare ran before the archives check")

  monkeypatch.setattr(
    tfds.core.DatasetBuilder, "download_and_prepare", refuse_to_prepare
  )
  manual = tmp_path / "partial"
  manual.mkdir()
  (manual / "train-images-idx3-ubyte.gz").write_bytes(b"x")
  (manual / "t10k-images-idx3-ubyte.gz").write_bytes(b"x")
  with pytest.raises(FileNotFoundError) as err:
    data.load("mnist", data_dir=tmp_path / "tfds", manual_dir=manual)
  message = str(err.value)
  assert str(manual) in message
  assert "train-labels-idx1-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
  assert "nothing was downloaded" in message
  assert not (tmp_path / "tfds").exists()
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    data.prepare_tfds(
      "cifar100", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "none"
    )


@pytest.mark.slow
def test_real_mnist_tfds_matches_idx(tmp_path, mnist_dir, no_network):
  data_dir = tmp_path / "tfds"
  start = time.perf_counter()
  data.prepare_tfds("mnist", data_dir=data_dir, manual_dir=mnist_dir)
  prepare_s = time.perf_counter() - start
  print(f"tfds prepare of mnist from {mnist_dir}: {prepare_s:.1f} s")

  start = time.perf_counter()
  ds = data.load("mnist", data_dir=data_dir)
  print(f"tfds read of prepared mnist: {time.perf_counter() - start:.1f} s")
  raw = data.load_idx_folder(mnist_dir)
  builder = tfds.builder("mnist", data_dir=data_dir)
  assert tuple(builder.info.features["label"].names) == ds.class_names

  chex.assert_shape(ds.train_images, (60000, 28, 28, 1))
  chex.assert_shape(ds.test_images, (10000, 28, 28, 1))
  assert len(raw[0]) == 60000 and len(raw[2]) == 10000
  np.testing.assert_array_equal(
    np.bincount(ds.train_labels),
    [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
  )
  np.testing.assert_array_equal(
    np.bincount(ds.test_labels),
    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
  )
  np.testing.assert_array_equal(
    _canonical(_to_uint8(ds, ds.train_images), ds.train_labels),
    _canonical(raw[0], raw[1]),
  )
  np.testing.assert_array_equal(
    _canonical(_to_uint8(ds, ds.test_images), ds.test_labels),
    _canonical(raw[2], raw[3]),
  )
  assert abs(float(ds.train_images.mean())) < 1e-3
  assert abs(float(ds.train_images.std()) - 1.0) < 1e-3

  idx_ds = data.load("mnist", source="idx", path=mnist_dir)
  np.testing.assert_array_equal(idx_ds.train_labels, raw[1])
  np.testing.assert_allclose(
    idx_ds.train_images.mean(), ds.train_images.mean(), rtol=1e-4
  )
