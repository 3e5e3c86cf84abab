"""Tests of pictures and plots (lowrank_distill.analysis)."""

import jax
import numpy as np
import pytest
import threadpoolctl
from PIL import Image

from lowrank_distill import analysis, data, models
from lowrank_distill.data import digits


def _png_size(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    return image.size


def test_image_grid_has_the_expected_size():
  grid = analysis.image_grid(np.zeros((5, 4, 6, 3)), nrow=2, pad=1)
  assert grid.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
  assert grid.dtype == np.uint8


def test_saved_png_has_the_expected_size(tmp_path):
  path = analysis.save_image_grid(
    tmp_path / "g.png", np.random.rand(6, 8, 8, 1), nrow=3
  )
  scale = 64 // 8
  assert _png_size(path) == (3 * (8 * scale + 1) + 1, 2 * (8 * scale + 1) + 1)
  assert analysis.grid_size(6, (8, 8, 1), nrow=3) == _png_size(path)


@pytest.mark.parametrize(
  "n, shape, nrow", [(7, (8, 8, 3), 3), (2, (28, 20, 1), 5)]
)
def test_grid_size_predicts_the_png(tmp_path, n, shape, nrow):
  path = analysis.save_image_grid(
    tmp_path / "sub" / "g.png", np.random.rand(n, *shape), nrow=nrow
  )
  assert _png_size(path) == analysis.grid_size(n, shape, nrow=nrow)


def test_rank_one_components_sum_to_the_image():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 1, 8, 3))
  b = rng.normal(size=(2, 1, 3, 8))
  comps, nrow = analysis.rank_one_components("factors", {"a": a, "b": b})
  assert nrow == 3 and comps.shape == (6, 8, 8, 1)
  assert comps.min() >= 0.0 and comps.max() <= 1.0
  u = rng.normal(size=(2, 3, 8, 2))
  v = rng.normal(size=(2, 3, 2, 8))
  comps, nrow = analysis.rank_one_components("mappers", {"u": u, "v": v})
  assert nrow == 4 and comps.shape == (8, 8, 8, 3)


def test_save_components_has_the_expected_size(tmp_path):
  rng = np.random.default_rng(0)
  params = {
    "a": rng.normal(size=(4, 1, 8, 2)),
    "b": rng.normal(size=(4, 1, 2, 8)),
  }
  path = analysis.save_components(tmp_path / "c.png", "factors", params)
  assert _png_size(path) == analysis.grid_size(8, (8, 8), nrow=2)


@pytest.mark.parametrize("zca", ["none", "kip", "mtt"])
def test_to_unit_images_inverts_the_dataset_preprocessing(zca):
  dataset = data.load("digits", zca=zca)
  raw = digits.load_digits_split()[0][..., None]
  unit = analysis.to_unit_images(dataset.train_images, dataset)
  np.testing.assert_allclose(unit, raw, atol=1e-4)


def test_save_image_grid_de_standardises(tmp_path):
  dataset = data.load("digits")
  images = dataset.train_images[:4]
  path = analysis.save_image_grid(
    tmp_path / "g.png", images, nrow=4, dataset=dataset
  )
  expected = analysis.image_grid(
    digits.load_digits_split()[0][:4, ..., None], nrow=4, scale=8
  )
  with Image.open(path) as image:
    picture = np.asarray(image)
  np.testing.assert_allclose(picture, expected[..., 0], atol=1)


def test_singular_values_of_a_rank_r_set_vanish_beyond_r():
  rng = np.random.default_rng(0)
  r, h, w = 2, 8, 6
  a = rng.normal(size=(5, 3, h, r))
  b = rng.normal(size=(5, 3, r, w))
  images = np.einsum("nchr,ncrw->nhwc", a, b).astype(np.float32)
  spectra = analysis.singular_values(images)
  assert spectra.shape == (5, 3, min(h, w))
  assert np.all(np.diff(spectra, axis=-1) <= 1e-6)
  assert np.all(spectra[..., r:] <= 1e-5 * spectra[..., :1])
  assert np.all(spectra[..., r - 1] > 1e-3 * spectra[..., 0])
  energy = analysis.energy_spectrum(spectra)
  assert energy.shape == (3, min(h, w))
  np.testing.assert_allclose(energy.sum(-1), 1.0, rtol=1e-6)
  assert energy[:, r:].max() < 1e-10


def test_singular_values_match_numpy_per_channel():
  images = np.random.default_rng(1).normal(size=(2, 5, 7, 3))
  spectra = analysis.singular_values(images)
  expected = np.linalg.svd(images[1, :, :, 2], compute_uv=False)
  np.testing.assert_allclose(spectra[1, 2], expected, rtol=1e-10)


def test_save_spectra_has_the_expected_size(tmp_path):
  rng = np.random.default_rng(0)
  spectra = {
    "real": analysis.singular_values(rng.normal(size=(4, 8, 8, 3))),
    "rank 1": analysis.singular_values(
      np.einsum("nh,nw->nhw", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)))[
        ..., None
      ].repeat(3, -1)
    ),
  }
  path = analysis.save_spectra(
    tmp_path / "s.png", spectra, size=(500, 240), dpi=80, log_y=True
  )
  assert _png_size(path) == (500, 240)
  with pytest.raises(ValueError, match="channel count"):
    analysis.save_spectra(
      tmp_path / "x.png", {"a": np.ones((1, 1, 4)), "b": np.ones((1, 3, 4))}
    )


def test_pca_recovers_known_coordinates():
  rng = np.random.default_rng(0)
  coords = rng.normal(size=(200, 2)) * np.array([5.0, 1.0])
  coords -= coords.mean(0)
  # Decorrelate exactly so the principal axes are the coordinate axes.
  u, s, vt = np.linalg.svd(coords, full_matrices=False)
  coords = u * np.array([50.0, 10.0])
  basis = np.linalg.qr(rng.normal(size=(6, 2)))[0]  # orthonormal [6, 2]
  features = coords @ basis.T + 3.0
  projected = analysis.pca(features)
  signs = np.sign(np.sum(projected * coords, axis=0))
  np.testing.assert_allclose(projected, coords * signs, atol=1e-8)
  np.testing.assert_allclose(analysis.pca(features), projected)
  one = analysis.pca(features, num_components=1)
  np.testing.assert_allclose(one[:, 0], projected[:, 0])


def test_project_features_is_joint_and_splits_back():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(30, 5))
  syn = rng.normal(size=(4, 5)) + 2.0
  out = analysis.project_features({"real": real, "syn": syn}, method="pca")
  assert out["real"].shape == (30, 2) and out["syn"].shape == (4, 2)
  joint = analysis.pca(np.concatenate([real, syn]))
  np.testing.assert_allclose(np.concatenate([out["real"], out["syn"]]), joint)
  fitted = analysis.project_features(
    {"real": real, "syn": syn}, method="pca", fit_on="real"
  )
  np.testing.assert_allclose(fitted["real"], analysis.pca(real))
  with threadpoolctl.threadpool_limits(1):  # see notebooks_test
    tsne = analysis.project_features(
      {"real": real, "syn": syn.reshape(4, 5, 1)},
      method="tsne",
      seed=0,
      max_iter=250,
    )
  assert tsne["real"].shape == (30, 2) and tsne["syn"].shape == (4, 2)
  assert np.all(np.isfinite(tsne["syn"]))
  with pytest.raises(ValueError, match="valid: \\['pca', 'tsne'\\]"):
    analysis.project_features({"real": real}, method="umap")


def test_embed_images_batches_like_one_call():
  model = models.create(
    "convnet", num_classes=10, image_shape=(8, 8, 1), width=8, depth=1
  )
  images = np.random.default_rng(0).normal(size=(7, 8, 8, 1))
  variables = jax.jit(model.init)(
    jax.random.key(0), images[:1].astype(np.float32)
  )
  features = analysis.embed_images(model, variables, images, batch_size=3)
  expected = model.apply(variables, images.astype(np.float32), method="embed")
  assert features.shape == (7, expected.shape[-1])
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_save_feature_plot_has_the_expected_size(tmp_path):
  rng = np.random.default_rng(0)
  projections = {
    "real": rng.normal(size=(20, 2)),
    "syn": rng.normal(size=(5, 2)),
  }
  labels = {"real": rng.integers(0, 10, 20), "syn": rng.normal(size=(5, 10))}
  path = analysis.save_feature_plot(
    tmp_path / "f.png", projections, labels, title="features"
  )
  assert _png_size(path) == analysis.PLOT_SIZE
  path = analysis.save_feature_plot(
    tmp_path / "g.png", projections, size=(300, 200), dpi=50
  )
  assert _png_size(path) == (300, 200)


def test_save_accuracy_vs_storage_has_the_expected_size(tmp_path):
  points = [
    {"method": "DM", "storage_floats": 640, "mean": 0.8, "std": 0.02},
    {"method": "DM", "storage_floats": 12800, "mean": 0.9, "std": 0.01},
    {"label": "LoDM", "storage_floats": 640, "mean": 0.85},
  ]
  path = analysis.save_accuracy_vs_storage(
    tmp_path / "a.png", points, size=(400, 300)
  )
  assert _png_size(path) == (400, 300)
  assert analysis.is_log_x([640, 6401]) and not analysis.is_log_x([640, 1280])
  with pytest.raises(ValueError, match="neither 'label' nor 'method'"):
    analysis.save_accuracy_vs_storage(tmp_path / "b.png", [{"mean": 1}])


def test_save_accuracy_plot_writes_a_png_per_call(tmp_path):
  methods = {
    "dm": {"classes_seen": [2, 4], "mean": [0.9, 0.8], "std": [0.01, 0.02]},
    "random": {"classes_seen": [2, 4], "mean": [0.7, 0.6], "std": [0.0, 0.1]},
  }
  path = tmp_path / "plots" / "accuracy.png"
  analysis.save_accuracy_plot(path, methods, title="2 steps")
  assert _png_size(path) == (720, 540)  # 6 x 4.5 inches at 120 dpi


def test_point_from_summary():
  summary = {
    "storage_floats": 640,
    "budget": {"ipc": 1},
    "results": {"convnet": {"mean": 0.5, "std": 0.1, "accuracies": [0.5]}},
  }
  assert analysis.point_from_summary(summary, label="LoDM") == {
    "label": "LoDM",
    "storage_floats": 640,
    "ipc": 1,
    "mean": 0.5,
    "std": 0.1,
  }


def test_a_labelled_grid_keeps_every_image_and_adds_room_for_text(tmp_path):
  images = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
  plain = analysis.save_image_grid(tmp_path / "a.png", images, nrow=3)
  names = ["zero", "one"]
  labelled = analysis.save_image_grid(
    tmp_path / "b.png",
    images,
    nrow=3,
    row_names=names,
    captions=[f"c{i}" for i in range(6)],
  )
  (w, h), (lw, lh) = _png_size(plain), _png_size(labelled)
  assert lw > w and lh > h  # a margin for the names, a line per row
  grid = np.asarray(Image.open(plain))
  picture = np.asarray(Image.open(labelled).convert("L"))
  # The second row of images sits under the first row's caption line.
  cell = 8 * analysis._auto_scale(8) + 1
  margin, line = lw - w, (lh - h) // 2
  np.testing.assert_array_equal(
    picture[cell + line : 2 * cell + line, margin:], grid[cell : 2 * cell]
  )
  # Text was drawn left of the images.
  assert picture[:, : margin - 1].min() < 128


def test_soft_label_captions_name_the_top_class_and_its_probability():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
  assert analysis.soft_label_captions(logits, ["cat", "dog", "emu"]) == [
    "cat 0.70",
    "emu 0.80",
  ]


def test_save_metrics_plot_draws_losses_and_accuracies(tmp_path):
  records = [
    {"step": s, "time": 0.0, "loss": 1.0 / s, "skipped": 0} for s in (1, 2, 3)
  ]
  records.append({"step": 3, "eval": {"convnet": {"mean": 0.5, "std": 0.1}}})
  path = analysis.save_metrics_plot(tmp_path / "m.png", records)
  assert _png_size(path) == (1120, 420)  # two panels
  only_loss = analysis.save_metrics_plot(tmp_path / "l.png", records[:3])
  assert _png_size(only_loss) == (560, 420)
  assert analysis.save_metrics_plot(tmp_path / "n.png", [{"step": 1}]) is None
  assert not (tmp_path / "n.png").exists()


def test_save_runs_plot_has_a_panel_per_kind_of_figure(tmp_path):
  def records(soft):
    return [
      {
        "step": s,
        "loss": 1.0 / s,
        **({"labels": {"entropy": 0.5 / s}} if soft else {}),
      }
      for s in (10, 20, 30)
    ]

  spectra = analysis.mapper_spectra(
    {"u": np.ones((2, 1, 6, 3)), "v": np.ones((2, 1, 3, 6))}
  )
  hard = {"mtt": {"records": records(False), "spectra": None}}
  path = analysis.save_runs_plot(tmp_path / "hard.png", hard)
  assert _png_size(path) == (520, 420)  # the losses only
  both = {
    **hard,
    "lss": {"records": records(True), "spectra": spectra},
  }
  path = analysis.save_runs_plot(tmp_path / "all.png", both)
  assert _png_size(path) == (3 * 520, 420)
  empty = {"none": {"records": [{"step": 1}], "spectra": None}}
  assert analysis.save_runs_plot(tmp_path / "none.png", empty) is None
  assert not (tmp_path / "none.png").exists()


def test_label_statistics_of_onehot_uniform_and_swapped_labels():
  onehot = 50.0 * np.eye(3).repeat(2, axis=0)  # 3 classes x 2 images
  stats = analysis.label_statistics(onehot, images_per_class=2)
  assert stats["argmax_accuracy"] == 1.0
  np.testing.assert_allclose(stats["own_class_prob"], 1.0, atol=1e-6)
  np.testing.assert_allclose(stats["entropy"], 0.0, atol=1e-6)
  uniform = analysis.label_statistics(np.zeros((6, 3)), images_per_class=2)
  np.testing.assert_allclose(uniform["entropy"], np.log(3))
  np.testing.assert_allclose(uniform["own_class_prob"], 1 / 3)
  swapped = analysis.label_statistics(onehot[::-1], images_per_class=2)
  # Reversed rows: only class 1's images keep their class.
  assert swapped["argmax_accuracy"] == pytest.approx(2 / 6)
  with pytest.raises(ValueError, match="images_per_class"):
    analysis.label_statistics(np.zeros((5, 3)), images_per_class=2)


def test_set_statistics_name_labels_lr_and_mapper_spectra():
  from lowrank_distill.parameterize import mappers

  images = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
  params = mappers.svd_mappers(images, rank=2, num_sets=2)
  spectra = analysis.mapper_spectra(params)
  # The SVD's mappers are orthonormal: every singular value 1.
  np.testing.assert_allclose(spectra["u"], 1.0, rtol=1e-5)
  assert spectra["v"].shape == (2, 1, 2)
  trainable = {
    "images": {**params, "u": 3.0 * params["u"]},
    "labels": np.zeros((4, 2)),
    "log_lr": np.log(0.01),
  }
  stats = analysis.set_statistics(trainable, images_per_class=2)
  assert stats["lr"] == pytest.approx(0.01)
  assert stats["labels"]["entropy"] == pytest.approx(np.log(2))
  assert stats["mappers"]["u_max_sv"] == pytest.approx(3.0, rel=1e-5)
  assert stats["mappers"]["v_min_sv"] == pytest.approx(1.0, rel=1e-5)
  # Fixed-label pixels: nothing to report.
  assert (
    analysis.set_statistics(
      {"images": np.zeros((2, 6, 6, 1))}, images_per_class=1
    )
    == {}
  )
