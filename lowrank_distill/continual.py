"""Class-incremental continual learning: GDumb with coreset or distilled memory.

The C classes arrive in T steps of k = C / T classes each, in the order
`numpy.random.RandomState(s).permutation(C)` of an order seed s. At every
step the memory of the newly arrived classes is built from their training
images alone, by a coreset method (real images) or by a distillation run on
those classes only (relabelled 0..k-1, with the full dataset's
standardisation and ZCA, so every memory lives in one input space). Every
method gets the same storage per class: `ipc * h * w * c` floats, what `ipc`
real images cost (distillation: the 'same-memory' budget of `ipc`, which
counts label logits and a learned lr inside it). Then, as in GDumb, a fresh
network is trained from scratch on the accumulated memory (all classes seen
so far) with the evaluation protocol (DESIGN 3.8) and tested on the test
images of the seen classes only.

Conventions:
- The network has C outputs at every step, as in GDumb's class-incremental
  setting; logits of unseen classes are not masked at test time (no
  training example has them, so cross-entropy drives them down).
- Memory labels are global class ids. Soft label logits [n, k] of a
  distilled memory are scattered into [n, C] with `ABSENT_LOGIT` in the
  other columns: their softmax is the memory's own distribution over its k
  classes and exactly zero elsewhere. Storage counts the [n, k] logits that
  were learned (the filled columns are constants).
- Training uses `eval.lr`; a learned lr of a distilled memory is recorded in
  its export but not used (one model trains on the memories of all steps).

Workdir layout (`run`): `config.json`, `order_<s>/step_<t>/<method>/`
holding `memory/` (a `synset.SyntheticSet` export with global labels; for
coresets `info['indices']` are the chosen global training indices),
`memory.png` (its images, one row per class),
`distill/` (the distillation workdir of distilled memories), `experts/`
(the expert buffer of a trajectory-matching memory, trained on the step's
classes) and
`eval.json`; then `results.json` and `accuracy.png`. Steps count from 1.

References:
  Prabhu, Torr & Dokania, "GDumb: A Simple Approach that Questions Our
  Progress in Continual Learning", ECCV 2020.
  Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023
  (GDumb with a distilled memory).
  Yang et al., "An Efficient Dataset Condensation Plugin and Its Application
  to Continual Learning", NeurIPS 2023.
"""

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging

from lowrank_distill import (
  analysis,
  augment,
  checks,
  config_utils,
  coreset,
  data,
  distill,
  evaluate,
  models,
  rng,
  sharding,
)
from lowrank_distill import experts as experts_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib

# Logit of the classes a soft-labelled memory does not cover: its softmax
# weight is exactly 0 in float32 next to logits of ordinary size.
ABSENT_LOGIT = -1e9

# Config fields that may change when a run resumes: they select which order
# seeds to run or how evaluation is batched, not what a step computes.
RESUMABLE_FIELDS = (
  "continual.orders",
  "mesh",
  "eval.models_per_batch",
  "eval.test_batch_size",
)

# ---------------------------------------------------------------------------
# Class orders, steps and subsets.


def class_order(seed: int, *, num_classes: int) -> np.ndarray:
  """[C] class ids in arrival order: `RandomState(seed).permutation(C)`."""
  return np.random.RandomState(seed).permutation(num_classes)


def check_steps(steps, *, num_classes: int) -> None:
  """Raises ValueError unless `steps` splits the classes into equal groups."""
  if (
    isinstance(steps, bool)
    or not isinstance(steps, int)
    or steps < 1
    or num_classes % steps
  ):
    divisors = [d for d in range(1, num_classes + 1) if num_classes % d == 0]
    raise ValueError(
      f"continual.steps {steps!r} must split the {num_classes} classes into "
      f"equal groups; valid: {divisors}"
    )


def class_groups(order, *, steps: int) -> np.ndarray:
  """The classes arriving at each step.

  Args:
    order: [C] class ids in arrival order.
    steps: T, a divisor of C.

  Returns:
    [T, C // T] int class ids; row t arrives at step t + 1.
  """
  order = np.asarray(order)
  check_steps(steps, num_classes=order.size)
  return order.reshape(steps, -1)


def class_members(labels, classes) -> np.ndarray:
  """[m] indices of the examples labelled with one of `classes`, in order."""
  return np.flatnonzero(np.isin(np.asarray(labels), np.asarray(classes)))


def class_subset(dataset: data.Dataset, classes) -> data.Dataset:
  """The examples of `classes` only, relabelled by position in `classes`.

  Preprocessing (mean, std, ZCA) is the full dataset's, so images of every
  subset live in one input space.

  Args:
    dataset: the full dataset.
    classes: [k] distinct global class ids; `classes[j]` becomes label j.

  Returns:
    A dataset of k classes holding the train and test examples of `classes`
    in their original order.
  """
  classes = np.asarray(classes)
  local = np.full((dataset.num_classes,), -1, np.int32)
  local[classes] = np.arange(classes.size, dtype=np.int32)
  train = class_members(dataset.train_labels, classes)
  test = class_members(dataset.test_labels, classes)
  return dataclasses.replace(
    dataset,
    train_images=dataset.train_images[train],
    train_labels=local[dataset.train_labels[train]],
    test_images=dataset.test_images[test],
    test_labels=local[dataset.test_labels[test]],
    num_classes=int(classes.size),
    class_names=tuple(dataset.class_names[c] for c in classes),
  )


def seen_test_set(dataset: data.Dataset, seen):
  """Test images of the seen classes: ([m, h, w, c], [m] global ids)."""
  members = class_members(dataset.test_labels, seen)
  return dataset.test_images[members], dataset.test_labels[members]


# ---------------------------------------------------------------------------
# Labels and storage.


def global_labels(labels, classes, *, num_classes: int) -> np.ndarray:
  """A memory's labels from step-local ids to global class ids.

  Args:
    labels: [n] int local ids, or [n, k] float label logits.
    classes: [k] global ids; local id j is `classes[j]`.
    num_classes: C.

  Returns:
    [n] int32 global ids, or [n, C] float32 logits: the k columns of
    `classes` hold `labels`, the others `ABSENT_LOGIT`.
  """
  labels, classes = np.asarray(labels), np.asarray(classes)
  if np.issubdtype(labels.dtype, np.integer):
    return classes[labels].astype(np.int32)
  logits = np.full((labels.shape[0], num_classes), ABSENT_LOGIT, np.float32)
  logits[:, classes] = labels
  return logits


def hard_logits(labels, *, num_classes: int) -> np.ndarray:
  """[n] int ids -> [n, C] logits whose softmax is the one-hot vector."""
  onehot = np.eye(num_classes, dtype=bool)[np.asarray(labels)]
  return np.where(onehot, 0.0, ABSENT_LOGIT).astype(np.float32)


def merge_memories(memories: Sequence[synset_lib.SyntheticSet], *, num_classes):
  """The accumulated training set of several memories.

  Args:
    memories: sets with global labels ([n_i] int or [n_i, C] logits).
    num_classes: C.

  Returns:
    (images [sum n_i, h, w, c], labels): [N] int32 when every memory has
    hard labels, else [N, C] float32 logits (hard ones as `hard_logits`).
  """
  images = np.concatenate([np.asarray(m.images) for m in memories])
  labels = [np.asarray(m.labels) for m in memories]
  if all(lab.ndim == 1 for lab in labels):
    return images, np.concatenate(labels).astype(np.int32)
  return images, np.concatenate(
    [
      lab.astype(np.float32)
      if lab.ndim == 2
      else hard_logits(lab, num_classes=num_classes)
      for lab in labels
    ]
  )


def budget_floats(*, ipc: int, num_classes: int, image_shape) -> int:
  """The storage every memory may use: `ipc * classes * h * w * c` floats."""
  return int(ipc) * int(num_classes) * math.prod(image_shape)


def check_storage(
  name: str, storage_floats: int, *, ipc: int, num_classes: int, image_shape
) -> None:
  """Raises ValueError if memory `name` of `num_classes` exceeds the budget."""
  allowed = budget_floats(
    ipc=ipc, num_classes=num_classes, image_shape=image_shape
  )
  if storage_floats > allowed:
    raise ValueError(
      f"continual.memories.{name} stores {storage_floats / num_classes:g} "
      f"floats per class, above the budget of continual.ipc={ipc} images "
      f"per class ({allowed // num_classes} floats per class); every memory "
      f"must fit the same storage"
    )


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
  subset = class_subset(dataset, classes)
  picks = coreset.select(
    key,
    subset.train_images,
    subset.train_labels,
    method=method,
    ipc=ipc,
    num_classes=subset.num_classes,
    **select,
  ).reshape(-1)
  indices = class_members(dataset.train_labels, classes)[picks]
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
    config, workdir, dataset=class_subset(dataset, classes), final_eval=False
  )
  local = synset_lib.load(workdir / "synset")
  return synset_lib.SyntheticSet(
    images=local.images,
    labels=global_labels(
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
    experts_config, workdir / "experts", dataset=class_subset(dataset, classes)
  )
  distill_config = distill_config.copy_and_resolve_references()
  distill_config.experts.path = str(workdir / "experts")
  return distill_memory(distill_config, workdir / "distill", dataset, classes)


# ---------------------------------------------------------------------------
# Validation and planning (no compute).


def _memory_field(name: str, field: str = "") -> str:
  return f"continual.memories.{name}" + (f".{field}" if field else "")


def _validate_coreset(name: str, entry) -> None:
  checks.check_choice(
    _memory_field(name, "method"), entry.method, coreset.METHODS
  )


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


def _validate_entry(name: str, entry) -> None:
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


def validate(config) -> None:
  """Checks the config's names and values before any data is loaded."""
  cfg = config.continual
  methods = list(cfg.methods)
  if not methods or len(set(methods)) != len(methods):
    raise ValueError(
      f"continual.methods must name distinct memories, got {methods}"
    )
  for name in methods:
    if name not in cfg.memories:
      raise ValueError(
        f"continual.methods: {name!r} has no entry in continual.memories; "
        f"valid: {sorted(cfg.memories.keys())}"
      )
    _validate_entry(name, cfg.memories[name])
  orders = list(cfg.orders)
  if (
    not orders
    or len(set(orders)) != len(orders)
    or not all(isinstance(s, int) and s >= 0 for s in orders)
  ):
    raise ValueError(
      f"continual.orders must be distinct seeds >= 0, got {orders}"
    )
  if isinstance(cfg.ipc, bool) or not isinstance(cfg.ipc, int) or cfg.ipc < 1:
    raise ValueError(f"continual.ipc must be an integer >= 1, got {cfg.ipc}")
  if len(config.eval.models) != 1:
    raise ValueError(
      f"eval.models must name one architecture (each step trains it on the "
      f"memory), got {list(config.eval.models)}"
    )
  if config.eval.num_models < 1:
    raise ValueError(
      f"eval.num_models must be >= 1, got {config.eval.num_models}"
    )
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])
  models.options_for(config.eval.models[0], config.model.options)


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


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `run` resolved from the config before any compute.

  Attributes:
    dataset: the full dataset.
    groups: order seed -> [T, k] classes arriving at each step.
    memories: method name -> its `MemoryPlan`, in `continual.methods` order.
    ipc: the storage budget in images per class.
  """

  dataset: data.Dataset
  groups: dict[int, np.ndarray]
  memories: dict[str, MemoryPlan]
  ipc: int

  @property
  def budget_per_class(self) -> int:
    return budget_floats(
      ipc=self.ipc, num_classes=1, image_shape=self.dataset.image_shape
    )


def _smallest_classes(dataset: data.Dataset, k: int) -> data.Dataset:
  """The subset of the k classes with the fewest training images.

  Checks that pass on it (images per class, real batch sizes) pass on every
  step's subset.
  """
  counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
  return class_subset(dataset, np.argsort(counts, kind="stable")[:k])


def _plan_coreset(name: str, entry, *, smallest, ipc: int, mesh) -> MemoryPlan:
  del name, entry, mesh  # every coreset keeps `ipc` real images per class
  k = smallest.num_classes
  return MemoryPlan(
    kind="coreset",
    images_per_class=ipc,
    storage_floats=budget_floats(
      ipc=ipc, num_classes=k, image_shape=smallest.image_shape
    ),
    classes_per_step=k,
  )


def _plan_trajectory(
  name: str, entry, *, smallest, ipc: int, mesh
) -> MemoryPlan:
  cfg = entry.experts.experts
  _, needed = distill.tm_window(entry.config)
  if cfg.epochs + 1 < needed:
    raise ValueError(
      f"{_memory_field(name, 'experts.experts.epochs')} {cfg.epochs} gives "
      f"{cfg.epochs + 1} snapshots per expert; the distillation's "
      f"distill.max_start + distill.expert_epochs needs {needed}"
    )
  wanted = entry.config.experts.num_experts
  if wanted > cfg.num_experts:
    raise ValueError(
      f"{_memory_field(name, 'config.experts.num_experts')} {wanted} is "
      f"more than the {cfg.num_experts} experts each step trains "
      f"({_memory_field(name, 'experts.experts.num_experts')})"
    )
  return _plan_distill(
    name,
    entry,
    smallest=smallest,
    ipc=ipc,
    mesh=mesh,
    check_inputs=False,
  )


def _plan_distill(
  name: str,
  entry,
  *,
  smallest,
  ipc: int,
  mesh,
  check_inputs: bool = True,
) -> MemoryPlan:
  config = entry.config
  syn = config.synset
  if syn.ipc != ipc or syn.budget != "same-memory":
    raise ValueError(
      f"{_memory_field(name, 'config.synset')}: ipc {syn.ipc} with budget "
      f"{syn.budget!r}; every memory must use the same storage, so a "
      f"distilled memory needs ipc={ipc} (continual.ipc) and budget "
      f"'same-memory'"
    )
  try:
    distill_plan = distill.plan(
      config, dataset=smallest, check_inputs=check_inputs
    )
    distill.OBJECTIVES[config.method].check_mesh(distill_plan, config, mesh)
  except ValueError as e:
    raise ValueError(f"{_memory_field(name, 'config')}: {e}") from e
  return MemoryPlan(
    kind=entry.kind,
    images_per_class=distill_plan.budget.images_per_class,
    storage_floats=distill_plan.budget.floats_used,
    classes_per_step=smallest.num_classes,
  )


def plan(config) -> Plan:
  """Validates the config, loads the dataset and resolves every memory.

  Raises ValueError naming the field for unknown names, `continual.steps`
  not dividing the classes, `continual.ipc` above the smallest class, or a
  memory over the shared storage budget, before any compute.
  """
  validate(config)
  cfg = config.continual
  dataset = data.load(
    config.dataset.name, **config_utils.dataset_kwargs(config.dataset)
  )
  check_steps(cfg.steps, num_classes=dataset.num_classes)
  data.check_images_per_class(
    dataset.train_labels,
    cfg.ipc,
    field="continual.ipc",
    num_classes=dataset.num_classes,
  )
  groups = {
    int(s): class_groups(
      class_order(s, num_classes=dataset.num_classes), steps=cfg.steps
    )
    for s in cfg.orders
  }
  smallest = _smallest_classes(dataset, dataset.num_classes // cfg.steps)
  mesh = sharding.mesh_from_config(config)
  memories = {}
  for name in cfg.methods:
    entry = cfg.memories[name]
    memory = MEMORY_KINDS[entry.kind].plan(
      name, entry, smallest=smallest, ipc=cfg.ipc, mesh=mesh
    )
    check_storage(
      name,
      memory.storage_floats,
      ipc=cfg.ipc,
      num_classes=memory.classes_per_step,
      image_shape=dataset.image_shape,
    )
    memories[name] = memory
  return Plan(dataset=dataset, groups=groups, memories=memories, ipc=cfg.ipc)


def storage_table(the_plan: Plan) -> str:
  """A text table of every memory's storage per class vs the budget."""
  rows = [("method", "kind", "images/class", "floats/class", "allowed")]
  rows += [
    (
      name,
      m.kind,
      str(m.images_per_class),
      f"{m.floats_per_class:,.0f}",
      f"{the_plan.budget_per_class:,}",
    )
    for name, m in the_plan.memories.items()
  ]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join(
    "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows
  )


# ---------------------------------------------------------------------------
# The workdir.


def check_workdir(workdir, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  workdir_lib.check_config(
    workdir,
    config,
    resumable_fields=RESUMABLE_FIELDS,
    what="a continual run",
  )


def step_dir(workdir, *, order: int, step: int, method: str) -> pathlib.Path:
  """Where one (order seed, step from 1, method) keeps its files."""
  return pathlib.Path(workdir) / f"order_{order}" / f"step_{step}" / method


# ---------------------------------------------------------------------------
# Results.


def summarize(evals: dict, *, classes_seen: Sequence[int]) -> dict:
  """Accuracy per step of each method, pooled over orders and models.

  Args:
    evals: method -> order seed -> [T] step results (`EvalResult.to_json`).
    classes_seen: [T] classes seen after each step.

  Returns:
    method -> {'classes_seen', 'mean' [T], 'std' [T] over every (order,
    model), 'average_incremental' (mean over steps of the per-step mean),
    'per_order': seed -> {'accuracies' [T][K], 'mean' [T]}}.
  """
  summary = {}
  for method, by_order in evals.items():
    per_step = [
      np.concatenate(
        [np.asarray(steps[t]["accuracies"]) for steps in by_order.values()]
      )
      for t in range(len(classes_seen))
    ]
    means = [float(np.mean(a)) for a in per_step]
    summary[method] = {
      "classes_seen": [int(c) for c in classes_seen],
      "mean": means,
      "std": [float(np.std(a)) for a in per_step],
      "average_incremental": float(np.mean(means)),
      "per_order": {
        str(seed): {
          "accuracies": [list(step["accuracies"]) for step in steps],
          "mean": [float(step["mean"]) for step in steps],
        }
        for seed, steps in by_order.items()
      },
    }
  return summary


def save_accuracy_plot(path, methods: dict, *, title: str = "") -> None:
  """Accuracy (%) vs classes seen, one line with error bars per method.

  Args:
    path: the PNG to write.
    methods: method -> {'classes_seen' [T], 'mean' [T], 'std' [T]} with
      accuracies in [0, 1] (`summarize`'s output).
    title: the figure's title.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, m in methods.items():
    axes.errorbar(
      m["classes_seen"],
      100 * np.asarray(m["mean"]),
      yerr=100 * np.asarray(m["std"]),
      marker="o",
      capsize=3,
      label=name,
    )
  axes.set_xlabel("classes seen")
  axes.set_ylabel("test accuracy on seen classes (%)")
  axes.set_xticks(next(iter(methods.values()))["classes_seen"])
  axes.grid(alpha=0.3)
  axes.legend()
  axes.set_title(title, fontsize=9)
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path)


# ---------------------------------------------------------------------------
# The run.


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


def _memory(key, name, entry, *, config, the_plan, classes, where, step):
  """The step's memory of `name`: read back from `where`, or built and saved."""
  path = where / "memory"
  if path.exists():
    return synset_lib.load(path)
  memory = MEMORY_KINDS[entry.kind].build(
    key,
    entry,
    config=config,
    dataset=the_plan.dataset,
    classes=classes,
    where=where,
  )
  check_storage(
    name,
    memory.storage_floats,
    ipc=the_plan.ipc,
    num_classes=len(classes),
    image_shape=the_plan.dataset.image_shape,
  )
  memory = dataclasses.replace(
    memory,
    info={
      **memory.info,
      "name": name,
      "step": step,
      "storage_floats_per_class": memory.storage_floats / len(classes),
      "dataset_config": config.dataset.to_dict(),
    },
  )
  if workdir_lib.is_writer():
    analysis.save_image_grid(
      where / "memory.png",
      the_plan.dataset.to_unit_range(memory.images),
      nrow=memory.images.shape[0] // len(classes),
    )
  # Every process: Orbax's save waits for all of them, then writes once.
  synset_lib.save(path, memory, overwrite=True)
  return memory


def _evaluate(key, memories, *, config, dataset, seen, log) -> dict:
  images, labels = merge_memories(memories, num_classes=dataset.num_classes)
  test_images, test_labels = seen_test_set(dataset, seen)
  arch = config.eval.models[0]
  result = evaluate.evaluate_set(
    key,
    images,
    labels,
    test_images,
    test_labels,
    model_name=arch,
    model_options=models.options_for(arch, config.model.options),
    num_classes=dataset.num_classes,
    conv_impl=config.model.conv_impl,
    mesh=sharding.mesh_from_config(config),
    log=log,
    **config_utils.eval_kwargs(config.eval),
  )
  return {
    **result.to_json(),
    "classes_seen": [int(c) for c in seen],
    "num_train": int(images.shape[0]),
    "num_test": int(test_images.shape[0]),
    "storage_floats": int(sum(m.storage_floats for m in memories)),
  }


def _evaluation(key, memories, *, config, dataset, seen, path) -> dict:
  """The step's evaluation: read back from `path`, or run and saved."""
  if path.exists():
    return workdir_lib.read_json(path)
  result = _evaluate(
    key,
    memories,
    config=config,
    dataset=dataset,
    seen=seen,
    log=evaluate.ModelLog(path.with_name(evaluate.MODEL_LOG)),
  )
  workdir_lib.write_json(path, result)
  return result


def run(config, workdir) -> dict:
  """Runs class-incremental GDumb for every order seed, step and method.

  Reads only `config` (configs/continual.py). Resumes: memories and step
  evaluations already in `workdir` are read back, not recomputed, and an
  interrupted distillation resumes from its own checkpoints. A workdir of
  another config is refused.

  Returns:
    The results dictionary written to `<workdir>/results.json`.
  """
  workdir = pathlib.Path(workdir)
  the_plan = plan(config)
  check_workdir(workdir, config)
  print(storage_table(the_plan), flush=True)
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_config(workdir, config)

  cfg, dataset = config.continual, the_plan.dataset
  root = jax.random.key(config.seed)
  memory_stream = rng.stream(root, "continual")
  eval_stream = rng.stream(root, "eval")
  evals = {name: {} for name in cfg.methods}
  for seed, groups in the_plan.groups.items():
    held = {name: [] for name in cfg.methods}
    for name in cfg.methods:
      evals[name][seed] = []
    for t, classes in enumerate(groups, start=1):
      seen = groups[:t].reshape(-1)
      memory_key = jax.random.fold_in(
        jax.random.fold_in(memory_stream, seed), t
      )
      eval_key = jax.random.fold_in(jax.random.fold_in(eval_stream, seed), t)
      for name in cfg.methods:
        where = step_dir(workdir, order=seed, step=t, method=name)
        held[name].append(
          _memory(
            memory_key,
            name,
            cfg.memories[name],
            config=config,
            the_plan=the_plan,
            classes=classes,
            where=where,
            step=t,
          )
        )
        result = _evaluation(
          eval_key,
          held[name],
          config=config,
          dataset=dataset,
          seen=seen,
          path=where / "eval.json",
        )
        evals[name][seed].append(result)
        line = (
          f"order {seed} step {t}/{len(groups)} ({seen.size} classes) "
          f"{name}: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}"
        )
        print(line, flush=True)
        logging.info("%s", line)

  k = dataset.num_classes // cfg.steps
  classes_seen = [k * t for t in range(1, cfg.steps + 1)]
  methods = summarize(evals, classes_seen=classes_seen)
  for name, m in the_plan.memories.items():
    methods[name] = {
      "kind": m.kind,
      "images_per_class": m.images_per_class,
      "storage_floats_per_class": m.floats_per_class,
      **methods[name],
    }
  summary = {
    "dataset": dataset.name,
    "num_classes": dataset.num_classes,
    "steps": cfg.steps,
    "classes_per_step": k,
    "ipc": cfg.ipc,
    "budget_floats_per_class": the_plan.budget_per_class,
    "model": config.eval.models[0],
    "num_models": config.eval.num_models,
    "epochs": config.eval.epochs,
    "class_orders": {
      str(s): g.reshape(-1).tolist() for s, g in the_plan.groups.items()
    },
    "methods": methods,
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  if workdir_lib.is_writer():
    save_accuracy_plot(
      workdir / "accuracy.png",
      methods,
      title=(
        f"{dataset.name}, {cfg.steps} steps, storage of ipc {cfg.ipc} "
        f"({the_plan.budget_per_class:,} floats/class)\nmean ± std over "
        f"{len(the_plan.groups)} order(s) x {config.eval.num_models} model(s)"
      ),
    )
  for name, m in methods.items():
    curve = " ".join(f"{100 * a:.1f}" for a in m["mean"])
    print(f"{name}: {curve} (avg {100 * m['average_incremental']:.2f})")
  print(f"artifacts in {workdir.resolve()}", flush=True)
  return summary
