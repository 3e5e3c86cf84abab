"""The config seam of a distillation: validate, plan, initial state.

Only this module and `loop` read a ConfigDict. `validate` checks names and
values before anything is loaded; `make_plan` loads the dataset, resolves
the budget and model and turns every setting the run reads into the plan;
`initial_state` builds the trainable set and its optimiser from the plan.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import (
  augment,
  checkpoint,
  checks,
  config_utils,
  data,
  models,
  parameterize,
)
from lowrank_distill import experts as experts_lib
from lowrank_distill import identity as identity_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill.distill import bptt, dm, gm, tm
from lowrank_distill.distill.objective import Objective, Plan, Schedule
from lowrank_distill.distill.step import (
  OPTIMIZERS,
  SUBGROUPS,
  holds_subgroup,
  init_state,
  make_optimizer,
  with_average,
)
from lowrank_distill.parameterize import budget as budget_lib
from lowrank_distill.parameterize import labels as labels_lib
from lowrank_distill.parameterize import mappers as mappers_lib

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


# Every numeric field a distillation config may hold, with what it allows
# (`checks.check_ranges`; a test checks that every config's fields have one).
RANGES = {
  **config_utils.COMMON_RANGES,
  "synset.ipc": checks.COUNT,
  "synset.rank": checks.COUNT,
  "synset.num_sets": checks.COUNT,
  "synset.num_bases": checks.COUNT,
  "synset.num_hallucinators": checks.COUNT,
  # Training images per stored image: formation**2 (1: none).
  "synset.formation": checks.COUNT,
  # 0 keeps soft labels as initialised (hard labels have no lr).
  "labels.lr": checks.NON_NEGATIVE,
  "labels.momentum": checks.MOMENTUM,
  "distill.iterations": checks.COUNT,
  "distill.lr_images": checks.RATE,
  # 0: the last set, not an average.
  "distill.ema_decay": checks.MOMENTUM,
  # 0: the images' lr.
  "distill.lr_hallucinators": checks.NON_NEGATIVE,
  "distill.lr_mappers": checks.NON_NEGATIVE,
  # > 0 when the lr is learned (`validate`); unused otherwise.
  "distill.lr_lr": checks.NON_NEGATIVE,
  # The fixed student lr, or where a learned one starts (its log).
  "distill.lr_student": checks.RATE,
  "distill.momentum": checks.MOMENTUM,
  "distill.max_loss": checks.RATE,
  "distill.log_every": checks.COUNT,
  "distill.checkpoint_every": checks.COUNT,
  "distill.eval_every": checks.count_or(0, "off"),
  "distill.image_every": checks.count_or(0, "off"),
  "distill.batch_real": checks.COUNT,
  "distill.classes_in_parallel": checks.COUNT,
  "distill.outer_loop": checks.COUNT,
  "distill.inner_loop": checks.Range(low=0, integer=True),
  "distill.lr_net": checks.RATE,
  "distill.net_real_per_class": checks.COUNT,
  "distill.net_momentum": checks.MOMENTUM,
  "distill.net_weight_decay": checks.NON_NEGATIVE,
  # The probability that a real batch of IDC's network update is CutMixed.
  "distill.net_cutmix": checks.Range(low=0.0, high=1.0),
  "distill.batch_train": checks.COUNT,
  "distill.syn_steps": checks.COUNT,
  "distill.inner_momentum": checks.MOMENTUM,
  "distill.expert_epochs": checks.COUNT,
  "distill.max_start": checks.COUNT,
  "distill.batch_syn": checks.count_or(0, "every synthetic image"),
  "distill.num_trajectories": checks.COUNT,
  "distill.start_delta": checks.NON_NEGATIVE,
  "distill.start_window": checks.Range(low=0, integer=True),
  # HaBa's constraint (trajectory matching, hallucinator sets); 0: off.
  "distill.club_weight": checks.NON_NEGATIVE,
  "distill.extractor_lr": checks.RATE,
  "distill.extractor_momentum": checks.MOMENTUM,
  "distill.extractor_cls_weight": checks.NON_NEGATIVE,
  "distill.extractor_likelihood_weight": checks.NON_NEGATIVE,
  "distill.extractor_contrast_weight": checks.NON_NEGATIVE,
  # DM's embedder pool (IDM); 0: a fresh random network every iteration.
  "distill.embedder_pool": checks.count_or(0, "a fresh random network"),
  "distill.embedder_refresh": checks.COUNT,
  "distill.embedder_lr": checks.RATE,
  "distill.embedder_momentum": checks.MOMENTUM,
  "distill.embedder_real_per_class": checks.COUNT,
  "distill.embedder_batch": checks.COUNT,
  "distill.ce_weight": checks.NON_NEGATIVE,
  # DM's Gaussian-kernel MMD (M3D); 0: the mean embeddings.
  "distill.mmd_width": checks.NON_NEGATIVE,
  "experts.num_experts": checks.count_or(0, "every expert of the buffer"),
  "experts.max_host_bytes": checks.count_or(0, "no limit"),
}


OBJECTIVES: dict[str, Objective] = {
  "dm": dm.OBJECTIVE,
  "gm": gm.OBJECTIVE,
  "tm": tm.OBJECTIVE,
  "bptt": bptt.OBJECTIVE,
}


def learning_objectives(what: str) -> list[str]:
  """Names of the objectives that learn labels ('labels') or the lr ('lr')."""
  attr = {"labels": "learns_labels", "lr": "learns_lr"}[what]
  return [name for name, o in OBJECTIVES.items() if getattr(o, attr)]


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
  checks.check_choice("distill.optimizer", config.distill.optimizer, OPTIMIZERS)
  checks.check_choice("labels.kind", config.labels.kind, ("hard", "soft"))
  if config.labels.kind == "soft":
    checks.check_choice(
      "labels.init", config.labels.init, labels_lib.LABEL_INITS
    )
    if not OBJECTIVES[config.method].learns_labels:
      _check_fixed_labels(config)
    if (
      config.labels.init == "expert"
      and not label_experts_path(config)
      and OBJECTIVES[config.method].expert_logits is None
    ):
      with_experts = [
        name for name, o in OBJECTIVES.items() if o.expert_logits is not None
      ]
      raise ValueError(
        f"labels.init 'expert': objective {config.method!r} reads no expert "
        f"to predict the labels; name an expert buffer trained on this "
        f"dataset with this model in labels.experts (launch/experts.py's "
        f"workdir), or use 'random' or 'onehot' (objectives with their own "
        f"experts: {with_experts})"
      )
  if config.distill.learn_lr and not OBJECTIVES[config.method].learns_lr:
    raise ValueError(
      f"distill.learn_lr: objective {config.method!r} has no student lr to "
      f"learn; set it to False (objectives with one: "
      f"{learning_objectives('lr')})"
    )
  checks.check_choice("synset.init", config.synset.init, IMAGE_INITS)
  _check_init_set(config)
  _check_something_learned(config)
  _check_mapper_settings(config)
  augment.parse_strategy(config.distill.dsa_strategy)
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])
  OBJECTIVES[config.method].check(config)
  checks.check_ranges(config, RANGES)
  if config.distill.learn_lr:
    checks.check_range("distill.lr_lr", config.distill.lr_lr, checks.RATE)
  if check_inputs:
    OBJECTIVES[config.method].check_inputs(config)


# How the images start: random, real images of each class (or the
# parameters fitted to them), or an exported set's parameters
# (`synset.init_set`).
IMAGE_INITS = ("noise", "real", "set")


def init_set_path(config) -> str:
  """`synset.init_set`: the exported set a run with `synset.init='set'`
  starts from (absent in configs written before the field existed: '')."""
  return config.synset.get("init_set", "")


def _check_init_set(config) -> None:
  path = init_set_path(config)
  if config.synset.init == "set" and not path:
    raise ValueError(
      "synset.init 'set': name the exported set to start from in "
      "synset.init_set (a distillation's `synset` folder), or use one of "
      "['noise', 'real']"
    )
  if path and config.synset.init != "set":
    raise ValueError(
      f"synset.init_set {path!r} is read only with synset.init='set' (it is "
      f"{config.synset.init!r}); set synset.init='set', or "
      f"synset.init_set=''"
    )


# How soft labels may start under an objective that gives them no gradient
# (DM): they are stored as they start, so a random start is refused.
FIXED_LABEL_INITS = ("expert", "onehot")


def _check_fixed_labels(config) -> None:
  """Soft labels under an objective that gives label logits no gradient are
  kept as they start (an expert's predictions of the initial images, or
  one-hot logits that put 0.9 of the mass on the image's class):
  `labels.lr` must be 0 and `labels.init` one of FIXED_LABEL_INITS."""
  method = config.method
  if config.labels.lr != 0:
    raise ValueError(
      f"labels.lr {config.labels.lr}: objective {method!r} gives label "
      f"logits no gradient, so its soft labels stay as they start; set "
      f"labels.lr=0, or labels.kind='hard' (objectives that learn labels: "
      f"{learning_objectives('labels')})"
    )
  if config.labels.init not in FIXED_LABEL_INITS:
    raise ValueError(
      f"labels.init {config.labels.init!r}: objective {method!r} keeps soft "
      f"labels as they start, so they must start from one of "
      f"{list(FIXED_LABEL_INITS)} ('expert' with labels.experts naming a "
      f"trained buffer), or use labels.kind='hard'"
    )


def label_experts_path(config) -> str:
  """`labels.experts`: the buffer whose trained expert predicts the initial
  soft labels ('' or absent: the objective's own experts, if any)."""
  return config.labels.get("experts", "")


def learns_images(config) -> bool:
  """`distill.learn_images`: True unless the images are kept as initialised
  (absent in configs written before the field existed: True)."""
  return config.distill.get("learn_images", True)


def mapper_lr(config) -> float:
  """`distill.lr_mappers`: the shared mappers' own lr (0, or absent in
  configs written before the field existed: the images' lr)."""
  return float(config.distill.get("lr_mappers", 0.0))


def ema_decay(config) -> float:
  """`distill.ema_decay`: the decay of the average of the set a run reports
  (0, or absent in configs written before the field existed: the last
  set)."""
  return float(config.distill.get("ema_decay", 0.0))


def holds_mappers_orthonormal(config) -> bool:
  """`distill.orthonormal_mappers` (absent in configs written before the
  field existed: False)."""
  return bool(config.distill.get("orthonormal_mappers", False))


def _check_mapper_settings(config) -> None:
  if mapper_lr(config) and config.synset.param != "mappers":
    raise ValueError(
      f"distill.lr_mappers is the lr of shared mappers; synset.param "
      f"{config.synset.param!r} has none (valid with synset.param="
      f"'mappers'; else set lr_mappers=0)"
    )
  if not holds_mappers_orthonormal(config):
    return
  if config.synset.param != "mappers":
    raise ValueError(
      f"distill.orthonormal_mappers holds shared mappers orthonormal; "
      f"synset.param {config.synset.param!r} has none (valid with "
      f"synset.param='mappers'; else set orthonormal_mappers=False)"
    )
  if not learns_images(config):
    raise ValueError(
      "distill.orthonormal_mappers: distill.learn_images is False, so the "
      "mappers are kept as initialised and there is nothing to hold; set "
      "one of them to its other value"
    )


def _check_something_learned(config) -> None:
  if learns_images(config):
    return
  learns_labels = config.labels.kind == "soft" and config.labels.lr > 0
  if not (learns_labels or config.distill.learn_lr):
    raise ValueError(
      "distill.learn_images False keeps the images as initialised, and "
      "nothing else is learned; set labels.kind='soft' with labels.lr > 0 "
      "(objectives that learn labels: "
      f"{learning_objectives('labels')}), distill.learn_lr=True, or "
      "distill.learn_images=True"
    )


def make_plan(
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
    dataset = config_utils.load_dataset(config.dataset)
  syn = config.synset
  parameterize.validate(
    syn.param,
    image_shape=dataset.image_shape,
    rank=syn.rank,
    num_sets=syn.num_sets,
    num_bases=syn.num_bases,
    num_hallucinators=syn.num_hallucinators,
    formation=syn.formation,
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
    num_bases=syn.num_bases,
    num_hallucinators=syn.num_hallucinators,
    soft_labels=config.labels.kind == "soft",
    learn_lr=config.distill.learn_lr,
    formation=syn.formation,
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
  objective = OBJECTIVES[config.method]
  cfg = config.distill
  plan = Plan(
    method=config.method,
    dataset=dataset,
    budget=budget,
    reconstructor=parameterize.reconstructor(
      syn.param, formation=syn.formation
    ),
    model=model,
    conv_impl=cfg.conv_impl,
    seed=config.seed,
    step=objective.settings(config),
    inputs=objective.input_settings(config),
    image_init=syn.init,
    label_init=config.labels.init,
    label_experts=_label_experts(config),
    lr_init=cfg.lr_student,
    optimizer={
      "images": (cfg.lr_images, cfg.momentum)
      if learns_images(config)
      else None,
      # Hallucinator networks beside their bases (0: the images' lr).
      "hallucinators": (cfg.lr_hallucinators or cfg.lr_images, cfg.momentum)
      if learns_images(config)
      else None,
      "labels": (config.labels.lr, config.labels.momentum),
      "log_lr": (cfg.lr_lr, cfg.momentum),
      # Shared mappers beside their codes, only when given their own lr, so
      # that the optimiser state of a run without it keeps its structure.
      **(
        {"mappers": (mapper_lr(config), cfg.momentum)}
        if mapper_lr(config) and learns_images(config)
        else {}
      ),
    },
    evaluation=config_utils.evaluation_settings(config),
    schedule=Schedule(
      iterations=cfg.iterations,
      log_every=cfg.log_every,
      eval_every=cfg.eval_every,
      image_every=cfg.image_every,
      checkpoint_every=cfg.checkpoint_every,
    ),
    optimizer_kind=cfg.optimizer,
    orthonormal_mappers=holds_mappers_orthonormal(config),
    ema_decay=ema_decay(config),
  )
  if check_inputs:
    objective.check_plan(plan)
  if plan.label_experts:
    _label_buffer(plan)
  if plan.image_init == "set":
    plan = dataclasses.replace(
      plan, start_set=starting_set(init_set_path(config), plan)
    )
  return plan


def _label_experts(config) -> dict | None:
  """`Plan.label_experts` of the config: None unless soft labels start
  from the predictions of `labels.experts`."""
  path = label_experts_path(config)
  soft = config.labels.kind == "soft"
  if not (path and soft and config.labels.init == "expert"):
    return None
  return {"path": path, "model": experts_lib.model_identity(config)}


def _label_buffer(plan: Plan):
  """The buffer of `labels.experts`, checked against the run's dataset and
  model (its experts' params go into the run's network)."""
  source = plan.label_experts
  buffer = experts_lib.open_buffer(source["path"], field="labels.experts")
  experts_lib.check_buffer(
    buffer,
    experts_lib.buffer_identity(plan.dataset, model=source["model"]),
    field="labels.experts",
    min_snapshots=2,
    needed_by="a trained expert",
    min_experts=1,
  )
  return buffer


# The dataset fields a set's images depend on: the data (and the held-out
# split, drawn with a fixed seed) and its preprocessing. Where the files
# were read from does not matter.
SAME_DATA_FIELDS = (
  "name",
  "image_shape",
  "num_classes",
  "validation_per_class",
  "standardize",
  "mean",
  "std",
  "zca",
)


def starting_set(path: str, plan: Plan) -> synset_lib.SyntheticSet:
  """The exported set at `path` (`synset.init_set`), checked against the
  run.

  It must come from the same data, split and preprocessing
  (`SAME_DATA_FIELDS`) and hold reconstructor parameters of the run's
  parameterization with the shapes its budget gives, or (a coreset, or a
  set of another parameterization) the run's images per class, hard
  labelled and class-major, which then start the run as real images would:
  a set distilled with the images of the held-out split, or one of another
  shape, is refused with what differs.
  """
  field = f"synset.init_set {path!r}"
  try:
    found = synset_lib.load(path)
  except checkpoint.CheckpointError as e:
    raise ValueError(
      f"{field} is not an exported set (a distillation's `synset` folder): {e}"
    ) from e
  ours = plan.dataset.metadata()
  differs = [
    f"{name} {found.dataset.get(name)!r} (this run: {ours[name]!r})"
    for name in SAME_DATA_FIELDS
    if identity_lib.to_json_types(found.dataset.get(name))
    != identity_lib.to_json_types(ours[name])
  ]
  if differs:
    raise ValueError(
      f"{field} was distilled from other data than this "
      f"run's dataset: {'; '.join(differs)}"
    )
  budget = plan.budget
  if not _holds_params_of(found, budget):
    _check_images_route(found, plan, field=field)
    return found
  expected = _shapes(
    jax.eval_shape(
      lambda key: _initial_images(key, plan, method="noise"),
      jax.random.key(0),
    )
  )
  given = _shapes(found.params)
  if given != expected:
    raise ValueError(
      f"{field} holds parameters of shapes {given}; this "
      f"run's budget ({budget.images_per_class} images per class, rank "
      f"{budget.rank}, {budget.num_sets} sets) holds {expected}: set "
      f"synset.ipc / rank / num_sets / budget and labels.kind as the set was "
      f"distilled"
    )
  return found


def _holds_params_of(found: synset_lib.SyntheticSet, budget) -> bool:
  """The set holds reconstructor parameters of the budget's
  parameterization (else its images start the run)."""
  return found.param == budget.param and found.params is not None


def _check_images_route(found, plan: Plan, *, field: str) -> None:
  """A set of another parameterization (a coreset, say) starts the run
  through its images, as real images start it ('real'): they must be
  class-major with hard labels, the run's images per class of each."""
  k, c = plan.images_per_class, plan.num_classes
  labels = np.asarray(found.labels)
  if labels.ndim != 1 or not np.array_equal(labels, labels_lib.hard(c, k)):
    raise ValueError(
      f"{field} holds a {found.param!r} set of "
      f"{len(labels)} images ({'soft' if labels.ndim == 2 else 'hard'} "
      f"labels); this run's synset.param {plan.budget.param!r} can start "
      f"from another parameterization's set only through its images, which "
      f"must be hard-labelled, class-major and {k} of each of the {c} "
      f"classes (this run's images per class): start from a "
      f"{plan.budget.param!r} set of this shape, or a set of {k} images per "
      f"class (a coreset with coreset.ipc={k})"
    )


def _shapes(tree) -> dict:
  """{leaf path: shape} of a parameter tree."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {
    jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves
  }


def _initial_images(key, plan: Plan, *, method: str, real=None):
  """The reconstructor params the budget holds, started by `method`
  ('noise', or 'real' from `real`: [C * k, h, w, c] real images)."""
  budget = plan.budget
  return plan.reconstructor.init(
    key,
    num_classes=plan.num_classes,
    images_per_class=plan.images_per_class,
    image_shape=plan.dataset.image_shape,
    method=method,
    real_images=real,
    **parameterize.kind_kwargs(
      budget.param,
      rank=budget.rank,
      num_sets=budget.num_sets,
      num_bases=budget.num_bases,
      num_hallucinators=budget.num_hallucinators,
    ),
  )


def initial_trainable(key, plan: Plan) -> dict:
  """The reconstructor params (and labels / lr) before distillation.

  What the set holds (parameterization, rank, mapper sets, images per
  class, soft labels, a learned lr) is the resolved budget's; how it starts
  is the plan's `image_init`, `label_init` and `lr_init`. From an exported
  set (`image_init` 'set'), its soft labels and learned lr replace
  `label_init` and `lr_init` when both it and the run hold them.
  """
  budget = plan.budget
  image_key, real_key, label_key = jax.random.split(key, 3)
  start = plan.start_set
  if start is not None:
    if _holds_params_of(start, budget):
      images = jax.tree.map(jnp.asarray, start.params)
    else:
      real = jnp.asarray(start.images)
      images = _initial_images(image_key, plan, method="real", real=real)
  elif plan.image_init == "real":
    index = data.class_index(plan.dataset.train_labels, plan.num_classes)
    idx = data.sample_per_class(real_key, index, n=plan.images_per_class)
    real = jnp.asarray(plan.dataset.train_images)[idx]
    images = _initial_images(image_key, plan, method="real", real=real)
  else:
    images = _initial_images(image_key, plan, method=plan.image_init)
  trainable = {"images": images}
  if budget.soft_labels:
    if start is not None and start.labels.ndim == 2:
      trainable["labels"] = jnp.asarray(start.labels, jnp.float32)
    else:
      trainable["labels"] = _initial_labels(label_key, plan, images)
  if budget.learn_lr:
    lr = plan.lr_init if start is None or start.lr is None else start.lr
    trainable["log_lr"] = jnp.log(jnp.float32(lr))
  return trainable


def _initial_labels(key, plan: Plan, images) -> jax.Array:
  """[n, C] soft-label logits as `plan.label_init` starts them."""
  logits = None
  if plan.label_init == "expert":
    images = plan.reconstructor.materialize(images)
    if plan.label_experts:
      logits = experts_lib.final_expert_logits(
        _label_buffer(plan),
        plan.model,
        plan.dataset.image_shape,
        images,
      )
    else:
      logits = OBJECTIVES[plan.method].expert_logits(plan, images)
  return labels_lib.init_soft(
    key,
    num_classes=plan.num_classes,
    images_per_class=plan.images_per_class,
    method=plan.label_init,
    expert_logits=logits,
  )


def initial_state(key, plan: Plan):
  """(state, optimiser): the trainable set before distillation, its optax
  optimiser (`set_optimizer`) and that optimiser's state, with the
  objective's own networks (`Objective.init_aux`) if it has any."""
  trainable = initial_trainable(key, plan)
  optimizer = set_optimizer(plan, trainable)
  aux = OBJECTIVES[plan.method].init_aux(jax.random.fold_in(key, 1), plan)
  return init_state(trainable, optimizer, aux=aux), optimizer


def set_optimizer(plan: Plan, trainable: dict):
  """The optax optimiser of `trainable` under `plan`: its groups' SGD (or
  Adam), the projection, and the set's average with `Plan.ema_decay`."""
  optimizer = make_optimizer(
    optimizer_groups(plan, trainable),
    kind=plan.optimizer_kind,
    project=projection(plan),
  )
  if plan.ema_decay:
    optimizer = with_average(optimizer, decay=plan.ema_decay)
  return optimizer


def projection(plan: Plan):
  """What the optimiser applies to the trainable dict after every update:
  the mappers made orthonormal again (`mappers.orthonormalize`, images
  unchanged) with `Plan.orthonormal_mappers`; else None."""
  if not plan.orthonormal_mappers:
    return None

  def orthonormal_mappers(trainable: dict) -> dict:
    return {
      **trainable,
      "images": mappers_lib.orthonormalize(trainable["images"]),
    }

  return orthonormal_mappers


def optimizer_groups(plan: Plan, trainable: dict) -> dict:
  """(lr, momentum) of each group `trainable` holds (and of its sub-groups,
  `step.SUBGROUPS`, that it holds)."""
  names = list(trainable)
  for group, subs in SUBGROUPS.items():
    held = trainable.get(group)
    names += [
      sub
      for sub, keys in subs.items()
      if sub in plan.optimizer and holds_subgroup(held, keys)
    ]
  return {name: plan.optimizer[name] for name in names}
