"""The continual run: every order seed, step and method, resumable.

Workdir layout (`run`): `config.json`, `order_<s>/step_<t>/<method>/`
holding `memory/` (a `synset.SyntheticSet` export with global labels; for
coresets `info['indices']` are the chosen global training indices),
`memory.png` (its images, one row per class),
`distill/` (the distillation workdir of distilled memories), `experts/`
(the expert buffer of a trajectory-matching memory, trained on the step's
classes) and
`eval.json`; then `results.json` and `accuracy.png`. Steps count from 1.
"""

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from lowrank_distill import (
  analysis,
  config_utils,
  evaluate,
  rng,
)
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.continual import memories as memories_lib
from lowrank_distill.continual import planning, protocol

# ---------------------------------------------------------------------------
# Step folders.


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


# ---------------------------------------------------------------------------
# The run.


def _memory(key, name, entry, *, config, plan, classes, where, step):
  """The step's memory of `name`: read back from `where`, or built and saved."""
  path = where / "memory"
  if path.exists():
    return synset_lib.load(path)
  memory = memories_lib.MEMORY_KINDS[entry.kind].build(
    key,
    entry,
    config=config,
    dataset=plan.dataset,
    classes=classes,
    where=where,
  )
  protocol.check_storage(
    name,
    memory.storage_floats,
    ipc=plan.ipc,
    num_classes=len(classes),
    image_shape=plan.dataset.image_shape,
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
      plan.dataset.to_unit_range(memory.images),
      nrow=memory.images.shape[0] // len(classes),
    )
  # Every process: Orbax's save waits for all of them, then writes once.
  synset_lib.save(path, memory, overwrite=True)
  return memory


def _evaluate(key, memories, *, config, dataset, seen, log, mesh) -> dict:
  images, labels = protocol.merge_memories(
    memories, num_classes=dataset.num_classes
  )
  test_images, test_labels = protocol.seen_test_set(dataset, seen)
  # One architecture (`planning.validate`), trained with the evaluation key
  # itself: `evaluate_set`, not `evaluate_architectures`.
  settings = config_utils.evaluation_settings(config)
  (arch,) = settings.pop("model_names")
  result = evaluate.evaluate_set(
    key,
    images,
    labels,
    test_images,
    test_labels,
    model_name=arch,
    model_options=settings.pop("model_options")[arch],
    num_classes=dataset.num_classes,
    mesh=mesh,
    log=log,
    **settings,
  )
  return {
    **result.to_json(),
    "classes_seen": [int(c) for c in seen],
    "num_train": int(images.shape[0]),
    "num_test": int(test_images.shape[0]),
    "storage_floats": int(sum(m.storage_floats for m in memories)),
  }


def _evaluation(key, memories, *, config, dataset, seen, path, mesh) -> dict:
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
    mesh=mesh,
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
  plan = planning.make_plan(config)
  planning.check_workdir(workdir, config)
  print(planning.storage_table(plan), flush=True)
  writer = workdir_lib.start(workdir, config)

  cfg, dataset = config.continual, plan.dataset
  mesh = plan.mesh
  root = jax.random.key(config.seed)
  memory_stream = rng.stream(root, "continual")
  eval_stream = rng.stream(root, "eval")
  evals = {name: {} for name in cfg.methods}
  for seed, groups in plan.groups.items():
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
            plan=plan,
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
          mesh=mesh,
        )
        evals[name][seed].append(result)
        # One curve per method and order: accuracy against classes seen.
        writer.write(
          int(seen.size),
          accuracy={name: {f"order_{seed}": result["mean"]}},
        )
        line = (
          f"order {seed} step {t}/{len(groups)} ({seen.size} classes) "
          f"{name}: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}"
        )
        print(line, flush=True)
        logging.info("%s", line)

  k = dataset.num_classes // cfg.steps
  classes_seen = [k * t for t in range(1, cfg.steps + 1)]
  methods = summarize(evals, classes_seen=classes_seen)
  for name, m in plan.memories.items():
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
    "budget_floats_per_class": plan.budget_per_class,
    "model": config.eval.models[0],
    "num_models": config.eval.num_models,
    "epochs": config.eval.epochs,
    "class_orders": {
      str(s): g.reshape(-1).tolist() for s, g in plan.groups.items()
    },
    "methods": methods,
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  if workdir_lib.is_writer():
    analysis.save_accuracy_plot(
      workdir / "accuracy.png",
      methods,
      title=(
        f"{dataset.name}, {cfg.steps} steps, storage of ipc {cfg.ipc} "
        f"({plan.budget_per_class:,} floats/class)\nmean ± std over "
        f"{len(plan.groups)} order(s) x {config.eval.num_models} model(s)"
      ),
    )
  for name, m in methods.items():
    curve = " ".join(f"{100 * a:.1f}" for a in m["mean"])
    print(f"{name}: {curve} (avg {100 * m['average_incremental']:.2f})")
  print(f"artifacts in {workdir.resolve()}", flush=True)
  return summary
