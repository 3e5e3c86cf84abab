"""Tests of the shared SGD trainer (lowrank_distill.train)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lowrank_distill import models, train


def _model(norm="instance"):
  return models.create(
    "convnet",
    num_classes=10,
    image_shape=(8, 8, 1),
    width=8,
    depth=1,
    norm=norm,
  )


def _problem(n=20):
  images = jax.random.normal(jax.random.key(5), (n, 8, 8, 1))
  targets = jax.nn.one_hot(jnp.arange(n) % 10, 10)
  return images, targets


def test_epoch_batches_cover_every_example_once(key):
  idx, mask = train.epoch_batches(key, 10, 4)
  chex.assert_shape(idx, (3, 4))
  assert float(mask.sum()) == 10
  assert sorted(np.asarray(idx)[np.asarray(mask) > 0].tolist()) == list(
    range(10)
  )


def test_masked_cross_entropy_ignores_padding_rows():
  model = _model()
  images, targets = _problem(6)
  params, state = train.split_variables(
    train.init_variables(jax.random.key(0), model, (8, 8, 1))
  )
  padded_images = jnp.concatenate([images, 100.0 * images[:2]])
  padded_targets = jnp.concatenate([targets, targets[:2][:, ::-1]])
  mask = jnp.array([1.0] * 6 + [0.0] * 2)
  full, _ = train.masked_cross_entropy(
    model, params, state, images, targets, jnp.ones(6)
  )
  masked, (_, correct) = train.masked_cross_entropy(
    model, params, state, padded_images, padded_targets, mask
  )
  np.testing.assert_allclose(masked, full, rtol=1e-6)
  chex.assert_shape(correct, (8,))


def test_count_correct_pads_the_last_batch():
  model = _model()
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  x = jax.random.normal(jax.random.key(1), (23, 8, 8, 1))
  predictions = jnp.argmax(model.apply(variables, x), -1)
  labels = predictions.at[:5].set((predictions[:5] + 1) % 10)
  got = train.count_correct(model, variables, x, labels, batch_size=10)
  assert int(got) == 18


def test_correct_predictions_name_each_image_across_batches():
  model = _model()
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  x = jax.random.normal(jax.random.key(1), (23, 8, 8, 1))
  predictions = jnp.argmax(model.apply(variables, x), -1)
  wrong = np.array([0, 9, 10, 21, 22])  # batch ends and the padded batch
  labels = predictions.at[wrong].set((predictions[wrong] + 1) % 10)
  got = train.correct_predictions(model, variables, x, labels, batch_size=10)
  chex.assert_shape(got, (23,))
  np.testing.assert_array_equal(np.flatnonzero(~np.asarray(got)), wrong)


def test_model_keys_are_fold_ins_of_their_index():
  key = jax.random.key(7)
  keys = train.model_keys(key, 3, first=4)
  for i, k in enumerate(keys):
    np.testing.assert_array_equal(
      jax.random.key_data(k),
      jax.random.key_data(jax.random.fold_in(key, 4 + i)),
    )


class SgdEpochTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_one_epoch_visits_every_example_and_updates(self):
    model = _model("batch")
    images, targets = _problem(10)
    params, state = train.split_variables(
      train.init_variables(jax.random.key(0), model, (8, 8, 1))
    )

    def update(grads, opt_state, params):
      new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
      return new, opt_state + 1

    @self.variant
    def epoch(carry):
      return train.sgd_epoch(
        carry,
        0,
        images=images,
        targets=targets,
        model=model,
        batch_size=4,
        order_key=jax.random.key(1),
        aug_key=jax.random.key(2),
        dsa_strategy="color_crop_cutout_scale_rotate",
        update=update,
      )

    (new_params, new_state, steps), (loss_sums, idx, mask, correct) = epoch(
      (params, state, jnp.int32(0))
    )
    assert int(steps) == 3
    chex.assert_shape([loss_sums, idx, mask, correct], [(3,), *[(3, 4)] * 3])
    assert sorted(np.asarray(idx)[np.asarray(mask) > 0].tolist()) == list(
      range(10)
    )
    chex.assert_tree_all_finite((new_params, new_state, loss_sums))
    chex.assert_trees_all_equal_structs(new_params, params)
    # BatchNorm statistics moved in train mode.
    assert not np.allclose(
      jax.tree.leaves(new_state)[0], jax.tree.leaves(state)[0]
    )


def _reference_sgd(
  variables,
  images,
  targets,
  model,
  *,
  epochs,
  lr_at,
  batch_size,
  order_key,
  momentum,
  weight_decay,
  restart_at=None,
):
  """torch.optim.SGD's steps, written out one batch at a time (no DSA)."""
  params, state = train.split_variables(variables)
  buffer = None
  grad_fn = jax.jit(
    jax.grad(
      lambda p, s, x, y, m: train.masked_cross_entropy(model, p, s, x, y, m),
      has_aux=True,
    )
  )
  n = images.shape[0]
  for epoch in range(epochs):
    if epoch == restart_at:
      buffer = None
    idx, mask = train.epoch_batches(
      jax.random.fold_in(order_key, epoch), n, min(batch_size, n)
    )
    for b in range(idx.shape[0]):
      grads, (state, _) = grad_fn(
        params, state, images[idx[b]], targets[idx[b]], mask[b]
      )
      grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
      buffer = (
        grads
        if buffer is None
        else jax.tree.map(lambda t, g: momentum * t + g, buffer, grads)
      )
      params = jax.tree.map(lambda p, u: p - lr_at(epoch) * u, params, buffer)
  return {"params": params, **state}


@pytest.mark.parametrize(
  "settings",
  [
    dict(momentum=0.0, weight_decay=0.0),
    dict(momentum=0.9, weight_decay=5e-4),
    dict(momentum=0.5, weight_decay=0.0, restart_at=2),
  ],
  ids=["plain", "momentum_decay", "restart"],
)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_train_epochs_follows_torch_sgd(settings, norm):
  model = _model(norm)
  images, targets = _problem(10)
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  order_key = jax.random.key(1)
  restart_at = settings.pop("restart_at", None)

  def lr_at(epoch):
    return jnp.where(epoch >= 2, 0.01, 0.05)

  got, record = jax.jit(
    functools.partial(
      train.train_epochs,
      images=images,
      targets=targets,
      model=model,
      epochs=3,
      lr=lr_at,
      batch_size=4,
      order_key=order_key,
      aug_key=jax.random.key(2),
      restart_momentum_at=restart_at,
      **settings,
    )
  )(variables)
  want = _reference_sgd(
    variables,
    images,
    targets,
    model,
    epochs=3,
    lr_at=lr_at,
    batch_size=4,
    order_key=order_key,
    restart_at=restart_at,
    **settings,
  )
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  chex.assert_shape(record.loss, (3,))
  assert record.snapshot is None and record.indices is None


def _train_epochs(norm="instance", **settings):
  """`train_epochs` on `_problem(10)` from seed 0; settings override.

  Returns:
    (initial variables, trained variables, record).
  """
  model = _model(norm)
  images, targets = _problem(10)
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  settings = {
    "images": images,
    "targets": targets,
    "model": model,
    "epochs": 3,
    "lr": 0.05,
    "batch_size": 4,
    "order_key": jax.random.key(1),
    "aug_key": jax.random.key(2),
    **settings,
  }
  return variables, *train.train_epochs(variables, **settings)


def test_momentum_restart_changes_the_result():
  _, kept, _ = _train_epochs(momentum=0.9)
  _, restarted, _ = _train_epochs(momentum=0.9, restart_momentum_at=2)
  assert not np.allclose(
    jax.tree.leaves(kept)[0], jax.tree.leaves(restarted)[0]
  )


def test_records_snapshots_losses_and_batches():
  _, final, record = _train_epochs(
    epochs=2,
    dsa_strategy="color_crop_cutout_scale_rotate",
    keep_snapshots=True,
    keep_batches=True,
  )
  chex.assert_trees_all_equal(
    jax.tree.map(lambda x: x[-1], record.snapshot), final["params"]
  )
  chex.assert_shape(record.loss, (2,))
  chex.assert_shape(
    [record.indices, record.mask, record.correct], [(2, 3, 4)] * 3
  )
  assert np.all(np.asarray(record.loss) > 0)


def test_epochs_in_parts_follow_one_call():
  # Momentum, a schedule on the absolute epoch and a momentum restart: each
  # needs `first_epoch` to be the epoch of the uninterrupted call.
  model = _model()
  images, targets = _problem(10)
  variables = train.init_variables(jax.random.key(0), model, (8, 8, 1))
  settings = dict(
    images=images,
    targets=targets,
    model=model,
    lr=lambda epoch: jnp.where(epoch >= 2, 0.01, 0.05),
    batch_size=4,
    order_key=jax.random.key(1),
    aug_key=jax.random.key(2),
    dsa_strategy="color_crop_cutout_scale_rotate",
    momentum=0.9,
    weight_decay=5e-4,
    restart_momentum_at=2,
    keep_snapshots=True,
  )
  whole, record = train.train_epochs(variables, epochs=4, **settings)
  one_epoch = jax.jit(
    functools.partial(train.train_epochs_from, epochs=1, **settings)
  )
  carry = train.initial_carry(variables, momentum=0.9, weight_decay=5e-4)
  losses = []
  for epoch in range(4):
    carry, part = one_epoch(carry, first_epoch=jnp.int32(epoch))
    chex.assert_trees_all_close(
      carry[0],
      jax.tree.map(lambda s, e=epoch: s[e], record.snapshot),
      rtol=1e-5,
      atol=1e-6,
    )
    losses.append(part.loss[0])
  chex.assert_trees_all_close(carry[0], whole["params"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(jnp.stack(losses), record.loss, rtol=1e-5)
  # The restart is at the absolute epoch 2: numbered from 0 in every part,
  # the parts would train another network.
  carry = train.initial_carry(variables, momentum=0.9, weight_decay=5e-4)
  for _ in range(4):
    carry, _ = one_epoch(carry, first_epoch=jnp.int32(0))
  assert not np.allclose(
    jax.tree.leaves(carry[0])[0], jax.tree.leaves(whole["params"])[0]
  )


def test_zero_epochs_return_the_variables():
  variables, got, record = _train_epochs("batch", epochs=0)
  chex.assert_trees_all_equal(got, variables)
  chex.assert_shape(record.loss, (0,))


def test_plain_sgd_keeps_no_optimiser_state():
  assert train.sgd(momentum=0.0, weight_decay=0.0) is None
  assert train.sgd(momentum=0.9, weight_decay=0.0) is not None


@pytest.mark.parametrize(
  "batch, grad_chunk, layout",
  [
    (170, 32, (6, 29)),
    (70, 32, (3, 24)),
    (256, 32, (8, 32)),
    (10, 32, (1, 10)),
    (32, 32, (1, 32)),
    (170, 0, (1, 170)),
  ],
)
def test_chunk_layout_uses_the_fewest_even_chunks(batch, grad_chunk, layout):
  assert train.chunk_layout(batch, grad_chunk) == layout


@pytest.mark.parametrize("grad_chunk", [3, 4, 9])
def test_a_gradient_in_chunks_is_the_whole_batchs(grad_chunk):
  # 10 rows, the last two padding: chunks of 3 and 4 pad the batch itself.
  model = _model()
  images, targets = _problem(10)
  mask = jnp.arange(10) < 8
  params = train.init_variables(jax.random.key(0), model, (8, 8, 1))["params"]
  whole = jax.value_and_grad(
    functools.partial(train.masked_cross_entropy, model), has_aux=True
  )(params, {}, images, targets, mask.astype(jnp.float32))
  chunked = train.chunked_cross_entropy_grad(
    model,
    params,
    images,
    targets,
    mask.astype(jnp.float32),
    grad_chunk=grad_chunk,
  )
  (loss, (state, correct)), grads = chunked
  chex.assert_shape(correct, (10,))
  assert state == {}
  chex.assert_trees_all_close(loss, whole[0][0], rtol=1e-6)
  chex.assert_trees_all_equal(correct, whole[0][1][1])
  chex.assert_trees_all_close(grads, whole[1], rtol=1e-5, atol=1e-7)


def test_training_with_a_gradient_in_chunks_follows_the_whole_batch():
  settings = dict(
    epochs=2,
    momentum=0.9,
    weight_decay=5e-4,
    dsa_strategy="color_crop_cutout_scale_rotate",
    keep_batches=True,
  )
  start, whole, whole_record = _train_epochs(**settings)
  _, chunked, chunked_record = _train_epochs(grad_chunk=3, **settings)
  # Batches of 4 (the last of each epoch 2 rows) in chunks of 2: the same
  # augmented images and order, sums in another order.
  chex.assert_trees_all_close(chunked, whole, rtol=1e-4, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(chunked)[0], jax.tree.leaves(start)[0])
  chex.assert_trees_all_close(chunked_record.loss, whole_record.loss, rtol=1e-5)
  chex.assert_trees_all_equal(chunked_record.correct, whole_record.correct)


def test_a_gradient_in_chunks_refuses_batch_statistics():
  with pytest.raises(ValueError, match=r"grad_chunk=2.*batch_stats"):
    _train_epochs(norm="batch", grad_chunk=2)
  # A chunk as large as the batch is the whole batch: allowed.
  _train_epochs(norm="batch", grad_chunk=4, epochs=1)
