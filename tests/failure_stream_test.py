"""benchmarks/failure_stream.py: failures written as they happen, once each."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

PLUGIN_ENV = "FAILURE_STREAM"

SAMPLE_TESTS = """
import pytest

@pytest.fixture
def broken():
  raise RuntimeError("fixture broke")

def test_passes():
  assert True

def test_fails():
  assert 1 + 1 == 3, "arithmetic is off"

def test_setup_error(broken):
  pass
"""


def _run_pytest(tmp_path, *flags, stream=True):
  (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
  env = dict(os.environ, PYTHONPATH=str(REPO / "benchmarks"))
  env.pop(PLUGIN_ENV, None)
  if stream:
    env[PLUGIN_ENV] = str(tmp_path / "failures.txt")
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-p",
      "failure_stream",
      "-p",
      "no:cacheprovider",
      "--tb=short",
      *flags,
      "test_sample.py",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
  return tmp_path / "failures.txt"


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_each_failure_is_written_once_with_its_reason(tmp_path, workers):
  text = _run_pytest(tmp_path, "-n", workers).read_text()
  assert text.count("FAILED test_sample.py::test_fails (call)") == 1, text
  assert "arithmetic is off" in text, text
  assert text.count("FAILED test_sample.py::test_setup_error (setup)") == 1
  assert "fixture broke" in text, text
  assert "test_passes" not in text, text
  assert text.count("FAILED ") == 2, text


@pytest.mark.slow
def test_without_the_variable_nothing_is_written(tmp_path):
  assert not _run_pytest(tmp_path, "-n", "0", stream=False).exists()
  assert not list(tmp_path.glob("*.txt"))
