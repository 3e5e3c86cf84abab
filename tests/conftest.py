"""Shared test set-up: fake CPU devices, fast compiles and strict numerics.

Set before JAX starts, in this process and every subprocess a test starts
(launchers, notebooks). The tests' programs are tiny, so compiling them
dominates. XLA's backend (code generation) optimisation level 0 leaves the
optimised HLO, its fusions and buffers as they are (floats can differ in
the last bits) and cut the suite from 8m20s to 5m05s on two cores. The
suite passes at both levels; to test the code as users run it (XLA's
default, 2): `XLA_FLAGS=--xla_backend_optimization_level=2 python -m pytest`.

XLA:CPU's elemental emitters, which the library's own CPU programs already
ask for (`models.conv.compiler_options`), compile the programs the tests
jit themselves in about half the time of its fusion emitters: the suite
took 584 s with them and 414 s without (two workers, session 41). A
jaxlib that does not know an XLA_FLAGS entry aborts the process, so the
flag is first tried in a child interpreter (~1.4 s, once per run: the
test workers and subprocesses inherit the result).

On a GPU, XLA sums scatters and some reductions with atomics, in an order
that changes from run to run (session 30's GPU call: a resumed run's
optimizer state differed from an uninterrupted one's by 7e-9 in 1 of 320
values); `xla_gpu_deterministic_ops` makes them deterministic, so the
tests that demand bitwise-equal runs hold there too. XLA:CPU accepts the
flag and is deterministic anyway.
"""

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_DEFAULT_XLA_FLAGS = {
  "xla_force_host_platform_device_count": "4",
  "xla_backend_optimization_level": "0",
  "xla_gpu_deterministic_ops": "true",
}
# Flags a jaxlib may not have; each is kept only where it is accepted.
_OPTIONAL_XLA_FLAGS = {"xla_cpu_use_fusion_emitters": "false"}
# Set once the optional flags were tried, so workers do not try them again.
_PROBED = "LOWRANK_DISTILL_TEST_XLA_FLAGS_PROBED"


def _with_flags(flags: str, wanted: dict) -> str:
  """`flags` plus each `--name=value` of `wanted` it does not name."""
  added = [f"--{k}={v}" for k, v in wanted.items() if k not in flags]
  return " ".join([flags, *added]).strip()


def _accepts(flags: str) -> bool:
  """Whether a fresh interpreter compiles a program under XLA_FLAGS=flags."""
  probe = subprocess.run(
    [sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0)"],
    env=dict(os.environ, XLA_FLAGS=flags),
    capture_output=True,
    timeout=300,
  )
  return probe.returncode == 0


_flags = _with_flags(os.environ.get("XLA_FLAGS", ""), _DEFAULT_XLA_FLAGS)
if not os.environ.get(_PROBED):
  for _name, _value in _OPTIONAL_XLA_FLAGS.items():
    _candidate = _with_flags(_flags, {_name: _value})
    if _candidate != _flags and _accepts(_candidate):
      _flags = _candidate
  os.environ[_PROBED] = "1"
os.environ["XLA_FLAGS"] = _flags

import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# On recent NVIDIA GPUs, JAX computes float32 matrix products and
# convolutions in TF32 (10-bit mantissa) by default; the tests compare
# float32 math with float32 tolerances, so there they ask for full float32.
# XLA:CPU computes float32 in float32 whatever the setting.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATASETS = (
  pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def mnist_dir():
  path = SHARED_DATASETS / "mnist"
  if not (path / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(
      f"real MNIST archives not found at {path}: clone the project with "
      "../shared beside it to run the real-data integration tests"
    )
  return path


@pytest.fixture
def tiny_images():
  """20 images of 8x8x1, two per class for 10 classes, standardised-ish."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
  labels = np.repeat(np.arange(10, dtype=np.int32), 2)
  return images, labels


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_python():
  """Runs Python code in a new interpreter at the repository root.

  Returns `run(code) -> stdout`, failing the test with the child's stderr
  when it exits non-zero. For what one process cannot show: import order,
  what an import loads, logging set up at import time.
  """

  def run(code: str) -> str:
    out = subprocess.run(
      [sys.executable, "-c", code],
      cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout

  return run


# What a launcher test shrinks: a one-iteration run of a tiny network whose
# evaluation trains one model for one epoch.
TINY_DISTILL_FLAGS = (
  "--config.model.options.width=4",
  "--config.model.options.depth=1",
  "--config.distill.iterations=1",
  "--config.eval.epochs=1",
  "--config.eval.num_models=1",
)


@pytest.fixture
def launch_distill():
  """Runs `launch/distill.py` as a user would, on a tiny one-iteration run.

  Returns `run(config, workdir, *flags) -> (results.json as a dict, the
  launcher's stdout + stderr)`, failing the test with the child's stderr
  when it exits non-zero; `flags` come after `TINY_DISTILL_FLAGS`.
  """
  import json  # noqa: PLC0415

  def run(config: str, workdir, *flags: str):
    command = [
      sys.executable,
      "launch/distill.py",
      f"--config={config}",
      f"--workdir={workdir}",
      *TINY_DISTILL_FLAGS,
      *flags,
    ]
    done = subprocess.run(
      command, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    return results, done.stdout + done.stderr

  return run


@pytest.fixture(scope="session")
def gpu_check():
  """benchmarks/gpu_check.py, loaded as a module."""
  import importlib.util  # noqa: PLC0415

  spec = importlib.util.spec_from_file_location(
    "gpu_check", REPO / "benchmarks" / "gpu_check.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def run_gpu_check_tiny(tmp_path):
  """Runs `gpu_check.py --tiny --parts=PARTS`; -> (out folder, summary)."""

  def run(mnist, parts):
    out = tmp_path / "out"
    proc = subprocess.run(
      [
        sys.executable,
        REPO / "benchmarks" / "gpu_check.py",
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

  return run
