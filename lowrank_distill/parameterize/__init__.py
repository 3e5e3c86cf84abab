"""Synthetic-set parameterizations (reconstructors), labels and budgets.

Every reconstructor module exposes a pure pair:

  init(key, *, num_classes, images_per_class, image_shape, method='noise',
       real_images=None, **kind_specific) -> params
  materialize(params) -> images [n, h, w, c]

with `n = num_classes * images_per_class` images in class-major order (image
`i` has hard label `i // images_per_class`) and params a dict of float32
arrays. Kinds: `pixels` (full rank), `factors` (the low-rank plugin, needs
`rank`), `mappers` (MTT-LSS shared mappers, needs `rank` and `num_sets`),
`memories` (RememberThePast's bases shared by all classes and an address
per image, needs `num_bases`), `lowrank_memories` (the same with
low-rank bases, needs `num_bases` and `rank`), `hallucinators` (HaBa's
bases and hallucinator networks, needs `num_hallucinators`) and
`lowrank_hallucinators` (with low-rank bases, needs `rank` too).
`formation` adds multi-formation (IDC) to any kind: `reconstructor(name,
formation=f)`. `labels` holds the hard/soft labels, `budget` the storage
accounting.

The registry itself (`PARAMETERIZATIONS`, `KIND_ARGS`, `get`, `kind_kwargs`,
`validate`, `num_floats`) lives in `registry`; this module only re-exports.
Submodules import their siblings directly, never this package `__init__`.
"""

from lowrank_distill.parameterize import (
  budget,
  factors,
  formation,
  hallucinators,
  labels,
  lowrank_hallucinators,
  lowrank_memories,
  mappers,
  memories,
  pixels,
  registry,
)
from lowrank_distill.parameterize.registry import (
  KIND_ARGS,
  PARAMETERIZATIONS,
  get,
  images_multiple,
  kind_kwargs,
  num_floats,
  reconstructor,
  validate,
)

__all__ = [
  "KIND_ARGS",
  "PARAMETERIZATIONS",
  "budget",
  "factors",
  "formation",
  "get",
  "hallucinators",
  "images_multiple",
  "kind_kwargs",
  "labels",
  "lowrank_hallucinators",
  "lowrank_memories",
  "mappers",
  "memories",
  "num_floats",
  "pixels",
  "reconstructor",
  "registry",
  "validate",
]
