"""Validation and planning of a continual run: the config seam.

`validate` checks the config's names and values before any data is loaded;
`make_plan` loads the dataset, fixes the class groups of every order seed and
resolves each memory's storage (`MemoryPlan`) against the shared budget,
before any compute. `check_workdir` refuses a workdir written by another
config (`RESUMABLE_FIELDS` may differ).
"""

import dataclasses
from typing import Any

import numpy as np

from lowrank_distill import (
  augment,
  checks,
  config_utils,
  data,
  models,
  sharding,
)
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.continual import memories as memories_lib
from lowrank_distill.continual import protocol

# Config fields that may change when a run resumes: they select which order
# seeds to run or how evaluation is batched, not what a step computes.
RESUMABLE_FIELDS = (
  "continual.orders",
  "mesh",
  "eval.models_per_batch",
  "eval.test_batch_size",
  "eval.grad_chunk",  # the evaluation's sums in another order: rounding
)

# ---------------------------------------------------------------------------
# Validation and planning (no compute).


# The numeric fields of a continual config outside its memories (each
# memory's are checked by its kind: `memories.validate_entry`).
RANGES = {
  **config_utils.COMMON_RANGES,
  "continual.ipc": checks.COUNT,
  "continual.steps": checks.COUNT,
}


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
    memories_lib.validate_entry(name, cfg.memories[name])
  orders = list(cfg.orders)
  if (
    not orders
    or len(set(orders)) != len(orders)
    or not all(isinstance(s, int) and s >= 0 for s in orders)
  ):
    raise ValueError(
      f"continual.orders must be distinct seeds >= 0, got {orders}"
    )
  checks.check_ranges(config, RANGES)
  if len(config.eval.models) != 1:
    raise ValueError(
      f"eval.models must name one architecture (each step trains it on the "
      f"memory), got {list(config.eval.models)}"
    )
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])
  models.options_for(config.eval.models[0], config.model.options)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `run` resolved from the config before any compute.

  Attributes:
    dataset: the full dataset.
    groups: order seed -> [T, k] classes arriving at each step.
    memories: method name -> its `MemoryPlan`, in `continual.methods` order.
    ipc: the storage budget in images per class.
    mesh: the run's device mesh (`config.mesh`), built once.
  """

  dataset: data.Dataset
  groups: dict[int, np.ndarray]
  memories: dict[str, memories_lib.MemoryPlan]
  ipc: int
  mesh: Any

  @property
  def budget_per_class(self) -> int:
    return protocol.budget_floats(
      ipc=self.ipc, num_classes=1, image_shape=self.dataset.image_shape
    )


def _smallest_classes(dataset: data.Dataset, k: int) -> data.Dataset:
  """The subset of the k classes with the fewest training images.

  Checks that pass on it (images per class, real batch sizes) pass on every
  step's subset.
  """
  counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
  return protocol.class_subset(dataset, np.argsort(counts, kind="stable")[:k])


def make_plan(config) -> Plan:
  """Validates the config, loads the dataset and resolves every memory.

  Raises ValueError naming the field for unknown names, `continual.steps`
  not dividing the classes, `continual.ipc` above the smallest class, or a
  memory over the shared storage budget, before any compute.
  """
  validate(config)
  cfg = config.continual
  dataset = config_utils.load_dataset(config.dataset)
  protocol.check_steps(cfg.steps, num_classes=dataset.num_classes)
  data.check_images_per_class(
    dataset.train_labels,
    cfg.ipc,
    field="continual.ipc",
    num_classes=dataset.num_classes,
  )
  groups = {
    int(s): protocol.class_groups(
      protocol.class_order(s, num_classes=dataset.num_classes), steps=cfg.steps
    )
    for s in cfg.orders
  }
  smallest = _smallest_classes(dataset, dataset.num_classes // cfg.steps)
  mesh = sharding.mesh_from_config(config)
  memories = {}
  for name in cfg.methods:
    entry = cfg.memories[name]
    memory = memories_lib.MEMORY_KINDS[entry.kind].plan(
      name, entry, smallest=smallest, ipc=cfg.ipc, mesh=mesh
    )
    protocol.check_storage(
      name,
      memory.storage_floats,
      ipc=cfg.ipc,
      num_classes=memory.classes_per_step,
      image_shape=dataset.image_shape,
    )
    memories[name] = memory
  return Plan(
    dataset=dataset, groups=groups, memories=memories, ipc=cfg.ipc, mesh=mesh
  )


def storage_table(plan: Plan) -> str:
  """A text table of every memory's storage per class vs the budget."""
  rows = [("method", "kind", "images/class", "floats/class", "allowed")]
  rows += [
    (
      name,
      m.kind,
      str(m.images_per_class),
      f"{m.floats_per_class:,.0f}",
      f"{plan.budget_per_class:,}",
    )
    for name, m in plan.memories.items()
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
