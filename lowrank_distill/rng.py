"""Named PRNG streams: one `fold_in` of the run's root key per concern."""

import jax

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
  if name not in STREAMS:
    raise ValueError(
      f"PRNG stream {name!r} is not known; valid: {list(STREAMS)}"
    )
  return jax.random.fold_in(key, STREAMS[name])
