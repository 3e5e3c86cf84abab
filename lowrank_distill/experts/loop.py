"""The experts run: `run(config, workdir)` trains a buffer (configs/experts.py).

Experts train in fixed chunks (`chunks`), vmapped and split over the mesh,
one epoch a call; the chunk's carry is saved after every epoch
(`buffer.save_progress`) and each expert is saved to the buffer
(`buffer.save_expert`) as soon as its chunk is done. A restarted run trains
only the missing experts, continuing the chunk it was in from its last
finished epoch: a kill costs at most one epoch.
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

  A resumed run trains a chunk with a missing expert with the same
  chunk and compiled programs, from its last saved epoch, so the bits of
  every expert are those of a run that was never stopped.
  """
  return [
    range(first, min(first + experts_in_parallel, num_experts))
    for first in range(0, num_experts, experts_in_parallel)
  ]


_HPARAMS = (
  "model",
  "lr",
  "batch_size",
  "momentum",
  "weight_decay",
  "dsa_strategy",
)


@functools.partial(
  jax.jit, static_argnames=("model", "image_shape", "optimizer", "mesh")
)
def _start(keys, *, model, image_shape, optimizer, mesh=None):
  """The carries of experts vmapped over `keys` [k] before epoch 1."""
  keys = sharding.constrain(keys, mesh, axis=0)
  carry = jax.vmap(
    lambda key: training.start_expert(
      key, model=model, image_shape=image_shape, **dict(optimizer)
    )
  )(keys)
  return sharding.constrain(carry, mesh, axis=0)


@functools.partial(jax.jit, static_argnames=(*_HPARAMS, "mesh"))
def _epoch(carry, epoch, keys, images, targets, *, mesh=None, **hparams):
  """Epoch `epoch` (traced, counting from 0) of experts vmapped over `keys`.

  With a mesh, `keys` [k] (k a multiple of its devices) and the carries are
  split over its 'data' axis.

  Returns:
    (carry, loss [k]): the carries after the epoch and its mean losses.
  """
  carry = sharding.constrain(carry, mesh, axis=0)
  keys = sharding.constrain(keys, mesh, axis=0)

  def one(carry, key):
    carry, record = training.train_expert_epochs(
      carry, key, images, targets, first_epoch=epoch, epochs=1, **hparams
    )
    return carry, record.loss[0]

  return sharding.constrain(jax.vmap(one)(carry, keys), mesh, axis=0)


@functools.partial(jax.jit, static_argnames=("model", "mesh"))
def _count_correct(carry, test_images, test_labels, *, model, mesh=None):
  """[k] correct test predictions of the experts whose carries are given."""
  params, state, _ = sharding.constrain(carry, mesh, axis=0)
  correct = jax.vmap(
    lambda p, s: train.count_correct(
      model, {"params": p, **s}, test_images, test_labels
    )
  )(params, state)
  return sharding.constrain(correct, mesh, axis=0)


class _Programs:
  """The three programs of a chunk, compiled once per chunk width with the
  library's compiler options (`models.compiler_options`);
  `compile_seconds` sums the time spent compiling them."""

  def __init__(self, hparams: dict, *, image_shape, conv_impl: str, mesh):
    self.hparams = hparams
    self.image_shape = tuple(image_shape)
    self.options = models.compiler_options(conv_impl)
    self.mesh = mesh
    self.compile_seconds = 0.0
    self._compiled = {}

  def _compile(self, name, fn, *args, **kwargs):
    shapes = tuple(getattr(x, "shape", None) for x in jax.tree.leaves(args))
    if (name, shapes) not in self._compiled:
      start = time.perf_counter()
      self._compiled[name, shapes] = fn.lower(*args, **kwargs).compile(
        self.options
      )
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      if seconds > 1:
        logging.info("compiled the experts' %s in %.1f s", name, seconds)
    return self._compiled[name, shapes]

  def start(self, keys):
    kwargs = {
      "model": self.hparams["model"],
      "image_shape": self.image_shape,
      "optimizer": tuple(
        (name, self.hparams[name]) for name in ("momentum", "weight_decay")
      ),
      "mesh": self.mesh,
    }
    return self._compile("init", _start, keys, **kwargs)(keys)

  def epoch(self, carry, epoch, keys, images, targets):
    args = (carry, jnp.int32(epoch), keys, images, targets)
    kwargs = {**self.hparams, "mesh": self.mesh}
    return self._compile("epoch", _epoch, *args, **kwargs)(*args)

  def correct(self, carry, test_images, test_labels):
    args = (carry, test_images, test_labels)
    kwargs = {"model": self.hparams["model"], "mesh": self.mesh}
    return self._compile("test", _count_correct, *args, **kwargs)(*args)


def _train_chunk(chunk, keys, arrays, programs, *, workdir, identity, epochs):
  """Trains one chunk epoch by epoch, saving its carry after each epoch;
  continues from what a killed run saved.

  Returns:
    (trajectories, leaves [width, E + 1, ...] numpy; correct [width];
    last epoch's loss [width]; the epoch this run started from).
  """
  images, targets, test_images, test_labels = arrays
  mesh = programs.mesh
  first_carry = programs.start(keys)
  snapshots, carry, losses = buffer.load_progress(
    workdir,
    chunk,
    jax.eval_shape(lambda: first_carry),
    identity=identity,
    ignore=tuple(f"identity.{key}" for key in _RESUMABLE_KEYS),
  )
  snapshots = [sharding.to_host(first_carry[0]), *snapshots]
  resumed_from = len(snapshots) - 1
  if resumed_from:
    logging.info(
      "experts %d-%d: resuming after epoch %d of %d",
      chunk.start,
      chunk.stop - 1,
      resumed_from,
      epochs,
    )
    carry = sharding.put(carry, mesh, axis=0)
  else:
    carry = first_carry
  loss = np.asarray(losses[-1]) if losses else None
  for epoch in range(resumed_from, epochs):
    start = time.perf_counter()
    carry, loss = programs.epoch(carry, epoch, keys, images, targets)
    host_carry, loss = sharding.to_host((carry, loss))
    buffer.save_progress(
      workdir, chunk, epoch + 1, host_carry, identity=identity, losses=loss
    )
    snapshots.append(host_carry[0])
    logging.info(
      "experts %d-%d: epoch %d of %d, mean loss %.4f, %.1f s",
      chunk.start,
      chunk.stop - 1,
      epoch + 1,
      epochs,
      float(np.mean(loss[: len(chunk)])),
      time.perf_counter() - start,
    )
  correct = sharding.to_host(programs.correct(carry, test_images, test_labels))
  trajectories = jax.tree.map(lambda *s: np.stack(s, axis=1), *snapshots)
  return trajectories, correct, loss, resumed_from


def run(config, workdir, *, dataset: data.Dataset | None = None) -> dict:
  """Trains `config.experts.num_experts` experts into the buffer `workdir`.

  Reads `config` (configs/experts.py) and the dataset it names, or
  `dataset` when given (e.g. the classes of one continual-learning step).
  Experts train vmapped in chunks of `experts.experts_in_parallel`, split
  over the devices of `config.mesh` (a chunk that does not divide them is
  completed with the next experts' keys, trained and discarded), one epoch
  a call with the chunk's carry saved after each (`progress_<first>/`);
  each expert is saved as soon as its chunk is done. A restarted run skips
  the saved experts and continues an unfinished chunk from its last saved
  epoch. Writes `config.json`, `buffer.json`, `expert_<i>/` and
  `metrics.jsonl` (per expert: final accuracy on the evaluation split as
  `test_accuracy`, or `validation_accuracy` when the config holds train
  images out; training loss, seconds of this run, the epoch it resumed
  after).

  Returns:
    A summary: experts trained now and skipped, `evaluation_split` and the
    new experts' `mean_test_accuracy` (or `mean_validation_accuracy`).

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
    "lr": cfg.lr,
    "batch_size": cfg.batch_size,
    "momentum": cfg.momentum,
    "weight_decay": cfg.weight_decay,
    "dsa_strategy": cfg.dsa_strategy,
  }
  programs = _Programs(
    hparams,
    image_shape=dataset.image_shape,
    conv_impl=config.model.conv_impl,
    mesh=mesh if sharding.is_sharded(mesh) else None,
  )
  key = rng.stream(jax.random.key(config.seed), "experts")
  arrays = (
    jnp.asarray(dataset.train_images),
    jax.nn.one_hot(dataset.train_labels, dataset.num_classes),
    jnp.asarray(dataset.test_images),
    jnp.asarray(dataset.test_labels),
  )
  arrays = sharding.put(arrays, mesh)
  num_test = len(dataset.test_labels)
  # 'test_accuracy', or 'validation_accuracy' on train images held out.
  accuracy_key = f"{dataset.evaluation_split}_accuracy"
  done = set(buffer.saved_indices(workdir))
  trained, accuracies = [], []
  for chunk in chunks(cfg.num_experts, cfg.experts_in_parallel):
    missing = [i for i in chunk if i not in done]
    if not missing:
      buffer.remove_progress(workdir, chunk.start)
      continue
    width = sharding.padded_size(len(chunk), mesh)
    keys = train.model_keys(key, width, first=chunk.start)
    keys = sharding.put(keys, mesh, axis=0)
    # This run's training and saving, its compiling left out.
    start = time.perf_counter() - programs.compile_seconds
    trajectories, correct, losses, resumed_from = _train_chunk(
      chunk,
      keys,
      arrays,
      programs,
      workdir=workdir,
      identity=identity,
      epochs=cfg.epochs,
    )
    seconds = time.perf_counter() - programs.compile_seconds - start
    seconds /= len(chunk)
    for i in missing:
      j = i - chunk.start
      accuracy = float(correct[j]) / num_test
      metrics = {
        accuracy_key: accuracy,
        "train_loss": float(losses[j]),
        "seconds": seconds,
        "resumed_after_epoch": resumed_from,
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
    buffer.remove_progress(workdir, chunk.start)
  summary = {
    "workdir": str(workdir),
    "num_experts": len(buffer.saved_indices(workdir)),
    "num_snapshots": cfg.epochs + 1,
    "trained": trained,
    "skipped": sorted(done & set(range(cfg.num_experts))),
    f"mean_{accuracy_key}": float(np.mean(accuracies)) if accuracies else None,
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
