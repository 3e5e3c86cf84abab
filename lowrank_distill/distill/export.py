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
  # Every process calls the save: Orbax synchronises them and writes once.
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
