"""benchmarks/gpu_check.py: its helpers, and every part run in `--tiny` mode.

The GPU host comes rarely; these runs keep the script from rotting between
its calls. Part (b), against PyTorch, is in gpu_check_speed_test.py (so
that the two slow runs go to different test workers). The script and its
`--tiny` runner are fixtures of conftest.py.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
from idx_helpers import write_idx

from lowrank_distill import data


@pytest.fixture
def mnist_like(tmp_path):
  """A gzipped MNIST-format folder: 1100 train and 220 test 28x28 images."""
  folder = tmp_path / "mnist"
  folder.mkdir()
  rng = np.random.default_rng(0)
  arrays = []
  for n in (1100, 220):
    labels = np.arange(n) % 10
    # Class-dependent bright rows over noise: learnable, not trivially.
    images = rng.integers(0, 60, (n, 28, 28))
    images[np.arange(n), 2 + 2 * labels] = 250
    arrays += [images, labels]
  for stem, array in zip(data.IDX_FILES, arrays):
    write_idx(folder / (stem + ".gz"), np.asarray(array, np.uint8), gz=True)
  return folder, arrays


def test_tiny_mnist_keeps_the_first_records_as_plain_idx(
  gpu_check, mnist_like, tmp_path
):
  folder, arrays = mnist_like
  target = gpu_check.tiny_mnist(folder, tmp_path / "tiny")
  counts = (
    gpu_check.TINY_MNIST["train"],
    gpu_check.TINY_MNIST["train"],
    gpu_check.TINY_MNIST["t10k"],
    gpu_check.TINY_MNIST["t10k"],
  )
  for stem, array, count in zip(data.IDX_FILES, arrays, counts):
    assert (target / stem).exists()
    np.testing.assert_array_equal(
      data.read_idx(target / stem), array[:count].astype(np.uint8)
    )


def test_read_run_reports_progress_and_final_accuracy(gpu_check, tmp_path):
  assert "no metrics written" in gpu_check.read_run(tmp_path, 20)
  entries = [
    {"step": 10, "loss": 1.0, "seconds_per_step": 0.0123},
    {
      "step": 20,
      "eval": {"convnet": {"mean": 0.5, "std": 0.01, "accuracies": [0.5] * 3}},
    },
  ]
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("\n".join(json.dumps(e) for e in entries) + "\n{trunc")
  text = gpu_check.read_run(tmp_path, 40)
  assert text == (
    "iteration 20/40 (12.3 ms/iteration, last logged); last evaluation at "
    "20: {'convnet': '50.00 ± 1.00 (3 models)'}"
  )
  entries[1]["final"] = True
  metrics.write_text("\n".join(json.dumps(e) for e in entries))
  assert gpu_check.read_run(tmp_path, 20).endswith(
    "FINAL {'convnet': '50.00 ± 1.00 (3 models)'}"
  )


def test_count_outcomes_reads_verbose_lines_with_and_without_xdist(
  gpu_check,
):
  log = "\n".join(
    [
      "tests/a_test.py::test_one PASSED                [ 33%]",
      "tests/a_test.py::test_two FAILED                [ 66%]",
      "[gw0] [ 10%] PASSED tests/b_test.py::test_three",
      "[gw1] [ 20%] SKIPPED tests/b_test.py::test_four",
      "[gw1] [ 30%] ERROR tests/b_test.py::test_five",
      "FAILED is a word in prose, without a test id",
    ]
  )
  assert gpu_check.count_outcomes(log) == {
    "PASSED": 2,
    "FAILED": 1,
    "SKIPPED": 1,
    "ERROR": 1,
  }
  assert gpu_check.count_outcomes("bringing up nodes...") == {}


def test_part_a_streams_failures_to_the_output_folder(gpu_check, tmp_path):
  args = gpu_check.parse_args([f"--out={tmp_path}"])
  cmd, env = gpu_check.part_a_command(args)
  assert ["-p", "failure_stream"] == cmd[cmd.index("failure_stream") - 1 :][:2]
  assert "-v" in cmd
  assert env[gpu_check.FAILURE_STREAM_ENV] == str(
    tmp_path / gpu_check.A_FAILURES
  )
  assert str(gpu_check.BENCHMARKS) in env["PYTHONPATH"].split(os.pathsep)
  spec = importlib.util.spec_from_file_location(
    "failure_stream", gpu_check.BENCHMARKS / "failure_stream.py"
  )
  plugin = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plugin)
  assert plugin.ENV == gpu_check.FAILURE_STREAM_ENV


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--parts=abd"], "--parts='abd': valid letters are a, b, c"),
    (["--speed_share=1.5"], "--speed_share=1.5: must be in (0, 1)"),
    (["--budget=0"], "--budget=0.0: must be > 0"),
  ],
)
def test_bad_arguments_name_the_flag(gpu_check, argv, message, capsys):
  with pytest.raises(SystemExit):
    gpu_check.parse_args(argv)
  assert message in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_parts_a_and_c_run_and_report(
  gpu_check, mnist_like, run_gpu_check_tiny
):
  out, summary = run_gpu_check_tiny(mnist_like[0], "ac")
  text = "\n".join(summary)
  assert summary[0].startswith("env: date:"), text
  assert (out / "env.txt").exists()
  assert any(
    line.startswith("a tests: exit 0; 1 passed") for line in summary
  ), text
  for row in (*gpu_check.TINY_MNIST_DM, *gpu_check.TINY_MNIST_TM):
    line = [s for s in summary if s.startswith(f"c {row}")]
    assert len(line) == 1, text
    assert f"c {row}: iteration 2/2" in line[0], text
    assert "FINAL {'convnet': '" in line[0] and "(2 models)" in line[0], text
  assert not [s for s in summary if s.startswith("c dm:")], text
  assert any(line.startswith("c experts: buffer trained") for line in summary)
  assert not (out / gpu_check.A_FAILURES).exists()
  assert (out / "c_workdirs.tar.gz").stat().st_size > 0
  assert summary[-1].startswith("done in ")
