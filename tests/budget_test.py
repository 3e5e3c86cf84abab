"""Tests of storage budgets (lowrank_distill.parameterize.budget)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lowrank_distill import parameterize
from lowrank_distill.parameterize import budget, labels, mappers

CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)


def _ipc(param, image_shape, *, ipc=1, num_classes=10, **kwargs):
  return budget.images_per_class(
    param,
    budget="same-memory",
    ipc=ipc,
    num_classes=num_classes,
    image_shape=image_shape,
    **kwargs,
  )


def test_full_rank_floats():
  assert budget.full_rank_floats(ipc=1, num_classes=10, image_shape=CIFAR) == (
    30720
  )
  assert budget.full_rank_floats(ipc=10, num_classes=10, image_shape=MNIST) == (
    78400
  )


@pytest.mark.parametrize(
  "param,kwargs",
  [
    ("pixels", {}),
    ("factors", {"rank": 2}),
    ("mappers", {"rank": 3, "num_sets": 2}),
  ],
)
@pytest.mark.parametrize("soft_labels,learn_lr", [(False, False), (True, True)])
def test_storage_matches_the_real_params(param, kwargs, soft_labels, learn_lr):
  """Storage from shapes equals num_floats of what init really returns."""
  trainable = {
    "images": parameterize.get(param).init(
      jax.random.key(0),
      num_classes=3,
      images_per_class=2,
      image_shape=(6, 5, 3),
      **kwargs,
    )
  }
  if soft_labels:
    trainable["labels"] = labels.init_soft(
      jax.random.key(1), num_classes=3, images_per_class=2
    )
  if learn_lr:
    trainable["log_lr"] = jax.numpy.float32(0.0)
  storage = budget.storage_floats(
    param,
    num_classes=3,
    images_per_class=2,
    image_shape=(6, 5, 3),
    soft_labels=soft_labels,
    learn_lr=learn_lr,
    **kwargs,
  )
  assert storage == parameterize.num_floats(trainable)


def test_storage_hand_counts():
  n, h, w, c, r, k, classes = 12, 8, 6, 3, 2, 4, 4
  common = dict(num_classes=classes, images_per_class=3, image_shape=(h, w, c))
  assert budget.storage_floats("pixels", **common) == n * h * w * c
  assert budget.storage_floats("factors", rank=r, **common) == (
    n * c * r * (h + w)
  )
  assert budget.storage_floats("mappers", rank=r, num_sets=k, **common) == (
    k * c * r * (h + w) + n * c * r * r
  )
  assert budget.storage_floats(
    "factors", rank=r, soft_labels=True, learn_lr=True, **common
  ) == (n * c * r * (h + w) + n * classes + 1)
  # Unused arguments are ignored.
  assert budget.storage_floats(
    "pixels", rank=5, num_sets=9, **common
  ) == budget.storage_floats("pixels", **common)


def test_published_plugin_examples():
  # 32x32 at rank 2: 8x the images.
  assert _ipc("factors", CIFAR, rank=2) == 8
  assert _ipc("factors", CIFAR, ipc=10, rank=2) == 80
  # MNIST IPC 1 at rank 2 -> 7; IPC 10 at rank 8 -> 17.
  assert _ipc("factors", MNIST, rank=2) == 7
  assert _ipc("factors", MNIST, ipc=10, rank=8) == 17


def test_published_mtt_lss_example():
  """CIFAR-10 IPC 1, rank 8, 4 sets, soft labels + lr: 120 codes, 4 x 30."""
  plan = budget.plan(
    "mappers",
    budget="same-memory",
    ipc=1,
    num_classes=10,
    image_shape=CIFAR,
    rank=8,
    num_sets=4,
    soft_labels=True,
    learn_lr=True,
  )
  assert plan.images_per_class == 12 and plan.num_images == 120
  # 4 sets x 3 x 8 x 64 mappers + 120 x (3 x 8 x 8 codes + 10 logits) + 1.
  assert plan.floats_used == 6144 + 120 * 202 + 1 == 30385
  assert plan.floats_allowed == 30720
  shapes = jax.eval_shape(
    lambda: mappers.init(
      jax.random.key(0),
      num_classes=10,
      images_per_class=12,
      image_shape=CIFAR,
      rank=8,
      num_sets=4,
    )
  )
  assert shapes["codes"].shape == (120, 3, 8, 8)
  np.testing.assert_array_equal(np.bincount(mappers.set_of(120, 4)), [30] * 4)


@pytest.mark.parametrize(
  "h,w,c,rank,ipc",
  [(32, 32, 3, 2, 1), (28, 28, 1, 3, 1), (8, 8, 1, 1, 3), (16, 24, 3, 4, 10)],
)
def test_factors_same_memory_formula(h, w, c, rank, ipc):
  got = _ipc("factors", (h, w, c), ipc=ipc, rank=rank)
  assert got == ipc * h * w // (rank * (h + w))


@pytest.mark.parametrize(
  "param,kwargs",
  [
    ("pixels", {"soft_labels": True}),
    ("factors", {"rank": 3, "soft_labels": True, "learn_lr": True}),
    ("mappers", {"rank": 4, "num_sets": 3}),
    ("mappers", {"rank": 2, "num_sets": 5, "soft_labels": True}),
  ],
)
def test_same_memory_picks_the_largest_count_that_fits(param, kwargs):
  shape, classes, ipc = (12, 10, 3), 5, 4
  m = _ipc(param, shape, ipc=ipc, num_classes=classes, **kwargs)
  allowed = budget.full_rank_floats(
    ipc=ipc, num_classes=classes, image_shape=shape
  )

  def cost(m):
    return budget.storage_floats(
      param,
      num_classes=classes,
      images_per_class=m,
      image_shape=shape,
      **kwargs,
    )

  assert cost(m) <= allowed < cost(m + 1)


def test_pixels_same_memory_with_soft_labels_loses_images():
  assert _ipc("pixels", MNIST, ipc=10) == 10
  assert _ipc("pixels", MNIST, ipc=10, soft_labels=True) == 9
  with pytest.raises(ValueError, match="same-images"):
    _ipc("pixels", MNIST, ipc=1, soft_labels=True)


def test_same_images_keeps_ipc():
  for param in parameterize.PARAMETERIZATIONS:
    got = budget.images_per_class(
      param,
      budget="same-images",
      ipc=3,
      num_classes=10,
      image_shape=CIFAR,
      rank=8,
      num_sets=4,
      num_bases=4,
      num_hallucinators=2,
      soft_labels=True,
    )
    # Bases per class; each gives one image per hallucinator.
    assert got == (6 if "hallucinators" in param else 3)


def test_errors():
  with pytest.raises(ValueError, match=r"budget.*'lots'.*same-memory"):
    budget.images_per_class(
      "pixels", budget="lots", ipc=1, num_classes=10, image_shape=CIFAR
    )
  # 8x8 at rank 8 costs 2x a pixel image: not one image fits.
  with pytest.raises(ValueError, match=r"budget.*rank 8"):
    _ipc("factors", (8, 8, 1), rank=8)
  with pytest.raises(ValueError, match=r"rank.*\[1, 8\]"):
    _ipc("factors", (8, 8, 1), rank=9)
  with pytest.raises(ValueError, match="num_sets"):
    _ipc("mappers", (8, 8, 1), rank=1, num_sets=0)
  with pytest.raises(ValueError, match="param"):
    _ipc("voxels", (8, 8, 1))
  with pytest.raises(ValueError, match="ipc"):
    _ipc("pixels", (8, 8, 1), ipc=0)
  # Four sets need four images: one class of one image cannot fill them.
  with pytest.raises(ValueError, match="num_sets 4"):
    _ipc("mappers", (8, 8, 1), num_classes=1, rank=4, num_sets=4)


def test_plan_and_table():
  plan = budget.plan(
    "factors",
    budget="same-memory",
    ipc=1,
    num_classes=10,
    image_shape=CIFAR,
    rank=2,
    num_sets=4,
  )
  assert plan.rank == 2 and plan.num_sets is None
  assert plan.images_per_class == 8 and plan.num_images == 80
  assert plan.floats_used == 80 * 3 * 2 * 64 == plan.floats_allowed
  assert plan.ratio == 1.0
  json.dumps(dataclasses.asdict(plan))
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.rank = 3
  pixels = budget.plan(
    "pixels", budget="same-images", ipc=2, num_classes=10, image_shape=MNIST
  )
  assert pixels.rank is None and pixels.floats_used == 2 * 10 * 784

  table = budget.budget_table(plan)
  header, row = table.splitlines()
  for name in (
    "parameterization",
    "rank",
    "sets",
    "images/class",
    "total images",
    "floats used",
    "floats allowed",
    "ratio",
  ):
    assert name in header
  assert row.split()[:2] == ["factors", "same-memory"]
  assert "30,720" in row and "1.000" in row
  # Aligned: every value starts where its column name starts.
  assert row.index("same-memory") == header.index("budget")
  assert row.index("1.000") == header.index("ratio")
