"""Gradient matching (DC, DSA): match a network's gradients on real and
synthetic data, class by class.

References:
  Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
  ICLR 2021 (DC).
  Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
  Augmentation", ICML 2021 (DSA).
  Kim et al., "Dataset Condensation via Efficient Synthetic-Data
  Parameterization", ICML 2022 (IDC: the 'l1' distance, the network trained
  on real data between matchings).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lowrank_distill import augment, checks, sharding, train
from lowrank_distill.data import sampling as data_sampling
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any

# The reference adds this to the product of norms in every cosine.
COS_EPS = 1e-6
# Real images per class that set the BatchNorm statistics before matching
# (the reference's `BNSizePC`).
BN_IMAGES_PER_CLASS = 16


def _output_rows(grad):
  """[..., out] -> [out, rest]: one row per output channel.

  Flax kernels keep output channels last (conv HWIO, dense [in, out],
  layer-norm affine [h, w, C]); PyTorch's `distance_wb` reshapes them first.
  """
  return grad.reshape(-1, grad.shape[-1]).T


def _norm_rows(x):
  # A row of zeros (e.g. a channel whose ReLU is dead on every synthetic
  # image) has no norm gradient: 0 instead of `linalg.norm`'s NaN.
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), 1e-30))


def _cosine_distance_rows(a, b):
  dots = jnp.sum(a * b, axis=-1)
  return jnp.sum(1.0 - dots / (_norm_rows(a) * _norm_rows(b) + COS_EPS))


def ours(grads_syn: PyTree, grads_real: PyTree) -> jax.Array:
  """Sum over layers and output channels of `1 - cos`; 1-D params ignored."""
  total = jnp.float32(0.0)
  for gs, gr in zip(jax.tree.leaves(grads_syn), jax.tree.leaves(grads_real)):
    if gs.ndim < 2:
      continue
    total = total + _cosine_distance_rows(_output_rows(gs), _output_rows(gr))
  return total


def mse(grads_syn: PyTree, grads_real: PyTree) -> jax.Array:
  """Sum over every parameter of the squared difference."""
  return sum(
    jnp.sum((gs - gr) ** 2)
    for gs, gr in zip(jax.tree.leaves(grads_syn), jax.tree.leaves(grads_real))
  )


def cos(grads_syn: PyTree, grads_real: PyTree) -> jax.Array:
  """`1 - cos` between all gradients flattened into one vector each."""

  def flat(tree):
    return jnp.concatenate([g.reshape(-1) for g in jax.tree.leaves(tree)])

  return _cosine_distance_rows(flat(grads_syn)[None], flat(grads_real)[None])


def l1(grads_syn: PyTree, grads_real: PyTree) -> jax.Array:
  """Sum of absolute differences over the convolution kernels only.

  IDC's default (`metric='l1'`, `bias=False`, `fc=False`): 1-D params
  (biases, norm affines) and 2-D ones (the classifier) are left out.
  """
  total = jnp.float32(0.0)
  for gs, gr in zip(jax.tree.leaves(grads_syn), jax.tree.leaves(grads_real)):
    if gs.ndim == 4:
      total = total + jnp.sum(jnp.abs(gs - gr))
  return total


DISTANCES: dict[str, Callable[[PyTree, PyTree], jax.Array]] = {
  "ours": ours,
  "mse": mse,
  "cos": cos,
  "l1": l1,
}


def check_distance(name: str, *, field: str = "distill.distance") -> None:
  checks.check_choice(field, name, DISTANCES)


# ---------------------------------------------------------------------------
# The network pieces.


def _mean_loss(model, params, state, images, targets, *, train: bool):
  """Mean cross-entropy of `model` on a batch; running stats untouched."""
  logits = model.apply({"params": params, **state}, images, train=train)
  return jnp.mean(labels_lib.soft_cross_entropy(logits, targets))


def batch_norm_statistics(model, variables, images):
  """One train-mode pass over real `images` to set the running statistics.

  As the reference does before matching (`net.train(); net(img_real)`, then
  every BatchNorm in eval mode): the running averages move one momentum
  step towards this batch's statistics and are then frozen while matching,
  since a synthetic class of one image has no usable batch statistics.

  Returns:
    `variables` with updated 'batch_stats' (unchanged without BatchNorm).
  """
  if "batch_stats" not in variables:
    return variables
  _, updated = model.apply(
    variables, images, train=True, mutable=["batch_stats"]
  )
  return {**variables, **updated}


def matching_loss(
  key,
  syn_images,
  syn_targets,
  real_images,
  *,
  model,
  variables,
  distance: str = "ours",
  dsa_strategy: str = "none",
  classes_in_parallel: int = 1,
  mesh=None,
):
  """Sum over classes of the distance between real and synthetic gradients.

  For class c: `g_real = d CE(net(real_c), c) / d theta` (constant) and
  `g_syn = d CE(net(syn_c), targets_c) / d theta`, differentiable in the
  synthetic images and targets. With DSA both batches of a class get the
  same augmentation draw (one key, siamese). Networks with BatchNorm run in
  eval mode on the statistics already in `variables` (see
  `batch_norm_statistics`); others are unaffected by the mode.

  Args:
    key: the per-class augmentation keys fold from it.
    syn_images: [C, k, h, w, c] class-major synthetic images.
    syn_targets: [C, k, C] target probabilities of the synthetic images.
    real_images: [C, m, h, w, c] a class-balanced real batch.
    model: a Linen module.
    variables: the network's Flax variables (no gradient reaches them).
    distance: a key of `DISTANCES`.
    dsa_strategy: DSA strategy or 'none' (DC).
    classes_in_parallel: classes matched at once (memory vs speed).
    mesh: split each class's real batch (m) over the mesh's 'data' axis
      (m a multiple of its devices); None or one device: unsplit.

  Returns:
    A scalar.
  """
  class_distance = _class_distance_fn(
    key,
    model=model,
    variables=variables,
    num_classes=syn_images.shape[0],
    distance=distance,
    dsa_strategy=dsa_strategy,
    mesh=mesh,
  )
  per_class = jax.lax.map(
    lambda args: class_distance(*args),
    (
      real_images,
      syn_images,
      syn_targets,
      jnp.arange(syn_images.shape[0]),
    ),
    batch_size=classes_in_parallel,
  )
  return jnp.sum(per_class)


def class_matching_loss(
  key,
  c,
  syn_images,
  syn_targets,
  real_images,
  *,
  model,
  variables,
  num_classes: int,
  distance: str = "ours",
  dsa_strategy: str = "none",
  mesh=None,
):
  """`matching_loss`'s term of class `c` alone (the same augmentation draw).

  Args:
    key, model, variables, distance, dsa_strategy, mesh: as
      `matching_loss`.
    c: the class index (traced or not).
    syn_images: [k, h, w, c] the class's synthetic images.
    syn_targets: [k, C] their target probabilities.
    real_images: [m, h, w, c] real images of class c.
    num_classes: C.

  Returns:
    A scalar: summed over c, `matching_loss` of the same arguments.
  """
  return _class_distance_fn(
    key,
    model=model,
    variables=variables,
    num_classes=num_classes,
    distance=distance,
    dsa_strategy=dsa_strategy,
    mesh=mesh,
  )(real_images, syn_images, syn_targets, c)


def _class_distance_fn(
  key, *, model, variables, num_classes, distance, dsa_strategy, mesh
):
  """(real_c, syn_c, targets_c, c) -> the class's gradient distance."""
  check_distance(distance)
  distance_fn = DISTANCES[distance]
  params, state = train.split_variables(jax.lax.stop_gradient(variables))
  # BatchNorm networks are matched in eval mode, as the reference does.
  train_mode = "batch_stats" not in state
  grad_fn = jax.grad(functools.partial(_mean_loss, model, train=train_mode))
  ops = augment.parse_strategy(dsa_strategy)

  def class_distance(real, syn, targets, c):
    real = sharding.constrain(real, mesh, axis=0)
    if ops:
      class_key = jax.random.fold_in(key, c)
      real = augment.augment(class_key, real, strategy=dsa_strategy)
      syn = augment.augment(class_key, syn, strategy=dsa_strategy)
    real_targets = jax.nn.one_hot(
      jnp.full((real.shape[0],), c), num_classes, dtype=jnp.float32
    )
    grads_real = jax.lax.stop_gradient(
      grad_fn(params, state, real, real_targets)
    )
    grads_syn = grad_fn(params, state, syn, targets)
    return distance_fn(grads_syn, grads_real)

  return class_distance


def train_on_synthetic(
  key,
  variables,
  images,
  targets,
  *,
  model,
  epochs: int,
  lr: float,
  batch_size: int = 256,
  dsa_strategy: str = "none",
):
  """The inner loop: `epochs` epochs of plain SGD on the synthetic set.

  As the reference's `epoch('train', ...)` between synthetic updates:
  shuffled minibatches (the last one partial), cross-entropy against the
  targets, SGD without momentum, per-sample (non-siamese) DSA when a
  strategy is given, BatchNorm in train mode updating its running stats.

  Args:
    key: shuffling and augmentation keys fold from it.
    variables: the network's Flax variables.
    images: [n, h, w, c] synthetic images (treated as constants).
    targets: [n, C] target probabilities.
    model: a Linen module.
    epochs: the inner loop count (0: return `variables` unchanged).
    lr: the network's learning rate (`lr_net`).
    batch_size: minibatch size.
    dsa_strategy: DSA strategy or 'none'.

  Returns:
    The trained variables.
  """
  order_key, aug_key = jax.random.split(key)
  variables, _ = train.train_epochs(
    variables,
    images=jax.lax.stop_gradient(images),
    targets=jax.lax.stop_gradient(targets),
    model=model,
    epochs=epochs,
    lr=lr,
    batch_size=batch_size,
    order_key=order_key,
    aug_key=aug_key,
    dsa_strategy=dsa_strategy,
  )
  return variables


def real_draw(key, class_index, *, n: int):
  """`n` distinct real images of every class and their one-hot targets.

  Returns:
    (idx [C * n] int32 class-major indices into the training images,
    targets [C * n, C] float32).
  """
  idx = data_sampling.sample_per_class(key, class_index, n=n)
  num_classes = idx.shape[0]
  labels = jnp.repeat(jnp.arange(num_classes), n)
  return idx.reshape(-1), jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def train_on_real(
  key,
  carry,
  real_images,
  class_index,
  *,
  model,
  images_per_class: int,
  lr: float,
  batch_size: int,
  dsa_strategy: str = "none",
  optimizer=None,
  cutmix_prob: float = 0.0,
):
  """IDC's network update: one pass over a fresh class-balanced real draw.

  As the reference's `train_epoch(..., n_data=500)` between matchings
  (there 500 images drawn at random; here `images_per_class` of every
  class): shuffled minibatches, cross-entropy, SGD whose optimiser state
  (momentum) carries over from the previous update of the same network,
  per-sample DSA, BatchNorm in train mode, and with `cutmix_prob` > 0
  CutMix on each batch with that probability (`augment.cutmix`, Beta(1, 1);
  the DSA then leaves out 'cutout', as the reference's `mixup_net='cut'`).

  Args:
    key: the draw, the order and the augmentation fold from it.
    carry: (params, state, opt_state) of the network.
    real_images: [N, h, w, c] the training images.
    class_index: `data.ClassIndex` of their labels.
    model: a Linen module.
    images_per_class: images of each class in the pass
      (`distill.net_real_per_class`).
    lr: the network's lr (`distill.lr_net`).
    batch_size: minibatch size.
    dsa_strategy: DSA strategy or 'none'.
    optimizer: `train.sgd(...)` (None: plain SGD, no state).
    cutmix_prob: the probability that a batch is CutMixed (0: never).

  Returns:
    The carry after the pass.
  """
  draw_key, order_key, aug_key = jax.random.split(key, 3)
  idx, targets = real_draw(draw_key, class_index, n=images_per_class)

  def update(grads, opt_state, params):
    if optimizer is not None:
      grads, opt_state = optimizer.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - lr * u, params, grads), opt_state

  carry, _ = train.sgd_epoch(
    carry,
    0,
    images=real_images[idx],
    targets=targets,
    model=model,
    batch_size=batch_size,
    order_key=order_key,
    aug_key=aug_key,
    dsa_strategy=augment.without(dsa_strategy, "cutout")
    if cutmix_prob
    else dsa_strategy,
    update=update,
    mix=functools.partial(augment.cutmix, prob=cutmix_prob)
    if cutmix_prob
    else None,
  )
  return carry


def train_variables_on_real(
  key, variables, opt_state, real_images, class_index, **settings
):
  """`train_on_real` on a network's Flax variables: (variables, opt_state)
  after the pass. `settings` are `train_on_real`'s keywords."""
  params, state = train.split_variables(variables)
  params, state, opt_state = train_on_real(
    key, (params, state, opt_state), real_images, class_index, **settings
  )
  return {"params": params, **state}, opt_state
