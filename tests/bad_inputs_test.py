"""Bad inputs through every run: refused before compute, naming the field.

Each case builds a run's config as a user would (its `get_config`), breaks
one thing, and calls the run: it must raise an error whose message names
the field (or file), before any program is compiled (no XLA compile event)
and without creating or changing the workdir. The launchers' own failures
(a missing config file, an unknown field) are checked in subprocesses.
"""

import pathlib
import subprocess
import sys

import jax
import pytest

from configs import continual as continual_config
from configs import coreset as coreset_config
from configs import dm as dm_config
from configs import evaluate as evaluate_config
from configs import experts as experts_config
from configs import gm as gm_config
from configs import tm as tm_config
from lowrank_distill import continual, coreset, distill, evaluate, experts

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _set(config, field: str, value):
  *parents, name = field.split(".")
  for part in parents:
    config = config[part]
  with config.unlocked():
    config[name] = value


RUNS = {
  "dm": (lambda: dm_config.get_config("runlocal=true"), distill.run),
  "gm": (lambda: gm_config.get_config("runlocal=true"), distill.run),
  "tm": (lambda: _tm_config(), distill.run),
  "experts": (
    lambda: experts_config.get_config("runlocal=true"),
    experts.run,
  ),
  "coreset": (lambda: coreset_config.get_config("runlocal=true"), coreset.run),
  "evaluate": (
    lambda: evaluate_config.get_config("synset=/nonexistent/synset"),
    evaluate.run,
  ),
  "released": (
    lambda: evaluate_config.get_config(
      synset=str(
        REPO / "tests/fixtures/released/res_DM_digits_ConvNet_1ipc.pt"
      ),
      released="dc_pt",
      dataset="digits",
    ),
    evaluate.run,
  ),
  "continual": (
    lambda: continual_config.get_config("runlocal=true,ipc=1,steps=2"),
    continual.run,
  ),
}


def _tm_config():
  config = tm_config.get_config("runlocal=true,variant=mtt_lss,ipc=1")
  config.experts.path = "/nonexistent/experts"
  return config


# (run, field, value, what the message must contain)
CASES = [
  # Distribution matching (and the fields every distillation shares).
  ("dm", "distill.lr_images", -1.0, "distill.lr_images must be a number > 0"),
  ("dm", "distill.momentum", 1.5, "distill.momentum must be"),
  ("dm", "eval.epochs", -1, "eval.epochs must be an integer >= 1"),
  ("dm", "eval.lr", -0.01, "eval.lr must be a number > 0"),
  ("dm", "distill.iterations", 0, "distill.iterations must be"),
  ("dm", "distill.checkpoint_every", 0, "distill.checkpoint_every must"),
  ("dm", "distill.log_every", 0, "distill.log_every must"),
  ("dm", "eval.num_models", 0, "eval.num_models must"),
  ("dm", "synset.ipc", 0, "synset.ipc must"),
  ("dm", "synset.rank", 0, "synset.rank must"),
  ("dm", "distill.batch_real", 0, "distill.batch_real must"),
  ("dm", "seed", -1, "seed must be an integer >= 0"),
  ("dm", "mesh.data", 0, "mesh.data must be an integer >= 1, or -1"),
  ("dm", "model.options.width", 0, "model.options.width must"),
  ("dm", "labels.momentum", 1.0, "labels.momentum must"),
  ("dm", "distill.max_loss", 0.0, "distill.max_loss must"),
  ("dm", "distill.eval_every", -5, "distill.eval_every must"),
  ("dm", "distill.image_every", -1, "distill.image_every must"),
  ("dm", "eval.batch_size", 0, "eval.batch_size must"),
  ("dm", "eval.weight_decay", -1.0, "eval.weight_decay must"),
  ("dm", "eval.models_per_batch", -1, "eval.models_per_batch must"),
  ("dm", "distill.lr_images", float("nan"), "distill.lr_images must"),
  ("dm", "distill.classes_in_parallel", 0, "distill.classes_in_parallel"),
  ("dm", "method", "dx", "method 'dx' is not known; valid"),
  ("dm", "synset.param", "pixel", "synset.param 'pixel' is not known"),
  ("dm", "synset.budget", "same", "synset.budget 'same' is not known"),
  ("dm", "eval.models", ("convnet", "resnet"), "resnet"),
  ("dm", "distill.dsa_strategy", "colour_crop", "colour"),
  ("dm", "labels.kind", "smooth", "labels.kind 'smooth' is not known"),
  # Gradient matching.
  ("gm", "distill.outer_loop", 0, "distill.outer_loop"),
  ("gm", "distill.lr_net", 0.0, "distill.lr_net must"),
  ("gm", "distill.inner_loop", -1, "distill.inner_loop"),
  ("gm", "distill.distance", "cosine", "cosine"),
  # Trajectory matching.
  ("tm", "distill.lr_student", -0.01, "distill.lr_student must be"),
  ("tm", "distill.syn_steps", 0, "distill.syn_steps must"),
  ("tm", "distill.expert_epochs", 0, "distill.expert_epochs must"),
  ("tm", "distill.num_trajectories", 0, "distill.num_trajectories must"),
  ("tm", "distill.lr_lr", 0.0, "distill.lr_lr must be a number > 0"),
  ("tm", "experts.max_host_bytes", -1, "experts.max_host_bytes must"),
  ("tm", "distill.start", "linear", "distill.start"),
  ("tm", "experts.path", "", "experts.path"),
  ("tm", "experts.path", "/nonexistent/experts", "experts.path"),
  # Expert training.
  ("experts", "experts.lr", 0.0, "experts.lr must"),
  ("experts", "experts.momentum", -0.1, "experts.momentum must"),
  ("experts", "experts.epochs", 0, "experts.epochs must"),
  ("experts", "experts.batch_size", 0, "experts.batch_size must"),
  # Coresets.
  ("coreset", "coreset.lr", -1.0, "coreset.lr must"),
  ("coreset", "coreset.method", "greedy", "coreset.method 'greedy'"),
  ("coreset", "coreset.ipc", 0, "coreset.ipc must"),
  ("coreset", "coreset.train_epochs", -1, "coreset.train_epochs must"),
  # Evaluation of a saved set.
  ("evaluate", "synset", "", "synset: the path of a saved set"),
  ("evaluate", "synset", "/nonexistent/synset", "/nonexistent/synset"),
  ("evaluate", "eval.epochs", 0, "eval.epochs must"),
  ("evaluate", "eval.models", ("vgg12",), "vgg12"),
  # A set released by another codebase.
  ("released", "released.layout", "chw", "released.layout 'chw' is not"),
  ("released", "released.experiment", 5, "released.experiment 5: "),
  ("released", "released.labels", "probs", "released.labels 'probs'"),
  ("released", "dataset.name", "", "dataset.name: a released set"),
  # Continual learning.
  ("continual", "continual.ipc", 0, "continual.ipc must"),
  ("continual", "continual.steps", 0, "continual.steps must"),
  ("continual", "continual.memories.random.lr", -1.0, "memories.random.lr"),
  (
    "continual",
    "continual.memories.dm.config.distill.lr_images",
    -1.0,
    "continual.memories.dm.config: distill.lr_images must",
  ),
  ("continual", "continual.methods", ("random", "x"), "continual.methods"),
]


@pytest.fixture
def compiles():
  """The XLA compilations that happen during a test."""
  events = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax.monitoring.unregister_event_duration_listener(listen)


def test_there_are_at_least_forty_cases():
  assert len(CASES) >= 40


@pytest.mark.parametrize(
  "run,field,value,message",
  CASES,
  ids=[f"{run}:{field}={value!r}" for run, field, value, _ in CASES],
)
def test_a_bad_input_is_refused_before_compute(
  run, field, value, message, tmp_path, compiles
):
  make_config, run_fn = RUNS[run]
  config = make_config()
  _set(config, field, value)
  workdir = tmp_path / "run"
  with pytest.raises(Exception) as error:
    run_fn(config, workdir)
  assert message in str(error.value), str(error.value)
  assert compiles == [], "compiled before refusing"
  assert not workdir.exists()


def test_a_garbled_config_json_is_named(tmp_path, compiles):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_bytes(b"\xff\xfe garbage")
  with pytest.raises(ValueError, match="config.json is not readable JSON"):
    distill.run(dm_config.get_config("runlocal=true"), workdir)
  assert compiles == []
  assert [p.name for p in workdir.iterdir()] == ["config.json"]


def _launch(*args, cwd=REPO):
  return subprocess.run(
    [sys.executable, "launch/distill.py", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "args,message",
  [
    (["--config=configs/nope.py"], "cannot load the config file"),
    (
      ["--config=configs/dm.py", "--config.distill.foo=3"],
      "--config has no field 'foo'",
    ),
    (
      ["--config=configs/dm.py", "--config.distill.lr_images=-1"],
      "distill.lr_images must be a number > 0; got -1.0",
    ),
  ],
)
def test_a_launcher_exits_non_zero_with_the_message(args, message, tmp_path):
  result = _launch(*args, f"--workdir={tmp_path / 'run'}")
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
  assert not (tmp_path / "run").exists()
