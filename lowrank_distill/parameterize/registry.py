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
  hallucinators,
  lowrank_hallucinators,
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
  "hallucinators": hallucinators,
  "lowrank_hallucinators": lowrank_hallucinators,
}

# The kind-specific keyword arguments of each kind's `init`.
KIND_ARGS = {
  "pixels": (),
  "factors": ("rank",),
  "mappers": ("rank", "num_sets"),
  "memories": ("num_bases",),
  "lowrank_memories": ("num_bases", "rank"),
  "hallucinators": ("num_hallucinators",),
  "lowrank_hallucinators": ("num_hallucinators", "rank"),
}
# Every kind argument (the `synset` config field of the same name).
KIND_ARG_NAMES = ("rank", "num_sets", "num_bases", "num_hallucinators")


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


def images_multiple(name: str, *, formation: int = 1, **values) -> int:
  """Images per class of kind `name` come in multiples of this.

  `formation ** 2` times the kind's own unit (hallucinators: one image per
  hallucinator and basis); `values` are kind arguments as `kind_kwargs`.
  """
  module = get(name)
  unit = 1
  if hasattr(module, "images_multiple"):
    unit = module.images_multiple(**kind_kwargs(name, **values))
  return formation * formation * unit


def kind_kwargs(name: str, **values) -> dict:
  """The kind-specific `init` arguments of `name`, dropping unused ones.

  `kind_kwargs('factors', rank=2, num_sets=4) == {'rank': 2}`. A missing
  argument is None.

  Raises:
    TypeError for a name outside KIND_ARG_NAMES.
  """
  get(name)
  unknown = set(values) - set(KIND_ARG_NAMES)
  if unknown:
    raise TypeError(
      f"unknown kind arguments {sorted(unknown)}; valid: {KIND_ARG_NAMES}"
    )
  return {arg: values.get(arg) for arg in KIND_ARGS[name]}


def validate(
  name: str,
  *,
  image_shape,
  rank=None,
  num_sets=None,
  num_bases=None,
  num_hallucinators=None,
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
    num_hallucinators: for 'hallucinators' and 'lowrank_hallucinators', an
      integer >= 1 (the images then need sides >= 3).
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
  if "num_hallucinators" in KIND_ARGS[name]:
    hallucinators.check_num_hallucinators(num_hallucinators)
    hallucinators.check_image_size(shape)
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
