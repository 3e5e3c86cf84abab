"""A run's working directory: config.json, metrics.jsonl and result files.

Only process 0 writes, so multi-host runs produce one copy of each file.
"""

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
  return MetricsWriter(workdir)


class MetricsWriter:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"

  def write(self, step: int, **metrics) -> None:
    if not is_writer():
      return
    record = {"step": int(step), "time": time.time(), **metrics}
    append_json_lines(self.path, [record])

  def read(self) -> list[dict]:
    return read_json_lines(self.path)


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
