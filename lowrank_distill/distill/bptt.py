"""Back-propagation through time (DD, LD) as the loop sees it.

Each iteration initialises a fresh network from the step's key, unrolls N
SGD steps of it on the synthetic set, and descends the cross-entropy of the
result on a class-balanced real batch (`objectives.bptt.meta_loss`). DD
learns the images and the student lr; LD keeps real images fixed
(`distill.learn_images` False) and learns soft labels.

BatchNorm networks train as the trajectory-matching student does: every
synthetic minibatch, and the real batch, is normalised with its own
statistics (train mode); the running averages are discarded.

With a mesh, the real batch [C, batch_real, ...] is split along its second
axis, as DM's is, and every synthetic minibatch of the unroll is split over
the devices as trajectory matching's (padded with masked rows; a BatchNorm
student's minibatch must divide evenly, `check_mesh`).

References:
  Wang et al., "Dataset Distillation", arXiv:1811.10959, 2018 (DD);
  Bohdal, Yang & Hospedales, "Flexible Dataset Distillation: Learn Labels
  Instead of Images", NeurIPS 2020 Workshop (LD).
"""

import jax
import jax.numpy as jnp

from lowrank_distill import checks, data, models, sharding, train
from lowrank_distill.distill.objective import (
  Objective,
  Plan,
  real_batch_check,
  syn_targets,
)
from lowrank_distill.distill.step import StepFn, make_train_step
from lowrank_distill.objectives import bptt


def check(config) -> None:
  # The numeric fields' ranges are `planning.RANGES`. A config read back
  # from JSON or a dict could hold remat as the string 'false' (truthy).
  checks.check_choice("distill.remat", config.distill.remat, (True, False))


def settings(config) -> dict:
  """The keyword settings of `make_step` from the run's config."""
  cfg = config.distill
  return dict(
    lr_student=cfg.lr_student,
    syn_steps=cfg.syn_steps,
    inner_momentum=cfg.inner_momentum,
    batch_syn=cfg.batch_syn,
    batch_real=cfg.batch_real,
    dsa_strategy=cfg.dsa_strategy,
    remat=cfg.remat,
    max_loss=cfg.max_loss,
  )


def minibatch_size(plan: Plan) -> int:
  """Synthetic images per student step (`distill.batch_syn`, 0: all)."""
  num_images = plan.num_classes * plan.images_per_class
  return min(plan.step["batch_syn"] or num_images, num_images)


def check_mesh(plan: Plan, mesh) -> None:
  real_batch_check(plan, mesh)
  if not models.uses_batch_norm(plan.model):
    return
  batch = minibatch_size(plan)
  n = sharding.data_size(mesh)
  if batch % n:
    raise ValueError(
      f"distill.batch_syn: a BatchNorm student's minibatch of {batch} "
      f"synthetic images is split over the {n} devices along the mesh's "
      f"'data' axis and must be a multiple of {n} (padding would enter its "
      f"batch statistics); set distill.batch_syn to a multiple of {n} or "
      f"mesh.data to a divisor of {batch}"
    )


def make_step(
  plan: Plan,
  optimizer,
  *,
  mesh=None,
  lr_student: float,
  syn_steps: int,
  batch_syn: int,
  batch_real: int,
  dsa_strategy: str,
  remat: bool,
  max_loss: float,
  inner_momentum: float = 0.0,
) -> StepFn:
  """One DD/LD iteration: a fresh network, N steps, the real-batch loss.

  `lr_student` is the student's lr unless the trainable set learns one
  (`trainable['log_lr']`); `batch_syn` 0 means every synthetic image in
  every student step; `batch_real` real images of every class make the
  meta-loss's batch; the student's SGD has momentum `inner_momentum`
  (RememberThePast's BPTT with momentum; 0: DD's plain SGD). Groups of
  `plan.frozen` get no gradient.
  """
  model = plan.model
  materialize = plan.reconstructor.materialize
  image_shape = plan.dataset.image_shape
  num_classes = plan.num_classes

  def loss_fn(trainable, key, real_images, class_index):
    init_key, real_key, unroll_key = jax.random.split(key, 3)
    params, model_state = train.split_variables(
      train.init_variables(init_key, model, image_shape)
    )
    images = materialize(trainable["images"])
    targets = syn_targets(trainable, plan).reshape(-1, num_classes)
    if "log_lr" in trainable:
      lr = jnp.exp(trainable["log_lr"])
    else:
      lr = jnp.asarray(lr_student, images.dtype)
    # [batch_real, C] flattened: row j * C + c is the j-th image of class c,
    # so batch_real divisible by the devices splits it evenly.
    idx = data.sample_per_class(real_key, class_index, n=batch_real).T
    real = sharding.constrain(real_images[idx.reshape(-1)], mesh, axis=0)
    labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), batch_real)
    return bptt.meta_loss(
      unroll_key,
      params,
      images,
      targets,
      real,
      labels,
      model=model,
      lr=lr,
      steps=syn_steps,
      batch_size=batch_syn or images.shape[0],
      dsa_strategy=dsa_strategy,
      model_state=model_state or None,
      remat=remat,
      mesh=mesh,
      momentum=inner_momentum,
    )

  return make_train_step(
    loss_fn, optimizer, max_loss=max_loss, frozen=plan.frozen
  )


OBJECTIVE = Objective(
  make_step=make_step,
  settings=settings,
  check=check,
  check_mesh=check_mesh,
  learns_labels=True,
  learns_lr=True,
)
