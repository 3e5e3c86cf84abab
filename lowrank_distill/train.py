"""Minibatch SGD on a set of images: the trainer below every method.

Evaluation (`evaluate.train_network`), expert training
(`experts.train_expert`) and gradient matching's inner loop
(`objectives.gradient_matching.train_on_synthetic`) all train through
`train_epochs`; trajectory matching's student steps share `epoch_batches`
and `masked_cross_entropy`. Everything here is pure and traceable: jit or
vmap it where it is used.

SGD is `torch.optim.SGD` as the reference codes use it: L2 weight decay
added to the gradient, then momentum (a trace), then `p - lr * u`.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lowrank_distill import augment
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any


def split_variables(variables: PyTree) -> tuple[PyTree, dict]:
  """Flax variables -> (params, the other collections, e.g. batch_stats)."""
  state = {k: v for k, v in variables.items() if k != "params"}
  return variables["params"], state


def init_variables(key, model, image_shape: Sequence[int]) -> PyTree:
  """Flax variables of `model` for one image of `image_shape` (h, w, c)."""
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))


def model_keys(key, num_models: int, *, first: int = 0):
  """Keys of models first..first+num_models-1; each is fold_in(key, index)."""
  return keys_at(key, np.arange(first, first + num_models))


def keys_at(key, indices):
  """[len(indices)] keys: model i's is fold_in(key, i)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices))


def epoch_batches(key, num_examples: int, batch_size: int):
  """A fresh permutation split into fixed-shape batches with a validity mask.

  Returns:
    indices: [steps, batch] int32, mask: [steps, batch] float32, where
    steps = ceil(num_examples / batch) and the last batch is partial, as a
    PyTorch DataLoader without drop_last.
  """
  steps = math.ceil(num_examples / batch_size)
  padded = steps * batch_size
  perm = jax.random.permutation(key, num_examples)
  perm = jnp.concatenate(
    [perm, jnp.zeros((padded - num_examples,), perm.dtype)]
  )
  mask = (jnp.arange(padded) < num_examples).astype(jnp.float32)
  return (
    perm.reshape(steps, batch_size).astype(jnp.int32),
    mask.reshape(steps, batch_size),
  )


def train_logits(model, params, state, images):
  """Logits in train mode: (logits [b, C], new state).

  `state` holds the model's other collections (e.g. BatchNorm statistics,
  updated as in train mode), possibly empty (then returned as it is).
  """
  variables = {"params": params, **state}
  if state:
    return model.apply(variables, images, train=True, mutable=list(state))
  return model.apply(variables, images, train=True), state


def masked_cross_entropy(
  model, params, state, images, targets, mask, *, valid=None
):
  """Mean cross-entropy over the valid rows of a padded batch, train mode.

  Args:
    model: a Linen module.
    params: its parameters.
    state: its other collections (e.g. BatchNorm statistics, updated as in
      train mode), possibly empty.
    images: [b, h, w, c] images.
    targets: [b, C] target probabilities.
    mask: [b], 1 for valid rows, 0 for padding.
    valid: what the valid rows' loss sum is divided by; None: their number
      (`sum(mask)`). A chunk of a batch divides by the whole batch's, so
      the chunks' losses and gradients add up to the batch's.

  Returns:
    (loss, (new_state, correct)), correct [b] bool: the argmax of the logits
    is the argmax of the targets.
  """
  logits, state = train_logits(model, params, state, images)
  losses = labels_lib.soft_cross_entropy(logits, targets)
  correct = jnp.argmax(logits, -1) == jnp.argmax(targets, -1)
  valid = jnp.sum(mask) if valid is None else valid
  return jnp.sum(losses * mask) / valid, (state, correct)


def chunk_layout(batch: int, grad_chunk: int) -> tuple[int, int]:
  """(chunks, rows per chunk) for a batch's gradient in chunks of at most
  `grad_chunk` rows: as few chunks as that allows, then rows spread evenly
  over them (170 rows in chunks of 32: 6 x 29, 4 padding rows). 0, or a
  chunk no smaller than the batch: (1, batch)."""
  if grad_chunk <= 0 or grad_chunk >= batch:
    return 1, batch
  chunks = math.ceil(batch / grad_chunk)
  return chunks, math.ceil(batch / chunks)


def chunked_cross_entropy_grad(
  model, params, images, targets, mask, *, grad_chunk
):
  """`masked_cross_entropy`'s value and gradient, the batch in chunks.

  The loss is a mean over the batch's valid rows, so its gradient is the
  sum of the chunks' gradients of their rows' share of that mean. On a CPU
  one chunk's activations stay in cache where the whole batch's do not:
  the evaluation's training step at 170 and 70 MNIST-size images took
  0.82-0.86x the whole batch's time in chunks of 14-34 images, one core
  (docs/RESULTS.md, session 17). Equal to the whole batch's to float
  rounding (the sums run in another order). Only for models without
  batch statistics (`state` empty): a chunk's statistics are not the
  batch's.

  Args:
    model: a Linen module without mutable collections.
    params: its parameters.
    images: [b, h, w, c]; targets: [b, C]; mask: [b], 1 for valid rows.
    grad_chunk: rows per chunk at most (`chunk_layout`).

  Returns:
    ((loss, ({}, correct [b] bool)), grads): `masked_cross_entropy`'s
    value-and-grad structure.
  """
  batch = images.shape[0]
  chunks, rows = chunk_layout(batch, grad_chunk)
  pad = chunks * rows - batch

  def split(x):
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(chunks, rows, *x.shape[1:])

  share_grad = jax.value_and_grad(
    functools.partial(masked_cross_entropy, model, valid=jnp.sum(mask)),
    has_aux=True,
  )

  def body(total, chunk):
    (loss, (_, correct)), grads = share_grad(params, {}, *chunk)
    return jax.tree.map(jnp.add, total, (loss, grads)), correct

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), correct = jax.lax.scan(
    body, zeros, (split(images), split(targets), split(mask))
  )
  return (loss, ({}, correct.reshape(-1)[:batch])), grads


def sgd_epoch(
  carry,
  epoch,
  *,
  images,
  targets,
  model,
  batch_size: int,
  order_key,
  aug_key,
  dsa_strategy: str,
  update,
  mix=None,
  grad_chunk: int = 0,
):
  """One epoch of minibatch SGD: the loop every network here trains with.

  The epoch visits `epoch_batches(fold_in(order_key, epoch), ...)`; the
  batch at global step `s` (counting from epoch 0's first batch) gets
  per-sample (non-siamese) DSA under `fold_in(aug_key, s)`, then `mix`
  (e.g. CutMix) under `fold_in(fold_in(aug_key, s), 1)`.

  Args:
    carry: (params, state, opt_state).
    epoch: the epoch's index, traced or not.
    images: [n, h, w, c] training images.
    targets: [n, C] target probabilities.
    model: a Linen module.
    batch_size: minibatch size (at most n is used); the last batch may be
      partial.
    order_key: the data order's key.
    aug_key: the augmentation's key.
    dsa_strategy: DSA strategy string or 'none'.
    update: `(grads, opt_state, params) -> (params, opt_state)`.
    mix: None, or `(key, images, targets) -> (images, targets)` applied to
      every (augmented) batch, e.g. `functools.partial(augment.cutmix,
      prob=0.5)`.
    grad_chunk: 0, or each batch's gradient in chunks of at most this many
      rows (`chunked_cross_entropy_grad`; models without batch statistics).

  Returns:
    (carry, per_step): per_step = (loss_sums [steps], indices [steps, b],
    mask [steps, b], correct [steps, b] bool), a batch's loss sum being its
    mean loss times its number of valid rows.
  """
  augmented = bool(augment.parse_strategy(dsa_strategy))
  num_examples = images.shape[0]
  indices, mask = epoch_batches(
    jax.random.fold_in(order_key, epoch),
    num_examples,
    min(batch_size, num_examples),
  )
  steps_per_epoch = indices.shape[0]
  if chunk_layout(indices.shape[1], grad_chunk)[0] > 1:
    if carry[1]:
      raise ValueError(
        f"a gradient in chunks (grad_chunk={grad_chunk}) needs a model "
        f"without batch statistics; this one has {sorted(carry[1])}: "
        "train it on the whole batch (grad_chunk=0)"
      )

    def grad_fn(params, state, x, y, valid):
      del state  # empty
      return chunked_cross_entropy_grad(
        model, params, x, y, valid, grad_chunk=grad_chunk
      )

  else:
    grad_fn = jax.value_and_grad(
      functools.partial(masked_cross_entropy, model), has_aux=True
    )

  def step(carry, batch):
    params, state, opt_state = carry
    step_in_epoch, idx, valid = batch
    x, y = images[idx], targets[idx]
    step_key = jax.random.fold_in(
      aug_key, epoch * steps_per_epoch + step_in_epoch
    )
    if augmented:
      x = augment.augment(step_key, x, strategy=dsa_strategy, siamese=False)
    if mix is not None:
      x, y = mix(jax.random.fold_in(step_key, 1), x, y)
    (loss, (state, correct)), grads = grad_fn(params, state, x, y, valid)
    params, opt_state = update(grads, opt_state, params)
    return (params, state, opt_state), (loss * jnp.sum(valid), correct)

  carry, (loss_sums, correct) = jax.lax.scan(
    step, carry, (jnp.arange(steps_per_epoch), indices, mask)
  )
  return carry, (loss_sums, indices, mask, correct)


def finite(loss, grads) -> jax.Array:
  """Whether the loss and every gradient leaf are finite (a traced bool)."""
  leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
  return jnp.isfinite(loss) & jnp.all(jnp.stack(leaves))


def keep_where(ok, new, old):
  """`new` where `ok`, else `old`, leaf by leaf: a refused update leaves
  the params (and optimiser state) as they were."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def sgd(*, momentum: float, weight_decay: float):
  """`torch.optim.SGD`'s direction (weight decay, then momentum), no lr.

  Returns:
    An optax transformation, or None for plain SGD (no momentum, no decay:
    the update is the gradient and no optimiser state is kept).
  """
  if momentum == 0.0 and weight_decay == 0.0:
    return None
  return optax.chain(
    optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum)
  )


class EpochRecord(NamedTuple):
  """What `train_epochs` returns per epoch, stacked over epochs.

  loss: [E] the epoch's mean training loss over its examples.
  snapshot: the params after each epoch (leaves [E, ...]), or None.
  indices, mask, correct: [E, steps, b] each batch's example indices,
    validity and whether its prediction was correct (before the update),
    or None.
  """

  loss: jax.Array
  snapshot: PyTree | None
  indices: jax.Array | None
  mask: jax.Array | None
  correct: jax.Array | None


def initial_carry(variables, *, momentum: float, weight_decay: float):
  """The `(params, state, opt_state)` that `train_epochs_from` trains on.

  Args:
    variables: the network's Flax variables (params and e.g. batch_stats).
    momentum, weight_decay: the optimiser's (`sgd`).
  """
  params, state = split_variables(variables)
  optimizer = sgd(momentum=momentum, weight_decay=weight_decay)
  opt_state = () if optimizer is None else optimizer.init(params)
  return params, state, opt_state


def train_epochs_from(
  carry,
  *,
  first_epoch: int | jax.Array = 0,
  images,
  targets,
  model,
  epochs: int,
  lr: float | jax.Array | Callable[[jax.Array], jax.Array],
  batch_size: int,
  order_key,
  aug_key,
  dsa_strategy: str = "none",
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  restart_momentum_at: int | None = None,
  keep_snapshots: bool = False,
  keep_batches: bool = False,
  grad_chunk: int = 0,
) -> tuple[tuple, EpochRecord]:
  """Epochs `first_epoch .. first_epoch + epochs - 1` of minibatch SGD.

  `train_epochs` is this from epoch 0; a training split into calls (e.g.
  one epoch a call, with a checkpoint between them) visits the batches and
  augmentations of one uninterrupted call, since every epoch is numbered
  from the start.

  Args:
    carry: (params, state, opt_state) after epoch `first_epoch - 1`
      (`initial_carry` before epoch 0).
    first_epoch: the index of the first epoch trained, traced or not.
    images: [n, h, w, c] training images.
    targets: [n, C] target probabilities.
    model: a Linen module.
    epochs: the number of epochs E (0: the carry is returned unchanged).
    lr: the learning rate: a float, a traced scalar, or a function of the
      (traced) epoch index for a schedule.
    batch_size: minibatch size (at most n is used); the last batch of an
      epoch may be partial.
    order_key: the data order's key (`fold_in(order_key, epoch)` an epoch).
    aug_key: the augmentation's key (`fold_in(aug_key, step)` a batch).
    dsa_strategy: DSA strategy string or 'none' (per-sample DSA).
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    restart_momentum_at: the epoch at whose start the momentum buffer is
      zeroed (a new optimiser, as the reference's lr decay builds), or None.
    keep_snapshots: record the params after every epoch.
    keep_batches: record every batch's indices, mask and correctness.
    grad_chunk: 0, or each batch's gradient in chunks of at most this many
      rows (`chunked_cross_entropy_grad`: the same to float rounding, faster
      on a CPU; models without batch statistics).

  Returns:
    (carry, record): the carry after the last epoch and the `EpochRecord`.
  """
  lr_at = lr if callable(lr) else (lambda _: lr)
  optimizer = sgd(momentum=momentum, weight_decay=weight_decay)
  num_examples = images.shape[0]

  def epoch_fn(carry, epoch):
    params, state, opt_state = carry
    if restart_momentum_at is not None:
      restart = epoch == restart_momentum_at
      opt_state = jax.tree.map(
        lambda t: jnp.where(restart, jnp.zeros_like(t), t), opt_state
      )
    epoch_lr = lr_at(epoch)

    def update(grads, opt_state, params):
      if optimizer is not None:
        grads, opt_state = optimizer.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - epoch_lr * u, params, grads)
      return params, opt_state

    carry, (loss_sums, indices, mask, correct) = sgd_epoch(
      (params, state, opt_state),
      epoch,
      images=images,
      targets=targets,
      model=model,
      batch_size=batch_size,
      order_key=order_key,
      aug_key=aug_key,
      dsa_strategy=dsa_strategy,
      update=update,
      grad_chunk=grad_chunk,
    )
    batches = (indices, mask, correct) if keep_batches else (None,) * 3
    record = EpochRecord(
      jnp.sum(loss_sums) / num_examples,
      carry[0] if keep_snapshots else None,
      *batches,
    )
    return carry, record

  epoch_indices = first_epoch + jnp.arange(epochs)
  return jax.lax.scan(epoch_fn, tuple(carry), epoch_indices)


def train_epochs(
  variables,
  *,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  **settings,
) -> tuple[PyTree, EpochRecord]:
  """Trains Flax `variables` for `epochs` epochs of minibatch SGD.

  Args:
    variables: the network's Flax variables (params and e.g. batch_stats).
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    **settings: the other keywords of `train_epochs_from` (images, targets,
      model, epochs, lr, batch_size, order_key, aug_key, dsa_strategy, ...),
      which trains from epoch 0.

  Returns:
    (variables, record): the trained variables and the `EpochRecord`.
  """
  carry = initial_carry(variables, momentum=momentum, weight_decay=weight_decay)
  (params, state, _), record = train_epochs_from(
    carry, momentum=momentum, weight_decay=weight_decay, **settings
  )
  return {"params": params, **state}, record


def correct_predictions(
  model, variables, images, labels, *, batch_size: int = 500
):
  """Which images the network classifies correctly, in bounded-memory batches.

  Args:
    model: a Linen module.
    variables: its Flax variables (eval mode: BatchNorm running averages).
    images: [m, h, w, c]; labels: [m] int.
    batch_size: images per forward pass (bounds activation memory).

  Returns:
    [m] bool.
  """
  num = images.shape[0]
  batch_size = min(batch_size, num)
  steps = math.ceil(num / batch_size)
  pad = steps * batch_size - num
  images = jnp.concatenate(
    [images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]
  ).reshape(steps, batch_size, *images.shape[1:])
  labels = jnp.concatenate([labels, jnp.full((pad,), -1, labels.dtype)])
  labels = labels.reshape(steps, batch_size)

  def body(_, batch):
    x, y = batch
    return None, jnp.argmax(
      model.apply(variables, x, train=False), axis=-1
    ) == y

  _, correct = jax.lax.scan(body, None, (images, labels))
  return correct.reshape(-1)[:num]


def count_correct(model, variables, images, labels, *, batch_size: int = 500):
  """Number of correctly classified images (`correct_predictions`'s sum).

  Returns:
    A scalar int32.
  """
  return jnp.sum(
    correct_predictions(
      model, variables, images, labels, batch_size=batch_size
    ),
    dtype=jnp.int32,
  )
