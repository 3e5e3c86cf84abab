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

The label and storage conventions are in `protocol`'s docstring, the
workdir layout in `loop`'s.

Modules: `protocol` (the pure protocol: class orders, step subsets, global
labels, merging memories, the storage budget), `memories` (the memory kinds
and their registry `MEMORY_KINDS`), `planning` (the config seam: `validate`,
`make_plan`, `check_workdir`) and `loop` (`run` and its step folders,
results and resumption). This module only re-exports; submodules import
their siblings directly, never this package `__init__`.

References:
  Prabhu, Torr & Dokania, "GDumb: A Simple Approach that Questions Our
  Progress in Continual Learning", ECCV 2020.
  Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023
  (GDumb with a distilled memory).
  Yang et al., "An Efficient Dataset Condensation Plugin and Its Application
  to Continual Learning", NeurIPS 2023.
"""

from lowrank_distill.continual import loop, memories, planning, protocol
from lowrank_distill.continual.loop import (
  run,
  step_dir,
  summarize,
)
from lowrank_distill.continual.memories import (
  MEMORY_KINDS,
  MemoryKind,
  MemoryPlan,
  coreset_memory,
  distill_memory,
  step_config,
  trajectory_memory,
  validate_entry,
)
from lowrank_distill.continual.planning import (
  RESUMABLE_FIELDS,
  Plan,
  check_workdir,
  make_plan,
  storage_table,
  validate,
)
from lowrank_distill.continual.protocol import (
  ABSENT_LOGIT,
  budget_floats,
  check_steps,
  check_storage,
  class_groups,
  class_members,
  class_order,
  class_subset,
  global_labels,
  hard_logits,
  merge_memories,
  seen_test_set,
)

__all__ = [
  "ABSENT_LOGIT",
  "MEMORY_KINDS",
  "RESUMABLE_FIELDS",
  "MemoryKind",
  "MemoryPlan",
  "Plan",
  "budget_floats",
  "check_steps",
  "check_storage",
  "check_workdir",
  "class_groups",
  "class_members",
  "class_order",
  "class_subset",
  "coreset_memory",
  "distill_memory",
  "global_labels",
  "hard_logits",
  "loop",
  "memories",
  "make_plan",
  "merge_memories",
  "planning",
  "protocol",
  "run",
  "seen_test_set",
  "step_config",
  "step_dir",
  "storage_table",
  "summarize",
  "trajectory_memory",
  "validate",
  "validate_entry",
]
