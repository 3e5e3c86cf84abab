"""Distillation: the loop and the methods as the loop sees them.

  step       the state, its optimiser, the guarded update, the jitted step
  objective  `Plan` (what a config resolves to: data, budget, model and every
             setting the run reads after) and `Objective` (a method)
  dm, gm, tm, bptt  one module per method family
             (`configs/{dm,gm,tm,bptt}.py`)
  planning   the config seam: validate, make_plan, registry; the initial
             state from the plan
  export     the exported set and its pictures
  loop       `run(config, workdir)`

This module only hands names on.
"""

from lowrank_distill.distill import (
  bptt,
  dm,
  export,
  gm,
  loop,
  objective,
  planning,
  step,
  tm,
)
from lowrank_distill.distill.loop import check_workdir, run
from lowrank_distill.distill.objective import Objective, Plan, syn_targets
from lowrank_distill.distill.planning import (
  OBJECTIVES,
  RANGES,
  RESUMABLE_FIELDS,
  initial_state,
  initial_trainable,
  learning_objectives,
  make_plan,
  optimizer_groups,
  set_optimizer,
  validate,
)
from lowrank_distill.distill.step import (
  AveragedState,
  DistillState,
  DistillStateWithAux,
  averaged,
  guarded_update,
  init_state,
  make_optimizer,
  make_train_step,
  with_average,
)

__all__ = [
  "OBJECTIVES",
  "RANGES",
  "RESUMABLE_FIELDS",
  "AveragedState",
  "DistillState",
  "DistillStateWithAux",
  "Objective",
  "Plan",
  "averaged",
  "bptt",
  "check_workdir",
  "dm",
  "export",
  "gm",
  "guarded_update",
  "init_state",
  "initial_state",
  "initial_trainable",
  "learning_objectives",
  "loop",
  "make_optimizer",
  "make_plan",
  "make_train_step",
  "objective",
  "optimizer_groups",
  "planning",
  "run",
  "set_optimizer",
  "step",
  "syn_targets",
  "tm",
  "validate",
  "with_average",
]
