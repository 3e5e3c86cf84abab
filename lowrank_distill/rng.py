"""Named PRNG streams: one `fold_in` of the run's root key per concern."""

import jax

from lowrank_distill import checks

STREAMS = {
  "init": 0,
  "distill": 1,
  "augment": 2,
  "eval": 3,
  "experts": 4,
  "coreset": 5,
  "continual": 6,
}


def stream(key, name: str):
  """The key of stream `name`, derived from the run's root key."""
  checks.check_choice("PRNG stream", name, STREAMS)
  return jax.random.fold_in(key, STREAMS[name])
