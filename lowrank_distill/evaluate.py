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
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lowrank_distill import (
  augment,
  checks,
  config_utils,
  models,
  rng,
  sharding,
  train,
)
from lowrank_distill import released as released_lib
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any

# A run's `ModelLog` inside its workdir.
MODEL_LOG = "eval_models.jsonl"


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Test accuracies of K independently trained models.

  `correct_images` says which test images each model classified correctly
  ([K, m] bool), for paired comparisons over models and images
  (`lowrank_distill.compare`); None when a model's came from a log written
  before they were recorded.
  """

  accuracies: np.ndarray  # [K]
  model: str
  correct_images: np.ndarray | None = None  # [K, m] bool

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
  grad_chunk: int = 0,
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
    grad_chunk: 0, or each batch's gradient in chunks of at most this many
      images (`train.chunked_cross_entropy_grad`: equal to float rounding).

  Returns:
    (variables, stats): the trained Flax variables, and when tracking,
    stats = {'forgetting': [n] int32, 'learned': [n] bool}, else {}.
  """
  init_key, order_key, aug_key = (jax.random.fold_in(key, i) for i in range(3))
  variables, record = train.train_epochs(
    train.init_variables(init_key, model, images.shape[1:]),
    images=images,
    targets=targets,
    model=model,
    epochs=epochs + 1,
    lr=functools.partial(_lr_at, lr=lr, epochs=epochs),
    batch_size=batch_size,
    order_key=order_key,
    aug_key=aug_key,
    dsa_strategy=dsa_strategy,
    momentum=momentum,
    weight_decay=weight_decay,
    restart_momentum_at=decay_epoch(epochs) + 1,
    keep_batches=track_forgetting,
    grad_chunk=grad_chunk,
  )
  if not track_forgetting:
    return variables, {}
  return variables, forgetting_events(
    record.indices, record.mask, record.correct, num_examples=images.shape[0]
  )


def forgetting_events(indices, mask, correct, *, num_examples: int) -> dict:
  """Per-example forgetting events over epochs (Toneva et al., 2019).

  An event is an example classified correctly at one presentation and
  wrongly at the next.

  Args:
    indices, mask, correct: [E, steps, b] a training's batches
      (`train.EpochRecord`): example indices, validity, correctness.
    num_examples: n.

  Returns:
    {'forgetting': [n] int32 events, 'learned': [n] bool, correct at least
    once}.
  """

  def epoch(stats, batches):
    # An epoch presents every example once, so its steps update at once.
    idx, valid, right = (b.ravel() for b in batches)
    valid = valid > 0
    previous = stats["last_correct"][idx]
    forgotten = (previous & ~right & valid).astype(jnp.int32)
    # Padding rows point at example 0: scatter them nowhere.
    idx = jnp.where(valid, idx, num_examples)
    return {
      "forgetting": stats["forgetting"].at[idx].add(forgotten, mode="drop"),
      "learned": stats["learned"].at[idx].max(right, mode="drop"),
      "last_correct": stats["last_correct"].at[idx].set(right, mode="drop"),
    }, None

  stats = {
    "forgetting": jnp.zeros((num_examples,), jnp.int32),
    "learned": jnp.zeros((num_examples,), bool),
    "last_correct": jnp.zeros((num_examples,), bool),
  }
  stats, _ = jax.lax.scan(epoch, stats, (indices, mask, correct))
  stats.pop("last_correct")
  return stats


class ModelLog:
  """Finished models' test results, one JSON line each, in `path`.

  `evaluate_set` looks every model up under a fingerprint of all that
  decides its result (the key, the set, the test set, the network and the
  training settings) and trains only the models not logged, so an
  evaluation killed midway resumes without retraining the models it
  finished, and re-running a finished job does not evaluate again. Only
  process 0 writes; a line torn by a kill is ignored.

  A line holds the model's index, its correct count, the number of test
  images, a digest of the test split (`split_digest`) and the indices of
  the test images it got wrong, so that two evaluations on the same split
  can be compared image by image (`lowrank_distill.compare`). Lines
  written before the last three were recorded still resume.
  """

  def __init__(self, path):
    self.path = pathlib.Path(path)

  def evaluations(self) -> dict[str, dict[int, dict]]:
    """{fingerprint: {model index: its line}}, fingerprints in the order
    first written; for a model logged twice the last line wins."""
    found = {}
    for record in workdir_lib.read_json_lines(self.path):
      if "fingerprint" in record:
        found.setdefault(record["fingerprint"], {})[int(record["model"])] = (
          record
        )
    return found

  def lookup(self, fingerprint: str) -> dict[int, dict]:
    """{model index: its line} logged under `fingerprint` (the last wins)."""
    return self.evaluations().get(fingerprint, {})

  def record(
    self, fingerprint: str, indices, correct_images, *, split_digest: str
  ) -> None:
    """Appends one line per model (durably: flushed and fsynced).

    Args:
      fingerprint: the evaluation's fingerprint.
      indices: [b] the models' indices.
      correct_images: [b, m] bool, which test images each got right.
      split_digest: `split_digest` of the test split.
    """
    if not workdir_lib.is_writer():
      return
    correct_images = np.asarray(correct_images, bool)
    workdir_lib.append_json_lines(
      self.path,
      [
        {
          "fingerprint": fingerprint,
          "model": int(i),
          "correct": int(right.sum()),
          "tested": int(right.size),
          "split_digest": split_digest,
          "wrong": np.flatnonzero(~right).tolist(),
        }
        for i, right in zip(indices, correct_images)
      ],
      sync=True,
    )


def correct_images_of(record: dict) -> np.ndarray | None:
  """[m] bool: which test images a `ModelLog` line's model got right.

  None for a line written before the wrong images were recorded, or one
  whose wrong images do not add up to its correct count.
  """
  if "wrong" not in record or "tested" not in record:
    return None
  if int(record["tested"]) - len(record["wrong"]) != int(record["correct"]):
    return None
  right = np.ones(int(record["tested"]), bool)
  right[np.asarray(record["wrong"], np.int64)] = False
  return right


def split_digest(test_images, test_labels) -> str:
  """A short digest naming a test split: evaluations to compare share it."""
  return _fingerprint(None, (test_images, test_labels), {})[:16]


def _fingerprint(key, arrays, settings: dict) -> str:
  digest = hashlib.sha256()
  if key is not None:
    digest.update(np.asarray(jax.random.key_data(key)).tobytes())
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    digest.update(f"{a.shape}{a.dtype.str}".encode())
    digest.update(a.tobytes())
  digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
  return digest.hexdigest()


def _logged_results(
  log, fingerprint: str, num_models: int, num_tested: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The models `log` holds under `fingerprint`.

  Process 0 reads the log and broadcasts what it found, so every process
  trains the same models.

  Returns:
    (correct [num_models] int32 counts, -1 where none; correct_images
    [num_models, num_tested] bool; known [num_models] bool, whether a
    model's correct_images were logged).
  """
  correct = np.full(num_models, -1, np.int32)
  correct_images = np.zeros((num_models, num_tested), bool)
  known = np.zeros(num_models, bool)
  logged = log.lookup(fingerprint) if workdir_lib.is_writer() else {}
  for i, record in logged.items():
    if i >= num_models:
      continue
    correct[i] = int(record["correct"])
    right = correct_images_of(record)
    if right is not None and right.size == num_tested:
      correct_images[i], known[i] = right, True
  return tuple(
    np.array(multihost_utils.broadcast_one_to_all(a))
    for a in (correct, correct_images, known)
  )


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
  grad_chunk: int | None,
  mesh,
):
  """`evaluate_set`'s jitted programs: K seeds -> [K, m] correct test images.

  Two programs, built once per setting (`model_options` as sorted (name,
  value) pairs), so that evaluations of the same shapes (a distillation's
  intermediate ones, the batches of one evaluation, benchmark calls) reuse
  their compilations: the training with `conv_impl`, then the test pass
  with XLA's own convolutions. A forward pass needs no im2col (which pays
  off for gradients inside the training loop): on one CPU core the test
  pass of 2,000 MNIST-size images took 9.0 s with im2col and 2.7 s with
  XLA's convolutions and their compiler options (docs/RESULTS.md), with
  the same parameters and logits equal to float rounding.
  """

  def create(impl):
    return models.create(
      model_name,
      num_classes=num_classes,
      image_shape=image_shape,
      conv_impl=impl,
      **dict(model_options),
    )

  model, test_model = create(conv_impl), create("xla")
  if grad_chunk is None:
    grad_chunk = auto_grad_chunk(model, image_shape)

  @functools.partial(
    sharding.jit, mesh=mesh, compiler_options=models.compiler_options(conv_impl)
  )
  def train_models(keys, images, targets, lr):
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
        grad_chunk=grad_chunk,
      )
      return variables

    return jax.vmap(one)(keys)

  @functools.partial(
    sharding.jit, mesh=mesh, compiler_options=models.compiler_options("xla")
  )
  def test_models(variables, test_images, test_labels):
    variables = sharding.constrain(variables, mesh, axis=0)
    return jax.vmap(
      lambda v: train.correct_predictions(
        test_model, v, test_images, test_labels, batch_size=test_batch_size
      )
    )(variables)

  def train_and_test(keys, images, targets, lr, test_images, test_labels):
    return test_models(
      train_models(keys, images, targets, lr), test_images, test_labels
    )

  return train_and_test


# The evaluation's training step on one CPU core, ms, whole batch -> its
# gradient in chunks (the ConvNet-3 of the protocol, DSA, MNIST-size
# images; docs/RESULTS.md, session 17): 170 images 385 -> 331 (chunks of
# 34), 333 (17); 70 images 153 -> 131 (14), 130 (10); chunks of 85 and
# 35 gained half as much. With 32: one model's evaluation 0.78x (170
# images) and 0.89x (70) the whole batch's time.
CPU_GRAD_CHUNK = 32


def auto_grad_chunk(model, image_shape) -> int:
  """Images per gradient chunk when the config leaves it open.

  On a CPU `CPU_GRAD_CHUNK` for models without batch statistics (a
  chunk's activations stay in cache); 0, the whole batch, for models with
  them (a chunk's statistics are not the batch's) and on accelerators,
  which a large batch fills better.
  """
  if jax.default_backend() != "cpu":
    return 0
  variables = jax.eval_shape(
    lambda: train.init_variables(jax.random.key(0), model, image_shape)
  )
  return 0 if train.split_variables(variables)[1] else CPU_GRAD_CHUNK


def auto_models_per_batch(num_models: int, mesh=None) -> int:
  """Models to train at once when the config leaves it open.

  On a CPU one model per device along the mesh's 'data' axis: one model's
  matmuls already fill the cores: vmapping 10 seeds took 1.36x the time of
  training them one after another on two threads (docs/RESULTS.md,
  "Evaluation throughput"), 20 seeds on one core the same time (1.01x,
  session 12), and one at a time keeps each finished model's result when a
  run is killed. On an accelerator all `num_models` at once, where one
  model does not fill the device. The accuracies do not depend on it.
  """
  if jax.default_backend() == "cpu":
    return min(num_models, sharding.data_size(mesh))
  return num_models


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
  grad_chunk: int | None = None,
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
    models_per_batch: models trained in parallel; None: `auto_models_per_batch`
      (one per device on a CPU, all of them on an accelerator).
    test_batch_size: test images per forward pass.
    conv_impl: convolution implementation for `models.create`.
    grad_chunk: each batch's gradient in chunks of at most this many images
      (0: the whole batch); None: `auto_grad_chunk`. Accuracies agree to
      float rounding, so a resumed log mixes models of either setting.
    mesh: a `sharding` mesh to split the models over; None: one device.
    log: a `ModelLog` to resume from and record to; None: train all.

  Returns:
    EvalResult with every model's test accuracy and the test images each
    got right.
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
    grad_chunk=grad_chunk,
    mesh=mesh,
  )
  images = jnp.asarray(images, jnp.float32)
  targets = labels_lib.targets(jnp.asarray(labels), num_classes)
  test_images = jnp.asarray(test_images, jnp.float32)
  test_labels = jnp.asarray(test_labels, jnp.int32)
  lr = jnp.asarray(lr, jnp.float32)
  arrays = sharding.put((images, targets, lr, test_images, test_labels), mesh)

  num_tested = test_images.shape[0]
  correct = np.full(num_models, -1, np.int32)
  correct_images = np.zeros((num_models, num_tested), bool)
  known = np.zeros(num_models, bool)
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
        # The test pass's convolutions (`_train_and_test_program`).
        "test_conv_impl": "xla",
        "backend": jax.default_backend(),
      },
    )
    digest = split_digest(test_images, test_labels)
    correct, correct_images, known = _logged_results(
      log, fingerprint, num_models, num_tested
    )
  missing = np.flatnonzero(correct < 0)
  chunk = models_per_batch or auto_models_per_batch(num_models, mesh)
  for start in range(0, len(missing), chunk):
    indices = missing[start : start + chunk]
    extra = sharding.padded_size(len(indices), mesh) - len(indices)
    padded = np.concatenate([indices, indices[-1] + 1 + np.arange(extra)])
    keys = sharding.put(train.keys_at(key, padded), mesh, axis=0)
    right = np.asarray(train_and_test(keys, *arrays))[: len(indices)]
    correct_images[indices], known[indices] = right, True
    correct[indices] = right.sum(axis=1)
    if log is not None:
      log.record(fingerprint, indices, right, split_digest=digest)
  return EvalResult(
    accuracies=correct / num_tested,
    model=model_name,
    correct_images=correct_images if known.all() else None,
  )


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


def evaluate_on_test_set(
  key, images, labels, dataset, *, mesh, log=None, **settings
) -> dict[str, EvalResult]:
  """`evaluate_architectures` on `dataset`'s test set.

  Args:
    key: the evaluation key.
    images, labels: the set to train on.
    dataset: the dataset whose test images and classes are used (its
      held-out validation images when it was loaded with
      `validation_per_class`; its `evaluation_split` says which).
    mesh: the run's mesh (built once by its `run`).
    log: a `ModelLog` that resumes a killed evaluation, or None.
    **settings: `config_utils.evaluation_settings` of the run's config
      (a learned lr replaces its 'lr').
  """
  logging.info(
    "Evaluating on the %s split of %s (%d images)",
    dataset.evaluation_split,
    dataset.name,
    len(dataset.test_labels),
  )
  return evaluate_architectures(
    key,
    images,
    labels,
    dataset.test_images,
    dataset.test_labels,
    num_classes=dataset.num_classes,
    mesh=mesh,
    log=log,
    **settings,
  )


# Every numeric field of an evaluation config (`checks.check_ranges`).
RANGES = {
  **config_utils.COMMON_RANGES,
  "released.experiment": checks.Range(low=0, integer=True),
}


def released_format(config) -> released_lib.ReleasedFormat | None:
  """The `ReleasedFormat` of `config.released`; None for our own export."""
  cfg = config.get("released") or {}
  if not cfg.get("format"):
    return None
  return released_lib.ReleasedFormat(**cfg)


def validate(config) -> None:
  """Checks an evaluation config's names and values before anything loads."""
  if not config.synset:
    raise ValueError(
      "synset: the path of a saved set to evaluate is required "
      "(configs/evaluate.py:synset=<workdir>/synset)"
    )
  if config.eval.dsa_strategy != config_utils.DSA_FROM_SET:
    augment.parse_strategy(config.eval.dsa_strategy)
  elif released_format(config) is not None:
    raise ValueError(
      f"eval.dsa_strategy {config_utils.DSA_FROM_SET!r} reads the strategy "
      "from a set exported here; a released set has none: name its strategy "
      "(e.g. color_crop_cutout_scale_rotate) or 'none'"
    )
  models.check_names(config.eval.models)
  checks.check_ranges(config, RANGES)
  if (fmt := released_format(config)) is not None:
    fmt.validate()
    if not config.dataset.name:
      raise ValueError(
        "dataset.name: a released set does not say which dataset it was "
        "distilled from; name it (configs/evaluate.py:dataset=mnist)"
      )


def _recipe_strategy(chosen, path) -> str:
  """The DSA strategy a set's recipe names for its evaluation."""
  strategy = chosen.info.get("recipe", {}).get("evaluation", {})
  strategy = strategy.get("dsa_strategy")
  if strategy is None:
    raise ValueError(
      f"eval.dsa_strategy {config_utils.DSA_FROM_SET!r}: synset {path} has no "
      "recipe naming its evaluation's DSA strategy; name one (e.g. "
      "color_crop_cutout_scale_rotate) or 'none'"
    )
  augment.parse_strategy(strategy)
  return strategy


# Where a dataset's files are read on this machine. A set made on another
# host saved that host's (e.g. the GPU host's `.gpu_carry/fashion_mnist`);
# the run's config says where they are here. The other fields (which data,
# which split, ZCA) say what the set is tested on and stay the set's own.
DATASET_LOCATION_FIELDS = ("source", "path", "data_dir", "manual_dir")


def _load_set(config):
  """(the set, the dataset config it is tested on).

  The set's saved dataset config, with the location fields the run's config
  gives, unless `config.dataset.name` names another dataset.
  """
  fmt = released_format(config)
  if fmt is not None:
    return None, config.dataset
  chosen = synset_lib.load(config.synset)
  if config.dataset.name:
    return chosen, config.dataset
  dataset_cfg = config_utils.dataset_config(
    **chosen.info.get("dataset_config", {"name": chosen.dataset["name"]})
  )
  defaults = config_utils.dataset_config(dataset_cfg.name)
  for field, value in config.dataset.items():
    if field == "name" or value == defaults[field]:
      continue
    if field in DATASET_LOCATION_FIELDS:
      dataset_cfg[field] = value
    elif value != dataset_cfg[field]:
      raise ValueError(
        f"dataset.{field}={value!r}, but synset {config.synset} was made "
        f"with {dataset_cfg[field]!r} and is tested as it was made; only "
        f"{', '.join(DATASET_LOCATION_FIELDS)} (where the files are) apply "
        "to it. To test it on another split, name the dataset "
        f"(configs/evaluate.py:dataset={dataset_cfg.name})"
      )
  return chosen, dataset_cfg


# Fields an evaluation resumed in its workdir may change: where and how
# fast it runs, not what it computes.
RESUMABLE_FIELDS = (
  "mesh",
  "eval.models_per_batch",
  "eval.test_batch_size",
  "eval.grad_chunk",
)


def check_workdir(workdir, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  workdir_lib.check_config(
    workdir,
    config,
    resumable_fields=RESUMABLE_FIELDS,
    what="an evaluation",
  )


def run(config, workdir) -> dict:
  """Evaluates a saved synthetic set or coreset (`config.synset`, a path).

  The test set is the one the set was made from (its saved dataset config,
  read from where `config.dataset`'s location fields say when given) unless
  `config.dataset.name` names another. The lr is the learned one when
  the set has it and `config.use_learned_lr`, else `config.eval.lr`. A
  workdir of another config (another set, protocol, ...) is refused, so a
  finished evaluation is never overwritten; the same config resumes.

  Returns:
    The results dictionary written to `<workdir>/results.json`.
  """
  workdir = pathlib.Path(workdir)
  validate(config)
  check_workdir(workdir, config)
  chosen, dataset_cfg = _load_set(config)
  dataset = config_utils.load_dataset(dataset_cfg)
  if chosen is None:
    chosen = released_lib.load(config.synset, released_format(config), dataset)
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
  strategy = config.eval.dsa_strategy
  if strategy == config_utils.DSA_FROM_SET:
    strategy = _recipe_strategy(chosen, config.synset)
  lr = chosen.lr if config.use_learned_lr else None
  mesh = sharding.mesh_from_config(config)
  writer = workdir_lib.start(workdir, config)
  settings = config_utils.evaluation_settings(config)
  if lr is not None:
    settings["lr"] = lr
  settings["dsa_strategy"] = strategy
  results = evaluate_on_test_set(
    rng.stream(jax.random.key(config.seed), "eval"),
    chosen.images,
    chosen.labels,
    dataset,
    mesh=mesh,
    log=ModelLog(workdir / MODEL_LOG),
    **settings,
  )
  summary = {
    "synset": str(config.synset),
    "param": chosen.param,
    "storage_floats": chosen.storage_floats,
    "lr": config.eval.lr if lr is None else lr,
    "dsa_strategy": settings["dsa_strategy"],
    "results": {name: r.to_json() for name, r in results.items()},
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  writer.write(0, eval=summary["results"], final=True)
  for result in results.values():
    logging.info("%s", result)
  return summary
