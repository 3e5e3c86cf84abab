"""Trajectory matching (MTT, LoMTT, MTT-LSS) as the loop sees it.

The expert-snapshot feeder (`ExpertSnapshots`), the snapshot window a run
reads, and how an iteration is split over the mesh.

References:
  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import checks, models, parameterize, sharding, train
from lowrank_distill import experts as experts_lib
from lowrank_distill.distill.objective import Objective, Plan, syn_targets
from lowrank_distill.distill.step import StepFn, make_train_step
from lowrank_distill.objectives import (
  hallucinator_contrast,
  trajectory_matching,
)

# The parameterizations HaBa's constraint (`distill.club_weight`) acts on.
HALLUCINATOR_KINDS = ("hallucinators", "lowrank_hallucinators")


def check(config) -> None:
  # The numeric fields' ranges are `planning.RANGES`.
  trajectory_matching.check_start_schedule(config.distill.start)
  if config.distill.club_weight:
    checks.check_choice(
      "synset.param (with distill.club_weight > 0)",
      config.synset.param,
      HALLUCINATOR_KINDS,
    )
    if config.synset.num_hallucinators < 2:
      raise ValueError(
        f"synset.num_hallucinators: HaBa's constraint "
        f"(distill.club_weight > 0) compares two hallucinators, so it needs "
        f"at least 2; got {config.synset.num_hallucinators} (or set "
        f"distill.club_weight=0)"
      )


def check_inputs(config) -> None:
  if not config.experts.path:
    raise ValueError(
      "experts.path: trajectory matching needs an expert buffer; train one "
      "with launch/experts.py and pass --config.experts.path=<its workdir>"
    )


def input_settings(config) -> dict:
  """The settings of `expert_snapshots` (`Plan.inputs`) from the config."""
  cfg = config.distill
  return dict(
    path=config.experts.path,
    num_experts=config.experts.num_experts,
    max_host_bytes=config.experts.max_host_bytes,
    model_identity=experts_lib.model_identity(config),
    seed=config.seed,
    num_trajectories=cfg.num_trajectories,
    expert_epochs=cfg.expert_epochs,
    schedule=cfg.start,
    iterations=cfg.iterations,
    max_start=cfg.max_start,
    delta=cfg.start_delta,
    window=cfg.start_window,
  )


def snapshot_window(plan: Plan) -> tuple[int, int]:
  """`trajectory_matching.snapshot_window` of a run's plan."""
  feed = plan.inputs
  return trajectory_matching.snapshot_window(
    schedule=feed["schedule"],
    max_start=feed["max_start"],
    delta=feed["delta"],
    expert_epochs=feed["expert_epochs"],
  )


def _buffer(plan: Plan):
  feed = plan.inputs
  buffer = experts_lib.open_buffer(feed["path"], field="experts.path")
  _, needed = snapshot_window(plan)
  wanted = feed["num_experts"] or buffer.num_experts
  experts_lib.check_buffer(
    buffer,
    experts_lib.buffer_identity(plan.dataset, model=feed["model_identity"]),
    field="experts.path",
    min_snapshots=needed,
    needed_by="distill.max_start + distill.expert_epochs",
    min_experts=max(wanted, 1),
  )
  return buffer, wanted


def check_plan(plan: Plan) -> None:
  _buffer(plan)


TRAJECTORIES, MINIBATCH = "trajectories", "minibatch"


def mesh_split(num_trajectories: int, mesh) -> str | None:
  """What trajectory matching splits over the mesh's 'data' axis.

  The trajectories of an iteration when `distill.num_trajectories` is a
  multiple of the devices; else the student's synthetic minibatch at every
  step (padded with masked rows when it does not divide); None on one
  device.
  """
  if not sharding.is_sharded(mesh):
    return None
  n = sharding.data_size(mesh)
  return TRAJECTORIES if num_trajectories % n == 0 else MINIBATCH


def check_mesh(plan: Plan, mesh) -> None:
  if mesh_split(plan.step["num_trajectories"], mesh) != MINIBATCH:
    return
  if not models.uses_batch_norm(plan.model):
    return
  num_images = plan.num_classes * plan.images_per_class
  batch = min(plan.step["batch_syn"] or num_images, num_images)
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


def expert_snapshots(plan: Plan, mesh=None) -> "ExpertSnapshots":
  """The run's `ExpertSnapshots` (`Objective.inputs`), from `plan.inputs`.

  Reads every expert's epochs `0 .. window - 1` (the latest start plus the
  expert epochs) by slice from the buffer once, refusing more than
  `experts.max_host_bytes`.
  """
  feed = plan.inputs
  buffer, num_experts = _buffer(plan)
  window, _ = snapshot_window(plan)
  window = min(window, buffer.num_snapshots)
  snapshot_bytes = sum(
    math.prod(x.shape) * x.dtype.itemsize
    for x in jax.tree.leaves(buffer.abstract_params())
  )
  num_bytes = num_experts * window * snapshot_bytes
  limit = feed["max_host_bytes"]
  if limit and num_bytes > limit:
    raise ValueError(
      f"experts.num_experts: {num_experts} experts x {window} snapshots "
      f"take {num_bytes / 2**30:.2f} GiB, above "
      f"experts.max_host_bytes ({limit / 2**30:.2f} GiB); use fewer "
      f"experts or raise the limit"
    )
  trajectories = [buffer.read(e, 0, window) for e in range(num_experts)]
  return ExpertSnapshots(
    jax.tree.map(lambda *x: np.stack(x), *trajectories),
    seed=feed["seed"],
    num_trajectories=feed["num_trajectories"],
    expert_epochs=feed["expert_epochs"],
    schedule=feed["schedule"],
    iterations=feed["iterations"],
    max_start=feed["max_start"],
    delta=feed["delta"],
    window=feed["window"],
    mesh=mesh,
  )


class ExpertSnapshots:
  """The snapshots trajectory matching reads, held in host memory.

  Each step draws experts and start epochs with a generator seeded by
  (seed, step), so a resumed run draws what the uninterrupted one would
  have. With a mesh, each step's [num_trajectories, ...] snapshots are sent
  split along the trajectories (`mesh_split`) or replicated.

  Args:
    params: the experts' parameter trajectories, leaves [E, S, ...] (E
      experts, S snapshots from epoch 0).
    seed: the run's seed.
    num_trajectories: trajectories drawn per step.
    expert_epochs: M, the target's distance from the start, in epochs.
    schedule, iterations, max_start, delta, window: the start schedule
      (`trajectory_matching.start_range`).
    mesh: the run's mesh, or None.
  """

  def __init__(
    self,
    params,
    *,
    seed: int,
    num_trajectories: int,
    expert_epochs: int,
    schedule: str,
    iterations: int,
    max_start: int,
    delta: float,
    window: int,
    mesh=None,
  ):
    self.params = params
    leaf = jax.tree.leaves(params)[0]
    self.num_experts, num_snapshots = leaf.shape[:2]
    self.num_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    self.seed = seed
    self.expert_epochs = expert_epochs
    # The last start epoch with its target inside the snapshots held.
    self.last_start = num_snapshots - 1 - expert_epochs
    self.mesh = mesh
    split = mesh_split(num_trajectories, mesh)
    self.axis = 0 if split == TRAJECTORIES else None
    self.draw = dict(
      num=num_trajectories,
      schedule=schedule,
      iterations=iterations,
      max_start=max_start,
      delta=delta,
      window=window,
      last_start=self.last_start,
    )

  def __call__(self, step: int) -> tuple:
    rng = np.random.default_rng((self.seed, step))
    experts, starts = trajectory_matching.sample_starts(
      rng, step, num_experts=self.num_experts, **self.draw
    )
    targets = starts + self.expert_epochs
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


def settings(config) -> dict:
  """The keyword settings of `make_step` from the run's config."""
  cfg = config.distill
  return dict(
    num_trajectories=cfg.num_trajectories,
    lr_student=cfg.lr_student,
    syn_steps=cfg.syn_steps,
    batch_syn=cfg.batch_syn,
    dsa_strategy=cfg.dsa_strategy,
    remat=cfg.remat,
    max_loss=cfg.max_loss,
    club_weight=cfg.club_weight,
    extractor_lr=cfg.extractor_lr,
    extractor_momentum=cfg.extractor_momentum,
    extractor_cls_weight=cfg.extractor_cls_weight,
    extractor_likelihood_weight=cfg.extractor_likelihood_weight,
    extractor_contrast_weight=cfg.extractor_contrast_weight,
  )


def expert_logits(plan: Plan, images) -> jax.Array:
  """The labels' 'expert' init (DESIGN 3.4): `final_expert_logits` of the
  run's buffer and model for the set's initial images [n, h, w, c]."""
  buffer, _ = _buffer(plan)
  return experts_lib.final_expert_logits(
    buffer, plan.model, plan.dataset.image_shape, images
  )


def extractor(plan: Plan):
  """HaBa's feature extractor: a ConvNet (width 128, depth 3, instance
  norm, average pooling) on the set's images, as the reference's."""
  return models.create(
    "convnet",
    num_classes=plan.num_classes,
    image_shape=plan.dataset.image_shape,
    conv_impl=plan.conv_impl,
  )


def init_aux(key, plan: Plan) -> dict | None:
  """HaBa's extractor {'params', 'opt_state'} when the run has the
  constraint (`club_weight` > 0), else None."""
  settings = plan.step
  if not settings["club_weight"]:
    return None
  net = extractor(plan)
  params = net.init(key, jnp.zeros((1, *plan.dataset.image_shape)))["params"]
  optimizer = hallucinator_contrast.extractor_optimizer(
    lr=settings["extractor_lr"], momentum=settings["extractor_momentum"]
  )
  return {"params": params, "opt_state": optimizer.init(params)}


def make_step(
  plan: Plan,
  optimizer,
  *,
  mesh=None,
  num_trajectories: int,
  lr_student: float,
  syn_steps: int,
  batch_syn: int,
  dsa_strategy: str,
  remat: bool,
  max_loss: float,
  club_weight: float = 0.0,
  extractor_lr: float = 0.001,
  extractor_momentum: float = 0.9,
  extractor_cls_weight: float = 1.0,
  extractor_likelihood_weight: float = 1.0,
  extractor_contrast_weight: float = 1.0,
) -> StepFn:
  """Mean over `num_trajectories` trajectories of the MTT loss.

  `lr_student` is the student's lr unless the trainable set learns one;
  `batch_syn` 0 means every synthetic image in every student step. With a
  mesh, the trajectories or every student minibatch are split over its
  'data' axis (`mesh_split`).

  With `club_weight` > 0 (a hallucinator set), HaBa's constraint
  (`hallucinator_contrast`): the set's loss adds `club_weight` times the
  club term under the state's extractor (`init_aux`), and after the set's
  update the extractor takes one SGD step (`extractor_lr`,
  `extractor_momentum`) on its three weighted losses. The step's metrics
  then add 'matching_loss', 'club' and the extractor's losses.
  """
  split = mesh_split(num_trajectories, mesh)
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
      lr = jnp.float32(lr_student)

    def one(key, start, target):
      return trajectory_matching.trajectory_loss(
        key,
        start,
        target,
        images,
        targets,
        model=plan.model,
        lr=lr,
        steps=syn_steps,
        batch_size=batch_syn or images.shape[0],
        dsa_strategy=dsa_strategy,
        model_state=model_state,
        remat=remat,
        mesh=mesh if split == MINIBATCH else None,
      )

    keys = jax.random.split(key, num_trajectories)
    if split == TRAJECTORIES:
      keys, start_params, target_params = sharding.constrain(
        (keys, start_params, target_params), mesh, axis=0
      )
    return jnp.mean(jax.vmap(one)(keys, start_params, target_params))

  if not club_weight:
    return make_train_step(loss_fn, optimizer, max_loss=max_loss)
  return _with_constraint(
    loss_fn,
    plan,
    optimizer,
    max_loss=max_loss,
    dsa_strategy=dsa_strategy,
    club_weight=club_weight,
    extractor_optimizer=hallucinator_contrast.extractor_optimizer(
      lr=extractor_lr, momentum=extractor_momentum
    ),
    cls_weight=extractor_cls_weight,
    likelihood_weight=extractor_likelihood_weight,
    contrast_weight=extractor_contrast_weight,
  )


def _with_constraint(
  matching_loss,
  plan: Plan,
  optimizer,
  *,
  max_loss: float,
  dsa_strategy: str,
  club_weight: float,
  extractor_optimizer,
  cls_weight: float,
  likelihood_weight: float,
  contrast_weight: float,
) -> StepFn:
  """`make_step`'s step with HaBa's constraint (see there)."""
  kind = parameterize.get(plan.budget.param)
  net = extractor(plan)

  def parts(trainable):
    """(hallucinators, bases [C m, h, w, c]) of the set."""
    images = trainable["images"]
    return images["hallucinators"], kind.bases(images)

  def loss_fn(trainable, key, extractor_params, start, target):
    match_key, club_key = jax.random.split(key)
    matching = matching_loss(trainable, match_key, start, target)
    club = hallucinator_contrast.club_term(
      club_key,
      *parts(trainable),
      extractor_params,
      extractor=net,
      dsa_strategy=dsa_strategy,
    )
    total = matching + club_weight * club
    return total, {"matching_loss": matching, "club": club}

  train_step = make_train_step(
    loss_fn, optimizer, max_loss=max_loss, has_aux=True
  )

  def step(state, key, start_params, target_params):
    set_key, extractor_key = jax.random.split(key)
    aux = state.aux
    state, metrics = train_step(
      state, set_key, aux["params"], start_params, target_params
    )
    hallucinators, bases = parts(jax.lax.stop_gradient(state.trainable))
    per_class = bases.shape[0] // plan.num_classes
    labels = jnp.arange(bases.shape[0]) // per_class
    params, opt_state, extractor_metrics = hallucinator_contrast.extractor_step(
      extractor_key,
      aux["params"],
      aux["opt_state"],
      hallucinators,
      bases,
      labels,
      extractor=net,
      optimizer=extractor_optimizer,
      dsa_strategy=dsa_strategy,
      cls_weight=cls_weight,
      likelihood_weight=likelihood_weight,
      contrast_weight=contrast_weight,
    )
    state = state.replace(aux={"params": params, "opt_state": opt_state})
    return state, {**metrics, **extractor_metrics}

  return step


OBJECTIVE = Objective(
  make_step=make_step,
  settings=settings,
  input_settings=input_settings,
  inputs=expert_snapshots,
  check=check,
  check_inputs=check_inputs,
  check_plan=check_plan,
  check_mesh=check_mesh,
  learns_labels=True,
  learns_lr=True,
  expert_logits=expert_logits,
  init_aux=init_aux,
)
