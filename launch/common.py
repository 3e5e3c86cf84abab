"""What every launcher shares: --config, --workdir, --multihost, start-up."""

import pathlib
import sys

# Config files build on each other (`from configs import dm`): the
# repository root must be importable from wherever a launcher is started.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lowrank_distill import checkpoint  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
  config_flags.DEFINE_config_file(
    "config",
    default_config,
    "A configs/*.py file, optionally with :key=value,... arguments.",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Directory for the run's artifacts.")
  flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() (multi-host: run the same command on "
    "every host; the mesh of --config.mesh spans every host's devices).",
  )
  flags.mark_flags_as_required(["workdir"])


def main_for(run):
  """An absl main that starts JAX and calls `run(config, workdir)`."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.multihost:
      jax.distributed.initialize()
    logging.info(
      "JAX process %d/%d, %d local / %d global devices (%s)",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.default_backend(),
    )
    if jax.process_index() != 0:
      # One log of the run, process 0's; warnings and errors still show.
      logging.set_verbosity(logging.WARNING)
    checkpoint.quiet_orbax_logs()
    run(FLAGS.config, FLAGS.workdir)

  return main
