"""Tests of differentiable siamese augmentation (lowrank_distill.augment)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import test_util as jtu

from lowrank_distill import augment

# Shared compiled functions: compiling is most of these tests' cost.
_apply = jax.jit(augment.apply, static_argnames="strategy")
_augment = jax.jit(augment.augment, static_argnames=("strategy", "siamese"))
_sample_jit = jax.jit(
  augment.sample,
  static_argnames=("batch_size", "image_shape", "strategy", "siamese"),
)


def _images(n=3, h=6, w=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, h, w, c)).astype(np.float32)


def _params(n, **fields):
  """Neutral parameters for n images, with `fields` overriding."""
  base = dict(
    group=jnp.int32(0),
    brightness=jnp.zeros((n,)),
    saturation=jnp.ones((n,)),
    contrast=jnp.ones((n,)),
    crop_shift=jnp.zeros((n, 2), jnp.int32),
    cutout_centre=jnp.full((n, 2), -100, jnp.int32),
    flip=jnp.zeros((n,), bool),
    scale=jnp.ones((n, 2)),
    rotate=jnp.zeros((n,)),
  )
  base.update({k: jnp.asarray(v) for k, v in fields.items()})
  return augment.AugParams(**base)


def _np_affine(x, theta):
  """torch's affine_grid + grid_sample (bilinear, zeros, align_corners=False).

  Written in normalised coordinates, as torch does, independently of the
  library's pixel-space formulation. x: [n, h, w, c]; theta: [n, 2, 3].
  """
  n, h, w, _ = x.shape
  out = np.zeros_like(x)
  for b in range(n):
    for i in range(h):
      for j in range(w):
        xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
        xs, ys = theta[b] @ np.array([xn, yn, 1.0])
        ix, iy = ((xs + 1) * w - 1) / 2, ((ys + 1) * h - 1) / 2
        x0, y0 = int(np.floor(ix)), int(np.floor(iy))
        for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
          for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= yy < h and 0 <= xx < w:
              out[b, i, j] += wy * wx * x[b, yy, xx]
  return out


def _strategy_index(op):
  return augment.parse_strategy(augment.DEFAULT_STRATEGY).index(op)


class ApplyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_flip_is_exact(self):
    x = _images()
    params = _params(3, flip=[True, False, True])
    out = self.variant(augment.flip)(params, x)
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(out[2], x[2, :, ::-1])
    all_flipped = self.variant(augment.flip)(_params(3, flip=[True] * 3), x)
    np.testing.assert_array_equal(all_flipped, x[:, :, ::-1])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, -1), (-1, 2), (0, 0), (3, 0))
  def test_crop_moves_pixels_and_fills_zeros(self, dy, dx):
    x = _images(n=2, h=6, w=5)
    params = _params(2, crop_shift=[[dy, dx], [0, 0]])
    out = np.asarray(self.variant(augment.crop)(params, x))
    expected = np.zeros_like(x[0])
    for i in range(6):
      for j in range(5):
        if 0 <= i + dy < 6 and 0 <= j + dx < 5:
          expected[i, j] = x[0, i + dy, j + dx]
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], x[1])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((3, 2), (0, 0), (6, 5), (1, 4))
  def test_cutout_zeroes_the_square(self, cy, cx):
    # 6x5 image: the hole is 3 rows (int(3.5)) by 3 columns (int(3.0)).
    x = _images(n=2, h=6, w=5) + 10.0  # no accidental zeros
    params = _params(2, cutout_centre=[[cy, cx], [-50, -50]])
    out = np.asarray(self.variant(augment.cutout)(params, x))
    hole = np.zeros((6, 5), bool)
    for i in range(6):
      for j in range(5):
        hole[i, j] = cy - 1 <= i <= cy + 1 and cx - 1 <= j <= cx + 1
    np.testing.assert_array_equal(out[0][hole], 0.0)
    np.testing.assert_array_equal(out[0][~hole], x[0][~hole])
    np.testing.assert_array_equal(out[1], x[1])

  def test_cutout_even_side(self):
    # 8x8: side 4, rows centre-2 .. centre+1.
    x = jnp.ones((1, 8, 8, 1))
    params = _params(1, cutout_centre=[[8, 1]])
    out = np.asarray(augment.cutout(params, x))[0, :, :, 0]
    expected = np.ones((8, 8), np.float32)
    expected[6:8, 0:3] = 0.0
    np.testing.assert_array_equal(out, expected)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scale_and_rotate_identity_at_neutral(self):
    x = _images(n=2, h=6, w=5)
    params = _params(2)
    for op in (augment.scale, augment.rotate):
      out = self.variant(op)(params, x)
      np.testing.assert_allclose(out, x, atol=1e-6)

  def test_scale_and_rotate_match_torch_grid_maths(self):
    x = _images(n=3, h=5, w=7, c=2)
    p = augment.sample(
      jax.random.key(2), batch_size=3, image_shape=(5, 7, 2), siamese=False
    )
    sy, sx = np.asarray(p.scale, np.float64).T
    cos, sin = np.cos(np.asarray(p.rotate)), np.sin(np.asarray(p.rotate))
    zero = np.zeros(3)
    theta_scale = np.stack(
      [np.stack([sx, zero, zero], -1), np.stack([zero, sy, zero], -1)], 1
    )
    theta_rotate = np.stack(
      [np.stack([cos, -sin, zero], -1), np.stack([sin, cos, zero], -1)], 1
    )
    np.testing.assert_allclose(
      jax.jit(augment.scale)(p, x), _np_affine(x, theta_scale), atol=1e-5
    )
    np.testing.assert_allclose(
      jax.jit(augment.rotate)(p, x), _np_affine(x, theta_rotate), atol=1e-5
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_rotate_90_degrees_matches_rot90(self):
    x = _images(n=2, h=7, w=7, c=2)
    params = _params(2, rotate=[np.pi / 2, -np.pi / 2])
    out = np.asarray(self.variant(augment.rotate)(params, x))
    # out[r, c] = x[c, w - 1 - r]: np.rot90 over the (h, w) axes.
    np.testing.assert_allclose(out[0], np.rot90(x[0], k=1), atol=1e-5)
    np.testing.assert_allclose(out[1], np.rot90(x[1], k=-1), atol=1e-5)

  def test_rotate_small_case_by_hand(self):
    # 2x2 image, 45 degrees. Output pixel (0, 0) sits at (u, v) = (-.5, -.5)
    # from the centre and reads ix = cos*u - sin*v + .5 = .5 (between the
    # columns), iy = sin*u + cos*v + .5 = .5 - s, s = sqrt(.5): a fraction
    # 1.5 - s of the way from the zero pad row -1 to row 0, whose mean is 1.5.
    # Output (0, 1) reads ix = .5 + s, iy = .5: 1.5 - s of column 1 (mean 3)
    # and the rest from the zero pad column 2.
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    out = np.asarray(jax.jit(augment.rotate)(_params(1, rotate=[np.pi / 4]), x))
    s = np.sqrt(0.5)
    np.testing.assert_allclose(out[0, 0, 0, 0], (1.5 - s) * 1.5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 1, 0], (1.5 - s) * 3.0, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_color_ops_match_formulas(self):
    x = _images(n=2, h=4, w=3, c=3)
    b = np.array([0.3, -0.2], np.float32)
    s = np.array([1.7, 0.1], np.float32)
    c = np.array([0.6, 1.4], np.float32)
    params = _params(2, brightness=b, saturation=s, contrast=c)
    r = lambda v: v.reshape(2, 1, 1, 1)
    expected = x + r(b)
    m = expected.mean(axis=3, keepdims=True)
    expected = (expected - m) * r(s) + m
    m = expected.mean(axis=(1, 2, 3), keepdims=True)
    expected = (expected - m) * r(c) + m
    out = self.variant(augment.color)(params, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
      self.variant(augment.brightness)(params, x), x + r(b), atol=1e-6
    )

  def test_grayscale_saturation_is_identity(self):
    x = _images(c=1)
    out = augment.saturation(_params(3, saturation=[0.0, 0.5, 2.0]), x)
    np.testing.assert_allclose(out, x, atol=1e-6)

  @parameterized.parameters(*augment.OPS)
  def test_gradients_through_apply(self, op):
    x = jnp.asarray(_images(n=2, h=5, w=4, c=2))
    params = augment.sample(
      jax.random.key(7),
      batch_size=2,
      image_shape=(5, 4, 2),
      siamese=False,
    )
    params = params.replace(
      group=jnp.int32(_strategy_index(op)),
      flip=jnp.asarray([True, False]),
      crop_shift=jnp.asarray([[1, -1], [-1, 0]], jnp.int32),
      cutout_centre=jnp.asarray([[2, 2], [0, 4]], jnp.int32),
    )
    fn = functools.partial(_apply, params)
    jtu.check_grads(fn, (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
    grad = jax.grad(lambda v: jnp.sum(fn(v) ** 2))(x)
    chex.assert_tree_all_finite(grad)
    assert float(jnp.abs(grad).sum()) > 0

  def test_apply_dispatches_on_group(self):
    x = _images()
    params = _sample_jit(jax.random.key(1), batch_size=3, image_shape=(6, 5, 3))
    for i, op in enumerate(augment.parse_strategy(augment.DEFAULT_STRATEGY)):
      p = params.replace(group=jnp.int32(i))
      np.testing.assert_allclose(
        _apply(p, x), jax.jit(augment.OPS[op])(p, x), rtol=1e-6, atol=1e-6
      )

  def test_none_strategy_is_identity(self):
    x = _images()
    for strategy in ("none", "", "None"):
      assert augment.parse_strategy(strategy) == ()
      out = augment.augment(jax.random.key(0), x, strategy=strategy)
      np.testing.assert_array_equal(out, x)
      params = augment.sample(
        jax.random.key(0), batch_size=3, image_shape=(6, 5, 3), strategy=""
      )
      np.testing.assert_array_equal(augment.apply(params, x, strategy=""), x)

  def test_unknown_op_lists_valid_ones(self):
    with pytest.raises(ValueError, match="dsa_strategy") as info:
      augment.parse_strategy("color_blur")
    for op in augment.OPS:
      assert op in str(info.value)
    assert "blur" in str(info.value)
    assert augment.parse_strategy("crop_flip") == ("crop", "flip")


def _sample(key, n, siamese=True, strategy=augment.DEFAULT_STRATEGY, hw=8):
  return augment.sample(
    key,
    batch_size=n,
    image_shape=(hw, hw, 3),
    strategy=strategy,
    siamese=siamese,
  )


class SampleTest(chex.TestCase):
  def test_shapes_and_dtypes(self):
    p = _sample(jax.random.key(0), 5, siamese=False)
    chex.assert_shape(p.group, ())
    chex.assert_shape(
      [p.brightness, p.saturation, p.contrast, p.flip, p.rotate], (5,)
    )
    chex.assert_shape([p.crop_shift, p.cutout_centre, p.scale], (5, 2))
    assert p.group.dtype == jnp.int32
    assert p.crop_shift.dtype == jnp.int32
    assert p.cutout_centre.dtype == jnp.int32
    assert p.flip.dtype == jnp.bool_

  def test_siamese_draw_independent_of_batch_size(self):
    key = jax.random.key(42)
    real, syn = _sample(key, 16), _sample(key, 3)
    for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(syn)):
      # Every image in either batch shares the one draw.
      if a.ndim:
        np.testing.assert_array_equal(a, np.broadcast_to(a[:1], a.shape))
        np.testing.assert_array_equal(b, np.broadcast_to(b[:1], b.shape))
        np.testing.assert_array_equal(a[0], b[0])
      else:
        np.testing.assert_array_equal(a, b)

  @parameterized.parameters(*augment.OPS)
  def test_siamese_same_transform_for_real_and_synthetic(self, op):
    # A synthetic batch that copies the first real images must come out as
    # the first rows of the augmented real batch; every image gets the same
    # transform, so a batch of copies stays a batch of copies.
    x = _images(n=1, h=8, w=8)
    real = jnp.asarray(np.concatenate([x] * 7, axis=0))
    syn = real[:2]
    for seed in range(3):
      key = jax.random.key(seed)
      out_real = _augment(key, real, strategy=op)
      out_syn = _augment(key, syn, strategy=op)
      np.testing.assert_allclose(out_syn, out_real[:2], atol=1e-6)
      np.testing.assert_allclose(
        out_real, jnp.broadcast_to(out_real[:1], real.shape), atol=1e-6
      )

  def test_per_sample_draws_differ(self):
    p = _sample(jax.random.key(3), 32, siamese=False)
    for leaf in (p.brightness, p.saturation, p.contrast, p.rotate):
      assert len(np.unique(np.asarray(leaf))) == 32
    assert len(np.unique(np.asarray(p.scale[:, 0]))) == 32
    assert not np.array_equal(p.scale[:, 0], p.scale[:, 1])
    assert 0 < int(p.flip.sum()) < 32
    assert len(np.unique(np.asarray(p.crop_shift), axis=0)) > 4
    assert len(np.unique(np.asarray(p.cutout_centre), axis=0)) > 4
    # Images that start equal come out different.
    x = jnp.broadcast_to(jnp.asarray(_images(n=1, h=8, w=8)), (32, 8, 8, 3))
    out = _augment(jax.random.key(3), x, strategy="color", siamese=False)
    assert not np.allclose(out[0], out[1])

  def test_group_is_uniform(self):
    keys = jax.random.split(jax.random.key(0), 1200)
    groups = jax.jit(jax.vmap(lambda k: _sample(k, 2).group))(keys)
    counts = np.bincount(np.asarray(groups), minlength=6)
    assert counts.shape == (6,)
    # Expected 200 each; 5 standard deviations is about +-65.
    assert counts.min() > 135 and counts.max() < 265, counts
    two = jax.jit(
      jax.vmap(lambda k: _sample(k, 2, strategy="crop_flip").group)
    )(keys)
    assert set(np.unique(np.asarray(two)).tolist()) == {0, 1}

  def test_parameter_ranges(self):
    keys = jax.random.split(jax.random.key(1), 100)
    # 10x9 images: crop |dy| <= 1, |dx| <= 1; cutout 5x5 (odd): centres
    # in [0, h - 1] x [0, w - 1].
    draw = jax.jit(
      jax.vmap(
        lambda k: augment.sample(
          k, batch_size=16, image_shape=(10, 9, 3), siamese=False
        )
      )
    )
    p = jax.tree.map(np.asarray, draw(keys))
    assert -0.5 <= p.brightness.min() and p.brightness.max() <= 0.5
    assert 0.0 <= p.saturation.min() and p.saturation.max() <= 2.0
    assert 0.5 <= p.contrast.min() and p.contrast.max() <= 1.5
    assert 1 / 1.2 <= p.scale.min() and p.scale.max() <= 1.2
    limit = np.deg2rad(15.0)
    assert -limit <= p.rotate.min() and p.rotate.max() <= limit
    # The ranges are filled, not just respected.
    assert p.brightness.min() < -0.45 and p.brightness.max() > 0.45
    assert p.rotate.min() < -0.9 * limit and p.rotate.max() > 0.9 * limit
    assert set(np.unique(p.crop_shift[..., 0])) == {-1, 0, 1}
    assert set(np.unique(p.crop_shift[..., 1])) == {-1, 0, 1}
    assert set(np.unique(p.cutout_centre[..., 0])) == set(range(10))
    assert set(np.unique(p.cutout_centre[..., 1])) == set(range(9))
    assert 0.4 < p.flip.mean() < 0.6
    # 32x32: crop up to 4 pixels; cutout side 16 (even): centre in [0, 32].
    q = jax.tree.map(
      np.asarray,
      jax.jit(jax.vmap(lambda k: _sample(k, 16, False, hw=32)))(keys),
    )
    assert set(np.unique(q.crop_shift)) == set(range(-4, 5))
    for axis in (0, 1):
      assert set(np.unique(q.crop_shift[..., axis])) == set(range(-4, 5))
      assert set(np.unique(q.cutout_centre[..., axis])) == set(range(33))

  def test_augment_jit_matches_eager(self):
    x = jnp.asarray(_images(n=4, h=8, w=8))
    for seed in range(4):
      key = jax.random.key(seed)
      out = _augment(key, x, siamese=False)
      chex.assert_shape(out, x.shape)
      chex.assert_tree_all_finite(out)
      np.testing.assert_allclose(
        out, augment.augment(key, x, siamese=False), rtol=1e-5, atol=1e-5
      )

  def test_vmap_over_keys(self):
    x = jnp.asarray(_images(n=3, h=8, w=8))
    keys = jax.random.split(jax.random.key(0), 8)
    out = jax.jit(jax.vmap(lambda k: augment.augment(k, x, siamese=False)))(
      keys
    )
    chex.assert_shape(out, (8, 3, 8, 8, 3))
    for i in (0, 5):
      np.testing.assert_allclose(
        out[i],
        _augment(keys[i], x, siamese=False),
        rtol=1e-5,
        atol=1e-5,
      )

  def test_sample_under_jit_with_static_sizes(self):
    key = jax.random.key(5)
    jitted = _sample_jit(key, batch_size=4, image_shape=(8, 8, 3))
    chex.assert_trees_all_close(jitted, _sample(key, 4))


def test_cutmix_pastes_one_box_from_a_permutation_and_mixes_the_targets():
  images = jnp.arange(6, dtype=jnp.float32)[:, None, None, None] * jnp.ones(
    (6, 8, 10, 2)
  )
  targets = jax.nn.one_hot(jnp.arange(6), 6)
  seen_areas = set()
  for seed in range(20):
    mixed, mixed_targets = augment.cutmix(
      jax.random.key(seed), images, targets, prob=1.0
    )
    chex.assert_shape((mixed, mixed_targets), (images.shape, targets.shape))
    changed = np.asarray(mixed[..., 0] != images[..., 0])  # [n, h, w]
    box = changed.any(0)
    # One axis-aligned box, the same for every image and channel.
    rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
    if box.any():
      assert box.sum() == len(rows) * len(cols)
      assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
    ratio = 1.0 - box.mean()
    seen_areas.add(round(float(box.mean()), 3))
    # Image i's box holds image perm[i] (a permutation of the batch); its
    # target is ratio * own + (1 - ratio) * the partner's.
    partner = np.asarray(mixed[:, rows[0], cols[0], 0]) if box.any() else None
    if partner is not None:
      assert sorted(partner.astype(int).tolist()) == list(range(6))
      expected = (
        ratio * np.eye(6) + (1 - ratio) * np.eye(6)[partner.astype(int)]
      )
      np.testing.assert_allclose(mixed_targets, expected, atol=1e-6)
  assert len(seen_areas) > 3  # the box's size is drawn


def test_cutmix_at_probability_zero_changes_nothing():
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  mixed, mixed_targets = augment.cutmix(
    jax.random.key(1), images, targets, prob=0.0
  )
  chex.assert_trees_all_equal((mixed, mixed_targets), (images, targets))


def test_without_drops_one_op_group():
  assert augment.without("color_crop_cutout", "cutout") == "color_crop"
  assert augment.without("cutout", "cutout") == "none"
  assert augment.without("none", "cutout") == "none"
