"""What a distillation leaves: the exported set and its pictures."""

import dataclasses
import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import analysis, models, parameterize
from lowrank_distill import identity as identity_lib
from lowrank_distill import released as released_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.distill.objective import Plan
from lowrank_distill.parameterize import budget as budget_lib
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


class DegenerateResultError(RuntimeError):
  """A distillation ended with a set not worth exporting or evaluating."""


# Synthetic values this many spans of the real images' range beyond it mean
# the optimisation diverged: distilled sets do leave the real range (MTT's
# lr_images of 1e3-1e4 gives values tens of spans out on short runs), but
# not by orders of magnitude.
FAR_OUTSIDE_SPANS = 100.0
# A share of skipped updates above this is logged as a warning.
WARN_SKIPPED_SHARE = 0.1


def check_result(
  trainable: dict, plan: Plan, *, skipped: int, iterations: int
) -> list[str]:
  """Raises `DegenerateResultError` when the distilled set is degenerate.

  Degenerate: every update skipped, non-finite parameters, a learned lr
  that is not > 0 (also one that underflowed to 0), or images far outside
  the real images' range (`FAR_OUTSIDE_SPANS`).

  Args:
    trainable: the distilled trainable dict.
    plan: the run's plan.
    skipped: updates the guard refused (`DistillState.skipped`).
    iterations: updates attempted.

  Returns:
    Warnings: a large share of skipped updates.
  """
  problems = []
  if iterations and skipped >= iterations:
    problems.append(
      f"every one of the {iterations} updates was skipped (non-finite or "
      f"above distill.max_loss); lower distill.lr_images / distill.lr_lr"
    )
  for name, leaf in jax.tree_util.tree_leaves_with_path(trainable):
    if not np.all(np.isfinite(np.asarray(leaf))):
      where = jax.tree_util.keystr(name)
      problems.append(f"the trainable {where} holds non-finite values")
  lr = learned_lr(trainable)
  if lr is not None and not (np.isfinite(lr) and lr > 0):
    problems.append(
      f"the learned lr is {lr!r}; it collapsed (lower distill.lr_lr)"
    )
  if not problems:
    images = np.asarray(plan.reconstructor.materialize(trainable["images"]))
    real = plan.dataset.train_images
    low, high = float(np.min(real)), float(np.max(real))
    margin = FAR_OUTSIDE_SPANS * (high - low)
    found_low, found_high = float(images.min()), float(images.max())
    if found_low < low - margin or found_high > high + margin:
      problems.append(
        f"the synthetic images span [{found_low:.3g}, {found_high:.3g}], "
        f"far outside the real images' [{low:.3g}, {high:.3g}]; the "
        f"optimisation diverged (lower distill.lr_images)"
      )
  if problems:
    raise DegenerateResultError(
      "the distilled set is degenerate: " + "; ".join(problems)
    )
  warnings = []
  if iterations and skipped / iterations > WARN_SKIPPED_SHARE:
    warnings.append(
      f"{skipped} of {iterations} updates ({100 * skipped / iterations:.0f}%)"
      f" were skipped (non-finite or above distill.max_loss)"
    )
  return warnings


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
      "recipe": recipe(plan, trainable),
    },
  )
  # Every process calls the save: Orbax synchronises them and writes once.
  synset_lib.save(path, result, overwrite=True)
  if workdir_lib.is_writer():
    released_lib.save_npz(pathlib.Path(path).with_suffix(".npz"), result)
  return result


def recipe(plan: Plan, trainable: dict) -> dict:
  """Everything needed to train on the set elsewhere, as JSON.

  The preprocessing (normalisation constants; the ZCA flavour, regulariser
  and a SHA-256 of the fitted whitening, refitted on the standardised train
  split), the network the set was distilled on, the evaluation protocol
  (augmentation, epochs, lr: the learned one when there is one), the label
  form and the storage.
  """
  dataset = plan.dataset
  zca = None
  if dataset.zca is not None:
    whiten = np.ascontiguousarray(dataset.zca.whiten, np.float32)
    zca = {
      "flavour": dataset.zca.flavour,
      "eps": dataset.zca.eps,
      "refit": "lowrank_distill.data.zca.fit_zca on the standardised train "
      "split (data.load with this dataset config)",
      "whiten_sha256": hashlib.sha256(whiten.tobytes()).hexdigest(),
    }
  evaluation = dict(plan.evaluation)
  lr = learned_lr(trainable)
  return identity_lib.to_json_types(
    {
      "images": "float32 [n, h, w, c] in the dataset's preprocessed space "
      "(standardised with mean/std, then ZCA when zca is set)",
      "dataset": {
        "name": dataset.name,
        "image_shape": dataset.image_shape,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "standardize": dataset.standardize,
        "mean": dataset.mean,
        "std": dataset.std,
        "zca": zca,
      },
      "distilled_on": {
        "model": models.describe(plan.model),
        "conv_impl": plan.conv_impl,
      },
      "labels": "soft: [n, C] logits, targets = softmax"
      if "labels" in trainable
      else "hard: [n] class ids",
      "evaluation": {
        "models": evaluation["model_names"],
        "dsa_strategy": evaluation["dsa_strategy"],
        "epochs": evaluation["epochs"],
        "lr": evaluation["lr"] if lr is None else lr,
        "lr_is_learned": lr is not None,
        "batch_size": evaluation["batch_size"],
        "momentum": evaluation["momentum"],
        "weight_decay": evaluation["weight_decay"],
        "lr_schedule": "x0.1 at half the epochs",
      },
      "storage": {
        **dataclasses.asdict(plan.budget),
        "table": budget_lib.budget_table(plan.budget),
      },
    }
  )


def save_pictures(workdir: pathlib.Path, step: int, trainable, plan: Plan):
  """The set as a grid, and its low-rank components, as PNGs (process 0)."""
  if not workdir_lib.is_writer():
    return
  images = plan.reconstructor.materialize(trainable["images"])
  names = plan.dataset.class_names
  captions = None
  if "labels" in trainable:
    captions = analysis.soft_label_captions(trainable["labels"], names)
  analysis.save_image_grid(
    workdir / "images" / f"synset_{step:06d}.png",
    plan.dataset.to_unit_range(np.asarray(images)),
    nrow=plan.images_per_class,
    row_names=names,
    captions=captions,
  )
  if plan.budget.formation > 1:
    stored = plan.reconstructor.stored_images(trainable["images"])
    analysis.save_image_grid(
      workdir / "images" / f"stored_{step:06d}.png",
      plan.dataset.to_unit_range(np.asarray(stored)),
      nrow=plan.images_per_class // plan.budget.formation**2,
      row_names=names,
    )
  param = plan.budget.param
  if param in ("memories", "lowrank_memories"):
    analysis.save_addresses(
      workdir / "images" / f"addresses_{step:06d}.png",
      np.asarray(trainable["images"]["addresses"]),
      images_per_class=plan.images_per_class,
    )
  if param != "pixels":
    analysis.save_components(
      workdir / "images" / f"{param}_{step:06d}.png",
      param,
      jax.tree.map(np.asarray, trainable["images"]),
    )
