"""The registry of reconstructors: lookup, kind arguments and validation.

`PARAMETERIZATIONS` maps each kind's name to its reconstructor module and
`KIND_ARGS` to the kind-specific keyword arguments of its `init`. `get`
looks a kind up (a ValueError lists the valid names), `kind_kwargs` keeps
the arguments a kind takes, `validate` checks its settings before anything
is built and `num_floats` counts the storage of a pytree.

This module imports only the reconstructor modules, never the package
`__init__`, so any submodule can import it without an import cycle.
"""

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import checks
from lowrank_distill.parameterize import (
  factors,
  lowrank_memories,
  mappers,
  memories,
  pixels,
)
from lowrank_distill.parameterize import formation as formation_lib

PARAMETERIZATIONS = {
  "pixels": pixels,
  "factors": factors,
  "mappers": mappers,
  "memories": memories,
  "lowrank_memories": lowrank_memories,
}

# The kind-specific keyword arguments of each kind's `init`.
KIND_ARGS = {
  "pixels": (),
  "factors": ("rank",),
  "mappers": ("rank", "num_sets"),
  "memories": ("num_bases",),
  "lowrank_memories": ("num_bases", "rank"),
}


def get(name: str):
  """The reconstructor module called `name`; ValueError lists valid names."""
  checks.check_choice("synset.param", name, PARAMETERIZATIONS)
  return PARAMETERIZATIONS[name]


def reconstructor(name: str, *, formation: int = 1):
  """The reconstructor of kind `name` with multi-formation `formation`.

  At 1, the kind's module itself; above, a `formation.Formed` whose
  images are the kind's images cut into `formation x formation` blocks.
  """
  module = get(name)
  if formation == 1:
    return module
  return formation_lib.Formed(kind=module, factor=formation)


def images_multiple(formation: int = 1) -> int:
  """Images per class come in multiples of this: `formation ** 2`."""
  return formation * formation


def kind_kwargs(name: str, *, rank=None, num_sets=None, num_bases=None) -> dict:
  """The kind-specific `init` arguments of `name`, dropping unused ones.

  `kind_kwargs('factors', rank=2, num_sets=4) == {'rank': 2}`.
  """
  get(name)
  values = {"rank": rank, "num_sets": num_sets, "num_bases": num_bases}
  return {arg: values[arg] for arg in KIND_ARGS[name]}


def validate(
  name: str,
  *,
  image_shape,
  rank=None,
  num_sets=None,
  num_bases=None,
  formation=1,
) -> None:
  """Checks a parameterization's settings before anything is built.

  Args:
    name: a key of PARAMETERIZATIONS.
    image_shape: (h, w, c).
    rank: for 'factors', 'mappers' and 'lowrank_memories', an integer in
      1..min(h, w).
    num_sets: for 'mappers', an integer >= 1.
    num_bases: for 'memories' and 'lowrank_memories', an integer >= 1.
    formation: an integer >= 1 dividing h and w (every kind).

  Raises:
    ValueError naming the wrong field and what is allowed. Arguments the
    kind does not use are ignored.
  """
  get(name)
  shape = pixels.check_sizes(
    num_classes=1, images_per_class=1, image_shape=image_shape
  )
  if "rank" in KIND_ARGS[name]:
    factors.check_rank(rank, shape)
  if "num_sets" in KIND_ARGS[name]:
    mappers.check_num_sets(num_sets)
  if "num_bases" in KIND_ARGS[name]:
    memories.check_num_bases(num_bases)
  formation_lib.check_factor(formation, shape)


def num_floats(tree) -> int:
  """Total number of floating-point elements in a pytree.

  The storage a set costs: reconstructor params, label logits, a learned lr.
  Integer leaves (hard labels), bools and PRNG keys cost nothing. Works on
  arrays, Python floats and `jax.ShapeDtypeStruct`s (from `jax.eval_shape`).
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, float):
      total += 1
      continue
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      continue
    total += int(np.prod(leaf.shape, dtype=np.int64))
  return total
