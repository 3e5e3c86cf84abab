"""The on-disk expert buffer, and the identity a distillation run checks.

A buffer is a directory:

  buffer.json        what produced the buffer (`buffer_identity`), written
                     once, and the number of snapshots per expert
  expert_000000/     `checkpoint.save_tree` of one trajectory: the Flax
  expert_000001/     'params' tree, every leaf [E + 1, ...], plus metadata
  ...
  progress_000002/   while a chunk of experts trains (experts 2.. here):
    epoch_0001/      the chunk's training carry after each epoch, written
    ...              as the epoch ends (`save_progress`)

Each directory is written atomically, so it is either complete or absent;
a killed `run` restarts, trains only the missing experts and continues the
chunk it was training from its last finished epoch (`load_progress`); the
progress directory goes once the chunk's experts are saved.
`Buffer.read` reads a range of epochs of one expert without loading the
rest (`checkpoint.read_slice`).
"""

import dataclasses
import pathlib
import re
import shutil
from typing import Any

import jax
import numpy as np
from absl import logging

from lowrank_distill import checkpoint, data, models
from lowrank_distill import identity as identity_lib
from lowrank_distill import workdir as workdir_lib

PyTree = Any

BUFFER_FILE = "buffer.json"
BUFFER_FORMAT = "lowrank_distill.experts"
BUFFER_VERSION = 1
_EXPERT_DIR = re.compile(r"^expert_(\d{6})$")
# What an interrupted `save_tree` of an expert leaves: Orbax's temporary
# directory `expert_<i>.orbax-checkpoint-tmp-<n>`.
_UNFINISHED_DIR = re.compile(r"^expert_\d{6}\..*tmp")
_PROGRESS_DIR = re.compile(r"^progress_(\d{6})$")
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")
_UNFINISHED_EPOCH_DIR = re.compile(r"^epoch_\d{4,}\..*tmp")

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
  # Buffers from before it match at 0 (`identity.ADDED_FIELDS`).
  "validation_per_class",
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


# ----------------------------------------------------------------------------
# Identity: what produced a buffer and what a distillation run must match.


def model_identity(config) -> dict:
  """The network of a run config as a buffer identity's 'model' section."""
  name = config.model.name
  return {
    "name": name,
    "options": models.options_for(name, config.model.options),
  }


def buffer_identity(
  dataset: data.Dataset, config=None, *, model: dict | None = None
) -> dict:
  """What a buffer is made of, as stored in `buffer.json`.

  Args:
    dataset: the loaded dataset (its `metadata()` gives the preprocessing).
    config: a run config with `model` (name, options) and, for provenance,
      `seed` and `experts` (num_experts, epochs, lr, ...) when present; a
      distillation config has no expert training fields, which is fine as
      `check_buffer` compares only `dataset` and `model`.
    model: instead of `config`, the network (`model_identity`) alone: the
      identity a distillation expects (no training section).

  Returns:
    {'dataset': {...}, 'model': {'name', 'options'}, 'training': {...}}.
  """
  if (config is None) == (model is None):
    raise TypeError("buffer_identity takes a config or a model identity")
  metadata = dataset.metadata()
  training = {}
  if config is not None:
    model = model_identity(config)
    experts = config.get("experts") or {}
    for name in TRAINING_KEYS:
      if name in experts:
        training[name] = experts[name]
    if "seed" in config:
      training["seed"] = config.seed
  return identity_lib.to_json_types(
    {
      "dataset": {name: metadata[name] for name in DATASET_KEYS},
      "model": model,
      "training": training,
    }
  )


def identity_diff(
  saved: dict, current: dict, *, sections=None, ignore=()
) -> list[str]:
  """Differing entries as `'key saved != current'` (`identity.diff`).

  Args:
    saved, current: buffer identities.
    sections: compare only these top-level sections (None: all of them).
    ignore: dotted keys left out of the comparison.
  """
  saved = identity_lib.to_json_types(saved)
  current = identity_lib.to_json_types(current)
  if sections is not None:
    saved = {k: v for k, v in saved.items() if k in sections}
    current = {k: v for k, v in current.items() if k in sections}
  return identity_lib.diff(saved, current, ignore=ignore)


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
    metadata: JSON-able dict stored with it (identity, accuracy, ...);
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


def remove_unfinished_saves(directory: pathlib.Path) -> None:
  """Deletes what interrupted saves left in `directory`: of experts, and of
  epochs in its progress directories."""
  # A directory appears only when its save finished; a run killed mid-save
  # leaves `expert_<i>.<orbax temporary suffix>` (or `epoch_<e>.<...>`).
  places = [(directory, _UNFINISHED_DIR)] + [
    (progress_dir(directory, first), _UNFINISHED_EPOCH_DIR)
    for first in progress_chunks(directory)
  ]
  for place, pattern in places:
    for entry in place.iterdir():
      if pattern.match(entry.name) and entry.is_dir():
        logging.info("Removing the unfinished save %s", entry)
        shutil.rmtree(entry, ignore_errors=True)


def progress_dir(directory, first: int) -> pathlib.Path:
  """Where the chunk of experts starting at `first` keeps its progress."""
  return pathlib.Path(directory) / f"progress_{first:06d}"


def progress_chunks(directory) -> list[int]:
  """The first experts of the chunks with progress in `directory`."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(
    int(match.group(1))
    for entry in directory.iterdir()
    if (match := _PROGRESS_DIR.match(entry.name)) and entry.is_dir()
  )


def _progress_tag(identity: dict, chunk: range, width: int) -> dict:
  return {
    "identity": identity_lib.to_json_types(identity),
    "chunk": [chunk.start, chunk.stop],
    "width": int(width),
  }


def save_progress(
  directory,
  chunk: range,
  epoch: int,
  carry: PyTree,
  *,
  identity: dict,
  losses,
) -> None:
  """Saves a chunk's training carry after `epoch` (counting from 1).

  Call from every process, as `checkpoint.save_tree` asks.

  Args:
    directory: the buffer directory.
    chunk: the experts the carry trains (`loop.chunks`).
    epoch: the epochs done.
    carry: `(params, state, opt_state)` with leaves [width, ...] (the chunk
      padded to the mesh), as numpy; its params are snapshot `epoch`.
    identity: the run's `buffer_identity`.
    losses: [width] the epoch's mean training loss of each expert.
  """
  params, state, opt_state = carry
  width = len(np.asarray(losses))
  checkpoint.save_tree(
    progress_dir(directory, chunk.start) / f"epoch_{epoch:04d}",
    {"params": params, "state": state, "opt_state": opt_state},
    metadata={
      **_progress_tag(identity, chunk, width),
      "epoch": int(epoch),
      "losses": [float(x) for x in np.asarray(losses)],
    },
  )


def load_progress(
  directory,
  chunk: range,
  abstract_carry: PyTree,
  *,
  identity: dict,
  ignore=(),
):
  """The epochs a killed run finished for `chunk`, to continue from.

  Reads `progress_<first>/epoch_<e>` for e = 1, 2, ... up to the first
  missing or unreadable one, and deletes the epochs after it (they are
  trained again). Progress of another chunk layout (another
  `experts_in_parallel` or mesh) or buffer identity is deleted unused.

  Args:
    directory: the buffer directory.
    chunk: the experts to train.
    abstract_carry: the carry's structure, leaves [width, ...]
      (`jax.eval_shape`), so the optimiser state keeps its types.
    identity: the run's `buffer_identity`.
    ignore: identity keys a resumed run may change.

  Returns:
    `(snapshots, carry, losses)`: the params after epochs 1..e (a list of
    e trees, numpy), the carry after epoch e and the [e] lists of each
    epoch's [width] losses; `([], None, [])` when there is nothing to use.
  """
  root = progress_dir(directory, chunk.start)
  width = jax.tree.leaves(abstract_carry)[0].shape[0]
  tag = _progress_tag(identity, chunk, width)
  target = dict(zip(("params", "state", "opt_state"), abstract_carry))
  snapshots, carry, losses = [], None, []
  epoch = 1
  while (path := root / f"epoch_{epoch:04d}").is_dir():
    try:
      metadata = checkpoint.load_metadata(path)
      saved = {key: metadata.get(key) for key in tag}
      if diffs := identity_lib.diff(saved, tag, ignore=ignore):
        logging.warning(
          "Not using %s, the progress of another run: %s (saved != now)",
          root,
          "; ".join(diffs),
        )
        snapshots, carry, losses = [], None, []
        break
      tree, _ = checkpoint.load_tree(path, abstract_tree=target)
    except checkpoint.CheckpointError as e:
      logging.warning("Resuming after epoch %d: %s", epoch - 1, e)
      break
    tree = jax.device_get(tree)
    snapshots.append(tree["params"])
    carry = (tree["params"], tree["state"], tree["opt_state"])
    losses.append(metadata["losses"])
    epoch += 1
  _remove_epochs_after(root, len(snapshots))
  return snapshots, carry, losses


def _remove_epochs_after(root: pathlib.Path, epoch: int) -> None:
  """Deletes the saved epochs after `epoch` (all of `root` at 0)."""
  if root.is_dir() and workdir_lib.is_writer():
    if epoch == 0:
      shutil.rmtree(root, ignore_errors=True)
    else:
      for entry in root.iterdir():
        match = _EPOCH_DIR.match(entry.name)
        if match and int(match.group(1)) > epoch:
          logging.info("Removing %s, trained again", entry)
          shutil.rmtree(entry, ignore_errors=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("experts: progress read")


def remove_progress(directory, first: int) -> None:
  """Deletes the progress of the chunk starting at `first` (its experts are
  saved)."""
  if workdir_lib.is_writer():
    shutil.rmtree(progress_dir(directory, first), ignore_errors=True)


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
