"""The one module that talks to Orbax: run checkpoints and one-off pytrees.

Two kinds of artifact live on disk:

* `Checkpointer` manages a run's `<workdir>/checkpoints` directory with an
  `ocp.CheckpointManager`. Every step directory holds three items: `state`
  (the pytree, arrays written by Orbax from every process), `config` (the
  run's JSON config) and `metrics` (a JSON dict). Saves are asynchronous;
  Orbax writes each step into a temporary directory and renames it into
  place when complete, so a run killed mid-save keeps its previous
  checkpoint intact. A resumed run first compares the saved config with its
  own and refuses (`CheckpointError`) to resume from, or write beside, the
  checkpoints of a different config.
* `save_tree` / `load_tree` / `load_metadata` / `read_slice` handle one-off
  directories (the exported synthetic set, expert buffers): a pytree item
  `tree` plus a JSON item `metadata`, written atomically.

Typed PRNG keys (`jax.random.key`) cannot be stored by Orbax as such: they
are saved as their `jax.random.key_data` and rebuilt with
`jax.random.wrap_key_data` wherever the abstract tree passed to a restore has
a key dtype there.

Orbax logs about fifty INFO lines per save through absl; the launchers call
`quiet_orbax_logs()`, which filters Orbax's records below WARNING out of the
`absl` logger (`ORBAX_INFO_FILTER`). Importing this module changes no
logging.
"""

import functools
import logging
import os
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from lowrank_distill import identity

TREE_ITEM = "tree"
METADATA_ITEM = "metadata"
STATE_ITEM = "state"
CONFIG_ITEM = "config"
METRICS_ITEM = "metrics"

# Arrays of rank >= 2 whose rows along axis 0 are at least this large are
# stored one row per chunk, so `read_slice` of one row (one epoch of an expert
# buffer) reads only that row from disk; smaller arrays stay one chunk.
ROW_CHUNK_MIN_BYTES = 4096

# Orbax's marker of an unfinished (temporary) checkpoint directory.
_TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX
# Orbax's file at the root of every finished checkpoint directory.
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt, foreign or of another configuration."""


class CorruptCheckpointError(CheckpointError):
  """One of our checkpoints cannot be read (truncated, missing files)."""


# A corrupt checkpoint skipped by a resume is moved aside under this prefix
# (kept for inspection; never read again, never pruned).
CORRUPT_PREFIX = "corrupt_"


class _OrbaxInfoFilter(logging.Filter):
  """Drops Orbax's INFO/DEBUG records; its warnings and errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return f"{os.sep}orbax{os.sep}" not in record.pathname


ORBAX_INFO_FILTER = _OrbaxInfoFilter()


def quiet_orbax_logs() -> None:
  """Filters Orbax's INFO/DEBUG records out of the `absl` logger (once)."""
  logger = logging.getLogger("absl")
  if ORBAX_INFO_FILTER not in logger.filters:
    logger.addFilter(ORBAX_INFO_FILTER)


# ----------------------------------------------------------------------------
# Pytree helpers: typed keys, abstract trees, JSON.


def _is_key_dtype(dtype) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  """Replaces typed PRNG key leaves with their raw `uint32` key data."""

  def convert(leaf):
    if hasattr(leaf, "dtype") and _is_key_dtype(leaf.dtype):
      return jax.random.key_data(leaf)
    return leaf

  return jax.tree.map(convert, tree)


def _key_impl_and_data_shape(abstract_key):
  """The PRNG impl of an abstract key array and the shape of its key data."""
  impls = []

  def key_data(key):
    impls.append(jax.random.key_impl(key))
    return jax.random.key_data(key)

  data = jax.eval_shape(key_data, abstract_key)
  return impls[0], data


def _default_sharding():
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _as_abstract(leaf):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return jax.ShapeDtypeStruct(
      leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)
    )
  # Python scalars: the dtype JAX would give them.
  return jax.eval_shape(lambda: leaf)


def _storage_target(abstract_tree):
  """The Orbax restore target for `abstract_tree` (keys -> key data).

  Leaves without a sharding are restored onto the first local device.
  """

  def convert(leaf):
    leaf = _as_abstract(leaf)
    sharding = leaf.sharding or _default_sharding()
    if _is_key_dtype(leaf.dtype):
      _, data = _key_impl_and_data_shape(leaf)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree.map(convert, abstract_tree)


def _wrap_keys(abstract_tree, restored):
  """Rebuilds typed keys where `abstract_tree` has a key dtype."""

  def convert(abstract, value):
    abstract = _as_abstract(abstract)
    if _is_key_dtype(abstract.dtype):
      impl, _ = _key_impl_and_data_shape(abstract)
      return jax.random.wrap_key_data(value, impl=impl)
    return value

  return jax.tree.map(convert, abstract_tree, restored)


def _to_json(obj, *, what: str):
  """`obj` as plain JSON types (tuples become lists, arrays lists)."""
  if obj is None:
    return {}
  if hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if not isinstance(obj, dict):
    raise TypeError(f"{what} must be a dict, got {type(obj).__name__}")
  try:
    return identity.to_json_types(obj)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{what} is not JSON serialisable: {e}") from e


def _describe(error: Exception, limit: int = 300) -> str:
  """`Type: message`, shortened (TensorStore errors embed whole specs)."""
  message = str(error).strip()
  if len(message) > limit:
    message = message[:limit] + "..."
  return f"{type(error).__name__}: {message}"


# ----------------------------------------------------------------------------
# Run checkpoints.


def _require_items(path: pathlib.Path, names, writer: str) -> None:
  """Raises CheckpointError unless the directory `path` holds every name."""
  found = sorted(entry.name for entry in path.iterdir())
  missing = [name for name in names if name not in found]
  if missing:
    raise CheckpointError(
      f"{path} was not written by lowrank_distill.{writer} (missing "
      f"{', '.join(missing)}; found {', '.join(found) or 'nothing'})"
    )


class Checkpointer:
  """Saves and restores a run's state under `<workdir>/checkpoints`.

  Usage (the automatic resume):

    with Checkpointer(workdir / "checkpoints", config=config) as ckpt:
      abstract = jax.eval_shape(init_state, key)
      restored = ckpt.restore_or_none(abstract)
      state, metrics = restored or (init_state(key), {})
      for step in range(start, num_steps):
        ...
        ckpt.save(step, state, metrics=metrics)

  Every checkpoint stores the run's config. Restoring (and the first save
  into a directory that already holds checkpoints) compares it with
  `config` and raises `CheckpointError` naming the differing fields, without
  touching anything on disk. Saves run in the background; `wait()` blocks
  until they are on disk. Only process 0 writes the JSON items (Orbax's
  JSON handler); every process writes its own array shards.
  """

  def __init__(
    self,
    directory,
    *,
    config: dict,
    max_to_keep: int = 2,
    save_interval_steps: int = 1,
  ):
    """Creates the manager; nothing is written until the first `save`.

    Args:
      directory: the checkpoint directory, `<workdir>/checkpoints`.
      config: the run's JSON-able config (a dict, or anything with
        `to_dict()`); saved with every checkpoint and compared on restore.
      max_to_keep: how many of the latest checkpoints to keep.
      save_interval_steps: `save` only saves steps that are multiples of
        this (Orbax's fixed-interval policy) unless `force=True`.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(
        f"save_interval_steps must be >= 1, got {save_interval_steps}"
      )
    self.directory = pathlib.Path(directory).absolute()
    self.config = _to_json(config, what="config")
    self._checked = False
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        # Created on the first save, so a missing directory stays missing.
        create=False,
        enable_async_checkpointing=True,
      ),
    )

  # -- context manager -------------------------------------------------------

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's resources."""
    self._manager.close()

  # -- queries ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The latest finished checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  # -- checks ----------------------------------------------------------------

  def _foreign_entries(self) -> list[str]:
    """Entries of the directory that no checkpoint of ours explains."""
    if not self.directory.is_dir():
      return []
    steps = {str(step) for step in self._manager.all_steps()}
    return sorted(
      entry.name
      for entry in self.directory.iterdir()
      if entry.name not in steps
      and _TMP_SUFFIX not in entry.name
      and not entry.name.startswith(CORRUPT_PREFIX)
    )

  def _check_directory(self) -> None:
    """Refuses a directory that holds something else than our checkpoints."""
    if self.directory.exists() and not self.directory.is_dir():
      raise CheckpointError(f"{self.directory} is not a directory")
    if self.latest_step() is None and (foreign := self._foreign_entries()):
      raise CheckpointError(
        f"{self.directory} holds no lowrank_distill checkpoint but other "
        f"files ({', '.join(foreign[:5])}); refusing to use it as the "
        "checkpoint directory"
      )

  def _check_step(self, step: int) -> None:
    """Raises unless `step` is one of ours and was written by our config."""
    path = self.step_dir(step)
    if step not in self._manager.all_steps() or not path.is_dir():
      raise CheckpointError(
        f"no checkpoint for step {step} in {self.directory} (steps present: "
        f"{self.all_steps()})"
      )
    try:
      _require_items(
        path, (_STEP_METADATA_FILE, STATE_ITEM, CONFIG_ITEM), "checkpoint"
      )
    except CheckpointError as e:
      raise CorruptCheckpointError(f"checkpoint at {path} is corrupt: {e}")
    try:
      saved = self._manager.restore(
        step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()})
      )[CONFIG_ITEM]
    except Exception as e:  # Any failure here means unreadable.
      raise CorruptCheckpointError(
        f"checkpoint at {path} is corrupt: cannot read its config "
        f"({_describe(e)})"
      ) from e
    if not isinstance(saved, dict):
      raise CorruptCheckpointError(f"checkpoint at {path} has no config dict")
    if diffs := identity.diff(saved, self.config):
      raise CheckpointError(
        f"checkpoint at {path} was written by another config: "
        f"{', '.join(diffs)} (checkpoint != this run); use another workdir "
        f"or delete {self.directory} to start over"
      )

  def _check_before_writing(self) -> None:
    """Checks once that saving here cannot clobber another run's files."""
    if self._checked:
      return
    self._check_directory()
    if (latest := self.latest_step()) is not None:
      self._check_step(latest)
    self._checked = True

  # -- save / restore --------------------------------------------------------

  def save(
    self,
    step: int,
    state,
    *,
    metrics: dict | None = None,
    force: bool = False,
  ) -> bool:
    """Starts saving `state` (and `metrics`) as checkpoint `step`.

    Returns immediately after the arrays are copied off the devices; the
    write completes in the background (`wait()` to block). The checkpoint
    appears atomically: a run killed mid-save keeps the previous one.

    Args:
      step: the step number; must exceed the latest saved step.
      state: a pytree of arrays (typed PRNG keys allowed).
      metrics: a JSON-able dict stored beside the state.
      force: save even if `save_interval_steps` says to skip this step.

    Returns:
      True if a save was started, False if the step was skipped (too close
      to the last save, or already saved).
    """
    step = int(step)
    self._check_before_writing()
    if step in self._manager.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    if jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
      self._remove_stale_tmp_dirs()
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        **{
          STATE_ITEM: ocp.args.StandardSave(_keys_to_data(state)),
          CONFIG_ITEM: ocp.args.JsonSave(self.config),
          METRICS_ITEM: ocp.args.JsonSave(_to_json(metrics, what="metrics")),
        }
      ),
      force=True,
    )

  def _remove_stale_tmp_dirs(self) -> None:
    # Left by a run killed mid-save; only safe while none of ours is running.
    if self._manager.is_saving_in_progress():
      return
    for entry in self.directory.iterdir():
      if _TMP_SUFFIX in entry.name and entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores checkpoint `step` (default: the latest).

    Args:
      abstract_state: the state's structure, e.g. `jax.eval_shape(init, key)`;
        leaves are `jax.ShapeDtypeStruct`s (or arrays), typed keys included.
        Arrays are restored onto each leaf's `sharding` (any mesh, whatever
        the sharding they were saved with); leaves without one go to the
        first local device.
      step: which checkpoint; None for the latest.

    Returns:
      `(state, metrics)`.

    Raises:
      CheckpointError: no checkpoint, a foreign or corrupt one, one written by
        another config (checked first; nothing on disk is changed), or a
        state that does not match `abstract_state`.
    """
    self.wait()
    self._check_directory()
    if step is None:
      step = self.latest_step()
      if step is None:
        where = "" if self.directory.exists() else " (it does not exist)"
        raise CheckpointError(f"no checkpoint in {self.directory}{where}")
    step = int(step)
    self._check_step(step)
    self._checked = True
    path = self.step_dir(step)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            STATE_ITEM: ocp.args.StandardRestore(
              _storage_target(abstract_state)
            ),
            METRICS_ITEM: ocp.args.JsonRestore(),
          }
        ),
      )
      state = _wrap_keys(abstract_state, restored[STATE_ITEM])
    except Exception as e:  # Any failure here means unreadable.
      raise CorruptCheckpointError(
        f"cannot restore the state from checkpoint {path}: it is corrupt or "
        f"does not match abstract_state ({_describe(e)})"
      ) from e
    return state, dict(restored[METRICS_ITEM] or {})

  def restore_or_none(self, abstract_state):
    """The newest intact checkpoint's `(state, metrics)`; None if none yet.

    A corrupt checkpoint (a run killed while the disk failed, a truncated
    file) is reported and skipped: the next older one is restored, and the
    corrupt ones after it are moved aside (`corrupt_<step>`), so the run
    saves those steps again. A checkpoint of another config still raises.

    Raises:
      CheckpointError: another config's checkpoint, or none intact (the
        newest one's error).
    """
    self.wait()
    self._check_directory()
    corrupt = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step)
      except CorruptCheckpointError as e:
        logging.error("Skipping a corrupt checkpoint: %s", e)
        corrupt.append((step, e))
        continue
      if corrupt:
        self._move_aside([s for s, _ in corrupt])
        logging.warning(
          "Resumed from step %d, the newest intact checkpoint in %s; the "
          "corrupt ones after it (steps %s) were moved aside as %s<step>",
          step,
          self.directory,
          [s for s, _ in corrupt],
          CORRUPT_PREFIX,
        )
      return restored
    if corrupt:
      raise CorruptCheckpointError(
        f"no intact checkpoint in {self.directory}: {corrupt[0][1]}"
      ) from corrupt[0][1]
    return None

  def _move_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      for step in steps:
        target = self.directory / f"{CORRUPT_PREFIX}{step}"
        n = 1
        while target.exists():
          n += 1
          target = self.directory / f"{CORRUPT_PREFIX}{step}_{n}"
        self.step_dir(step).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("checkpoint: corrupt moved aside")
    self._manager.reload()


# ----------------------------------------------------------------------------
# One-off pytrees.


def _save_args(tree):
  def arg(leaf):
    shape = getattr(leaf, "shape", ())
    if len(shape) < 2 or shape[0] < 2:
      return None
    row_bytes = np.prod(shape[1:]) * np.dtype(leaf.dtype).itemsize
    if row_bytes < ROW_CHUNK_MIN_BYTES:
      return None
    return ocp.SaveArgs(shard_axes=(0,))

  return jax.tree.map(arg, tree)


def _tree_checkpointer() -> ocp.Checkpointer:
  """A synchronous Orbax checkpointer for the `save_tree` layout."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  tree_handler = ocp.StandardCheckpointHandler()
  json_handler = ocp.JsonCheckpointHandler()
  for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
    registry.add(TREE_ITEM, args, tree_handler)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    registry.add(METADATA_ITEM, args, json_handler)
  return ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(handler_registry=registry)
  )


def save_tree(
  path, tree, *, metadata: dict | None = None, overwrite: bool = False
) -> None:
  """Writes `tree` and JSON `metadata` to the directory `path`, atomically.

  Orbax writes into a temporary directory and renames it to `path` when
  complete. With `overwrite=True` an existing `path` is replaced by renaming
  the new directory into place after the write succeeded (a crash between
  the two renames leaves the old copy at `<path>.overwrite-old`). Arrays of
  rank >= 2 with rows of at least `ROW_CHUNK_MIN_BYTES` are chunked one
  row (index of axis 0) per chunk, so `read_slice` of a row reads only it.
  In a multi-process run every process must call it (Orbax synchronises
  them and writes each array once: host arrays from process 0).

  Args:
    path: the directory to create.
    tree: a pytree of arrays / scalars (typed keys are stored as key data).
    metadata: a JSON-able dict, read back by `load_metadata`.
    overwrite: replace an existing `path` instead of raising.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  metadata = _to_json(metadata, what="metadata")
  tree = _keys_to_data(tree)
  args = ocp.args.Composite(
    **{
      TREE_ITEM: ocp.args.StandardSave(tree, save_args=_save_args(tree)),
      METADATA_ITEM: ocp.args.JsonSave(metadata),
    }
  )
  target = (
    path.with_name(path.name + ".overwrite-new") if path.exists() else path
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  with _tree_checkpointer() as checkpointer:
    checkpointer.save(target, args=args, force=True)
  if target != path:
    if jax.process_index() == 0:
      old = path.with_name(path.name + ".overwrite-old")
      shutil.rmtree(old, ignore_errors=True)
      path.rename(old)
      target.rename(path)
      shutil.rmtree(old)
    ocp.multihost.sync_global_processes("lowrank_distill_save_tree_swap")


def _check_tree_dir(path) -> pathlib.Path:
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"{path} does not exist")
  if not path.is_dir():
    raise CheckpointError(f"{path} is not a directory written by save_tree")
  _require_items(
    path,
    (_STEP_METADATA_FILE, TREE_ITEM, METADATA_ITEM),
    "checkpoint.save_tree",
  )
  return path


def _tree_metadata(path: pathlib.Path):
  try:
    with _tree_checkpointer() as checkpointer:
      metadata = checkpointer.metadata(path).item_metadata[TREE_ITEM]
    if metadata is None:
      raise ValueError("no tree metadata")
    return metadata
  except Exception as e:  # Any failure here means unreadable.
    raise CheckpointError(
      f"{path} is corrupt: cannot read its tree metadata ({_describe(e)})"
    ) from e


def _numpy_target(leaf_metadata):
  # A zero-byte numpy stand-in: Orbax restores a numpy-typed target leaf as
  # numpy on the host, never placing it on a device.
  return np.broadcast_to(np.empty((), leaf_metadata.dtype), leaf_metadata.shape)


def load_tree(path, *, abstract_tree=None):
  """Reads a directory written by `save_tree`.

  Args:
    path: the directory.
    abstract_tree: None to get numpy arrays in the saved structure (typed
      keys come back as their uint32 key data, custom pytree nodes as dicts);
      or the structure to restore into, as in `Checkpointer.restore` (leaf
      shardings honoured, typed keys rebuilt).

  Returns:
    `(tree, metadata)`.

  Raises:
    CheckpointError: `path` is missing, foreign or corrupt, or does not match
      `abstract_tree`.
  """
  path = _check_tree_dir(path)
  if abstract_tree is None:
    target = jax.tree.map(_numpy_target, _tree_metadata(path).tree)
  else:
    target = _storage_target(abstract_tree)
  try:
    with _tree_checkpointer() as checkpointer:
      restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(
          **{
            TREE_ITEM: ocp.args.StandardRestore(target),
            METADATA_ITEM: ocp.args.JsonRestore(),
          }
        ),
      )
    tree = restored[TREE_ITEM]
    if abstract_tree is None:
      tree = jax.tree.map(np.asarray, tree)
    else:
      tree = _wrap_keys(abstract_tree, tree)
  except Exception as e:  # Any failure here means unreadable.
    raise CheckpointError(
      f"cannot load {path}: it is corrupt or does not match abstract_tree "
      f"({_describe(e)})"
    ) from e
  return tree, dict(restored[METADATA_ITEM] or {})


def load_metadata(path) -> dict:
  """The JSON metadata of a `save_tree` directory, without reading arrays."""
  path = _check_tree_dir(path)
  try:
    with _tree_checkpointer() as checkpointer:
      restored = checkpointer.restore(
        path,
        args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}),
      )
  except Exception as e:  # Any failure here means unreadable.
    raise CheckpointError(
      f"{path} is corrupt: cannot read its metadata ({_describe(e)})"
    ) from e
  return dict(restored[METADATA_ITEM] or {})


def _normalize_index(index, shape: tuple[int, ...]) -> tuple:
  """A numpy-style basic index as non-negative ints and positive slices."""
  if not isinstance(index, tuple):
    index = (index,)
  if sum(item is Ellipsis for item in index) > 1:
    raise IndexError("an index can only have a single ellipsis")
  if Ellipsis in index:
    at = index.index(Ellipsis)
    fill = len(shape) - (len(index) - 1)
    index = index[:at] + (slice(None),) * fill + index[at + 1 :]
  if len(index) > len(shape):
    raise IndexError(
      f"too many indices ({len(index)}) for an array of shape {shape}"
    )
  out = []
  for item, size in zip(index, shape):
    if isinstance(item, (int, np.integer)):
      i = int(item) + size if item < 0 else int(item)
      if not 0 <= i < size:
        raise IndexError(f"index {item} out of range for axis of size {size}")
      out.append(i)
    elif isinstance(item, slice):
      start, stop, step = item.indices(size)
      if step < 0:
        raise IndexError("read_slice does not support negative slice steps")
      out.append(slice(start, max(start, stop), step))
    else:
      raise TypeError(
        f"read_slice index items must be ints, slices or Ellipsis, got "
        f"{type(item).__name__}"
      )
  return tuple(out)


@functools.cache
def _ts_context(use_ocdbt: bool) -> ts.Context:
  # Shared across calls so TensorStore's OCDBT caches are not duplicated.
  return ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)


def read_slice(path, key_path: tuple, index) -> np.ndarray:
  """Reads `array[index]` of one saved array without loading the rest.

  Opens the saved array with TensorStore (the spec Orbax itself restores
  with) and reads only the chunks that `index` touches. `save_tree` stores
  big arrays one row of axis 0 per chunk, so one row (one epoch of an expert
  buffer saved as `[E+1, ...]`) costs about one row's bytes of I/O, plus
  reading the directory's tree metadata (a few ms).

  If `key_path` names a subtree instead of an array, every array in it is
  read at `index` (concurrently) and the subtree of results is returned,
  e.g. `read_slice(path, ("params",), epoch)` for one epoch of all params.

  Args:
    path: a directory written by `save_tree`.
    key_path: the keys leading to the array in the saved tree, e.g.
      `("params", "conv", "kernel")` (list positions as ints; `()` for all).
    index: a numpy-style basic index: an int, a slice (positive step),
      Ellipsis, or a tuple of those; negative ints count from the end.

  Returns:
    `array[index]` as numpy (typed keys as their key data), or a subtree of
    them.

  Raises:
    CheckpointError: `path` is missing, foreign or corrupt, or `key_path`
      names nothing (or a non-array leaf) in it.
    IndexError: `index` is out of range.
  """
  path = _check_tree_dir(path)
  metadata = _tree_metadata(path)
  node = metadata.tree
  for depth, key in enumerate(key_path):
    try:
      node = node[key]
    except (KeyError, IndexError, TypeError):
      valid = list(node) if isinstance(node, dict) else None
      where = "".join(f"[{k!r}]" for k in key_path[:depth]) or "the root"
      raise CheckpointError(
        f"{path} has no entry {key!r} under {where}"
        + (f"; valid keys: {valid}" if valid is not None else "")
      ) from None
  leaves, treedef = jax.tree.flatten(node)
  for leaf in leaves:
    if not isinstance(leaf, ocp.metadata.ArrayMetadata):
      raise CheckpointError(
        f"{path}: key path {tuple(key_path)} leads to a "
        f"{type(leaf).__name__} ({getattr(leaf, 'name', leaf)}), not an array"
      )
  indices = [_normalize_index(index, tuple(leaf.shape)) for leaf in leaves]
  tree_dir = path / TREE_ITEM
  use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(tree_dir)
  context = _ts_context(use_ocdbt)

  def spec(leaf):
    info = ocp.type_handlers.ParamInfo(
      name=leaf.name,
      parent_dir=tree_dir,
      use_zarr3=bool(getattr(metadata, "use_zarr3", False)),
      is_ocdbt_checkpoint=use_ocdbt,
      ts_context=context,
    )
    return ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt)

  try:
    opened = [
      ts.open(spec(leaf), read=True, context=context) for leaf in leaves
    ]
    reads = [f.result()[i].read() for f, i in zip(opened, indices)]
    values = [np.asarray(r.result()) for r in reads]
  except Exception as e:  # Any failure here means unreadable.
    raise CheckpointError(
      f"cannot read {tuple(key_path)} from {path}: corrupt or unreadable "
      f"({_describe(e)})"
    ) from e
  if isinstance(node, ocp.metadata.ArrayMetadata):
    return values[0]
  return jax.tree.unflatten(treedef, values)
