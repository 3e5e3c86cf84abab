"""The evaluation protocol: train fresh networks on a (synthetic) set.

K networks are initialised from K seeds and trained in one jitted program,
vmapped over the seed axis, then tested on the whole test set in
bounded-memory batches (DESIGN 3.8).

References:
  Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
  ICLR 2021 (the protocol, `evaluate_synset` of the reference code).
"""

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from lowrank_distill import augment, config_utils, data, models, rng, sharding
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any

# A run's `ModelLog` inside its workdir.
MODEL_LOG = "eval_models.jsonl"


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Test accuracies of K independently trained models."""

  accuracies: np.ndarray  # [K]
  model: str

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracies))

  @property
  def std(self) -> float:
    return float(np.std(self.accuracies))

  def to_json(self) -> dict:
    return {
      "model": self.model,
      "accuracies": [float(a) for a in self.accuracies],
      "mean": self.mean,
      "std": self.std,
    }

  def __str__(self) -> str:
    return (
      f"{self.model}: {100 * self.mean:.2f} ± {100 * self.std:.2f} "
      f"(n={len(self.accuracies)})"
    )


def decay_epoch(epochs: int) -> int:
  """Last epoch at the initial lr; the reference decays by 0.1 after it."""
  return epochs // 2 + 1


def _lr_at(epoch, *, lr, epochs):
  return jnp.where(epoch > decay_epoch(epochs), 0.1 * lr, lr)


def epoch_batches(key, num_examples: int, batch_size: int):
  """A fresh permutation split into fixed-shape batches with a validity mask.

  Returns:
    indices: [steps, batch] int32, mask: [steps, batch] float32, where
    steps = ceil(num_examples / batch) and the last batch is partial, as a
    PyTorch DataLoader without drop_last.
  """
  steps = math.ceil(num_examples / batch_size)
  padded = steps * batch_size
  perm = jax.random.permutation(key, num_examples)
  perm = jnp.concatenate(
    [perm, jnp.zeros((padded - num_examples,), perm.dtype)]
  )
  mask = (jnp.arange(padded) < num_examples).astype(jnp.float32)
  return (
    perm.reshape(steps, batch_size).astype(jnp.int32),
    mask.reshape(steps, batch_size),
  )


def init_variables(key, model, image_shape: Sequence[int]) -> PyTree:
  """Flax variables of `model` for one image of `image_shape` (h, w, c)."""
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))


def masked_cross_entropy(model, params, state, images, targets, mask):
  """Mean cross-entropy over the valid rows of a padded batch, train mode.

  Args:
    model: a Linen module.
    params: its parameters.
    state: its other collections (e.g. BatchNorm statistics, updated as in
      train mode), possibly empty.
    images: [b, h, w, c] images.
    targets: [b, C] target probabilities.
    mask: [b], 1 for valid rows, 0 for padding.

  Returns:
    (loss, (new_state, correct)), correct [b] bool: the argmax of the logits
    is the argmax of the targets.
  """
  variables = {"params": params, **state}
  if state:
    logits, state = model.apply(
      variables, images, train=True, mutable=list(state)
    )
  else:
    logits = model.apply(variables, images, train=True)
  losses = labels_lib.soft_cross_entropy(logits, targets)
  correct = jnp.argmax(logits, -1) == jnp.argmax(targets, -1)
  return jnp.sum(losses * mask) / jnp.sum(mask), (state, correct)


def sgd_epoch(
  carry,
  epoch,
  *,
  images,
  targets,
  model,
  batch_size: int,
  order_key,
  aug_key,
  dsa_strategy: str,
  update,
):
  """One epoch of minibatch SGD: the loop every network here trains with.

  The epoch visits `epoch_batches(fold_in(order_key, epoch), ...)`; the
  batch at global step `s` (counting from epoch 0's first batch) gets
  per-sample (non-siamese) DSA under `fold_in(aug_key, s)`.

  Args:
    carry: (params, state, opt_state).
    epoch: the epoch's index, traced or not.
    images: [n, h, w, c] training images.
    targets: [n, C] target probabilities.
    model: a Linen module.
    batch_size: minibatch size (at most n is used); the last batch may be
      partial.
    order_key: the data order's key.
    aug_key: the augmentation's key.
    dsa_strategy: DSA strategy string or 'none'.
    update: `(grads, opt_state, params) -> (params, opt_state)`.

  Returns:
    (carry, per_step): per_step = (loss_sums [steps], indices [steps, b],
    mask [steps, b], correct [steps, b] bool), a batch's loss sum being its
    mean loss times its number of valid rows.
  """
  augmented = bool(augment.parse_strategy(dsa_strategy))
  num_examples = images.shape[0]
  indices, mask = epoch_batches(
    jax.random.fold_in(order_key, epoch),
    num_examples,
    min(batch_size, num_examples),
  )
  steps_per_epoch = indices.shape[0]
  grad_fn = jax.value_and_grad(
    functools.partial(masked_cross_entropy, model), has_aux=True
  )

  def step(carry, batch):
    params, state, opt_state = carry
    step_in_epoch, idx, valid = batch
    x = images[idx]
    if augmented:
      x = augment.augment(
        jax.random.fold_in(aug_key, epoch * steps_per_epoch + step_in_epoch),
        x,
        strategy=dsa_strategy,
        siamese=False,
      )
    (loss, (state, correct)), grads = grad_fn(
      params, state, x, targets[idx], valid
    )
    params, opt_state = update(grads, opt_state, params)
    return (params, state, opt_state), (loss * jnp.sum(valid), correct)

  carry, (loss_sums, correct) = jax.lax.scan(
    step, carry, (jnp.arange(steps_per_epoch), indices, mask)
  )
  return carry, (loss_sums, indices, mask, correct)


def train_network(
  key,
  images,
  targets,
  *,
  model,
  epochs: int,
  lr,
  batch_size: int = 256,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  dsa_strategy: str = "none",
  track_forgetting: bool = False,
) -> tuple[PyTree, dict]:
  """Trains one fresh network with the protocol's SGD schedule.

  SGD with momentum and L2 weight decay on every parameter, as
  `torch.optim.SGD`. Like the reference loop (`range(Epoch + 1)`), it runs
  `epochs + 1` epochs and multiplies the lr by 0.1 after epoch
  `epochs // 2 + 1`, restarting the momentum buffer as the reference does by
  building a new optimiser. Every batch is augmented with per-sample DSA.

  Args:
    key: this model's key; init, data order and augmentation fold from it.
    images: [n, h, w, c] training images.
    targets: [n, num_classes] target probabilities (one-hot for hard labels).
    model: a Linen module from `lowrank_distill.models`.
    epochs: E of the protocol.
    lr: initial learning rate (a float or a traced scalar, e.g. learned).
    batch_size: minibatch size; the last batch of an epoch may be partial.
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    dsa_strategy: DSA strategy string or 'none'.
    track_forgetting: also count, per example, forgetting events (correct at
      one presentation, wrong at the next) as Toneva et al. (2019) do.

  Returns:
    (variables, stats): the trained Flax variables, and when tracking,
    stats = {'forgetting': [n] int32, 'learned': [n] bool}, else {}.
  """
  num_examples = images.shape[0]
  init_key, order_key, aug_key = (jax.random.fold_in(key, i) for i in range(3))
  variables = init_variables(init_key, model, images.shape[1:])
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  optimizer = optax.chain(
    optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum)
  )

  def update_forgetting(stats, idx, valid, correct):
    # An epoch presents every example once, so its steps update at once.
    valid = valid > 0
    previous = stats["last_correct"][idx]
    forgotten = (previous & ~correct & valid).astype(jnp.int32)
    # Padding rows point at example 0: scatter them nowhere.
    idx = jnp.where(valid, idx, num_examples)
    return {
      "forgetting": stats["forgetting"].at[idx].add(forgotten, mode="drop"),
      "learned": stats["learned"].at[idx].max(correct, mode="drop"),
      "last_correct": stats["last_correct"].at[idx].set(correct, mode="drop"),
    }

  def epoch_fn(carry, epoch):
    params, state, opt_state, stats = carry
    restart = epoch == decay_epoch(epochs) + 1
    opt_state = jax.tree.map(
      lambda t: jnp.where(restart, jnp.zeros_like(t), t), opt_state
    )
    epoch_lr = _lr_at(epoch, lr=lr, epochs=epochs)

    def update(grads, opt_state, params):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - epoch_lr * u, params, updates)
      return params, opt_state

    (params, state, opt_state), (_, idx, valid, correct) = sgd_epoch(
      (params, state, opt_state),
      epoch,
      images=images,
      targets=targets,
      model=model,
      batch_size=batch_size,
      order_key=order_key,
      aug_key=aug_key,
      dsa_strategy=dsa_strategy,
      update=update,
    )
    if track_forgetting:
      stats = update_forgetting(
        stats, idx.ravel(), valid.ravel(), correct.ravel()
      )
    return (params, state, opt_state, stats), None

  stats = {}
  if track_forgetting:
    stats = {
      "forgetting": jnp.zeros((num_examples,), jnp.int32),
      "learned": jnp.zeros((num_examples,), bool),
      "last_correct": jnp.zeros((num_examples,), bool),
    }
  (params, state, _, stats), _ = jax.lax.scan(
    epoch_fn,
    (params, state, optimizer.init(params), stats),
    jnp.arange(epochs + 1),
  )
  stats.pop("last_correct", None)
  return {"params": params, **state}, stats


def count_correct(model, variables, images, labels, *, batch_size: int = 500):
  """Number of correctly classified images, in bounded-memory batches.

  Args:
    model: a Linen module.
    variables: its Flax variables (eval mode: BatchNorm running averages).
    images: [m, h, w, c]; labels: [m] int.
    batch_size: images per forward pass (bounds activation memory).

  Returns:
    A scalar int32.
  """
  num = images.shape[0]
  batch_size = min(batch_size, num)
  steps = math.ceil(num / batch_size)
  pad = steps * batch_size - num
  images = jnp.concatenate(
    [images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]
  ).reshape(steps, batch_size, *images.shape[1:])
  labels = jnp.concatenate([labels, jnp.full((pad,), -1, labels.dtype)])
  labels = labels.reshape(steps, batch_size)

  def body(total, batch):
    x, y = batch
    pred = jnp.argmax(model.apply(variables, x, train=False), axis=-1)
    return total + jnp.sum(pred == y), None

  total, _ = jax.lax.scan(body, jnp.int32(0), (images, labels))
  return total


def model_keys(key, num_models: int, *, first: int = 0):
  """Keys of models first..first+num_models-1; each is fold_in(key, index)."""
  return keys_at(key, np.arange(first, first + num_models))


def keys_at(key, indices):
  """[len(indices)] keys: model i's is fold_in(key, i)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices))


class ModelLog:
  """Finished models' test results, one JSON line each, in `path`.

  `evaluate_set` looks every model up under a fingerprint of all that
  decides its result (the key, the set, the test set, the network and the
  training settings) and trains only the models not logged, so an
  evaluation killed midway resumes without retraining the models it
  finished, and re-running a finished job does not evaluate again. Only
  process 0 writes; a line torn by a kill is ignored.
  """

  def __init__(self, path):
    self.path = pathlib.Path(path)

  def lookup(self, fingerprint: str) -> dict[int, int]:
    """{model index: correct test predictions} logged under `fingerprint`."""
    return {
      int(record["model"]): int(record["correct"])
      for record in workdir_lib.read_json_lines(self.path)
      if record.get("fingerprint") == fingerprint
    }

  def record(self, fingerprint: str, indices, correct) -> None:
    """Appends one line per model (durably: flushed and fsynced)."""
    if not workdir_lib.is_writer():
      return
    workdir_lib.append_json_lines(
      self.path,
      [
        {"fingerprint": fingerprint, "model": int(i), "correct": int(c)}
        for i, c in zip(indices, correct)
      ],
      sync=True,
    )


def _fingerprint(key, arrays, settings: dict) -> str:
  digest = hashlib.sha256()
  digest.update(np.asarray(jax.random.key_data(key)).tobytes())
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    digest.update(f"{a.shape}{a.dtype.str}".encode())
    digest.update(a.tobytes())
  digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
  return digest.hexdigest()


def _logged_correct(log, fingerprint: str, num_models: int) -> np.ndarray:
  """[num_models] int32: logged correct counts, -1 where none.

  Process 0 reads the log and broadcasts what it found, so every process
  trains the same models.
  """
  correct = np.full(num_models, -1, np.int32)
  logged = log.lookup(fingerprint) if workdir_lib.is_writer() else {}
  for i, c in logged.items():
    if i < num_models:
      correct[i] = c
  return np.array(multihost_utils.broadcast_one_to_all(correct))


@functools.lru_cache(maxsize=16)
def _train_and_test_program(
  *,
  model_name: str,
  model_options: tuple,
  num_classes: int,
  image_shape: tuple[int, ...],
  conv_impl: str,
  epochs: int,
  batch_size: int,
  momentum: float,
  weight_decay: float,
  dsa_strategy: str,
  test_batch_size: int,
  mesh,
):
  """`evaluate_set`'s jitted program: K seeds -> K test-correct counts.

  Built once per setting (`model_options` as sorted (name, value) pairs), so
  that evaluations of the same shapes (a distillation's intermediate ones,
  the batches of one evaluation, benchmark calls) reuse one compilation
  instead of tracing and compiling a fresh closure each call.
  """
  model = models.create(
    model_name,
    num_classes=num_classes,
    image_shape=image_shape,
    conv_impl=conv_impl,
    **dict(model_options),
  )

  @functools.partial(sharding.jit, mesh=mesh)
  def train_and_test(keys, images, targets, lr, test_images, test_labels):
    keys = sharding.constrain(keys, mesh, axis=0)

    def one(k):
      variables, _ = train_network(
        k,
        images,
        targets,
        model=model,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        dsa_strategy=dsa_strategy,
      )
      return count_correct(
        model, variables, test_images, test_labels, batch_size=test_batch_size
      )

    return jax.vmap(one)(keys)

  return train_and_test


def evaluate_set(
  key,
  images,
  labels,
  test_images,
  test_labels,
  *,
  model_name: str = "convnet",
  model_options: dict | None = None,
  num_classes: int,
  num_models: int = 5,
  epochs: int = 300,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  dsa_strategy: str = "none",
  models_per_batch: int | None = None,
  test_batch_size: int = 500,
  conv_impl: str = "auto",
  mesh=None,
  log: ModelLog | None = None,
) -> EvalResult:
  """Trains `num_models` fresh networks on a set and tests each of them.

  Models are vmapped over seeds in one jitted program; `models_per_batch`
  bounds how many train at once (the result does not depend on it: model i
  always uses `fold_in(key, i)`). With a mesh, the models of a batch are
  split over its 'data' axis; a batch that does not divide the devices is
  completed with models of the next seeds, trained and discarded. With a
  `log`, models it holds are not trained again and each batch is logged as
  it finishes.

  Args:
    key: evaluation key.
    images: [n, h, w, c] the set to train on.
    labels: [n] int hard labels or [n, num_classes] float label logits.
    test_images: [m, h, w, c]; test_labels: [m] int.
    model_name: a name of `lowrank_distill.models.MODELS`.
    model_options: extra options for `models.create` (width, depth, ...).
    num_classes: number of classes.
    num_models: K, models trained from K seeds.
    epochs, lr, batch_size, momentum, weight_decay, dsa_strategy: see
      `train_network`; lr may be a learned lr.
    models_per_batch: models trained in parallel; all of them when None.
    test_batch_size: test images per forward pass.
    conv_impl: convolution implementation for `models.create`.
    mesh: a `sharding` mesh to split the models over; None: one device.
    log: a `ModelLog` to resume from and record to; None: train all.

  Returns:
    EvalResult with every model's test accuracy.
  """
  augment.parse_strategy(dsa_strategy)
  if num_models < 1:
    raise ValueError(f"num_models must be >= 1, got {num_models}")
  train_and_test = _train_and_test_program(
    model_name=model_name,
    model_options=tuple(sorted((model_options or {}).items())),
    num_classes=num_classes,
    image_shape=tuple(images.shape[1:]),
    conv_impl=conv_impl,
    epochs=epochs,
    batch_size=batch_size,
    momentum=momentum,
    weight_decay=weight_decay,
    dsa_strategy=dsa_strategy,
    test_batch_size=test_batch_size,
    mesh=mesh,
  )
  images = jnp.asarray(images, jnp.float32)
  targets = labels_lib.targets(jnp.asarray(labels), num_classes)
  test_images = jnp.asarray(test_images, jnp.float32)
  test_labels = jnp.asarray(test_labels, jnp.int32)
  lr = jnp.asarray(lr, jnp.float32)
  arrays = sharding.put((images, targets, lr, test_images, test_labels), mesh)

  correct = np.full(num_models, -1, np.int32)
  if log is not None:
    fingerprint = _fingerprint(
      key,
      (images, targets, lr, test_images, test_labels),
      {
        "model": model_name,
        "model_options": model_options or {},
        "num_classes": num_classes,
        "epochs": epochs,
        "batch_size": batch_size,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "dsa_strategy": dsa_strategy,
        "test_batch_size": test_batch_size,
        "conv_impl": models.resolve_conv_impl(conv_impl),
        "backend": jax.default_backend(),
      },
    )
    correct = _logged_correct(log, fingerprint, num_models)
  missing = np.flatnonzero(correct < 0)
  chunk = models_per_batch or num_models
  for start in range(0, len(missing), chunk):
    indices = missing[start : start + chunk]
    extra = sharding.padded_size(len(indices), mesh) - len(indices)
    padded = np.concatenate([indices, indices[-1] + 1 + np.arange(extra)])
    keys = sharding.put(keys_at(key, padded), mesh, axis=0)
    correct[indices] = np.asarray(train_and_test(keys, *arrays))[: len(indices)]
    if log is not None:
      log.record(fingerprint, indices, correct[indices])
  accuracies = correct / test_images.shape[0]
  return EvalResult(accuracies=accuracies, model=model_name)


def evaluate_architectures(
  key,
  images,
  labels,
  test_images,
  test_labels,
  *,
  model_names: Sequence[str],
  model_options: dict[str, dict] | None = None,
  **kwargs,
) -> dict[str, EvalResult]:
  """Cross-architecture evaluation: `evaluate_set` for each model name.

  Every name is validated before any training starts; `model_options` maps
  a name to its `models.create` options.
  """
  models.check_names(model_names)
  model_options = model_options or {}
  return {
    name: evaluate_set(
      jax.random.fold_in(key, i),
      images,
      labels,
      test_images,
      test_labels,
      model_name=name,
      model_options=model_options.get(name),
      **kwargs,
    )
    for i, name in enumerate(model_names)
  }


def evaluate_with_config(
  key, images, labels, dataset, config, *, lr=None, log=None
) -> dict[str, EvalResult]:
  """Cross-architecture evaluation as a run's `eval` and `model` configs say.

  Shared by the `run` functions: the protocol's settings come from
  `config.eval`, the ConvNet options and conv impl from `config.model`, a
  learned `lr`, when given, replaces `config.eval.lr`, and `log` (a
  `ModelLog`) resumes a killed evaluation.
  """
  kwargs = config_utils.eval_kwargs(config.eval)
  if lr is not None:
    kwargs["lr"] = lr
  return evaluate_architectures(
    key,
    images,
    labels,
    dataset.test_images,
    dataset.test_labels,
    model_names=list(config.eval.models),
    model_options={
      name: models.options_for(name, config.model.options)
      for name in config.eval.models
    },
    num_classes=dataset.num_classes,
    conv_impl=config.model.conv_impl,
    mesh=sharding.mesh_from_config(config),
    log=log,
    **kwargs,
  )


def run(config, workdir) -> dict:
  """Evaluates a saved synthetic set or coreset (`config.synset`, a path).

  The test set is the one the set was made from (its saved dataset config)
  unless `config.dataset.name` names another. The lr is the learned one when
  the set has it and `config.use_learned_lr`, else `config.eval.lr`.

  Returns:
    The results dictionary written to `<workdir>/results.json`.
  """
  workdir = pathlib.Path(workdir)
  chosen = synset_lib.load(config.synset)
  dataset_cfg = config_utils.dataset_config(
    **chosen.info.get("dataset_config", {"name": chosen.dataset["name"]})
  )
  if config.dataset.name:
    dataset_cfg = config.dataset
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names(config.eval.models)
  dataset = data.load(
    dataset_cfg.name, **config_utils.dataset_kwargs(dataset_cfg)
  )
  if tuple(chosen.images.shape[1:]) != tuple(dataset.image_shape):
    raise ValueError(
      f"synset {config.synset} has images of shape {chosen.images.shape[1:]}, "
      f"but dataset {dataset.name!r} has {dataset.image_shape}"
    )
  if chosen.num_classes != dataset.num_classes:
    raise ValueError(
      f"synset {config.synset} has {chosen.num_classes} classes, but dataset "
      f"{dataset.name!r} has {dataset.num_classes}"
    )
  lr = chosen.lr if config.use_learned_lr else None
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_config(workdir, config)
  results = evaluate_with_config(
    rng.stream(jax.random.key(config.seed), "eval"),
    chosen.images,
    chosen.labels,
    dataset,
    config,
    lr=lr,
    log=ModelLog(workdir / MODEL_LOG),
  )
  summary = {
    "synset": str(config.synset),
    "param": chosen.param,
    "storage_floats": chosen.storage_floats,
    "lr": config.eval.lr if lr is None else lr,
    "results": {name: r.to_json() for name, r in results.items()},
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  for result in results.values():
    logging.info("%s", result)
  return summary
