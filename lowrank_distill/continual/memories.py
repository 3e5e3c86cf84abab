"""The kinds of memory a step can build, and their registry.

`MEMORY_KINDS` maps each `continual.memories.<name>.kind` to a `MemoryKind`:
the fields its entry holds, how the entry is validated, how its storage is
planned without compute, and how a step's memory is built (`coreset_memory`,
`distill_memory`, `trajectory_memory`). Kinds: `coreset` (real images
chosen by a coreset method), `distill` (a distillation of the step's
classes) and `trajectory` (experts trained on the step's classes, then
trajectory matching). `validate_entry` checks one entry against its kind.

This module imports only `protocol` of this package, never its `__init__`.
"""

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from lowrank_distill import checks, coreset, data, distill, models
from lowrank_distill import experts as experts_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill.continual import protocol

# ---------------------------------------------------------------------------
# Building one step's memory.


def coreset_memory(
  key, dataset: data.Dataset, classes, *, method: str, ipc: int, **select
) -> synset_lib.SyntheticSet:
  """`ipc` real training images of each of `classes`, chosen by a coreset.

  Args:
    key: selection key.
    dataset: the full dataset.
    classes: [k] global ids of the new classes; only their training images
      are seen by the selection (and by its feature network).
    method: a name of `coreset.METHODS`.
    ipc: images per class.
    **select: the other keyword options of `coreset.select` (model_name,
      model_options, train_epochs, lr, batch_size, conv_impl).

  Returns:
    The memory: images [k * ipc, h, w, c], global labels [k * ipc], and
    `info['indices']`, the chosen global training indices (class-major).
  """
  classes = np.asarray(classes)
  subset = protocol.class_subset(dataset, classes)
  picks = coreset.select(
    key,
    subset.train_images,
    subset.train_labels,
    method=method,
    ipc=ipc,
    num_classes=subset.num_classes,
    **select,
  ).reshape(-1)
  indices = protocol.class_members(dataset.train_labels, classes)[picks]
  images = dataset.train_images[indices]
  return synset_lib.SyntheticSet(
    images=images,
    labels=dataset.train_labels[indices],
    param="coreset",
    storage_floats=int(images.size),
    dataset=dataset.metadata(),
    info={
      "kind": "coreset",
      "method": method,
      "ipc": int(ipc),
      "classes": classes.tolist(),
      "indices": indices.tolist(),
    },
  )


def step_config(memory_config, *, dataset_config, seed: int, mesh_config=None):
  """A distillation or experts config for one step, on the run's dataset.

  The step's dataset is a subset of the run's (`config.dataset`), so the
  step's run records that dataset, and each (order, step) gets its own seed
  and the run's device mesh. `memory_config` itself is not modified.
  """
  step = memory_config.copy_and_resolve_references()
  with step.unlocked():
    step.dataset = dataset_config.copy_and_resolve_references()
    step.seed = int(seed)
    if mesh_config is not None:
      step.mesh = mesh_config.copy_and_resolve_references()
  return step


def distill_memory(
  config, workdir, dataset: data.Dataset, classes
) -> synset_lib.SyntheticSet:
  """Distils the training images of `classes` into a memory.

  `distill.run` on the subset of `classes` (relabelled 0..k-1) writes its
  own workdir and resumes from its checkpoints when interrupted; its export
  is read back and its labels mapped to global ids (`global_labels`).

  Args:
    config: a full distillation config (`step_config`).
    workdir: the distillation's workdir.
    dataset: the full dataset.
    classes: [k] global ids of the new classes.

  Returns:
    The memory, labelled with global ids; its storage is the export's.
  """
  workdir = pathlib.Path(workdir)
  classes = np.asarray(classes)
  distill.run(
    config,
    workdir,
    dataset=protocol.class_subset(dataset, classes),
    final_eval=False,
  )
  local = synset_lib.load(workdir / "synset")
  return synset_lib.SyntheticSet(
    images=local.images,
    labels=protocol.global_labels(
      local.labels, classes, num_classes=dataset.num_classes
    ),
    param=local.param,
    params=local.params,
    storage_floats=local.storage_floats,
    dataset=dataset.metadata(),
    lr=local.lr,
    info={
      "kind": "distill",
      "method": config.method,
      "classes": classes.tolist(),
      "distill_workdir": str(workdir),
      "budget": local.info.get("budget"),
    },
  )


def trajectory_memory(
  experts_config, distill_config, workdir, dataset: data.Dataset, classes
) -> synset_lib.SyntheticSet:
  """Trains experts on `classes`, then distils them by trajectory matching.

  The experts see the step's classes only (relabelled 0..k-1), as the
  distillation does; both resume from what `workdir` already holds.

  Args:
    experts_config: an experts config (`step_config` of configs/experts.py).
    distill_config: a trajectory-matching config (`step_config`); its
      `experts.path` is set to the step's buffer.
    workdir: the step's folder: `experts/` (the buffer) and `distill/`.
    dataset: the full dataset.
    classes: [k] global ids of the new classes.

  Returns:
    The memory, labelled with global ids (`distill_memory`).
  """
  workdir = pathlib.Path(workdir).absolute()
  experts_lib.run(
    experts_config,
    workdir / "experts",
    dataset=protocol.class_subset(dataset, classes),
  )
  distill_config = distill_config.copy_and_resolve_references()
  distill_config.experts.path = str(workdir / "experts")
  return distill_memory(distill_config, workdir / "distill", dataset, classes)


# ---------------------------------------------------------------------------
# Validation and planning of one entry (no compute).


def _memory_field(name: str, field: str = "") -> str:
  return f"continual.memories.{name}" + (f".{field}" if field else "")


# The numeric fields of a coreset entry (`checks.check_ranges`).
CORESET_RANGES = {
  "train_epochs": checks.Range(low=0, integer=True),
  "lr": checks.RATE,
  "batch_size": checks.COUNT,
}


def _validate_coreset(name: str, entry) -> None:
  checks.check_choice(
    _memory_field(name, "method"), entry.method, coreset.METHODS
  )
  checks.check_ranges(entry, CORESET_RANGES, prefix=_memory_field(name) + ".")


def _validate_distill_config(
  name: str, config, *, check_inputs: bool = True
) -> None:
  try:
    distill.validate(config, check_inputs=check_inputs)
  except ValueError as e:
    raise ValueError(f"{_memory_field(name, 'config')}: {e}") from e


def _validate_distill(name: str, entry) -> None:
  _validate_distill_config(name, entry.config)


def _validate_trajectory(name: str, entry) -> None:
  if entry.config.get("method") != "tm":
    raise ValueError(
      f"{_memory_field(name, 'config.method')} {entry.config.get('method')!r}"
      f": a memory of kind 'trajectory' distils by trajectory matching "
      f"('tm'); use kind 'distill' for other objectives"
    )
  # Each step trains the buffer this config reads: none is named yet.
  _validate_distill_config(name, entry.config, check_inputs=False)
  try:
    experts_lib.validate(entry.experts)
  except ValueError as e:
    raise ValueError(f"{_memory_field(name, 'experts')}: {e}") from e
  # The network half of what `experts.check_buffer` will compare per step.
  expert_model = experts_lib.model_identity(entry.experts)
  student_model = experts_lib.model_identity(entry.config)
  if expert_model != student_model:
    raise ValueError(
      f"{_memory_field(name, 'experts.model')} {expert_model} differs from "
      f"{_memory_field(name, 'config.model')} {student_model}: the experts "
      f"and the student must be the same network"
    )


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """What one method's memory of one step holds and costs.

  Attributes:
    kind: a `MEMORY_KINDS` name.
    images_per_class: images the memory keeps per class.
    storage_floats: floats a step's memory (k classes) costs.
    classes_per_step: k.
  """

  kind: str
  images_per_class: int
  storage_floats: int
  classes_per_step: int

  @property
  def floats_per_class(self) -> float:
    return self.storage_floats / self.classes_per_step


def _plan_coreset(name: str, entry, *, smallest, ipc: int, mesh) -> MemoryPlan:
  del name, entry, mesh  # every coreset keeps `ipc` real images per class
  k = smallest.num_classes
  return MemoryPlan(
    kind="coreset",
    images_per_class=ipc,
    storage_floats=protocol.budget_floats(
      ipc=ipc, num_classes=k, image_shape=smallest.image_shape
    ),
    classes_per_step=k,
  )


def _distill_plan(
  name: str, config, *, smallest, ipc: int, mesh, check_inputs: bool
) -> "distill.Plan":
  syn = config.synset
  if syn.ipc != ipc or syn.budget != "same-memory":
    raise ValueError(
      f"{_memory_field(name, 'config.synset')}: ipc {syn.ipc} with budget "
      f"{syn.budget!r}; every memory must use the same storage, so a "
      f"distilled memory needs ipc={ipc} (continual.ipc) and budget "
      f"'same-memory'"
    )
  try:
    plan = distill.make_plan(
      config, dataset=smallest, check_inputs=check_inputs
    )
    distill.OBJECTIVES[plan.method].check_mesh(plan, mesh)
  except ValueError as e:
    raise ValueError(f"{_memory_field(name, 'config')}: {e}") from e
  return plan


def _memory_plan(kind: str, plan: "distill.Plan") -> MemoryPlan:
  return MemoryPlan(
    kind=kind,
    images_per_class=plan.budget.images_per_class,
    storage_floats=plan.budget.floats_used,
    classes_per_step=plan.num_classes,
  )


def _plan_distill(name: str, entry, *, smallest, ipc: int, mesh) -> MemoryPlan:
  plan = _distill_plan(
    name, entry.config, smallest=smallest, ipc=ipc, mesh=mesh, check_inputs=True
  )
  return _memory_plan(entry.kind, plan)


def _plan_trajectory(
  name: str, entry, *, smallest, ipc: int, mesh
) -> MemoryPlan:
  # Each step trains the buffer the distillation reads: none exists yet.
  plan = _distill_plan(
    name,
    entry.config,
    smallest=smallest,
    ipc=ipc,
    mesh=mesh,
    check_inputs=False,
  )
  cfg = entry.experts.experts
  _, needed = distill.tm.snapshot_window(plan)
  if cfg.epochs + 1 < needed:
    raise ValueError(
      f"{_memory_field(name, 'experts.experts.epochs')} {cfg.epochs} gives "
      f"{cfg.epochs + 1} snapshots per expert; the distillation's "
      f"distill.max_start + distill.expert_epochs needs {needed}"
    )
  wanted = plan.inputs["num_experts"]
  if wanted > cfg.num_experts:
    raise ValueError(
      f"{_memory_field(name, 'config.experts.num_experts')} {wanted} is "
      f"more than the {cfg.num_experts} experts each step trains "
      f"({_memory_field(name, 'experts.experts.num_experts')})"
    )
  return _memory_plan(entry.kind, plan)


# ---------------------------------------------------------------------------
# Building from a config entry, and the registry.


def _build_coreset(key, entry, *, config, dataset, classes, where):
  del where  # a coreset needs no files of its own
  return coreset_memory(
    key,
    dataset,
    classes,
    method=entry.method,
    ipc=config.continual.ipc,
    model_name=config.model.name,
    model_options=models.options_for(config.model.name, config.model.options),
    train_epochs=entry.train_epochs,
    lr=entry.lr,
    batch_size=entry.batch_size,
    conv_impl=config.model.conv_impl,
  )


def _step_config(key, memory_config, config):
  seed = jax.random.randint(key, (), 0, np.iinfo(np.int32).max)
  return step_config(
    memory_config,
    dataset_config=config.dataset,
    seed=int(seed),
    mesh_config=config.mesh,
  )


def _build_distill(key, entry, *, config, dataset, classes, where):
  return distill_memory(
    _step_config(key, entry.config, config), where / "distill", dataset, classes
  )


def _build_trajectory(key, entry, *, config, dataset, classes, where):
  experts_key, distill_key = jax.random.split(key)
  return trajectory_memory(
    _step_config(experts_key, entry.experts, config),
    _step_config(distill_key, entry.config, config),
    where,
    dataset,
    classes,
  )


@dataclasses.dataclass(frozen=True)
class MemoryKind:
  """How one kind of `continual.memories` entry is checked, planned, built.

  Attributes:
    fields: the fields an entry of this kind holds, `kind` included.
    validate: (name, entry) -> None; raises ValueError naming the field.
    plan: (name, entry, *, smallest, ipc) -> MemoryPlan, without compute.
    build: (key, entry, *, config, dataset, classes, where) -> the step's
      memory (global labels); `where` is the step's folder for its files.
  """

  fields: tuple[str, ...]
  validate: Callable[..., None]
  plan: Callable[..., MemoryPlan]
  build: Callable[..., synset_lib.SyntheticSet]


MEMORY_KINDS = {
  "coreset": MemoryKind(
    fields=("kind", "method", "train_epochs", "lr", "batch_size"),
    validate=_validate_coreset,
    plan=_plan_coreset,
    build=_build_coreset,
  ),
  "distill": MemoryKind(
    fields=("kind", "config"),
    validate=_validate_distill,
    plan=_plan_distill,
    build=_build_distill,
  ),
  # Trajectory matching: experts trained on the step's classes, then
  # distilled (`experts`: a configs/experts.py config; `config`: configs/tm.py).
  "trajectory": MemoryKind(
    fields=("kind", "experts", "config"),
    validate=_validate_trajectory,
    plan=_plan_trajectory,
    build=_build_trajectory,
  ),
}


def validate_entry(name: str, entry) -> None:
  """Raises ValueError naming the field unless `entry` fits its kind."""
  kind = entry.get("kind")
  checks.check_choice(_memory_field(name, "kind"), kind, MEMORY_KINDS)
  expected = MEMORY_KINDS[kind].fields
  missing = [f for f in expected if f not in entry]
  extra = sorted(set(entry.keys()) - set(expected))
  if missing or extra:
    raise ValueError(
      f"{_memory_field(name)} of kind {kind!r} needs exactly the fields "
      f"{list(expected)}; missing {missing}, unknown {extra}"
    )
  MEMORY_KINDS[kind].validate(name, entry)
