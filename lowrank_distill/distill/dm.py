"""Distribution matching (DM, LoDM) as the loop sees it.

References:
  Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.
"""

import jax

from lowrank_distill import data, sharding
from lowrank_distill.distill.objective import Objective, Plan
from lowrank_distill.distill.step import StepFn, make_train_step
from lowrank_distill.objectives import distribution_matching


def settings(config) -> dict:
  """The keyword settings of `make_step` from the run's config."""
  cfg = config.distill
  return dict(
    batch_real=cfg.batch_real,
    dsa_strategy=cfg.dsa_strategy,
    classes_in_parallel=cfg.classes_in_parallel,
    max_loss=cfg.max_loss,
  )


def make_step(
  plan: Plan,
  optimizer,
  *,
  mesh=None,
  batch_real: int,
  dsa_strategy: str,
  classes_in_parallel: int,
  max_loss: float,
) -> StepFn:
  """One DM iteration; the real batch [C, batch_real, ...] is split along
  its second axis over the mesh."""
  materialize = plan.reconstructor.materialize

  def loss_fn(trainable, key, real_images, class_index):
    sample_key, loss_key = jax.random.split(key)
    idx = data.sample_per_class(sample_key, class_index, n=batch_real)
    return distribution_matching.loss(
      loss_key,
      materialize(trainable["images"]).reshape(plan.syn_shape),
      sharding.constrain(real_images[idx], mesh, axis=1),
      model=plan.model,
      dsa_strategy=dsa_strategy,
      classes_in_parallel=classes_in_parallel,
      mesh=mesh,
    )

  return make_train_step(loss_fn, optimizer, max_loss=max_loss)


OBJECTIVE = Objective(make_step=make_step, settings=settings)
