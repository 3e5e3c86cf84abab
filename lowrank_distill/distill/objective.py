"""What a distillation method is to the loop: the plan and the interface.

`Plan` is what the config resolves to before any compute (dataset, budget,
reconstructor, model, and every setting the run reads after it); `Objective`
is one method as the loop sees it (its step builder, its inputs, its
checks). `dm`, `gm`, `tm` and `bptt` each define one;
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
class Schedule:
  """When the loop stops, logs, evaluates, draws and saves (in iterations;
  0 turns evaluations or pictures off)."""

  iterations: int
  log_every: int
  eval_every: int
  image_every: int
  checkpoint_every: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `run` resolved from the config before any compute.

  `planning.make_plan` reads the config once; everything after it (the
  initial state, the step, its inputs, the loop, evaluations, the export)
  reads the plan.

  Attributes:
    method: the objective's name (`planning.OBJECTIVES`).
    dataset: the loaded dataset.
    budget: the resolved storage budget (what the set holds).
    reconstructor: the parameterization (`parameterize.get`).
    model: the network the step trains or matches with.
    conv_impl: the convolution implementation of the step's network.
    seed: the run's seed.
    step: keyword settings of the objective's `make_step`.
    inputs: keyword settings of the objective's `inputs` (what the run
      reads besides the dataset; empty for DM and gradient matching).
    image_init: 'noise', 'real' or 'set': how the images start.
    start_set: for image_init 'set', the exported set (a
      `synset.SyntheticSet`) the run starts from: its reconstructor
      parameters (and soft labels and learned lr, when both it and the run
      hold them), or its images as real images would start the run;
      loaded and checked by `planning.make_plan` (`planning.starting_set`).
    label_init: how soft labels start (`labels.LABEL_INITS`).
    label_experts: for the 'expert' init from a buffer named in the config
      (`labels.experts`): {'path', 'model' (the identity its experts must
      have)}; None: the objective's own experts (`Objective.expert_logits`).
    lr_init: the student lr a learned lr starts from.
    optimizer: trainable group name -> (lr, momentum) of its SGD, or None
      for a group kept as initialised (`distill.learn_images` False); also
      sub-groups with their own lr (`step.SUBGROUPS`).
    evaluation: `config_utils.evaluation_settings`.
    schedule: the loop's `Schedule`.
    optimizer_kind: every group's update rule ('sgd' | 'adam').
    orthonormal_mappers: shared mappers are made orthonormal again after
      every update (`mappers.orthonormalize`; the images do not change).
    ema_decay: the decay of the exponential moving average of the set that
      the run evaluates and exports (`step.with_average`); 0: the last set.
  """

  method: str
  dataset: data.Dataset
  budget: budget_lib.Budget
  reconstructor: Any
  model: Any
  conv_impl: str
  seed: int
  step: dict
  inputs: dict
  image_init: str
  label_init: str
  lr_init: float
  optimizer: dict
  evaluation: dict
  schedule: Schedule
  optimizer_kind: str = "sgd"
  label_experts: dict | None = None
  orthonormal_mappers: bool = False
  ema_decay: float = 0.0
  start_set: Any = None

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  @property
  def images_per_class(self) -> int:
    return self.budget.images_per_class

  @property
  def frozen(self) -> tuple[str, ...]:
    """The trainable groups kept as initialised (no gradient, no update)."""
    return tuple(
      name for name, group in self.optimizer.items() if group is None
    )

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


def real_data(plan: Plan, mesh=None) -> InputsFn:
  """Every step reads (train images, class index), replicated on `mesh`."""
  arrays = (
    jnp.asarray(plan.dataset.train_images),
    data.class_index(plan.dataset.train_labels, plan.num_classes),
  )
  arrays = sharding.put(arrays, mesh)
  return lambda step: arrays


def no_settings(config) -> dict:
  del config
  return {}


def _no_check(*args) -> None:
  del args


def real_batch_check(plan: Plan, mesh) -> None:
  sharding.check_divisible(
    plan.step["batch_real"],
    mesh,
    field="distill.batch_real",
    what="real images of each class",
  )


@dataclasses.dataclass(frozen=True)
class Objective:
  """A distillation method as the loop sees it.

  Only `settings`, `input_settings`, `check` and `check_inputs` read the
  config (for `planning`); the rest read the plan they put settings in.

  Attributes:
    make_step: (plan, optimizer, *, mesh=None, **settings) -> step(state,
      key, *inputs) -> (state, metrics with 'loss'); `run` jits it once.
      With a mesh, the step splits its parallel axis over the mesh's 'data'
      axis. Its hyperparameters are keywords, never the config.
    settings: (config) -> the keyword settings of `make_step` (`Plan.step`):
      the one place the method reads its `distill` section for the step.
    input_settings: (config) -> the settings of `inputs` (`Plan.inputs`).
    inputs: (plan, mesh=None) -> inputs(step) -> the arrays step `step`
      reads after the key (the same real data every step for DM and
      gradient matching; expert snapshots for trajectory matching), placed
      on the mesh.
    check: (config) -> None; raises on values this objective refuses,
      before anything is loaded.
    check_inputs: (config) -> None; raises, before anything is loaded,
      when the config does not name what the run reads besides the dataset
      (trajectory matching's expert buffer).
    check_plan: (plan) -> None; raises on what only the loaded data
      can show, before any compute.
    check_mesh: (plan, mesh) -> None; raises, naming the field, when the
      split axis does not divide the devices, before any compute.
    learns_labels: gives label logits a gradient (soft labels allowed).
    learns_lr: has a student lr to learn (`distill.learn_lr` allowed).
    expert_logits: (plan, images [n, h, w, c]) -> [n, C] logits of a
      trained expert the run reads (soft labels' 'expert' init), or None
      when the objective reads no expert.
    init_aux: (key, plan) -> the state of networks the step trains beside
      the set (`DistillStateWithAux.aux`), or None when this run has none.
  """

  make_step: Callable[..., StepFn]
  settings: Callable[[Any], dict]
  input_settings: Callable[[Any], dict] = no_settings
  inputs: Callable[..., InputsFn] = real_data
  check: Callable[[Any], None] = _no_check
  check_inputs: Callable[[Any], None] = _no_check
  check_plan: Callable[[Plan], None] = _no_check
  check_mesh: Callable[[Plan, Any], None] = real_batch_check
  learns_labels: bool = False
  learns_lr: bool = False
  expert_logits: Callable[[Plan, Any], Any] | None = None
  init_aux: Callable[[Any, Plan], Any] = lambda key, plan: None

  def build_step(self, plan: Plan, optimizer, *, mesh=None) -> StepFn:
    """`make_step` with the plan's settings."""
    return self.make_step(plan, optimizer, mesh=mesh, **plan.step)
