"""Tests of workdir files (lowrank_distill.workdir)."""

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
