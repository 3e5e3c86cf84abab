"""Expert trajectories for trajectory matching (MTT, DESIGN 3.7).

An expert is a network trained on the real training set with plain SGD; its
parameters are kept at initialisation and after every epoch, so `E` epochs
give `E + 1` snapshots. Several experts train at once, vmapped over their
keys; expert `i` always uses `fold_in(key, i)`, so its trajectory does not
depend on how many experts train beside it.

A buffer is a directory:

  buffer.json        what produced the buffer (`buffer_identity`), written
                     once, and the number of snapshots per expert
  expert_000000/     `checkpoint.save_tree` of one trajectory: the Flax
  expert_000001/     'params' tree, every leaf [E + 1, ...], plus metadata
  ...

Each expert directory is written atomically, so it is either complete or
absent; a killed `run` restarts and trains only the missing experts.
`Buffer.read` reads a range of epochs of one expert without loading the
rest (`checkpoint.read_slice`).

References:
  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022 (`buffer.py` of the reference code).
"""

import dataclasses
import functools
import json
import pathlib
import re
import shutil
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lowrank_distill import (
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
from lowrank_distill.parameterize import labels as labels_lib

PyTree = Any

BUFFER_FILE = "buffer.json"
BUFFER_FORMAT = "lowrank_distill.experts"
BUFFER_VERSION = 1
_EXPERT_DIR = re.compile(r"^expert_(\d{6})$")
# What an interrupted `save_tree` of an expert leaves: Orbax's temporary
# directory `expert_<i>.orbax-checkpoint-tmp-<n>`.
_UNFINISHED_DIR = re.compile(r"^expert_\d{6}\..*tmp")

# Sections of a buffer identity that a distillation run must match; the
# `training` section is provenance only.
COMPARED_SECTIONS = ("dataset", "model")
# `dataset.metadata()` entries that change the experts; the path, the test
# split and the class names do not.
DATASET_KEYS = (
  "name",
  "source",
  "image_shape",
  "num_classes",
  "num_train",
  "standardize",
  "mean",
  "std",
  "zca",
)
TRAINING_KEYS = (
  "num_experts",
  "epochs",
  "lr",
  "momentum",
  "weight_decay",
  "batch_size",
  "dsa_strategy",
)
# Provenance that a resumed `run` may change: it only adds experts.
_RESUMABLE_KEYS = ("training.num_experts",)

# Sub-streams of an expert's key.
_INIT, _ORDER, _AUGMENT = 0, 1, 2


# ----------------------------------------------------------------------------
# Training.


@flax.struct.dataclass
class Expert:
  """One trained expert.

  Attributes:
    trajectory: the 'params' tree, every leaf [E + 1, ...]: snapshot 0 is
      the initialisation, snapshot e the parameters after epoch e.
    state: the other variable collections after the last epoch (BatchNorm's
      'batch_stats'), {} for models without any.
    train_loss: [E] mean training loss of each epoch (on augmented batches).
  """

  trajectory: PyTree
  state: PyTree
  train_loss: jax.Array


def expert_key(key, index):
  """The key of expert `index`: `fold_in(key, index)`."""
  return jax.random.fold_in(key, index)


def init_key(key):
  """The initialisation key of the expert whose key is `key`."""
  return jax.random.fold_in(key, _INIT)


def train_expert(
  key,
  images,
  targets,
  *,
  model,
  epochs: int,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  dsa_strategy: str = "none",
) -> Expert:
  """Trains one expert with SGD and keeps its parameters after every epoch.

  Every epoch visits a fresh permutation in batches of `batch_size`, the
  last one partial (masked), as a PyTorch DataLoader without drop_last;
  every batch is augmented with per-sample (non-siamese) DSA. SGD is
  `torch.optim.SGD`: L2 `weight_decay` added to the gradient, then
  `momentum`, at a constant `lr`. Pure and traceable: jit or vmap it where
  it is used.

  Args:
    key: the expert's key (`expert_key`); init, data order and augmentation
      use `fold_in(key, 0)`, `fold_in(key, 1)`, `fold_in(key, 2)`.
    images: [n, h, w, c] training images.
    targets: [n, num_classes] target probabilities (one-hot for hard labels).
    model: a Linen module from `lowrank_distill.models`.
    epochs: E, the number of epochs (E + 1 snapshots).
    lr: the learning rate.
    batch_size: minibatch size (at most n is used).
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    dsa_strategy: DSA strategy string or 'none'.

  Returns:
    The Expert: trajectory leaves [E + 1, ...], final state, [E] losses.

  References:
    Cazenavette et al., "Dataset Distillation by Matching Training
    Trajectories", CVPR 2022.
  """
  images, targets = jnp.asarray(images), jnp.asarray(targets)
  initial = train.init_variables(init_key(key), model, images.shape[1:])
  variables, record = train.train_epochs(
    initial,
    images=images,
    targets=targets,
    model=model,
    epochs=epochs,
    lr=lr,
    batch_size=batch_size,
    order_key=jax.random.fold_in(key, _ORDER),
    aug_key=jax.random.fold_in(key, _AUGMENT),
    dsa_strategy=dsa_strategy,
    momentum=momentum,
    weight_decay=weight_decay,
    keep_snapshots=True,
  )
  _, state = train.split_variables(variables)
  trajectory = jax.tree.map(
    lambda first, rest: jnp.concatenate([first[None], rest]),
    initial["params"],
    record.snapshot,
  )
  return Expert(trajectory=trajectory, state=state, train_loss=record.loss)


def train_experts(
  key,
  images,
  labels,
  *,
  model,
  num_experts: int,
  epochs: int,
  lr=0.01,
  batch_size: int = 256,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  dsa_strategy: str = "none",
  num_classes: int,
  first: int = 0,
  mesh=None,
) -> PyTree:
  """Trains experts `first .. first + num_experts - 1` at once (vmapped).

  Expert i trains with `expert_key(key, i)` (see `train_expert`), so its
  trajectory is the same whichever experts train beside it. Pure: jit it
  where it is used (`model`, `num_experts`, `epochs`, `batch_size`,
  `dsa_strategy`, `num_classes`, `first` and `mesh` are static). With a
  mesh, the experts are split over its 'data' axis; when `num_experts` does
  not divide the devices, the next experts' keys fill the gap and their
  trajectories are dropped from the result.

  Args:
    key: the experts' key (a run uses `rng.stream(root, 'experts')`).
    images: [n, h, w, c] training images.
    labels: [n] int labels, or [n, num_classes] label logits.
    model: a Linen module from `lowrank_distill.models`.
    num_experts: N, how many experts.
    epochs: E; lr, batch_size, momentum, weight_decay, dsa_strategy: see
      `train_expert` (MTT: 0.01, 256, 0, 0).
    num_classes: C.
    first: the index of the first expert.
    mesh: a `sharding` mesh to split the experts over; None: one device.

  Returns:
    The 'params' trees stacked: every leaf [N, E + 1, ...].

  References:
    Cazenavette et al., "Dataset Distillation by Matching Training
    Trajectories", CVPR 2022.
  """
  targets = labels_lib.targets(labels, num_classes)
  width = sharding.padded_size(num_experts, mesh)
  keys = train.model_keys(key, width, first=first)
  keys = sharding.constrain(keys, mesh, axis=0)
  experts = jax.vmap(
    lambda k: train_expert(
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
  )(keys)
  trajectory = sharding.constrain(experts.trajectory, mesh, axis=0)
  if width == num_experts:
    return trajectory
  return jax.tree.map(lambda t: t[:num_experts], trajectory)


# ----------------------------------------------------------------------------
# Identity: what produced a buffer and what a distillation run must match.


def _json_default(value):
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _jsonable(obj):
  """Plain JSON types (tuples become lists), as the buffer stores them."""
  return json.loads(json.dumps(obj, default=_json_default))


def model_identity(config) -> dict:
  """The network of a run config as a buffer identity's 'model' section."""
  name = config.model.name
  return {
    "name": name,
    "options": models.options_for(name, config.model.options),
  }


def buffer_identity(dataset: data.Dataset, config) -> dict:
  """What a buffer is made of, as stored in `buffer.json`.

  Args:
    dataset: the loaded dataset (its `metadata()` gives the preprocessing).
    config: a run config with `model` (name, options) and, for provenance,
      `seed` and `experts` (num_experts, epochs, lr, ...) when present; a
      distillation config has no expert training fields, which is fine as
      `check_buffer` compares only `dataset` and `model`.

  Returns:
    {'dataset': {...}, 'model': {'name', 'options'}, 'training': {...}}.
  """
  metadata = dataset.metadata()
  training = {}
  experts = config.get("experts") or {}
  for name in TRAINING_KEYS:
    if name in experts:
      training[name] = experts[name]
  if "seed" in config:
    training["seed"] = config.seed
  return _jsonable(
    {
      "dataset": {name: metadata[name] for name in DATASET_KEYS},
      "model": model_identity(config),
      "training": training,
    }
  )


_ABSENT = "<absent>"


def _diff(saved, current, prefix: str, ignore) -> list[str]:
  if isinstance(saved, dict) and isinstance(current, dict):
    diffs = []
    names = list(current) + [name for name in saved if name not in current]
    for name in names:
      diffs += _diff(
        saved.get(name, _ABSENT),
        current.get(name, _ABSENT),
        f"{prefix}{name}.",
        ignore,
      )
    return diffs
  name = prefix[:-1]
  if name in ignore or saved == current:
    return []
  return [f"{name}: {saved!r} -> {current!r}"]


def identity_diff(
  saved: dict, current: dict, *, sections=None, ignore=()
) -> list[str]:
  """Differing entries as `'key: saved -> current'` (dotted keys).

  Dicts on both sides are compared key by key; anything else as a whole.

  Args:
    saved, current: buffer identities.
    sections: compare only these top-level sections (None: all of them).
    ignore: dotted keys left out of the comparison.
  """
  saved, current = _jsonable(saved), _jsonable(current)
  if sections is not None:
    saved = {k: v for k, v in saved.items() if k in sections}
    current = {k: v for k, v in current.items() if k in sections}
  return _diff(saved, current, "", ignore)


# ----------------------------------------------------------------------------
# Storage.


def expert_dir(directory, index: int) -> pathlib.Path:
  return pathlib.Path(directory) / f"expert_{index:06d}"


def _num_snapshots(trajectory) -> int:
  lengths = {leaf.shape[0] for leaf in jax.tree.leaves(trajectory)}
  if len(lengths) != 1:
    raise ValueError(
      f"trajectory leaves must share their leading (epoch) axis, got "
      f"lengths {sorted(lengths)}"
    )
  return lengths.pop()


def save_expert(directory, index: int, trajectory, *, metadata: dict) -> None:
  """Writes one expert's trajectory to `directory/expert_<index>`, atomically.

  Call from every process, as `checkpoint.save_tree` asks.

  Args:
    directory: the buffer directory.
    index: the expert's index.
    trajectory: the 'params' tree, every leaf [E + 1, ...].
    metadata: JSON-able dict stored with it (identity, test accuracy, ...);
      'expert' and 'num_snapshots' are added.

  Raises:
    FileExistsError: the expert is already saved.
  """
  trajectory = jax.tree.map(np.asarray, trajectory)
  metadata = {
    **metadata,
    "expert": int(index),
    "num_snapshots": _num_snapshots(trajectory),
  }
  checkpoint.save_tree(
    expert_dir(directory, index), trajectory, metadata=metadata
  )


def saved_indices(directory) -> list[int]:
  """Indices of the experts saved in `directory`, sorted."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  indices = []
  for entry in directory.iterdir():
    if (match := _EXPERT_DIR.match(entry.name)) and entry.is_dir():
      indices.append(int(match.group(1)))
  return sorted(indices)


def _remove_unfinished_saves(directory: pathlib.Path) -> None:
  # An expert directory appears only when its save finished; a run killed
  # mid-save leaves `expert_<i>.<orbax temporary suffix>` behind.
  for entry in directory.iterdir():
    if _UNFINISHED_DIR.match(entry.name) and entry.is_dir():
      logging.info("Removing the unfinished save %s", entry)
      shutil.rmtree(entry, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Buffer:
  """A directory of expert trajectories, opened with `open_buffer`.

  Attributes:
    path: the buffer directory.
    metadata: the content of `buffer.json` (format, num_snapshots, identity).
    indices: the saved experts' indices, sorted (0 .. N-1 once complete).
  """

  path: pathlib.Path
  metadata: dict
  indices: tuple[int, ...]

  @property
  def identity(self) -> dict:
    return self.metadata["identity"]

  @property
  def num_experts(self) -> int:
    return len(self.indices)

  @property
  def num_snapshots(self) -> int:
    """E + 1: the initialisation and one snapshot per epoch."""
    return int(self.metadata["num_snapshots"])

  def expert_path(self, expert: int) -> pathlib.Path:
    """The directory of the `expert`-th saved expert (0 <= expert < N)."""
    if not 0 <= expert < self.num_experts:
      raise IndexError(
        f"expert {expert} out of range: {self.path} holds "
        f"{self.num_experts} experts"
      )
    return expert_dir(self.path, self.indices[expert])

  def read(self, expert: int, start: int, stop: int) -> PyTree:
    """Snapshots `start .. stop - 1` of one expert, reading only those.

    Args:
      expert: which saved expert, 0 <= expert < num_experts (its index in
        `indices`; the expert's own index once the buffer is complete).
      start, stop: the epoch range, 0 <= start < stop <= num_snapshots.

    Returns:
      The 'params' tree as numpy, every leaf [stop - start, ...].
    """
    path = self.expert_path(expert)
    if not 0 <= start < stop <= self.num_snapshots:
      raise IndexError(
        f"snapshots [{start}, {stop}) out of range: {self.path} holds "
        f"{self.num_snapshots} snapshots (epochs 0..{self.num_snapshots - 1})"
      )
    return checkpoint.read_slice(path, (), slice(start, stop))

  def snapshot(self, expert: int, epoch: int) -> PyTree:
    """The 'params' tree of one expert after `epoch` epochs (0: its init)."""
    return jax.tree.map(lambda x: x[0], self.read(expert, epoch, epoch + 1))

  def abstract_params(self) -> PyTree:
    """The 'params' tree of one snapshot as `jax.ShapeDtypeStruct`s."""
    first = self.read(0, 0, 1)
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), first
    )


def _missing_buffer(path: pathlib.Path, field: str, why: str):
  return checkpoint.CheckpointError(
    f"{field}={str(path)!r}: {why}; train experts first "
    f"(python launch/experts.py --workdir={path})"
  )


def open_buffer(directory, *, field: str = "experts.path") -> Buffer:
  """Opens a buffer directory; reads `buffer.json` and lists the experts.

  Args:
    directory: the buffer directory (an experts run's workdir).
    field: the config field that named it, for error messages.

  Raises:
    CheckpointError: no such directory, no `buffer.json`, or a foreign or
      corrupt one.
  """
  path = pathlib.Path(directory).absolute()
  if not path.is_dir():
    raise _missing_buffer(path, field, "no such directory")
  if not (path / BUFFER_FILE).is_file():
    raise _missing_buffer(
      path, field, f"it holds no expert buffer (no {BUFFER_FILE})"
    )
  try:
    metadata = workdir_lib.read_json(path / BUFFER_FILE)
  except (OSError, ValueError) as e:
    raise checkpoint.CheckpointError(
      f"{field}={str(path)!r}: {BUFFER_FILE} is corrupt ({e})"
    ) from e
  if not isinstance(metadata, dict) or metadata.get("format") != BUFFER_FORMAT:
    raise checkpoint.CheckpointError(
      f"{field}={str(path)!r}: {BUFFER_FILE} was not written by "
      f"lowrank_distill.experts"
    )
  if metadata.get("version") != BUFFER_VERSION:
    raise checkpoint.CheckpointError(
      f"{field}={str(path)!r}: buffer version {metadata.get('version')!r}, "
      f"this code reads version {BUFFER_VERSION}"
    )
  return Buffer(
    path=path, metadata=metadata, indices=tuple(saved_indices(path))
  )


def check_buffer(
  buffer,
  expected_identity: dict,
  *,
  field: str = "experts.path",
  min_snapshots: int | None = None,
  needed_by: str = "",
  min_experts: int = 1,
) -> Buffer:
  """Refuses a buffer that a run cannot use; returns it (opened).

  Only the `dataset` and `model` sections of the identities are compared;
  training hyperparameters are provenance.

  Args:
    buffer: a `Buffer`, or the path of one.
    expected_identity: `buffer_identity(dataset, config)` of the run.
    field: the config field that names the buffer, for messages.
    min_snapshots: snapshots the run needs (e.g. max start epoch + expert
      epochs + 1), or None.
    needed_by: the config fields that ask for `min_snapshots`, for messages.
    min_experts: experts the run needs.

  Raises:
    CheckpointError: a missing or foreign buffer, one made from another
      dataset or model (listing `key: buffer value -> run value`), fewer
      experts or snapshots than needed.
  """
  if not isinstance(buffer, Buffer):
    buffer = open_buffer(buffer, field=field)
  where = f"{field}={str(buffer.path)!r}"
  diffs = identity_diff(
    buffer.identity, expected_identity, sections=COMPARED_SECTIONS
  )
  if diffs:
    raise checkpoint.CheckpointError(
      f"{where}: the experts were trained on another dataset or model: "
      f"{'; '.join(diffs)} (buffer -> this run)"
    )
  if buffer.num_experts < min_experts:
    raise checkpoint.CheckpointError(
      f"{where} holds {buffer.num_experts} experts; at least {min_experts} "
      "needed (is its experts run finished?)"
    )
  if min_snapshots is not None and buffer.num_snapshots < min_snapshots:
    asked = f" ({needed_by})" if needed_by else ""
    raise checkpoint.CheckpointError(
      f"{where} holds {buffer.num_snapshots} snapshots per expert (epochs "
      f"0..{buffer.num_snapshots - 1}), but this run needs "
      f"{min_snapshots}{asked}; lower those fields or train experts with "
      f"experts.epochs >= {min_snapshots - 1}"
    )
  return buffer


# ----------------------------------------------------------------------------
# The run.


def validate(config) -> None:
  """Checks the names and values of an experts config before any compute."""
  cfg = config.experts
  models.check_names([config.model.name], field="model.name")
  try:
    models.options_for(config.model.name, config.model.options)
  except ValueError as e:
    raise ValueError(f"model.options: {e}") from None
  for name in ("num_experts", "epochs", "experts_in_parallel", "batch_size"):
    checks.positive_int(f"experts.{name}", cfg[name])
  if not cfg.lr > 0:
    raise ValueError(f"experts.lr must be > 0, got {cfg.lr!r}")
  if not 0 <= cfg.momentum < 1:
    raise ValueError(
      f"experts.momentum must be in [0, 1), got {cfg.momentum!r}"
    )
  if not cfg.weight_decay >= 0:
    raise ValueError(
      f"experts.weight_decay must be >= 0, got {cfg.weight_decay!r}"
    )
  try:
    augment.parse_strategy(cfg.dsa_strategy)
  except ValueError as e:
    raise ValueError(f"experts.{e}") from None


def _check_workdir(workdir: pathlib.Path, identity: dict) -> dict | None:
  """The saved buffer.json if the workdir holds this config's buffer."""
  if not (workdir / BUFFER_FILE).exists():
    if saved_indices(workdir):
      raise checkpoint.CheckpointError(
        f"{workdir} holds expert directories but no {BUFFER_FILE}; "
        "refusing to add experts of unknown origin to it"
      )
    return None
  saved = open_buffer(workdir, field="workdir").metadata
  diffs = identity_diff(saved["identity"], identity, ignore=_RESUMABLE_KEYS)
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
    workdir / BUFFER_FILE,
    {
      "format": BUFFER_FORMAT,
      "version": BUFFER_VERSION,
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
    expert = train_expert(key, images, targets, **kwargs)
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
    dataset = data.load(
      config.dataset.name, **config_utils.dataset_kwargs(config.dataset)
    )
  model = models.create(
    config.model.name,
    num_classes=dataset.num_classes,
    image_shape=dataset.image_shape,
    conv_impl=config.model.conv_impl,
    **models.options_for(config.model.name, config.model.options),
  )
  mesh = sharding.mesh_from_config(config)
  logging.info("Mesh: %s", sharding.describe(mesh))
  identity = buffer_identity(dataset, config)
  saved = _check_workdir(workdir, identity)
  if workdir_lib.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    _remove_unfinished_saves(workdir)
  workdir_lib.write_config(workdir, config)
  _write_buffer_file(workdir, saved, identity, cfg.epochs)
  writer = workdir_lib.MetricsWriter(workdir)

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
  done = set(saved_indices(workdir))
  trained, accuracies = [], []
  for chunk in chunks(cfg.num_experts, cfg.experts_in_parallel):
    missing = [i for i in chunk if i not in done]
    if not missing:
      continue
    width = sharding.padded_size(len(chunk), mesh)
    keys = train.model_keys(key, width, first=chunk.start)
    keys = sharding.put(keys, mesh, axis=0)
    start = time.perf_counter()
    compiled = _train_and_test.lower(keys, *arrays, **hparams).compile()
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
      save_expert(
        workdir,
        i,
        jax.tree.map(lambda t, j=j: t[j], trajectories),
        metadata={"identity": identity, **metrics},
      )
      writer.write(i, expert=i, **metrics)
      trained.append(i)
      accuracies.append(accuracy)
      logging.info(
        "expert %d: test accuracy %.4f, train loss %.4f, %.1f s",
        i,
        accuracy,
        losses[j],
        seconds,
      )
  summary = {
    "workdir": str(workdir),
    "num_experts": len(saved_indices(workdir)),
    "num_snapshots": cfg.epochs + 1,
    "trained": trained,
    "skipped": sorted(done & set(range(cfg.num_experts))),
    "mean_test_accuracy": float(np.mean(accuracies)) if accuracies else None,
  }
  line = (
    f"experts: {summary['num_experts']} in {workdir} ({cfg.epochs + 1} "
    f"snapshots each); trained {len(trained)} now, skipped "
    f"{len(summary['skipped'])} already saved"
  )
  if accuracies:
    line += (
      f"; test accuracy of the new ones {100 * np.mean(accuracies):.2f} ± "
      f"{100 * np.std(accuracies):.2f} %"
    )
  if workdir_lib.is_writer():
    print(line, flush=True)
  logging.info("%s", line)
  return summary
