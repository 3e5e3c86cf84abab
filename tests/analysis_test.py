"""Tests of pictures (lowrank_distill.analysis)."""

import numpy as np
from PIL import Image

from lowrank_distill import analysis


def test_image_grid_has_the_expected_size():
  grid = analysis.image_grid(np.zeros((5, 4, 6, 3)), nrow=2, pad=1)
  assert grid.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
  assert grid.dtype == np.uint8


def test_saved_png_has_the_expected_size(tmp_path):
  path = analysis.save_image_grid(
    tmp_path / "g.png", np.random.rand(6, 8, 8, 1), nrow=3
  )
  scale = 64 // 8
  with Image.open(path) as image:
    assert image.size == (3 * (8 * scale + 1) + 1, 2 * (8 * scale + 1) + 1)


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
