"""What a distillation method is to the loop: the plan and the interface.

`Plan` is what the config resolves to before any compute (dataset, budget,
reconstructor, model); `Objective` is one method as the loop sees it (its
step builder, its inputs, its checks). `dm`, `gm` and `tm` each define one;
`planning.OBJECTIVES` is the registry.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lowrank_distill import data, sharding
from lowrank_distill.distill.step import StepFn
from lowrank_distill.parameterize import budget as budget_lib
from lowrank_distill.parameterize import labels as labels_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `run` resolved from the config before any compute."""

  dataset: data.Dataset
  budget: budget_lib.Budget
  reconstructor: Any
  model: Any

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  @property
  def images_per_class(self) -> int:
    return self.budget.images_per_class

  @property
  def syn_shape(self) -> tuple[int, ...]:
    """[C, k, h, w, c]: the synthetic set, class-major."""
    return (self.num_classes, self.images_per_class, *self.dataset.image_shape)


def syn_targets(trainable: dict, plan: Plan) -> jax.Array:
  """[C, k, C] target probabilities of the synthetic images."""
  c, k = plan.num_classes, plan.images_per_class
  labels = trainable.get("labels", labels_lib.hard(c, k))
  return labels_lib.targets(labels, c).reshape(c, k, c)


InputsFn = Callable[[int], tuple]


def real_data(plan: Plan, config, mesh=None) -> InputsFn:
  """Every step reads (train images, class index), replicated on `mesh`."""
  del config
  arrays = (
    jnp.asarray(plan.dataset.train_images),
    data.class_index(plan.dataset.train_labels, plan.num_classes),
  )
  arrays = sharding.put(arrays, mesh)
  return lambda step: arrays


def _no_check(*args) -> None:
  del args


def _real_batch_check(plan: Plan, config, mesh) -> None:
  del plan
  sharding.check_divisible(
    config.distill.batch_real,
    mesh,
    field="distill.batch_real",
    what="real images of each class",
  )


@dataclasses.dataclass(frozen=True)
class Objective:
  """A distillation method as the loop sees it.

  Attributes:
    make_step: (plan, optimizer, *, mesh=None, **settings) -> step(state,
      key, *inputs) -> (state, metrics with 'loss'); `run` jits it once.
      With a mesh, the step splits its parallel axis over the mesh's 'data'
      axis. Its hyperparameters are keywords, never the config.
    settings: (config) -> the keyword settings of `make_step`: the one
      place the method reads its `distill` section for the step.
    inputs: (plan, config, mesh=None) -> inputs(step) -> the arrays step
      `step` reads after the key (the same real data every step for DM and
      gradient matching; expert snapshots for trajectory matching), placed
      on the mesh.
    check: (config) -> None; raises on values this objective refuses,
      before anything is loaded.
    check_inputs: (config) -> None; raises, before anything is loaded,
      when the config does not name what the run reads besides the dataset
      (trajectory matching's expert buffer).
    check_plan: (plan, config) -> None; raises on what only the loaded data
      can show, before any compute.
    check_mesh: (plan, config, mesh) -> None; raises, naming the field, when
      the split axis does not divide the devices, before any compute.
    learns_labels: gives label logits a gradient (soft labels allowed).
    learns_lr: has a student lr to learn (`distill.learn_lr` allowed).
  """

  make_step: Callable[..., StepFn]
  settings: Callable[[Any], dict]
  inputs: Callable[..., InputsFn] = real_data
  check: Callable[[Any], None] = _no_check
  check_inputs: Callable[[Any], None] = _no_check
  check_plan: Callable[[Plan, Any], None] = _no_check
  check_mesh: Callable[[Plan, Any, Any], None] = _real_batch_check
  learns_labels: bool = False
  learns_lr: bool = False

  def build_step(self, plan: Plan, config, optimizer, *, mesh=None) -> StepFn:
    """`make_step` with the settings `config` gives."""
    return self.make_step(plan, optimizer, mesh=mesh, **self.settings(config))
