"""Tests of sets released by other codebases (lowrank_distill.released).

The fixtures in tests/fixtures/released were written by PyTorch 2.13
(make_fixtures.py there), as the reference code saves its sets; reading them
needs no torch. Where torch is installed, the reader is also checked against
`torch.load`.
"""

import importlib.util
import io
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from lowrank_distill import data, evaluate, released

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "released"


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def reference_images(digits):
  """[10, 8, 8, 1]: the first training image of each class (the fixtures')."""
  picks = [int(np.flatnonzero(digits.train_labels == c)[0]) for c in range(10)]
  return digits.train_images[picks]


def _load(path, digits, **fmt):
  return released.load(path, released.ReleasedFormat(**fmt), digits)


def test_the_dc_results_file_gives_each_experiment(digits):
  expected = reference_images(digits)
  first = _load(
    FIXTURES / "res_DM_digits_ConvNet_1ipc.pt", digits, format="dc_pt"
  )
  np.testing.assert_array_equal(first.images, expected)
  np.testing.assert_array_equal(first.labels, np.arange(10))
  assert first.lr is None and first.param == "pixels"
  # The second experiment was saved as a strided view: classes reversed.
  second = _load(
    FIXTURES / "res_DM_digits_ConvNet_1ipc.pt",
    digits,
    format="dc_pt",
    experiment=1,
  )
  np.testing.assert_array_equal(second.images, expected[::-1])
  np.testing.assert_array_equal(second.labels, np.arange(10)[::-1])
  with pytest.raises(ValueError, match="released.experiment 2: .* holds 2"):
    _load(
      FIXTURES / "res_DM_digits_ConvNet_1ipc.pt",
      digits,
      format="dc_pt",
      experiment=2,
    )


def test_mtt_files_give_images_labels_and_the_learned_lr(digits):
  got = _load(FIXTURES / "mtt" / "images_best.pt", digits, format="mtt_pt")
  np.testing.assert_array_equal(got.images, reference_images(digits))
  np.testing.assert_array_equal(got.labels, np.arange(10))
  assert got.lr == pytest.approx(0.0123)
  assert got.storage_floats == 10 * 64 + 1


def test_low_rank_factors_are_multiplied_and_kept(digits):
  arrays = released.read_torch_file(FIXTURES / "factors.pt")
  expected = np.einsum("nchr,ncrw->nhwc", arrays["A"], arrays["B"])
  got = _load(FIXTURES / "factors.pt", digits, format="factors")
  np.testing.assert_allclose(got.images, expected, rtol=1e-6, atol=1e-6)
  assert got.param == "factors"
  assert got.storage_floats == 10 * (8 * 2 + 2 * 8)


def test_frepo_arrays_with_learned_label_logits(digits):
  got = _load(FIXTURES / "frepo.npz", digits, format="npz", labels="logits")
  np.testing.assert_array_equal(got.images, reference_images(digits))
  assert got.labels.shape == (10, 10) and got.labels.dtype == np.float32
  with pytest.raises(ValueError, match="say whether they are 'probs' or"):
    _load(FIXTURES / "frepo.npz", digits, format="npz")


def test_plain_arrays_in_either_layout_range_and_label_form(tmp_path, digits):
  images = reference_images(digits)
  unit = digits.to_unit_range(images)
  cases = {
    "nhwc_unit.npz": dict(images=unit, labels=np.eye(10)),
    "nchw_uint8.npz": dict(
      images=np.round(unit.transpose(0, 3, 1, 2) * 255).astype(np.uint8),
      labels=np.full((10, 10), 0.01) + np.eye(10) * 0.9,
    ),
  }
  for name, arrays in cases.items():
    np.savez(tmp_path / name, **arrays)
  one_hot = _load(
    tmp_path / "nhwc_unit.npz", digits, format="npz", value_range="unit"
  )
  np.testing.assert_allclose(one_hot.images, images, atol=1e-5)
  np.testing.assert_array_equal(one_hot.labels, np.arange(10))
  probs = _load(
    tmp_path / "nchw_uint8.npz",
    digits,
    format="npz",
    value_range="uint8",
    labels="probs",
  )
  # uint8 rounding: half a grey level, in standardised units.
  np.testing.assert_allclose(
    probs.images, images, atol=0.5 / 255 / min(digits.std) + 1e-5
  )
  np.testing.assert_array_equal(np.argmax(probs.labels, 1), np.arange(10))
  np.save(tmp_path / "x.npy", images)
  np.save(tmp_path / "y.npy", np.arange(10))
  got = _load(
    tmp_path / "x.npy",
    digits,
    format="npy",
    labels_path=str(tmp_path / "y.npy"),
  )
  np.testing.assert_array_equal(got.images, images)


@pytest.mark.parametrize(
  "arrays,fmt,message",
  [
    (dict(images=np.zeros((10, 3, 8, 8))), {}, "fit neither"),
    (
      dict(images=np.zeros((10, 8, 8, 1)), labels=np.arange(10) + 1),
      {},
      "outside the dataset's 10 classes",
    ),
    (dict(labels=np.arange(11) % 10), {}, "11 labels for 10 images"),
    (dict(labels=np.zeros((10, 7))), {"labels": "logits"}, "[n, 10]"),
    (dict(images=np.full((10, 8, 8, 1), 200.0)), {}, "far from the dataset's"),
    (
      dict(images=np.full((10, 8, 8, 1), 2.0)),
      {"value_range": "unit"},
      "span [2, 2]",
    ),
    (dict(images=np.zeros((10, 8, 8, 1))), {"layout": "nchw"}, "do not fit"),
    (dict(images=np.full((10, 8, 8, 1), np.nan)), {}, "non-finite"),
    ({}, {"format": "pickle"}, "released.format 'pickle' is not known"),
    ({}, {"layout": "chw"}, "released.layout 'chw' is not known"),
  ],
)
def test_a_file_that_does_not_fit_is_refused_naming_the_field(
  tmp_path, digits, arrays, fmt, message
):
  base = dict(images=reference_images(digits), labels=np.arange(10))
  np.savez(tmp_path / "set.npz", **{**base, **arrays})
  with pytest.raises(ValueError) as error:
    _load(tmp_path / "set.npz", digits, **{"format": "npz", **fmt})
  assert message in str(error.value)


def test_a_torch_file_that_would_run_code_is_refused(tmp_path):
  # A zip laid out as torch.save's, whose pickle names another global.
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps(io.StringIO()))
    archive.writestr("evil/byteorder", "little")
  with pytest.raises(pickle.UnpicklingError, match="refusing to load _io"):
    released.read_torch_file(path)
  (tmp_path / "old.pt").write_bytes(pickle.dumps({"data": []}))
  with pytest.raises(ValueError, match="not a PyTorch zip file"):
    released.read_torch_file(tmp_path / "old.pt")


@pytest.mark.skipif(
  importlib.util.find_spec("torch") is None,
  reason="torch is not installed (the `bench` extra); the fixtures' own "
  "tests still check the reader",
)
@pytest.mark.parametrize(
  "name",
  [
    "res_DM_digits_ConvNet_1ipc.pt",
    "mtt/images_best.pt",
    "mtt/labels_best.pt",
    "mtt/learning_rate_best.pt",
    "factors.pt",
  ],
)
def test_the_reader_agrees_with_torch_load(name):
  import torch

  def as_numpy(tree):
    if isinstance(tree, torch.Tensor):
      return tree.detach().numpy()
    if isinstance(tree, dict):
      return {k: as_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
      return [as_numpy(v) for v in tree]
    return tree

  ours = released.read_torch_file(FIXTURES / name)
  theirs = as_numpy(torch.load(FIXTURES / name, weights_only=True))
  np.testing.assert_equal(ours, theirs)


def test_evaluate_run_evaluates_a_released_set(tmp_path):
  from configs import evaluate as evaluate_config

  config = evaluate_config.get_config(
    synset=str(FIXTURES / "mtt" / "images_best.pt"),
    released="mtt_pt",
    dataset="digits",
    runlocal=True,
  )
  config.model.options.update(width=8, depth=1)
  config.eval.update(epochs=2, num_models=1)
  summary = evaluate.run(config, tmp_path / "eval")
  assert summary["lr"] == pytest.approx(0.0123)
  assert 0.0 <= summary["results"]["convnet"]["mean"] <= 1.0
  config.dataset.name = ""
  with pytest.raises(ValueError, match="dataset.name: a released set"):
    evaluate.run(config, tmp_path / "eval2")


def _digit_set(digits, *, soft: bool):
  from lowrank_distill import synset

  labels = np.arange(10)
  if soft:
    labels = np.eye(10, dtype=np.float32) * 3.0
  return synset.SyntheticSet(
    images=reference_images(digits),
    labels=labels,
    param="pixels",
    storage_floats=640,
    dataset=digits.metadata(),
    lr=0.02,
    info={"method": "dm"},
  )


@pytest.mark.parametrize("soft", [False, True])
def test_a_saved_npz_reads_back_with_its_metadata(tmp_path, digits, soft):
  original = _digit_set(digits, soft=soft)
  released.save_npz(tmp_path / "set.npz", original)
  back = _load(
    tmp_path / "set.npz",
    digits,
    format="npz",
    labels="logits" if soft else "auto",
  )
  np.testing.assert_array_equal(back.images, original.images)
  np.testing.assert_array_equal(back.labels, original.labels)
  assert back.lr == pytest.approx(0.02)
  with np.load(tmp_path / "set.npz") as arrays:
    assert '"method": "dm"' in str(arrays["metadata"])


@pytest.mark.skipif(
  importlib.util.find_spec("torch") is None,
  reason="save_torch writes files for PyTorch code and needs torch",
)
@pytest.mark.parametrize("layout", released.TORCH_LAYOUTS)
def test_a_set_saved_for_pytorch_reads_back(tmp_path, digits, layout):
  original = _digit_set(digits, soft=False)
  path = tmp_path / ("res.pt" if layout == "dc" else "mtt")
  released.save_torch(path, original, layout=layout)
  if layout == "mtt":
    path = path / "images_best.pt"
  back = _load(path, digits, format=f"{layout}_pt")
  np.testing.assert_array_equal(back.images, original.images)
  np.testing.assert_array_equal(back.labels, original.labels)
  assert back.lr == (None if layout == "dc" else pytest.approx(0.02))


def test_an_explicit_lr_file_gives_any_format_its_learned_lr(digits):
  lr_file = str(FIXTURES / "mtt" / "learning_rate_best.pt")
  got = _load(
    FIXTURES / "res_DM_digits_ConvNet_1ipc.pt",
    digits,
    format="dc_pt",
    lr_path=lr_file,
  )
  assert got.lr == pytest.approx(0.0123)
  with pytest.raises(ValueError, match="released.lr_path: .* is not a file"):
    _load(FIXTURES / "frepo.npz", digits, format="npz", lr_path="/nope.pt")
