"""Back-propagation through time (BPTT): DD and LD's meta-loss.

A freshly initialised network takes N differentiable SGD steps on the
synthetic set (`trajectory_matching.unroll`: a checkpointed `lax.scan`,
minibatches and optional per-sample DSA), and the meta-loss is the
cross-entropy of the network it ends at on a batch of real images. Its
gradient reaches everything the unroll saw: the images (through any
parameterization), soft label logits and the student lr.

References:
  Wang et al., "Dataset Distillation", arXiv:1811.10959, 2018 (DD);
  Bohdal, Yang & Hospedales, "Flexible Dataset Distillation: Learn Labels
  Instead of Images", NeurIPS 2020 Workshop (LD).
"""

from typing import Any

import jax
import jax.numpy as jnp

from lowrank_distill import train
from lowrank_distill.objectives import trajectory_matching

PyTree = Any


def real_loss(model, params: PyTree, real_images, real_labels, *, model_state):
  """Mean cross-entropy of the network on a real batch, train mode.

  Args:
    model: a Linen module.
    params: its parameters (the unrolled student's).
    real_images: [m, h, w, c] real images.
    real_labels: [m] int class ids.
    model_state: non-param variables (BatchNorm statistics) or None; a
      BatchNorm network normalises with the real batch's own statistics, as
      the student did with each synthetic minibatch's in the unroll.

  Returns:
    A scalar.
  """
  logits, _ = train.train_logits(model, params, model_state or {}, real_images)
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, real_labels[:, None], axis=-1)
  return -jnp.mean(picked)


def meta_loss(
  key,
  init_params: PyTree,
  images,
  targets,
  real_images,
  real_labels,
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
) -> jax.Array:
  """The real-batch loss of a network trained N steps on the synthetic set.

  Args:
    key: the unroll's minibatch order and per-step augmentation.
    init_params: the fresh network's params (Flax 'params'); constants.
    images: [n, h, w, c] synthetic images.
    targets: [n, C] target probabilities of the synthetic images.
    real_images: [m, h, w, c] a real batch (class-balanced by the caller).
    real_labels: [m] int class ids of `real_images`.
    model: a Linen module.
    lr: the student lr (a traced scalar when learned).
    steps: N, the student's SGD steps (0: the untrained network's loss).
    batch_size: synthetic images per step.
    dsa_strategy: per-sample DSA of every synthetic minibatch, or 'none';
      the real batch is not augmented.
    model_state: non-param variables of the model (BatchNorm statistics):
      every minibatch, and the real batch, use their own statistics.
    remat: checkpoint the unroll's scan body (`trajectory_matching.unroll`).
    mesh: split every synthetic minibatch over the mesh's 'data' axis
      (`trajectory_matching.unroll`); None or one device: unsplit.
    momentum: the student's SGD momentum (0: plain SGD, DD's).

  Returns:
    A scalar: the mean cross-entropy on the real batch.
  """
  init_params = jax.lax.stop_gradient(init_params)
  student = trajectory_matching.unroll(
    key,
    init_params,
    images,
    targets,
    model=model,
    lr=lr,
    steps=steps,
    batch_size=batch_size,
    dsa_strategy=dsa_strategy,
    model_state=model_state,
    remat=remat,
    mesh=mesh,
    momentum=momentum,
  )
  return real_loss(
    model, student, real_images, real_labels, model_state=model_state
  )
