"""A run's working directory: config.json, metrics.jsonl and result files.

Only process 0 writes, so multi-host runs produce one copy of each file.
"""

import hashlib
import itertools
import json
import os
import pathlib
import time

import jax

from lowrank_distill import checkpoint
from lowrank_distill import identity as identity_lib


def is_writer() -> bool:
  return jax.process_index() == 0


def write_json(path, obj, *, overwrite: bool = True) -> None:
  """Writes `obj` as JSON atomically (temporary file, then rename)."""
  if not is_writer():
    return
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; refusing to overwrite it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  tmp.write_text(
    json.dumps(obj, indent=2, default=identity_lib.json_default) + "\n"
  )
  tmp.replace(path)


def json_line(record: dict) -> str:
  return json.dumps(record, default=identity_lib.json_default) + "\n"


def append_json_lines(path, records, *, sync: bool = False) -> None:
  """Appends one JSON line per record, after a line torn by a kill if any.

  `sync` fsyncs the file (the lines survive a machine crash, not only a
  killed process). Callers decide who writes (see `is_writer`).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("ab+") as f:  # Append mode: writes go to the end.
    torn = False
    if f.tell():
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
    text = ("\n" if torn else "") + "".join(map(json_line, records))
    f.write(text.encode())
    f.flush()
    if sync:
      os.fsync(f.fileno())


def read_json_lines(path) -> list[dict]:
  """The records of a JSON-lines file ([] if none); torn lines are skipped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text(errors="replace").splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # Torn by a kill mid-write (`append_json_lines`).
  return records


def read_json(path):
  """The JSON in `path`; a damaged file raises an error naming it."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"{path} is not readable JSON ({type(e).__name__}: {e}); it is "
      f"damaged or was not written by lowrank_distill: move it away or use "
      f"another workdir"
    ) from None


def write_config(workdir, config) -> None:
  """Writes the run's config to `<workdir>/config.json`."""
  write_json(pathlib.Path(workdir) / "config.json", config.to_dict())


def start(workdir, config) -> "MetricsWriter":
  """The prologue every run shares once its config and workdir are checked.

  Creates `workdir` (every process: checkpoints are written by all of them),
  writes `config.json` (process 0) and returns the run's metrics writer.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  write_config(workdir, config)
  return MetricsWriter(workdir, config=config.to_dict())


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
  """The numbers of a (nested) metrics record as `a/b/c` -> float."""
  flat = {}
  for name, value in metrics.items():
    if isinstance(value, dict):
      flat.update(scalars(value, f"{prefix}{name}/"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
      flat[f"{prefix}{name}"] = float(value)
  return flat


# Numbers the TensorBoard event files of this process apart.
_WRITERS = itertools.count()

# W&B, when a launcher was asked for it (`enable_wandb`): the project and
# run name every MetricsWriter of this process logs to.
_WANDB: dict = {}


def enable_wandb(project: str, **init_kwargs) -> None:
  """Logs every run's metrics to W&B too (needs `wandb` installed)."""
  try:
    import wandb  # noqa: F401
  except ImportError:
    raise ImportError(
      "W&B logging was asked for (--wandb_project) but wandb is not "
      "installed: pip install wandb"
    ) from None
  _WANDB.clear()
  _WANDB.update(project=project, **init_kwargs)


class MetricsWriter:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl`.

  Each record's numbers also go to TensorBoard event files in
  `<workdir>/tensorboard` (tensorboardX: no TensorFlow needed), flushed
  with every record, and to W&B when `enable_wandb` was called. A resumed
  run writes its steps again: TensorBoard shows the latest value of a step.
  """

  def __init__(self, workdir, *, config: dict | None = None):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._config = config
    self._tensorboard = None
    self._wandb = None

  def _sinks(self):
    if self._tensorboard is None:
      # tensorboardX's synchronous writer: each record is on disk when
      # `write` returns (its SummaryWriter queues events in a thread).
      from tensorboardX import event_file_writer

      folder = self.workdir / "tensorboard"
      folder.mkdir(parents=True, exist_ok=True)
      self._tensorboard = event_file_writer.EventsWriter(
        str(folder / "events"),
        filename_suffix=f".{os.getpid()}.{next(_WRITERS)}",
      )
      if _WANDB:
        import wandb

        self._wandb = wandb.init(
          dir=str(self.workdir),
          config=self._config,
          resume="allow",
          id=_wandb_id(self.workdir),
          **_WANDB,
        )
    return self._tensorboard, self._wandb

  def write(self, step: int, **metrics) -> None:
    if not is_writer():
      return
    record = {"step": int(step), "time": time.time(), **metrics}
    append_json_lines(self.path, [record])
    numbers = scalars(metrics)
    if not numbers:
      return
    from tensorboardX.proto import event_pb2, summary_pb2

    tensorboard, wandb_run = self._sinks()
    tensorboard.write_event(
      event_pb2.Event(
        wall_time=record["time"],
        step=int(step),
        summary=summary_pb2.Summary(
          value=[
            summary_pb2.Summary.Value(tag=name, simple_value=value)
            for name, value in numbers.items()
          ]
        ),
      )
    )
    tensorboard.flush()
    if wandb_run is not None:
      wandb_run.log(numbers, step=int(step))

  def read(self) -> list[dict]:
    return read_json_lines(self.path)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._wandb is not None:
      self._wandb.finish()


def _wandb_id(workdir: pathlib.Path) -> str:
  """One W&B run per workdir, so a resumed run continues its curves."""
  path = workdir / "wandb_id.txt"
  if not path.exists():
    path.write_text(
      hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:16]
    )
  return path.read_text().strip()


def check_config(workdir, config, *, resumable_fields, what: str) -> None:
  """Refuses a workdir written by another config, before writing anything.

  Args:
    workdir: the run's directory (its `config.json` is compared, if any).
    config: this run's config.
    resumable_fields: fields allowed to differ (`identity.identity`).
    what: the kind of run, for the message (e.g. 'a continual run').

  Raises:
    CheckpointError listing each differing field.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    return
  diffs = identity_lib.diff(
    identity_lib.identity(read_json(path), resumable_fields),
    identity_lib.identity(
      identity_lib.to_json_types(config.to_dict()), resumable_fields
    ),
  )
  if diffs:
    raise checkpoint.CheckpointError(
      f"workdir {workdir} holds {what} of another config; use a new workdir "
      f"or the same config. Differences: " + "; ".join(diffs)
    )
