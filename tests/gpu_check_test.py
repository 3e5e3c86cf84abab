"""benchmarks/gpu_check.py: its helpers, and every part run in `--tiny` mode.

The GPU host comes rarely; these runs keep the script from rotting between
its calls. Part (b) compares against PyTorch and runs where torch is
installed (`pip install -e ".[bench]"`; the test extras leave it out: PyPI's
default build is CUDA's, gigabytes, for a CPU-only suite).
"""

import gzip
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lowrank_distill import data

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gpu_check = _load_script()


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  path.write_bytes(gzip.compress(header + array.tobytes()))


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
    _write_idx(folder / (stem + ".gz"), array)
  return folder, arrays


def test_tiny_mnist_keeps_the_first_records_as_plain_idx(mnist_like, tmp_path):
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


def test_read_run_reports_progress_and_final_accuracy(tmp_path):
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


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--parts=abd"], "--parts='abd': valid letters are a, b, c"),
    (["--speed_share=1.5"], "--speed_share=1.5: must be in (0, 1)"),
    (["--budget=0"], "--budget=0.0: must be > 0"),
  ],
)
def test_bad_arguments_name_the_flag(argv, message, capsys):
  with pytest.raises(SystemExit):
    gpu_check.parse_args(argv)
  assert message in capsys.readouterr().err


def _run_tiny(tmp_path, mnist, parts):
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      SCRIPT,
      "--tiny",
      f"--parts={parts}",
      f"--out={out}",
      f"--mnist={mnist}",
      f"--workroot={tmp_path / 'work' / 'c'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return out, (out / "summary.txt").read_text().splitlines()


@pytest.mark.slow
def test_tiny_parts_a_and_c_run_and_report(mnist_like, tmp_path):
  out, summary = _run_tiny(tmp_path, mnist_like[0], "ac")
  text = "\n".join(summary)
  assert summary[0].startswith("env: date:"), text
  assert (out / "env.txt").exists()
  assert any(
    line.startswith("a tests: exit 0; 1 passed") for line in summary
  ), text
  for row in ("dm", "lodm", "lomtt", "mtt_lss"):
    line = [s for s in summary if s.startswith(f"c {row}")]
    assert len(line) == 1, text
    assert f"c {row}: iteration 2/2" in line[0], text
    assert "FINAL {'convnet': '" in line[0] and "(2 models)" in line[0], text
  assert any(line.startswith("c experts: buffer trained") for line in summary)
  assert (out / "c_workdirs.tar.gz").stat().st_size > 0
  assert summary[-1].startswith("done in ")


@pytest.mark.slow
def test_tiny_part_b_compares_with_pytorch(tmp_path):
  pytest.importorskip(
    "torch",
    reason="part (b) compares with PyTorch: pip install -e '.[bench]' "
    "(PyTorch's CPU build)",
  )
  _, summary = _run_tiny(tmp_path, tmp_path / "no_mnist", "b")
  text = "\n".join(summary)
  lines = {
    line.split(":")[0][2:]: line for line in summary if line.startswith("b ")
  }
  assert set(lines) == set(gpu_check.SPEED), text
  assert "not run in --tiny" in lines["dm_step_cifar"]
  for name in ("dm_step_mnist", "gm_iteration_mnist"):
    assert "ours/torch median" in lines[name], text
  assert "vmapped" in lines["eval_vmapped"], text
  assert "N=1 ours" in lines["tm_unroll_cifar"], text
  assert "FAILED" not in text and "cut at" not in text, text
