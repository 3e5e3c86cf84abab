"""What a distillation leaves: the exported set and its pictures."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import analysis, parameterize
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.distill.objective import Plan
from lowrank_distill.parameterize import labels as labels_lib


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
  path, trainable: dict, plan: Plan, *, method: str, dataset_config: dict
) -> synset_lib.SyntheticSet:
  """Saves the set at `path` (every process calls it) and returns it.

  Args:
    path: the export's folder.
    trainable: the distilled trainable dict.
    plan: the run's plan (its budget says what the set holds).
    method: the objective's name, recorded in the set's info.
    dataset_config: the run's `dataset` section as a dict, so that an
      evaluation can load the same data again.
  """
  images = np.asarray(plan.reconstructor.materialize(trainable["images"]))
  result = synset_lib.SyntheticSet(
    images=images,
    labels=labels_of(trainable, plan),
    param=plan.budget.param,
    params=jax.tree.map(np.asarray, trainable["images"]),
    storage_floats=parameterize.num_floats(trainable),
    dataset=plan.dataset.metadata(),
    lr=learned_lr(trainable),
    info={
      "method": method,
      "budget": dataclasses.asdict(plan.budget),
      "dataset_config": dataset_config,
    },
  )
  # Every process calls the save: Orbax synchronises them and writes once.
  synset_lib.save(path, result, overwrite=True)
  return result


def save_pictures(workdir: pathlib.Path, step: int, trainable, plan: Plan):
  """The set as a grid, and its low-rank components, as PNGs (process 0)."""
  if not workdir_lib.is_writer():
    return
  images = plan.reconstructor.materialize(trainable["images"])
  analysis.save_image_grid(
    workdir / "images" / f"synset_{step:06d}.png",
    plan.dataset.to_unit_range(np.asarray(images)),
    nrow=plan.images_per_class,
  )
  param = plan.budget.param
  if param != "pixels":
    analysis.save_components(
      workdir / "images" / f"{param}_{step:06d}.png",
      param,
      jax.tree.map(np.asarray, trainable["images"]),
    )
