"""Expert training: SGD on the real training set, every epoch kept (MTT).

An expert is a network trained on the real training set with plain SGD; its
parameters are kept at initialisation and after every epoch, so `E` epochs
give `E + 1` snapshots. Several experts train at once, vmapped over their
keys; expert `i` always uses `fold_in(key, i)`, so its trajectory does not
depend on how many experts train beside it.

Everything here is pure and traceable and takes its hyperparameters as
keyword arguments; nothing reads a config (`loop.run` does).

References:
  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022 (`buffer.py` of the reference code).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from lowrank_distill import sharding, train
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any

# Sub-streams of an expert's key.
_INIT, _ORDER, _AUGMENT = 0, 1, 2


@flax.struct.dataclass
class Expert:
  """One trained expert.

  Attributes:
    trajectory: the 'params' tree, every leaf [E + 1, ...]: snapshot 0 is
      the initialisation, snapshot e the parameters after epoch e.
    state: the other variable collections after the last epoch (BatchNorm's
      'batch_stats'), {} for models without any.
    train_loss: [E] mean training loss of each epoch (on augmented batches).
  """

  trajectory: PyTree
  state: PyTree
  train_loss: jax.Array


def expert_key(key, index):
  """The key of expert `index`: `fold_in(key, index)`."""
  return jax.random.fold_in(key, index)


def init_key(key):
  """The initialisation key of the expert whose key is `key`."""
  return jax.random.fold_in(key, _INIT)


def start_expert(
  key, *, model, image_shape, momentum: float = 0.0, weight_decay: float = 0.0
):
  """The expert's training carry before its first epoch.

  Args:
    key: the expert's key (`expert_key`); the init uses `init_key(key)`.
    model: a Linen module from `lowrank_distill.models`.
    image_shape: (h, w, c).
    momentum, weight_decay: the optimiser's (`train.sgd`).

  Returns:
    `(params, state, opt_state)`: params are snapshot 0 of the trajectory.
  """
  initial = train.init_variables(init_key(key), model, image_shape)
  return train.initial_carry(
    initial, momentum=momentum, weight_decay=weight_decay
  )


def train_expert_epochs(
  carry,
  key,
  images,
  targets,
  *,
  first_epoch: int | jax.Array = 0,
  epochs: int,
  model,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  dsa_strategy: str = "none",
):
  """Epochs `first_epoch .. first_epoch + epochs - 1` of `train_expert`.

  Pure and traceable (`first_epoch` may be traced): called epoch by epoch
  from `start_expert`'s carry it trains the expert `train_expert` trains,
  so a run can save the carry between calls and resume an expert.

  Args:
    carry: `(params, state, opt_state)` after epoch `first_epoch - 1`.
    key: the expert's key (`expert_key`): data order and augmentation use
      `fold_in(key, 1)` and `fold_in(key, 2)`.
    images: [n, h, w, c] training images.
    targets: [n, num_classes] target probabilities.
    first_epoch: the index of the first epoch trained.
    epochs: how many epochs this call trains.
    model, lr, batch_size, momentum, weight_decay, dsa_strategy: see
      `train_expert`.

  Returns:
    `(carry, record)`: the carry after the last epoch and the
    `train.EpochRecord` (snapshot leaves [epochs, ...], loss [epochs]).
  """
  return train.train_epochs_from(
    carry,
    first_epoch=first_epoch,
    images=jnp.asarray(images),
    targets=jnp.asarray(targets),
    model=model,
    epochs=epochs,
    lr=lr,
    batch_size=batch_size,
    order_key=jax.random.fold_in(key, _ORDER),
    aug_key=jax.random.fold_in(key, _AUGMENT),
    dsa_strategy=dsa_strategy,
    momentum=momentum,
    weight_decay=weight_decay,
    keep_snapshots=True,
  )


def train_expert(
  key,
  images,
  targets,
  *,
  model,
  epochs: int,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  dsa_strategy: str = "none",
) -> Expert:
  """Trains one expert with SGD and keeps its parameters after every epoch.

  Every epoch visits a fresh permutation in batches of `batch_size`, the
  last one partial (masked), as a PyTorch DataLoader without drop_last;
  every batch is augmented with per-sample (non-siamese) DSA. SGD is
  `torch.optim.SGD`: L2 `weight_decay` added to the gradient, then
  `momentum`, at a constant `lr`. Pure and traceable: jit or vmap it where
  it is used. `start_expert` and `train_expert_epochs` are the same
  training in parts.

  Args:
    key: the expert's key (`expert_key`); init, data order and augmentation
      use `fold_in(key, 0)`, `fold_in(key, 1)`, `fold_in(key, 2)`.
    images: [n, h, w, c] training images.
    targets: [n, num_classes] target probabilities (one-hot for hard labels).
    model: a Linen module from `lowrank_distill.models`.
    epochs: E, the number of epochs (E + 1 snapshots).
    lr: the learning rate.
    batch_size: minibatch size (at most n is used).
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    dsa_strategy: DSA strategy string or 'none'.

  Returns:
    The Expert: trajectory leaves [E + 1, ...], final state, [E] losses.

  References:
    Cazenavette et al., "Dataset Distillation by Matching Training
    Trajectories", CVPR 2022.
  """
  images, targets = jnp.asarray(images), jnp.asarray(targets)
  optimizer = {"momentum": momentum, "weight_decay": weight_decay}
  carry = start_expert(
    key, model=model, image_shape=images.shape[1:], **optimizer
  )
  (_, state, _), record = train_expert_epochs(
    carry,
    key,
    images,
    targets,
    epochs=epochs,
    model=model,
    lr=lr,
    batch_size=batch_size,
    dsa_strategy=dsa_strategy,
    **optimizer,
  )
  trajectory = jax.tree.map(
    lambda first, rest: jnp.concatenate([first[None], rest]),
    carry[0],
    record.snapshot,
  )
  return Expert(trajectory=trajectory, state=state, train_loss=record.loss)


def train_experts(
  key,
  images,
  labels,
  *,
  model,
  num_experts: int,
  epochs: int,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  dsa_strategy: str = "none",
  num_classes: int,
  first: int = 0,
  mesh=None,
) -> PyTree:
  """Trains experts `first .. first + num_experts - 1` at once (vmapped).

  Expert i trains with `expert_key(key, i)` (see `train_expert`), so its
  trajectory is the same whichever experts train beside it. Pure: jit it
  where it is used (`model`, `num_experts`, `epochs`, `batch_size`,
  `dsa_strategy`, `num_classes`, `first` and `mesh` are static). With a
  mesh, the experts are split over its 'data' axis; when `num_experts` does
  not divide the devices, the next experts' keys fill the gap and their
  trajectories are dropped from the result.

  Args:
    key: the experts' key (a run uses `rng.stream(root, 'experts')`).
    images: [n, h, w, c] training images.
    labels: [n] int labels, or [n, num_classes] label logits.
    model: a Linen module from `lowrank_distill.models`.
    num_experts: N, how many experts.
    epochs: E; lr, batch_size, momentum, weight_decay, dsa_strategy: see
      `train_expert` (MTT: 0.01, 256, 0, 0).
    num_classes: C.
    first: the index of the first expert.
    mesh: a `sharding` mesh to split the experts over; None: one device.

  Returns:
    The 'params' trees stacked: every leaf [N, E + 1, ...].

  References:
    Cazenavette et al., "Dataset Distillation by Matching Training
    Trajectories", CVPR 2022.
  """
  targets = labels_lib.targets(labels, num_classes)
  width = sharding.padded_size(num_experts, mesh)
  keys = train.model_keys(key, width, first=first)
  keys = sharding.constrain(keys, mesh, axis=0)
  experts = jax.vmap(
    lambda k: train_expert(
      k,
      images,
      targets,
      model=model,
      epochs=epochs,
      lr=lr,
      batch_size=batch_size,
      momentum=momentum,
      weight_decay=weight_decay,
      dsa_strategy=dsa_strategy,
    )
  )(keys)
  trajectory = sharding.constrain(experts.trajectory, mesh, axis=0)
  if width == num_experts:
    return trajectory
  return jax.tree.map(lambda t: t[:num_experts], trajectory)


def final_expert_logits(buffer, model, image_shape, images) -> jax.Array:
  """What `buffer`'s first expert, fully trained (its last snapshot),
  predicts for `images` [n, h, w, c] -> [n, C] float32 logits, applied as
  the student is (a fresh network's non-param variables, train mode)."""
  params = buffer.snapshot(0, buffer.num_snapshots - 1)
  _, state = train.split_variables(
    train.init_variables(jax.random.key(0), model, image_shape)
  )
  logits, _ = train.train_logits(model, params, state, images)
  return jnp.asarray(logits, jnp.float32)
