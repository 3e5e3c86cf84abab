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
  config_utils,
  data,
  evaluate,
  models,
  parameterize,
  rng,
)
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.objectives import distribution_matching
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
    finite_grads = jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    ok = jnp.isfinite(loss) & finite_grads & (loss <= max_loss)
    updates, opt_state = optimizer.update(
      grads, state.opt_state, state.trainable
    )
    trainable = optax.apply_updates(state.trainable, updates)
    keep = functools.partial(
      jax.tree.map, lambda new, old: jnp.where(ok, new, old)
    )
    new_state = DistillState(
      step=state.step + 1,
      trainable=keep(trainable, state.trainable),
      opt_state=keep(opt_state, state.opt_state),
      skipped=state.skipped + (~ok).astype(jnp.int32),
    )
    return new_state, {"loss": loss, "skipped": ~ok}

  return train_step


# ---------------------------------------------------------------------------
# Objectives: builders of `loss_fn(trainable, key, real_images, class_index)`.


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


def _dm_loss(plan: Plan, config) -> LossFn:
  cfg = config.distill
  materialize = plan.reconstructor.materialize
  shape = (plan.num_classes, plan.images_per_class, *plan.dataset.image_shape)

  def loss_fn(trainable, key, real_images, class_index):
    sample_key, loss_key = jax.random.split(key)
    idx = data.sample_per_class(sample_key, class_index, n=cfg.batch_real)
    return distribution_matching.loss(
      loss_key,
      materialize(trainable["images"]).reshape(shape),
      real_images[idx],
      model=plan.model,
      dsa_strategy=cfg.dsa_strategy,
      classes_in_parallel=cfg.classes_in_parallel,
    )

  return loss_fn


OBJECTIVES: dict[str, Callable[[Plan, Any], LossFn]] = {"dm": _dm_loss}
# Objectives that give label logits / the student lr a gradient.
LEARNS_LABELS: tuple[str, ...] = ()
LEARNS_LR: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# Validation and planning (no compute).


def _check_choice(field: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"{field} {value!r} is not known; valid: {list(valid)}")


def validate(config) -> None:
  """Checks names and values of the config before anything is loaded."""
  _check_choice("method", config.method, OBJECTIVES)
  _check_choice(
    "synset.param", config.synset.param, parameterize.PARAMETERIZATIONS
  )
  _check_choice("synset.budget", config.synset.budget, budget_lib.BUDGETS)
  _check_choice("labels.kind", config.labels.kind, ("hard", "soft"))
  if config.labels.kind == "soft":
    _check_choice("labels.init", config.labels.init, labels_lib.LABEL_INITS)
    if config.method not in LEARNS_LABELS:
      raise ValueError(
        f"labels.kind 'soft': objective {config.method!r} gives label "
        f"logits no gradient; use labels.kind='hard' (objectives that learn "
        f"labels: {list(LEARNS_LABELS)})"
      )
  if config.distill.learn_lr and config.method not in LEARNS_LR:
    raise ValueError(
      f"distill.learn_lr: objective {config.method!r} has no student lr to "
      f"learn; set it to False (objectives with one: {list(LEARNS_LR)})"
    )
  _check_choice("synset.init", config.synset.init, ("noise", "real"))
  if config.synset.ipc < 1:
    raise ValueError(f"synset.ipc must be >= 1, got {config.synset.ipc}")
  if config.distill.iterations < 0:
    raise ValueError(
      f"distill.iterations must be >= 0, got {config.distill.iterations}"
    )
  augment.parse_strategy(config.distill.dsa_strategy)
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])


def plan(config, *, dataset: data.Dataset | None = None) -> Plan:
  """Loads the dataset and resolves the budget; raises on bad values.

  Args:
    config: the run's config.
    dataset: distil this dataset instead of loading `config.dataset` (e.g.
      the classes of one continual-learning step).
  """
  validate(config)
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
  return Plan(
    dataset=dataset,
    budget=budget,
    reconstructor=parameterize.get(syn.param),
    model=model,
  )


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
  if workdir_lib.is_writer():
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


def _evaluate(key, trainable, plan: Plan, config) -> dict:
  results = evaluate.evaluate_with_config(
    key,
    plan.reconstructor.materialize(trainable["images"]),
    labels_of(trainable, plan),
    plan.dataset,
    config,
    lr=learned_lr(trainable),
  )
  return {name: r.to_json() for name, r in results.items()}


def _identity_config(config) -> dict:
  """The config without the fields a resumed run may change."""
  flat = dict(_flatten(config.to_dict()))
  return {
    k: v
    for k, v in flat.items()
    if not any(k == f or k.startswith(f + ".") for f in RESUMABLE_FIELDS)
  }


def _flatten(tree: dict, prefix: str = ""):
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      yield from _flatten(v, name + ".")
    else:
      yield name, v


def check_workdir(workdir: pathlib.Path, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  path = workdir / "config.json"
  if not path.exists():
    return
  old = dict(_flatten(workdir_lib.read_json(path)))
  new = dict(_flatten(config.to_dict()))
  identity = _identity_config(config)
  diffs = [
    f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
    for k in sorted(set(old) | set(new))
    if (k in identity or k not in new) and old.get(k) != new.get(k)
  ]
  if diffs:
    raise checkpoint.CheckpointError(
      f"workdir {workdir} holds a run of another config; use a new workdir "
      f"or the same config. Differences: " + "; ".join(diffs)
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
  (the export) and results.json into `workdir`.

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
  check_workdir(workdir, config)
  print(budget_lib.budget_table(the_plan.budget), flush=True)

  root = jax.random.key(config.seed)
  trainable = initial_trainable(rng.stream(root, "init"), the_plan, config)
  optimizer = make_optimizer(optimizer_groups(config, trainable))
  state = init_state(trainable, optimizer)
  loss_fn = OBJECTIVES[config.method](the_plan, config)
  train_step = jax.jit(
    make_train_step(loss_fn, optimizer, max_loss=config.distill.max_loss)
  )

  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_config(workdir, config)
  writer = workdir_lib.MetricsWriter(workdir)
  cfg = config.distill
  with checkpoint.Checkpointer(
    workdir / "checkpoints", config=_identity_config(config)
  ) as ckpt:
    restored = ckpt.restore_or_none(jax.eval_shape(lambda: state))
    if restored is not None:
      state, _ = restored
      logging.info("Resumed from step %d", int(state.step))
      _truncate_metrics(writer, int(state.step))

    real_images = jnp.asarray(the_plan.dataset.train_images)
    class_index = data.class_index(
      the_plan.dataset.train_labels, the_plan.num_classes
    )
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
      state, metrics = train_step(
        state, jax.random.fold_in(distill_key, step), real_images, class_index
      )
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
          jax.random.fold_in(eval_key, done), state.trainable, the_plan, config
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
    print(line, flush=True)
    logging.info("%s", line)
  print(f"artifacts in {workdir.resolve()}", flush=True)
  return summary
