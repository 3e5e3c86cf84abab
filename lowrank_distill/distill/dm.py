"""Distribution matching (DM, LoDM) as the loop sees it.

References:
  Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.
"""

import jax

from lowrank_distill import data, sharding
from lowrank_distill.distill.objective import Objective, Plan
from lowrank_distill.distill.step import StepFn, make_train_step
from lowrank_distill.objectives import distribution_matching


def make_step(plan: Plan, config, optimizer, *, mesh=None) -> StepFn:
  """One DM iteration; the real batch [C, m, ...] is split along m."""
  cfg = config.distill
  materialize = plan.reconstructor.materialize

  def loss_fn(trainable, key, real_images, class_index):
    sample_key, loss_key = jax.random.split(key)
    idx = data.sample_per_class(sample_key, class_index, n=cfg.batch_real)
    return distribution_matching.loss(
      loss_key,
      materialize(trainable["images"]).reshape(plan.syn_shape),
      sharding.constrain(real_images[idx], mesh, axis=1),
      model=plan.model,
      dsa_strategy=cfg.dsa_strategy,
      classes_in_parallel=cfg.classes_in_parallel,
      mesh=mesh,
    )

  return make_train_step(loss_fn, optimizer, max_loss=cfg.max_loss)


OBJECTIVE = Objective(make_step=make_step)
