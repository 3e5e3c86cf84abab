"""Tests of workdir files (lowrank_distill.workdir)."""

import pathlib
import sys
import types

import ml_collections
import pytest

from lowrank_distill import workdir


def test_metrics_are_appended_as_json_lines(tmp_path):
  writer = workdir.MetricsWriter(tmp_path)
  writer.write(1, loss=0.5)
  writer.write(2, loss=0.25, eval={"convnet": {"mean": 0.9}})
  records = writer.read()
  assert [r["step"] for r in records] == [1, 2]
  assert records[1]["eval"]["convnet"]["mean"] == 0.9


def test_a_metrics_line_torn_by_a_kill_is_dropped(tmp_path):
  writer = workdir.MetricsWriter(tmp_path)
  writer.write(1, loss=0.5)
  with writer.path.open("a") as f:
    f.write('{"step": 2, "lo')
  assert [r["step"] for r in writer.read()] == [1]
  writer.write(3, loss=0.125)  # A new line, not the torn one's end.
  lines = writer.path.read_text().splitlines()
  assert lines[1] == '{"step": 2, "lo'
  assert [r["step"] for r in writer.read()] == [1, 3]


def test_write_json_can_refuse_to_overwrite(tmp_path):
  path = tmp_path / "a" / "results.json"
  workdir.write_json(path, {"x": 1})
  assert workdir.read_json(path) == {"x": 1}
  with pytest.raises(FileExistsError, match="results.json"):
    workdir.write_json(path, {"x": 2}, overwrite=False)
  assert workdir.read_json(path) == {"x": 1}
  assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_start_creates_the_workdir_writes_the_config_and_returns_a_writer(
  tmp_path,
):
  config = ml_collections.ConfigDict({"seed": 3, "eval": {"models": ["mlp"]}})
  path = tmp_path / "a" / "run"
  writer = workdir.start(path, config)
  assert workdir.read_json(path / "config.json") == config.to_dict()
  writer.write(1, loss=0.5)
  assert [r["loss"] for r in writer.read()] == [0.5]
  assert writer.path == path / "metrics.jsonl"


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b'{"seed": 0'])
def test_a_damaged_json_file_is_refused_naming_it(tmp_path, content):
  path = tmp_path / "config.json"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=f"{path} is not readable JSON"):
    workdir.read_json(path)


def test_binary_garbage_in_a_json_lines_file_is_skipped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 1}\n\xff\xfe garbage\n{"step": 2}\n')
  assert workdir.read_json_lines(path) == [{"step": 1}, {"step": 2}]


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] from the TFRecord event files in `folder`."""
  import struct

  from tensorboardX.proto import event_pb2

  found = {}
  for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
    raw = path.read_bytes()
    while raw:
      (length,) = struct.unpack("<Q", raw[:8])
      event = event_pb2.Event.FromString(raw[12 : 12 + length])
      raw = raw[12 + length + 4 :]
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found


def test_metrics_also_go_to_tensorboard_without_tensorflow(tmp_path):
  writer = workdir.MetricsWriter(tmp_path)
  writer.write(1, loss=2.5, skipped=0, note="text")
  writer.write(2, loss=1.5, eval={"convnet": {"mean": 0.5, "accuracies": [1]}})
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars["loss"] == [(1, 2.5), (2, 1.5)]
  assert scalars["eval/convnet/mean"] == [(2, 0.5)]
  assert "note" not in scalars and "eval/convnet/accuracies" not in scalars
  assert [r["step"] for r in writer.read()] == [1, 2]


def test_wandb_gets_the_same_numbers_when_asked_for(tmp_path, monkeypatch):
  calls = []

  class Run:
    def log(self, numbers, step):
      calls.append((step, numbers))

    def finish(self):
      calls.append("finish")

  fake = types.ModuleType("wandb")
  fake.init = lambda **kwargs: calls.append(kwargs) or Run()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  monkeypatch.setattr(workdir, "_WANDB", {})
  workdir.enable_wandb("lowrank")
  writer = workdir.MetricsWriter(tmp_path, config={"seed": 0})
  writer.write(3, loss=0.25)
  writer.close()
  init, logged, finished = calls
  assert init["project"] == "lowrank" and init["config"] == {"seed": 0}
  assert logged == (3, {"loss": 0.25}) and finished == "finish"
  # The same workdir resumes the same W&B run.
  assert init["id"] == workdir._wandb_id(tmp_path)


def test_asking_for_wandb_without_it_is_an_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(ImportError, match="pip install wandb"):
    workdir.enable_wandb("lowrank")
