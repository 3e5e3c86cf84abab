"""Trajectory matching (MTT) and the progressive start of MTT-LSS.

A student network starts at an expert's parameters of epoch t, takes N SGD
steps on synthetic minibatches with the (learnable) student lr, and the loss
is its normalised distance to the expert's parameters of epoch t + M. The
unroll is a `lax.scan` with `jax.checkpoint` on its body, so the memory of
the differentiated unroll holds two parameter-sized arrays per step (the
params and their gradient) instead of every activation of every step.

References:
  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022 (MTT).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import ad_checkpoint

from lowrank_distill import augment, checks, sharding, train

PyTree = Any
START_SCHEDULES = ("uniform", "progressive")


def squared_distance(a: PyTree, b: PyTree) -> jax.Array:
  """`sum over every parameter of (a - b)^2`."""
  return sum(
    jnp.sum((x - y) ** 2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def student_batches(key, num_images: int, *, batch_size: int, steps: int):
  """Minibatch indices for `steps` student steps: epochs of permutations.

  As the reference, the synthetic set is shuffled and cut into chunks of
  `batch_size`, a fresh permutation when the chunks run out; when
  `batch_size` does not divide the set, the last chunk of an epoch is
  partial (masked).

  Returns:
    indices: [steps, batch] int32, mask: [steps, batch] float32.
  """
  batch_size = min(batch_size, num_images)
  per_epoch = math.ceil(num_images / batch_size)
  epochs = math.ceil(steps / per_epoch)
  idx, mask = jax.vmap(
    lambda k: train.epoch_batches(k, num_images, batch_size)
  )(jax.random.split(key, max(epochs, 1)))
  idx = idx.reshape(-1, batch_size)[:steps]
  mask = mask.reshape(-1, batch_size)[:steps]
  return idx, mask


# The remat policy keeps each step's parameter gradient (the size of the
# params): the lr's gradient needs it, and recomputing it is the
# weight-gradient matmuls of every layer. Outputs are bit-identical to full
# remat; the TM unroll ran 3.6% faster at N = 30 on CPU (docs/RESULTS.md).
_SAVED_GRADS = "student_grads"
_REMAT_POLICY = jax.checkpoint_policies.save_only_these_names(_SAVED_GRADS)


def unroll(
  key,
  start_params: PyTree,
  images,
  targets,
  *,
  model,
  lr,
  steps: int,
  batch_size: int,
  dsa_strategy: str = "none",
  model_state: PyTree | None = None,
  remat: bool = True,
  mesh=None,
  momentum: float = 0.0,
) -> PyTree:
  """N differentiable SGD steps of a student on the synthetic set.

  Args:
    key: minibatch order and per-step augmentation fold from it.
    start_params: the expert's params at the start epoch (Flax 'params').
    images: [n, h, w, c] synthetic images.
    targets: [n, C] target probabilities (soft cross-entropy).
    model: a Linen module.
    lr: the student lr (a traced scalar when learned).
    steps: N, the number of student steps (0 returns `start_params`).
    batch_size: synthetic images per step (`batch_syn`).
    dsa_strategy: per-sample (non-siamese) DSA at every step, or 'none'.
    model_state: non-param variables (BatchNorm statistics) of the model;
      BatchNorm then normalises with each minibatch's statistics, as the
      student in train mode does, and the running averages are discarded.
    remat: `jax.checkpoint` the scan body, keeping only each step's param
      gradient (memory grows by two params-sized arrays per step, the
      params and their gradient, instead of every activation).
    mesh: split every minibatch over the mesh's 'data' axis, padded with
      masked rows to a multiple of its devices (refused for a BatchNorm
      student, whose statistics would see the padding); None or one device:
      unsplit.
    momentum: SGD momentum of the student (PyTorch's: `v = m v + g`,
      `p -= lr v`, v from zero; RememberThePast's BPTT with momentum); 0:
      plain SGD, the trajectory-matching student.

  Returns:
    The student's params after `steps` steps.

  Raises:
    ValueError: a BatchNorm student's minibatch does not split evenly.
  """
  if steps == 0:
    return start_params
  order_key, aug_key = jax.random.split(key)
  idx, mask = student_batches(
    order_key, images.shape[0], batch_size=batch_size, steps=steps
  )
  ops = augment.parse_strategy(dsa_strategy)
  model_state = model_state or {}
  width = sharding.padded_size(idx.shape[1], mesh)
  if model_state:
    sharding.check_divisible(
      idx.shape[1],
      mesh,
      field="distill.batch_syn",
      what="synthetic images of a BatchNorm student's minibatch",
    )

  def split(x, y, m):
    rows = [sharding.pad_rows(a, width) for a in (x, y, m)]
    return sharding.constrain(rows, mesh, axis=0)

  def loss_fn(params, x, y, m):
    # The running statistics a BatchNorm student updates are discarded.
    return train.masked_cross_entropy(model, params, model_state, x, y, m)[0]

  def student_grads(params, batch):
    i, batch_idx, batch_mask = batch
    x = images[batch_idx]
    if ops:
      x = augment.augment(
        jax.random.fold_in(aug_key, i), x, strategy=dsa_strategy, siamese=False
      )
    # Padding after the augmentation: its per-image draws depend on the
    # batch size, so the real rows get the draws of the unsplit run.
    x, y, m = split(x, targets[batch_idx], batch_mask)
    grads = jax.grad(loss_fn)(params, x, y, m)
    return ad_checkpoint.checkpoint_name(grads, _SAVED_GRADS)

  def body(params, batch):
    grads = student_grads(params, batch)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

  def momentum_body(carry, batch):
    params, velocity = carry
    grads = student_grads(params, batch)
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
    return (params, velocity), None

  steps_in = (jnp.arange(steps), idx, mask)
  if momentum:
    carry = (start_params, jax.tree.map(jnp.zeros_like, start_params))
    if remat:
      momentum_body = jax.checkpoint(momentum_body, policy=_REMAT_POLICY)
    (params, _), _ = jax.lax.scan(momentum_body, carry, steps_in)
    return params
  if remat:
    body = jax.checkpoint(body, policy=_REMAT_POLICY)
  params, _ = jax.lax.scan(body, start_params, steps_in)
  return params


def trajectory_loss(
  key,
  start_params: PyTree,
  target_params: PyTree,
  images,
  targets,
  **unroll_kwargs,
) -> jax.Array:
  """`||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`.

  Args:
    key: passed to `unroll`.
    start_params: expert params at epoch t (constants).
    target_params: expert params at epoch t + M (constants).
    images, targets: the synthetic set, see `unroll`.
    **unroll_kwargs: model, lr, steps, batch_size, dsa_strategy, ...

  Returns:
    A scalar; exactly 1 when the student takes no step.
  """
  start_params = jax.lax.stop_gradient(start_params)
  target_params = jax.lax.stop_gradient(target_params)
  student = unroll(key, start_params, images, targets, **unroll_kwargs)
  return squared_distance(student, target_params) / squared_distance(
    start_params, target_params
  )


# ---------------------------------------------------------------------------
# Start epochs (host side: they pick which expert snapshots to send).


def check_start_schedule(name: str, *, field: str = "distill.start") -> None:
  checks.check_choice(field, name, START_SCHEDULES)


def progressive_max_start(
  iteration: int, *, iterations: int, max_start: float, delta: float
) -> float:
  """MTT-LSS: `max_start(it) = it / T * max_start + delta`."""
  return iteration / max(iterations, 1) * max_start + delta


def start_range(
  iteration: int,
  *,
  schedule: str,
  iterations: int,
  max_start: int,
  delta: float = 0.0,
  window: int = 0,
  last_start: int,
) -> tuple[int, int]:
  """The inclusive range [low, high] the start epoch is drawn from.

  'uniform' (MTT): `[0, max_start - 1]` (`np.random.randint(0, max_start)`
  in the reference). 'progressive' (MTT-LSS): `[m - window, m]` with
  `m = floor(progressive_max_start(iteration))`. Both are clipped to
  `[0, last_start]`, the last epoch with a target `M` epochs later.
  """
  check_start_schedule(schedule)
  if schedule == "uniform":
    low, high = 0, max_start - 1
  else:
    high = math.floor(
      progressive_max_start(
        iteration, iterations=iterations, max_start=max_start, delta=delta
      )
    )
    low = high - window
  high = min(max(high, 0), last_start)
  low = min(max(low, 0), high)
  return low, high


def snapshot_window(
  *, schedule: str, max_start: int, delta: float, expert_epochs: int
) -> tuple[int, int]:
  """(snapshots a run reads from epoch 0, the fewest a buffer must hold).

  'uniform' draws every start in `[0, max_start - 1]`, each with its target
  `expert_epochs` later: both are `max_start + expert_epochs`. 'progressive'
  reads up to `floor(max_start + delta) + expert_epochs + 1` snapshots, but
  its starts are clipped to the buffer (`start_range`), so one target,
  `expert_epochs + 1` snapshots, is enough.
  """
  check_start_schedule(schedule)
  if schedule == "uniform":
    needed = max_start - 1 + expert_epochs + 1
    return needed, needed
  last = math.floor(max_start + delta)
  return last + expert_epochs + 1, expert_epochs + 1


def sample_starts(
  rng: np.random.Generator,
  iteration: int,
  *,
  num: int,
  num_experts: int,
  **range_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
  """(expert indices [num], start epochs [num]) for one iteration."""
  low, high = start_range(iteration, **range_kwargs)
  experts = rng.integers(0, num_experts, size=num)
  starts = rng.integers(low, high + 1, size=num)
  return experts, starts
