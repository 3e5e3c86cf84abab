"""What every launcher shares: --config, --workdir, --multihost, start-up."""

import pathlib
import sys

# Config files build on each other (`from configs import dm`): the
# repository root must be importable from wherever a launcher is started.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lowrank_distill import checkpoint, config_utils  # noqa: E402
from lowrank_distill import workdir as workdir_lib  # noqa: E402

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
  flags.DEFINE_string(
    "wandb_project",
    None,
    "Also log the run's metrics to this W&B project (needs wandb); they "
    "always go to metrics.jsonl and TensorBoard files in the workdir.",
  )
  flags.mark_flags_as_required(["workdir"])


def load_config():
  """`--config` with its overrides applied and its lists split
  (`config_utils.split_comma_lists`), or a UsageError naming the file."""
  try:
    config = FLAGS.config
    config_utils.split_comma_lists(config)
  except OSError as e:
    # ml_collections names the flag ("config_config") before the file.
    attempted = str(e).split("Attempted", 1)[-1].strip()
    raise app.UsageError(
      f"--config: cannot load the config file ({attempted})"
    ) from None
  return config


def parse_flags(argv):
  """absl's flag parsing, with an unknown `--config.<field>` named."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these, not a flags.Error, for a field the
    # config does not have.
    field = str(e).strip("\"'")
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")]
    print(
      f"FATAL Flags parsing error: --config has no field {field!r} (in one "
      f"of {overrides}); a run's config.json lists every field",
      file=sys.stderr,
    )
    sys.exit(2)


def launch(run) -> None:
  """`app.run` of `main_for(run)`, with `parse_flags`."""
  app.run(main_for(run), flags_parser=parse_flags)


def main_for(run):
  """An absl main that starts JAX and calls `run(config, workdir)`."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = load_config()
    if FLAGS.wandb_project:
      workdir_lib.enable_wandb(FLAGS.wandb_project)
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
    run(config, FLAGS.workdir)

  return main
