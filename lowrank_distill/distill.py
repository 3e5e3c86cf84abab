"""The distillation loop: state, one jitted step, and `run(config, workdir)`.

The trainable state is a dict of parameter groups, each with its own optax
optimiser: 'images' (the reconstructor's parameters: pixels, factors or
mappers and codes), optionally 'labels' (learnable label logits) and
'log_lr' (a learned student lr, kept positive as a log). An objective turns
the trainable dict, a key and the real data into a scalar loss; the step
differentiates it, refuses non-finite or exploding losses (counted, never
applied), and updates every group.
"""

import dataclasses
import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging

from lowrank_distill import (
  analysis,
  augment,
  checkpoint,
  checks,
  config_utils,
  data,
  evaluate,
  models,
  parameterize,
  rng,
  sharding,
  train,
)
from lowrank_distill import experts as experts_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.objectives import (
  distribution_matching,
  gradient_matching,
  trajectory_matching,
)
from lowrank_distill.parameterize import budget as budget_lib
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any
LossFn = Callable[..., jax.Array]

# Config fields that may change when a run resumes: they steer the loop or
# its reporting, not the state a checkpoint holds.
RESUMABLE_FIELDS = (
  "distill.iterations",
  "distill.eval_every",
  "distill.checkpoint_every",
  "distill.image_every",
  "eval",
  # A checkpoint restores onto any mesh; results agree to reduction order.
  "mesh",
)


@flax.struct.dataclass
class DistillState:
  """Everything a checkpoint holds.

  Attributes:
    step: iterations done.
    trainable: {'images': reconstructor params, 'labels'?: [n, C] logits,
      'log_lr'?: scalar}.
    opt_state: the optax state of `trainable`.
    skipped: updates refused for a non-finite or exploding loss.
  """

  step: jax.Array
  trainable: dict
  opt_state: PyTree
  skipped: jax.Array


def make_optimizer(groups: dict[str, tuple[float, float]]):
  """SGD with momentum per parameter group.

  Args:
    groups: group name -> (learning rate, momentum).

  Returns:
    An optax transformation over a dict with exactly these groups.
  """
  transforms = {
    name: optax.sgd(lr, momentum=momentum or None)
    for name, (lr, momentum) in groups.items()
  }

  def group_of(tree):
    return {name: jax.tree.map(lambda _: name, tree[name]) for name in tree}

  return optax.multi_transform(transforms, group_of)


def init_state(trainable: dict, optimizer) -> DistillState:
  return DistillState(
    step=jnp.int32(0),
    trainable=trainable,
    opt_state=optimizer.init(trainable),
    skipped=jnp.int32(0),
  )


def guarded_update(
  state: DistillState, loss, grads, optimizer, *, max_loss: float
) -> tuple[DistillState, jax.Array]:
  """Applies `grads` unless the loss or a gradient is bad.

  A non-finite loss or gradient, or a loss above `max_loss`, leaves the
  trainable params and the optimiser state untouched and increments
  `skipped`. `step` is not changed.

  Returns:
    (state, refused): the new state and whether the update was refused.
  """
  finite_grads = jnp.all(
    jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
  )
  ok = jnp.isfinite(loss) & finite_grads & (loss <= max_loss)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  keep = functools.partial(
    jax.tree.map, lambda new, old: jnp.where(ok, new, old)
  )
  new_state = state.replace(
    trainable=keep(trainable, state.trainable),
    opt_state=keep(opt_state, state.opt_state),
    skipped=state.skipped + (~ok).astype(jnp.int32),
  )
  return new_state, ~ok


def make_train_step(loss_fn: LossFn, optimizer, *, max_loss: float):
  """One distillation iteration with a guard against bad losses.

  Args:
    loss_fn: (trainable, key, *data) -> scalar loss.
    optimizer: from `make_optimizer`.
    max_loss: losses above this (or non-finite losses or gradients) skip the
      update and increment `skipped`.

  Returns:
    train_step(state, key, *data) -> (state, metrics); jit it where used.
  """

  def train_step(state: DistillState, key, *data_args):
    loss, grads = jax.value_and_grad(loss_fn)(state.trainable, key, *data_args)
    state, refused = guarded_update(
      state, loss, grads, optimizer, max_loss=max_loss
    )
    return state.replace(step=state.step + 1), {
      "loss": loss,
      "skipped": refused,
    }

  return train_step


# ---------------------------------------------------------------------------
# Objectives.

StepFn = Callable[..., tuple[DistillState, dict]]


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
    make_step: (plan, config, optimizer, mesh=None) -> step(state, key,
      *inputs) -> (state, metrics with 'loss'); `run` jits it once. With a
      mesh, the step splits its parallel axis over the mesh's 'data' axis.
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
  inputs: Callable[..., InputsFn] = real_data
  check: Callable[[Any], None] = _no_check
  check_inputs: Callable[[Any], None] = _no_check
  check_plan: Callable[[Plan, Any], None] = _no_check
  check_mesh: Callable[[Plan, Any, Any], None] = _real_batch_check
  learns_labels: bool = False
  learns_lr: bool = False


def _dm_step(plan: Plan, config, optimizer, *, mesh=None) -> StepFn:
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


def _gm_check(config) -> None:
  cfg = config.distill
  gradient_matching.check_distance(cfg.distance)
  if cfg.outer_loop < 1 or cfg.inner_loop < 0:
    raise ValueError(
      f"distill.outer_loop / distill.inner_loop: no loop setting for IPC "
      f"{config.synset.ipc} (got outer_loop={cfg.outer_loop}, "
      f"inner_loop={cfg.inner_loop}); set both, e.g. "
      f"--config.distill.outer_loop=10 --config.distill.inner_loop=50 (the "
      f"published table is in configs/gm.py)"
    )
  for field in ("lr_net", "batch_real", "batch_train"):
    if cfg[field] <= 0:
      raise ValueError(f"distill.{field} must be > 0, got {cfg[field]}")


def _gm_check_plan(plan: Plan, config) -> None:
  if models.uses_batch_norm(plan.model):
    data.check_images_per_class(
      plan.dataset.train_labels,
      gradient_matching.BN_IMAGES_PER_CLASS,
      field="dataset (images per class for the BatchNorm statistics)",
    )


def _gm_step(plan: Plan, config, optimizer, *, mesh=None) -> StepFn:
  """One iteration: `outer_loop` synthetic updates on one fresh network.

  Per outer loop: (BatchNorm networks: set the running statistics from a
  real batch), match the gradients of a class-balanced real batch and of the
  synthetic set, update the synthetic set (guarded), then train the network
  on the synthetic set for `inner_loop` epochs, except after the last outer
  loop, as the reference does. The reported loss is the mean over outer
  loops of the summed class distances. With a mesh, the matched real batch
  [C, m, ...] is split along m.
  """
  cfg = config.distill
  model = plan.model
  materialize = plan.reconstructor.materialize
  image_shape = plan.dataset.image_shape
  batch_norm = models.uses_batch_norm(model)

  def match(trainable, key, real, variables):
    return gradient_matching.matching_loss(
      key,
      materialize(trainable["images"]).reshape(plan.syn_shape),
      syn_targets(trainable, plan),
      real,
      model=model,
      variables=variables,
      distance=cfg.distance,
      dsa_strategy=cfg.dsa_strategy,
      classes_in_parallel=cfg.classes_in_parallel,
      mesh=mesh,
    )

  def train_network(key, variables, trainable):
    return gradient_matching.train_on_synthetic(
      key,
      variables,
      materialize(trainable["images"]),
      syn_targets(trainable, plan).reshape(-1, plan.num_classes),
      model=model,
      epochs=cfg.inner_loop,
      lr=cfg.lr_net,
      batch_size=cfg.batch_train,
      dsa_strategy=cfg.dsa_strategy,
    )

  def step(state: DistillState, key, real_images, class_index):
    net_key, loop_key = jax.random.split(key)
    variables = model.init(net_key, real_images[:1])

    def outer(carry, index):
      state, variables = carry
      bn_key, real_key, match_key, inner_key = jax.random.split(
        jax.random.fold_in(loop_key, index), 4
      )
      if batch_norm:
        idx = data.sample_per_class(
          bn_key, class_index, n=gradient_matching.BN_IMAGES_PER_CLASS
        )
        variables = gradient_matching.batch_norm_statistics(
          model, variables, real_images[idx].reshape(-1, *image_shape)
        )
      idx = data.sample_per_class(real_key, class_index, n=cfg.batch_real)
      real = sharding.constrain(real_images[idx], mesh, axis=1)
      loss, grads = jax.value_and_grad(match)(
        state.trainable, match_key, real, variables
      )
      state, refused = guarded_update(
        state, loss, grads, optimizer, max_loss=cfg.max_loss
      )
      variables = jax.lax.cond(
        index < cfg.outer_loop - 1,
        lambda v: train_network(inner_key, v, state.trainable),
        lambda v: v,
        variables,
      )
      return (state, variables), (loss, refused)

    (state, _), (losses, refused) = jax.lax.scan(
      outer, (state, variables), jnp.arange(cfg.outer_loop)
    )
    return state.replace(step=state.step + 1), {
      "loss": jnp.mean(losses),
      "skipped": jnp.any(refused),
    }

  return step


def _tm_check(config) -> None:
  cfg = config.distill
  trajectory_matching.check_start_schedule(cfg.start)
  for field, low in (
    ("syn_steps", 0),
    ("expert_epochs", 1),
    ("max_start", 1),
    ("batch_syn", 0),
    ("num_trajectories", 1),
  ):
    if cfg[field] < low:
      raise ValueError(f"distill.{field} must be >= {low}, got {cfg[field]}")
  if not cfg.learn_lr and cfg.lr_student <= 0:
    raise ValueError(f"distill.lr_student must be > 0, got {cfg.lr_student}")


def _tm_check_inputs(config) -> None:
  if not config.experts.path:
    raise ValueError(
      "experts.path: trajectory matching needs an expert buffer; train one "
      "with launch/experts.py and pass --config.experts.path=<its workdir>"
    )


def tm_window(config) -> tuple[int, int]:
  """`trajectory_matching.snapshot_window` of a run's config."""
  cfg = config.distill
  return trajectory_matching.snapshot_window(
    schedule=cfg.start,
    max_start=cfg.max_start,
    delta=cfg.start_delta,
    expert_epochs=cfg.expert_epochs,
  )


def _tm_buffer(plan: Plan, config):
  buffer = experts_lib.open_buffer(config.experts.path, field="experts.path")
  _, needed = tm_window(config)
  wanted = config.experts.num_experts or buffer.num_experts
  experts_lib.check_buffer(
    buffer,
    experts_lib.buffer_identity(plan.dataset, config),
    field="experts.path",
    min_snapshots=needed,
    needed_by="distill.max_start + distill.expert_epochs",
    min_experts=max(wanted, 1),
  )
  return buffer, wanted


def _tm_check_plan(plan: Plan, config) -> None:
  _tm_buffer(plan, config)


TRAJECTORIES, MINIBATCH = "trajectories", "minibatch"


def tm_split(config, mesh) -> str | None:
  """What trajectory matching splits over the mesh's 'data' axis.

  The trajectories of an iteration when `distill.num_trajectories` is a
  multiple of the devices; else the student's synthetic minibatch at every
  step (padded with masked rows when it does not divide); None on one
  device.
  """
  if not sharding.is_sharded(mesh):
    return None
  n = sharding.data_size(mesh)
  return TRAJECTORIES if config.distill.num_trajectories % n == 0 else MINIBATCH


def _tm_check_mesh(plan: Plan, config, mesh) -> None:
  if tm_split(config, mesh) != MINIBATCH:
    return
  if not models.uses_batch_norm(plan.model):
    return
  num_images = plan.num_classes * plan.images_per_class
  batch = min(config.distill.batch_syn or num_images, num_images)
  n = sharding.data_size(mesh)
  if batch % n:
    raise ValueError(
      f"distill.batch_syn: a BatchNorm student's minibatch of {batch} "
      f"synthetic images is split over the {n} devices along the mesh's "
      f"'data' axis and must be a multiple of {n} (padding would enter its "
      f"batch statistics); set distill.batch_syn to a multiple of {n}, "
      f"distill.num_trajectories to a multiple of {n}, or mesh.data to a "
      f"divisor of {batch}"
    )


class ExpertSnapshots:
  """The snapshots trajectory matching reads, held in host memory.

  Every expert's epochs `0 .. window - 1` (the latest start plus the
  expert epochs) are read by slice from the buffer once; each step then
  draws experts and start epochs with a generator seeded by (seed, step), so
  a resumed run draws what the uninterrupted one would have. With a mesh,
  each step's [num_trajectories, ...] snapshots are sent split along the
  trajectories (`tm_split`) or replicated.
  """

  def __init__(self, plan: Plan, config, mesh=None):
    buffer, num_experts = _tm_buffer(plan, config)
    window, _ = tm_window(config)
    window = min(window, buffer.num_snapshots)
    snapshot_bytes = sum(
      math.prod(x.shape) * x.dtype.itemsize
      for x in jax.tree.leaves(buffer.abstract_params())
    )
    self.num_bytes = num_experts * window * snapshot_bytes
    limit = config.experts.max_host_bytes
    if limit and self.num_bytes > limit:
      raise ValueError(
        f"experts.num_experts: {num_experts} experts x {window} snapshots "
        f"take {self.num_bytes / 2**30:.2f} GiB, above "
        f"experts.max_host_bytes ({limit / 2**30:.2f} GiB); use fewer "
        f"experts or raise the limit"
      )
    trajectories = [buffer.read(e, 0, window) for e in range(num_experts)]
    self.params = jax.tree.map(lambda *x: np.stack(x), *trajectories)
    self.num_experts = num_experts
    self.last_start = window - 1 - config.distill.expert_epochs
    self.config = config
    self.mesh = mesh
    self.axis = 0 if tm_split(config, mesh) == TRAJECTORIES else None

  def __call__(self, step: int) -> tuple:
    cfg = self.config.distill
    rng = np.random.default_rng((self.config.seed, step))
    experts, starts = trajectory_matching.sample_starts(
      rng,
      step,
      num=cfg.num_trajectories,
      num_experts=self.num_experts,
      schedule=cfg.start,
      iterations=cfg.iterations,
      max_start=cfg.max_start,
      delta=cfg.start_delta,
      window=cfg.start_window,
      last_start=self.last_start,
    )
    targets = starts + cfg.expert_epochs
    if sharding.is_sharded(self.mesh):
      pairs = tuple(
        jax.tree.map(lambda x, i=i: x[experts, i], self.params)
        for i in (starts, targets)
      )
      return sharding.put(pairs, self.mesh, axis=self.axis)
    return (
      jax.tree.map(lambda x: jnp.asarray(x[experts, starts]), self.params),
      jax.tree.map(lambda x: jnp.asarray(x[experts, targets]), self.params),
    )


def _tm_step(plan: Plan, config, optimizer, *, mesh=None) -> StepFn:
  """Mean over `num_trajectories` trajectories of the MTT loss.

  With a mesh, the trajectories or every student minibatch are split over
  its 'data' axis (`tm_split`).
  """
  cfg = config.distill
  split = tm_split(config, mesh)
  materialize = plan.reconstructor.materialize
  # The student's non-param variables (BatchNorm running averages) start
  # as a fresh network's; experts store params only.
  _, model_state = train.split_variables(
    train.init_variables(
      jax.random.key(0), plan.model, plan.dataset.image_shape
    )
  )
  model_state = model_state or None

  def loss_fn(trainable, key, start_params, target_params):
    images = materialize(trainable["images"])
    targets = syn_targets(trainable, plan).reshape(-1, plan.num_classes)
    if "log_lr" in trainable:
      lr = jnp.exp(trainable["log_lr"])
    else:
      lr = jnp.float32(cfg.lr_student)

    def one(key, start, target):
      return trajectory_matching.trajectory_loss(
        key,
        start,
        target,
        images,
        targets,
        model=plan.model,
        lr=lr,
        steps=cfg.syn_steps,
        batch_size=cfg.batch_syn or images.shape[0],
        dsa_strategy=cfg.dsa_strategy,
        model_state=model_state,
        remat=cfg.remat,
        mesh=mesh if split == MINIBATCH else None,
      )

    keys = jax.random.split(key, cfg.num_trajectories)
    if split == TRAJECTORIES:
      keys, start_params, target_params = sharding.constrain(
        (keys, start_params, target_params), mesh, axis=0
      )
    return jnp.mean(jax.vmap(one)(keys, start_params, target_params))

  return make_train_step(loss_fn, optimizer, max_loss=cfg.max_loss)


OBJECTIVES: dict[str, Objective] = {
  "dm": Objective(make_step=_dm_step),
  "gm": Objective(
    make_step=_gm_step,
    check=_gm_check,
    check_plan=_gm_check_plan,
    learns_labels=True,
  ),
  "tm": Objective(
    make_step=_tm_step,
    inputs=ExpertSnapshots,
    check=_tm_check,
    check_inputs=_tm_check_inputs,
    check_plan=_tm_check_plan,
    check_mesh=_tm_check_mesh,
    learns_labels=True,
    learns_lr=True,
  ),
}


def learning_objectives(what: str) -> list[str]:
  """Names of the objectives that learn labels ('labels') or the lr ('lr')."""
  attr = {"labels": "learns_labels", "lr": "learns_lr"}[what]
  return [name for name, o in OBJECTIVES.items() if getattr(o, attr)]


# ---------------------------------------------------------------------------
# Validation and planning (no compute).


def validate(config, *, check_inputs: bool = True) -> None:
  """Checks names and values of the config before anything is loaded.

  With `check_inputs`, also that the config names the inputs the run reads
  besides the dataset (trajectory matching's expert buffer); False for a
  caller that builds those inputs later (continual steps train experts).
  """
  checks.check_choice("method", config.method, OBJECTIVES)
  checks.check_choice(
    "synset.param", config.synset.param, parameterize.PARAMETERIZATIONS
  )
  checks.check_choice("synset.budget", config.synset.budget, budget_lib.BUDGETS)
  checks.check_choice("labels.kind", config.labels.kind, ("hard", "soft"))
  if config.labels.kind == "soft":
    checks.check_choice(
      "labels.init", config.labels.init, labels_lib.LABEL_INITS
    )
    if not OBJECTIVES[config.method].learns_labels:
      raise ValueError(
        f"labels.kind 'soft': objective {config.method!r} gives label "
        f"logits no gradient; use labels.kind='hard' (objectives that learn "
        f"labels: {learning_objectives('labels')})"
      )
  if config.distill.learn_lr and not OBJECTIVES[config.method].learns_lr:
    raise ValueError(
      f"distill.learn_lr: objective {config.method!r} has no student lr to "
      f"learn; set it to False (objectives with one: "
      f"{learning_objectives('lr')})"
    )
  checks.check_choice("synset.init", config.synset.init, ("noise", "real"))
  if config.synset.ipc < 1:
    raise ValueError(f"synset.ipc must be >= 1, got {config.synset.ipc}")
  if config.distill.iterations < 0:
    raise ValueError(
      f"distill.iterations must be >= 0, got {config.distill.iterations}"
    )
  augment.parse_strategy(config.distill.dsa_strategy)
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])
  OBJECTIVES[config.method].check(config)
  if check_inputs:
    OBJECTIVES[config.method].check_inputs(config)


def plan(
  config, *, dataset: data.Dataset | None = None, check_inputs: bool = True
) -> Plan:
  """Loads the dataset and resolves the budget; raises on bad values.

  Args:
    config: the run's config.
    dataset: distil this dataset instead of loading `config.dataset` (e.g.
      the classes of one continual-learning step).
    check_inputs: run the objective's checks of what the run reads besides
      the dataset (trajectory matching's expert buffer); False for a caller
      that builds those inputs later (continual steps train their experts).
  """
  validate(config, check_inputs=check_inputs)
  if dataset is None:
    dataset = data.load(
      config.dataset.name, **config_utils.dataset_kwargs(config.dataset)
    )
  syn = config.synset
  parameterize.validate(
    syn.param,
    image_shape=dataset.image_shape,
    rank=syn.rank,
    num_sets=syn.num_sets,
  )
  data.check_images_per_class(dataset.train_labels, syn.ipc, field="synset.ipc")
  budget = budget_lib.plan(
    syn.param,
    budget=syn.budget,
    ipc=syn.ipc,
    num_classes=dataset.num_classes,
    image_shape=dataset.image_shape,
    rank=syn.rank,
    num_sets=syn.num_sets,
    soft_labels=config.labels.kind == "soft",
    learn_lr=config.distill.learn_lr,
  )
  data.check_images_per_class(
    dataset.train_labels,
    budget.images_per_class,
    field="synset.ipc (images per class after the budget)",
  )
  if "batch_real" in config.distill:
    data.check_images_per_class(
      dataset.train_labels,
      config.distill.batch_real,
      field="distill.batch_real",
    )
  model = models.create(
    config.model.name,
    num_classes=dataset.num_classes,
    image_shape=dataset.image_shape,
    conv_impl=config.distill.conv_impl,
    **models.options_for(config.model.name, config.model.options),
  )
  the_plan = Plan(
    dataset=dataset,
    budget=budget,
    reconstructor=parameterize.get(syn.param),
    model=model,
  )
  if check_inputs:
    OBJECTIVES[config.method].check_plan(the_plan, config)
  return the_plan


def initial_trainable(key, plan: Plan, config) -> dict:
  """The reconstructor params (and labels / lr) before distillation."""
  syn = config.synset
  image_key, real_key, label_key = jax.random.split(key, 3)
  index = data.class_index(plan.dataset.train_labels, plan.num_classes)
  real = None
  if syn.init == "real":
    idx = data.sample_per_class(real_key, index, n=plan.images_per_class)
    real = jnp.asarray(plan.dataset.train_images)[idx]
  trainable = {
    "images": plan.reconstructor.init(
      image_key,
      num_classes=plan.num_classes,
      images_per_class=plan.images_per_class,
      image_shape=plan.dataset.image_shape,
      method=syn.init,
      real_images=real,
      **parameterize.kind_kwargs(
        syn.param, rank=syn.rank, num_sets=syn.num_sets
      ),
    )
  }
  if config.labels.kind == "soft":
    trainable["labels"] = labels_lib.init_soft(
      label_key,
      num_classes=plan.num_classes,
      images_per_class=plan.images_per_class,
      method=config.labels.init,
    )
  if config.distill.learn_lr:
    trainable["log_lr"] = jnp.log(jnp.float32(config.distill.lr_student))
  return trainable


def initial_state(key, plan: Plan, config):
  """(state, optimiser): the trainable set before distillation, its optax
  optimiser (one SGD group per parameter group) and that optimiser's state."""
  trainable = initial_trainable(key, plan, config)
  optimizer = make_optimizer(optimizer_groups(config, trainable))
  return init_state(trainable, optimizer), optimizer


def optimizer_groups(config, trainable: dict) -> dict:
  cfg = config.distill
  groups = {"images": (cfg.lr_images, cfg.momentum)}
  if "labels" in trainable:
    groups["labels"] = (config.labels.lr, config.labels.momentum)
  if "log_lr" in trainable:
    groups["log_lr"] = (cfg.lr_lr, cfg.momentum)
  return groups


# ---------------------------------------------------------------------------
# Artifacts.


def labels_of(trainable: dict, plan: Plan):
  """[n] int hard labels, or the [n, C] learned logits."""
  if "labels" in trainable:
    return np.asarray(trainable["labels"])
  return np.asarray(labels_lib.hard(plan.num_classes, plan.images_per_class))


def learned_lr(trainable: dict) -> float | None:
  if "log_lr" in trainable:
    return float(jnp.exp(trainable["log_lr"]))
  return None


def export(
  path, trainable: dict, plan: Plan, config
) -> synset_lib.SyntheticSet:
  images = np.asarray(plan.reconstructor.materialize(trainable["images"]))
  result = synset_lib.SyntheticSet(
    images=images,
    labels=labels_of(trainable, plan),
    param=config.synset.param,
    params=jax.tree.map(np.asarray, trainable["images"]),
    storage_floats=parameterize.num_floats(trainable),
    dataset=plan.dataset.metadata(),
    lr=learned_lr(trainable),
    info={
      "method": config.method,
      "budget": dataclasses.asdict(plan.budget),
      "dataset_config": config.dataset.to_dict(),
    },
  )
  # Every process calls the save: Orbax synchronises them and writes once.
  synset_lib.save(path, result, overwrite=True)
  return result


def save_pictures(workdir: pathlib.Path, step: int, trainable, plan, config):
  if not workdir_lib.is_writer():
    return
  images = plan.reconstructor.materialize(trainable["images"])
  analysis.save_image_grid(
    workdir / "images" / f"synset_{step:06d}.png",
    plan.dataset.to_unit_range(np.asarray(images)),
    nrow=plan.images_per_class,
  )
  if config.synset.param != "pixels":
    analysis.save_components(
      workdir / "images" / f"{config.synset.param}_{step:06d}.png",
      config.synset.param,
      jax.tree.map(np.asarray, trainable["images"]),
    )


def _evaluate(key, trainable, plan: Plan, config, workdir) -> dict:
  results = evaluate.evaluate_with_config(
    key,
    plan.reconstructor.materialize(trainable["images"]),
    labels_of(trainable, plan),
    plan.dataset,
    config,
    lr=learned_lr(trainable),
    log=evaluate.ModelLog(workdir / evaluate.MODEL_LOG),
  )
  return {name: r.to_json() for name, r in results.items()}


def _identity_config(config) -> dict:
  """The config without the fields a resumed run may change."""
  return workdir_lib.identity(config.to_dict(), RESUMABLE_FIELDS)


def check_workdir(workdir: pathlib.Path, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  workdir_lib.check_config(
    workdir, config, resumable_fields=RESUMABLE_FIELDS, what="a run"
  )


def _truncate_metrics(writer: workdir_lib.MetricsWriter, step: int) -> None:
  """Drops records past the restored step (they will be produced again)."""
  if not workdir_lib.is_writer():
    return
  kept = [r for r in writer.read() if r["step"] <= step]
  tmp = writer.path.with_suffix(".tmp")
  tmp.write_text("".join(workdir_lib.json_line(r) for r in kept))
  tmp.replace(writer.path)


def run(
  config,
  workdir,
  *,
  dataset: data.Dataset | None = None,
  final_eval: bool = True,
) -> dict:
  """Distils a synthetic set; resumes from the workdir's last checkpoint.

  Writes config.json, metrics.jsonl, checkpoints/, images/*.png, synset/
  (the export), eval_models.jsonl (`evaluate.ModelLog`) and results.json
  into `workdir`.

  Args:
    config: the run's config.
    workdir: where everything is written.
    dataset: distil (and evaluate on) this dataset instead of loading
      `config.dataset`.
    final_eval: evaluate the final set with `config.eval` (else `results` is
      empty: a caller that trains on the export itself skips the cost).

  Returns:
    The final evaluation results, per architecture.
  """
  workdir = pathlib.Path(workdir)
  the_plan = plan(config, dataset=dataset)
  objective = OBJECTIVES[config.method]
  mesh = sharding.mesh_from_config(config)
  objective.check_mesh(the_plan, config, mesh)
  check_workdir(workdir, config)
  process_0 = workdir_lib.is_writer()
  if process_0:
    print(budget_lib.budget_table(the_plan.budget), flush=True)
  logging.info("Mesh: %s", sharding.describe(mesh))

  root = jax.random.key(config.seed)
  state, optimizer = initial_state(rng.stream(root, "init"), the_plan, config)
  state = sharding.put(state, mesh)
  train_step = sharding.jit(
    objective.make_step(the_plan, config, optimizer, mesh=mesh),
    mesh,
    compiler_options=models.compiler_options(config.distill.conv_impl),
  )

  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_config(workdir, config)
  writer = workdir_lib.MetricsWriter(workdir)
  cfg = config.distill
  with checkpoint.Checkpointer(
    workdir / "checkpoints", config=_identity_config(config)
  ) as ckpt:
    restored = ckpt.restore_or_none(sharding.abstract(state, mesh))
    if restored is not None:
      state, _ = restored
      logging.info("Resumed from step %d", int(state.step))
      _truncate_metrics(writer, int(state.step))

    inputs = objective.inputs(the_plan, config, mesh)
    distill_key = rng.stream(root, "distill")
    eval_key = rng.stream(root, "eval")
    start = int(state.step)
    losses, tick = [], time.time()
    progress = tqdm.trange(
      start,
      cfg.iterations,
      initial=start,
      total=cfg.iterations,
      desc=f"{config.method}/{config.synset.param}",
      disable=not workdir_lib.is_writer(),
    )
    for step in progress:
      step_key = sharding.put(jax.random.fold_in(distill_key, step), mesh)
      state, metrics = train_step(state, step_key, *inputs(step))
      losses.append(metrics["loss"])
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.iterations:
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        progress.set_postfix(
          loss=f"{mean_loss:.4g}", skipped=int(state.skipped)
        )
        writer.write(
          done,
          loss=mean_loss,
          skipped=int(state.skipped),
          seconds_per_step=(time.time() - tick) / len(losses),
        )
        losses, tick = [], time.time()
      if (
        cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.iterations
      ):
        results = _evaluate(
          jax.random.fold_in(eval_key, done),
          state.trainable,
          the_plan,
          config,
          workdir,
        )
        writer.write(done, eval=results)
      if cfg.image_every and done % cfg.image_every == 0:
        save_pictures(workdir, done, state.trainable, the_plan, config)
      if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
        ckpt.save(done, state)
    ckpt.wait()

  final_step = int(state.step)
  save_pictures(workdir, final_step, state.trainable, the_plan, config)
  exported = export(workdir / "synset", state.trainable, the_plan, config)
  results = {}
  if final_eval:
    results = _evaluate(
      jax.random.fold_in(eval_key, final_step),
      state.trainable,
      the_plan,
      config,
      workdir,
    )
    writer.write(final_step, eval=results, final=True)
  summary = {
    "method": config.method,
    "param": config.synset.param,
    "budget": dataclasses.asdict(the_plan.budget),
    "storage_floats": exported.storage_floats,
    "skipped_updates": int(state.skipped),
    "iterations": final_step,
    "lr": exported.lr,
    "results": results,
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  for name, r in results.items():
    line = (
      f"{name}: {100 * r['mean']:.2f} ± {100 * r['std']:.2f} "
      f"over {len(r['accuracies'])} models"
    )
    if process_0:
      print(line, flush=True)
    logging.info("%s", line)
  if process_0:
    print(f"artifacts in {workdir.resolve()}", flush=True)
  return summary
