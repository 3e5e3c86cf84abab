"""What every launcher shares: --config, --workdir, --multihost, start-up."""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

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
    "multihost", False, "Call jax.distributed.initialize() (multi-host)."
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
    run(FLAGS.config, FLAGS.workdir)

  return main
