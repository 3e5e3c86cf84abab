"""The experts run: `run(config, workdir)` trains a buffer (configs/experts.py).

Experts train in fixed chunks (`chunks`), vmapped and split over the mesh,
and each is saved to the buffer (`buffer.save_expert`) as soon as its chunk
is done; a restarted run trains only the missing ones.
"""

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lowrank_distill import (
  analysis,
  augment,
  checkpoint,
  checks,
  config_utils,
  data,
  models,
  rng,
  sharding,
  train,
)
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.experts import buffer, training

# Provenance that a resumed `run` may change: it only adds experts.
_RESUMABLE_KEYS = ("training.num_experts",)


# Every numeric field of an experts config (`checks.check_ranges`).
RANGES = {
  **config_utils.COMMON_RANGES,
  "experts.num_experts": checks.COUNT,
  "experts.epochs": checks.COUNT,
  "experts.experts_in_parallel": checks.COUNT,
  "experts.batch_size": checks.COUNT,
  "experts.lr": checks.RATE,
  "experts.momentum": checks.MOMENTUM,
  "experts.weight_decay": checks.NON_NEGATIVE,
}


def validate(config) -> None:
  """Checks the names and values of an experts config before any compute."""
  cfg = config.experts
  models.check_names([config.model.name], field="model.name")
  try:
    models.options_for(config.model.name, config.model.options)
  except ValueError as e:
    raise ValueError(f"model.options: {e}") from None
  checks.check_ranges(config, RANGES)
  try:
    augment.parse_strategy(cfg.dsa_strategy)
  except ValueError as e:
    raise ValueError(f"experts.{e}") from None


def _check_workdir(workdir: pathlib.Path, identity: dict) -> dict | None:
  """The saved buffer.json if the workdir holds this config's buffer."""
  if not (workdir / buffer.BUFFER_FILE).exists():
    if buffer.saved_indices(workdir):
      raise checkpoint.CheckpointError(
        f"{workdir} holds expert directories but no {buffer.BUFFER_FILE}; "
        "refusing to add experts of unknown origin to it"
      )
    return None
  saved = buffer.open_buffer(workdir, field="workdir").metadata
  diffs = buffer.identity_diff(
    saved["identity"], identity, ignore=_RESUMABLE_KEYS
  )
  if diffs:
    raise checkpoint.CheckpointError(
      f"{workdir} holds experts of another config: {'; '.join(diffs)} "
      f"(buffer -> this run); use another workdir or delete {workdir}"
    )
  return saved


def _write_buffer_file(workdir: pathlib.Path, saved, identity, epochs):
  """Writes buffer.json once; later runs only raise its num_experts."""
  if saved is not None:
    old = saved["identity"]["training"].get("num_experts", 0)
    new = identity["training"]["num_experts"]
    if new <= old:
      return
    identity = {**saved["identity"]}
    identity["training"] = {**identity["training"], "num_experts": new}
  workdir_lib.write_json(
    workdir / buffer.BUFFER_FILE,
    {
      "format": buffer.BUFFER_FORMAT,
      "version": buffer.BUFFER_VERSION,
      "num_snapshots": epochs + 1,
      "identity": identity,
    },
  )


def chunks(num_experts: int, experts_in_parallel: int) -> list[range]:
  """Fixed chunks of expert indices: [0, P), [P, 2P), ..., the last partial.

  A resumed run retrains a chunk with a missing expert whole, so the
  compiled program, and the bits of every expert, are those of a run that
  was never stopped.
  """
  return [
    range(first, min(first + experts_in_parallel, num_experts))
    for first in range(0, num_experts, experts_in_parallel)
  ]


@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "dsa_strategy",
    "mesh",
  ),
)
def _train_and_test(
  keys, images, targets, test_images, test_labels, *, mesh=None, **kwargs
):
  """Trains experts vmapped over `keys` and counts their correct tests.

  With a mesh, `keys` [k] (k a multiple of its devices) and the results
  are split over its 'data' axis.

  Returns:
    (trajectories, leaves [k, E + 1, ...]; correct [k]; last loss [k]).
  """
  model = kwargs["model"]
  keys = sharding.constrain(keys, mesh, axis=0)

  def one(key):
    expert = training.train_expert(key, images, targets, **kwargs)
    final = jax.tree.map(lambda t: t[-1], expert.trajectory)
    correct = train.count_correct(
      model, {"params": final, **expert.state}, test_images, test_labels
    )
    return expert.trajectory, correct, expert.train_loss[-1]

  return sharding.constrain(jax.vmap(one)(keys), mesh, axis=0)


def run(config, workdir, *, dataset: data.Dataset | None = None) -> dict:
  """Trains `config.experts.num_experts` experts into the buffer `workdir`.

  Reads `config` (configs/experts.py) and the dataset it names, or
  `dataset` when given (e.g. the classes of one continual-learning step).
  Experts train vmapped in chunks of `experts.experts_in_parallel`, split
  over the devices of `config.mesh` (a chunk that does not divide them is
  completed with the next experts' keys, trained and discarded), and each is
  saved as soon as its chunk is done; a restarted run skips the saved
  experts. Writes `config.json`,
  `buffer.json`, `expert_<i>/` and `metrics.jsonl` (per expert: final test
  accuracy and training loss, seconds).

  Returns:
    A summary: experts trained now and skipped, their mean test accuracy.

  Raises:
    ValueError: a bad config value (naming the field), before compute.
    CheckpointError: the workdir holds a buffer of another config.
  """
  workdir = pathlib.Path(workdir).absolute()
  validate(config)
  cfg = config.experts
  if dataset is None:
    dataset = config_utils.load_dataset(config.dataset)
  model = models.create(
    config.model.name,
    num_classes=dataset.num_classes,
    image_shape=dataset.image_shape,
    conv_impl=config.model.conv_impl,
    **models.options_for(config.model.name, config.model.options),
  )
  mesh = sharding.mesh_from_config(config)
  identity = buffer.buffer_identity(dataset, config)
  saved = _check_workdir(workdir, identity)
  writer = workdir_lib.start(workdir, config)
  if workdir_lib.is_writer():
    buffer.remove_unfinished_saves(workdir)
  _write_buffer_file(workdir, saved, identity, cfg.epochs)

  hparams = {
    "model": model,
    "epochs": cfg.epochs,
    "lr": cfg.lr,
    "batch_size": cfg.batch_size,
    "momentum": cfg.momentum,
    "weight_decay": cfg.weight_decay,
    "dsa_strategy": cfg.dsa_strategy,
    "mesh": mesh if sharding.is_sharded(mesh) else None,
  }
  key = rng.stream(jax.random.key(config.seed), "experts")
  arrays = (
    jnp.asarray(dataset.train_images),
    jax.nn.one_hot(dataset.train_labels, dataset.num_classes),
    jnp.asarray(dataset.test_images),
    jnp.asarray(dataset.test_labels),
  )
  arrays = sharding.put(arrays, mesh)
  num_test = len(dataset.test_labels)
  done = set(buffer.saved_indices(workdir))
  trained, accuracies = [], []
  for chunk in chunks(cfg.num_experts, cfg.experts_in_parallel):
    missing = [i for i in chunk if i not in done]
    if not missing:
      continue
    width = sharding.padded_size(len(chunk), mesh)
    keys = train.model_keys(key, width, first=chunk.start)
    keys = sharding.put(keys, mesh, axis=0)
    start = time.perf_counter()
    compiled = _train_and_test.lower(keys, *arrays, **hparams).compile(
      models.compiler_options(config.model.conv_impl)
    )
    if (seconds := time.perf_counter() - start) > 1:
      logging.info("compiled %d experts in parallel in %.1f s", width, seconds)
    start = time.perf_counter()
    trajectories, correct, losses = sharding.to_host(compiled(keys, *arrays))
    seconds = (time.perf_counter() - start) / len(chunk)
    for i in missing:
      j = i - chunk.start
      accuracy = float(correct[j]) / num_test
      metrics = {
        "test_accuracy": accuracy,
        "train_loss": float(losses[j]),
        "seconds": seconds,
      }
      buffer.save_expert(
        workdir,
        i,
        jax.tree.map(lambda t, j=j: t[j], trajectories),
        metadata={"identity": identity, **metrics},
      )
      writer.write(i, expert=i, **metrics)
      trained.append(i)
      accuracies.append(accuracy)
      logging.info(
        "expert %d: %s accuracy %.4f, train loss %.4f, %.1f s",
        i,
        dataset.evaluation_split,
        accuracy,
        losses[j],
        seconds,
      )
  summary = {
    "workdir": str(workdir),
    "num_experts": len(buffer.saved_indices(workdir)),
    "num_snapshots": cfg.epochs + 1,
    "trained": trained,
    "skipped": sorted(done & set(range(cfg.num_experts))),
    "mean_test_accuracy": float(np.mean(accuracies)) if accuracies else None,
    # 'validation': the accuracies are on train images held out of training.
    "evaluation_split": dataset.evaluation_split,
  }
  line = (
    f"experts: {summary['num_experts']} in {workdir} ({cfg.epochs + 1} "
    f"snapshots each); trained {len(trained)} now, skipped "
    f"{len(summary['skipped'])} already saved"
  )
  if accuracies:
    line += (
      f"; {dataset.evaluation_split} accuracy of the new ones "
      f"{100 * np.mean(accuracies):.2f} ± "
      f"{100 * np.std(accuracies):.2f} %"
    )
  if workdir_lib.is_writer():
    print(line, flush=True)
    # Per expert (the x axis is the expert's index).
    analysis.save_metrics_plot(workdir / "metrics.png", writer.read())
  logging.info("%s", line)
  return summary
