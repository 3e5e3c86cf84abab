"""Storage budgets: how many synthetic images a parameterization may keep.

The storage of a set counts every float that must be kept to rebuild it:
reconstructor parameters, label logits when labels are soft (a hard label
costs nothing) and a learned student lr. It is computed from the shapes of
the real `init` outputs (`jax.eval_shape`), so it cannot drift from them.

Budgets (`BUDGETS`):
- 'same-memory': the most images per class whose storage does not exceed
  the full-rank budget `ipc * num_classes * h * w * c` (what `ipc` pixel
  images with hard labels cost). For factors with hard labels that is
  `floor(ipc * h * w / (r * (h + w)))`: 8x on 32x32 at rank 2.
- 'same-images': keep `ipc` images per class, whatever they cost.

With multi-formation (`formation` f > 1) every stored image gives `f**2`
training images: images per class count training images and come in
multiples of `f**2`; the storage counts the stored images (and a soft
label per training image).

References:
  Yang et al., "An Efficient Dataset Condensation Plugin and Its Application
  to Continual Learning", NeurIPS 2023 (same-memory / same-images); Kong et
  al., "Efficient Dataset Distillation through Low-Rank Space Sampling",
  arXiv:2503.07998, 2025 (labels and lr counted in the storage).
"""

import dataclasses

import jax

from lowrank_distill import checks
from lowrank_distill.parameterize import labels as labels_lib
from lowrank_distill.parameterize import registry

BUDGETS = ("same-memory", "same-images")


def full_rank_floats(*, ipc: int, num_classes: int, image_shape) -> int:
  """The full-rank budget: `ipc * num_classes * h * w * c` floats."""
  h, w, c = image_shape
  return int(ipc) * int(num_classes) * int(h) * int(w) * int(c)


def storage_floats(
  param: str,
  *,
  num_classes: int,
  images_per_class: int,
  image_shape,
  rank: int | None = None,
  num_sets: int | None = None,
  num_bases: int | None = None,
  num_hallucinators: int | None = None,
  soft_labels: bool = False,
  learn_lr: bool = False,
  formation: int = 1,
) -> int:
  """Floats a set costs, from the shapes of `init` alone (no compute).

  Args:
    param: a parameterization name.
    num_classes: classes.
    images_per_class: images per class.
    image_shape: (h, w, c).
    rank: for 'factors' / 'mappers'.
    num_sets: for 'mappers'.
    num_bases: for 'memories' / 'lowrank_memories'.
    num_hallucinators: for 'hallucinators' / 'lowrank_hallucinators'.
    soft_labels: add `num_classes` logits per image.
    learn_lr: add 1 for the learned student lr.
    formation: the multi-formation factor (images_per_class a multiple of
      its square).

  Returns:
    The storage in floats, as `registry.num_floats` counts it.
  """
  module = registry.reconstructor(param, formation=formation)
  shape = tuple(int(d) for d in image_shape)
  kwargs = registry.kind_kwargs(
    param,
    rank=rank,
    num_sets=num_sets,
    num_bases=num_bases,
    num_hallucinators=num_hallucinators,
  )
  # The key is made inside eval_shape: planning compiles nothing.
  tree = {
    "images": jax.eval_shape(
      lambda: module.init(
        jax.random.key(0),
        num_classes=num_classes,
        images_per_class=images_per_class,
        image_shape=shape,
        **kwargs,
      )
    )
  }
  if soft_labels:
    tree["labels"] = jax.eval_shape(
      lambda: labels_lib.init_soft(
        jax.random.key(0),
        num_classes=num_classes,
        images_per_class=images_per_class,
      )
    )
  if learn_lr:
    tree["log_lr"] = 0.0
  return registry.num_floats(tree)


def images_per_class(
  param: str,
  *,
  budget: str,
  ipc: int,
  num_classes: int,
  image_shape,
  rank: int | None = None,
  num_sets: int | None = None,
  num_bases: int | None = None,
  num_hallucinators: int | None = None,
  soft_labels: bool = False,
  learn_lr: bool = False,
  formation: int = 1,
) -> int:
  """Images per class the budget allows.

  Args:
    param: a parameterization name.
    budget: 'same-memory' or 'same-images'.
    ipc: the budget in full-size images per class.
    num_classes: classes.
    image_shape: (h, w, c).
    rank: for 'factors' / 'mappers'.
    num_sets: for 'mappers'.
    num_bases: for 'memories' / 'lowrank_memories'.
    num_hallucinators: for 'hallucinators' / 'lowrank_hallucinators'.
    soft_labels: whether label logits are stored.
    learn_lr: whether a student lr is stored.
    formation: the multi-formation factor f; images per class are
      training images, a multiple of f**2.

  Returns:
    'same-images': `ipc` stored images (bases) per class, `ipc * unit`
    images (`unit = registry.images_multiple`: f**2, times H for
    hallucinators). 'same-memory': the largest multiple m of that unit with
    `storage_floats(m) <= full_rank_floats(ipc)`.

  Raises:
    ValueError for an unknown budget or parameterization, bad rank or
    num_sets, or when not even one image per class fits.
  """
  checks.check_choice("synset.budget", budget, BUDGETS)
  ipc = checks.positive_int("ipc", ipc)
  num_classes = checks.positive_int("num_classes", num_classes)
  registry.validate(
    param,
    image_shape=image_shape,
    rank=rank,
    num_sets=num_sets,
    num_bases=num_bases,
    num_hallucinators=num_hallucinators,
    formation=formation,
  )
  unit = registry.images_multiple(
    param, formation=formation, num_hallucinators=num_hallucinators
  )
  if budget == "same-images":
    return ipc * unit

  # Storage is affine in stored images per class (m / unit): fixed +
  # (m / unit) * per_unit. Mapper sets need one stored image each, so
  # measure where every set has one.
  def cost(m):
    return storage_floats(
      param,
      num_classes=num_classes,
      images_per_class=m,
      image_shape=image_shape,
      rank=rank,
      num_sets=num_sets,
      num_bases=num_bases,
      num_hallucinators=num_hallucinators,
      soft_labels=soft_labels,
      learn_lr=learn_lr,
      formation=formation,
    )

  sets = num_sets if "num_sets" in registry.KIND_ARGS[param] else 1
  first = max(1, -(-int(sets) // num_classes))  # ceil: every set gets one
  per_unit = cost((first + 1) * unit) - cost(first * unit)
  fixed = cost(first * unit) - first * per_unit
  allowed = full_rank_floats(
    ipc=ipc, num_classes=num_classes, image_shape=image_shape
  )
  best = (allowed - fixed) // per_unit * unit
  if best < first * unit:
    settings = registry.kind_kwargs(
      param,
      rank=rank,
      num_sets=num_sets,
      num_bases=num_bases,
      num_hallucinators=num_hallucinators,
    )
    settings["soft labels"] = bool(soft_labels)
    if formation > 1:
      settings["formation"] = formation
    described = ", ".join(f"{k} {v}" for k, v in settings.items())
    raise ValueError(
      f"budget 'same-memory' at ipc {ipc} allows {allowed} floats, too few "
      f"for {first * unit} image(s) per class of {param!r} ({described}): "
      f"{fixed} fixed + {per_unit} per stored image per class. Lower the "
      f"rank, raise ipc, or use budget='same-images'"
    )
  if cost(best) > allowed or cost(best + unit) <= allowed:
    raise AssertionError(f"storage of {param!r} is not affine in ipc")
  return int(best)


@dataclasses.dataclass(frozen=True)
class Budget:
  """A resolved storage budget (what launchers print before a run).

  Attributes:
    param: the parameterization.
    budget: 'same-memory' or 'same-images'.
    ipc: the requested budget, in full-size images per class.
    num_classes: classes.
    image_shape: (h, w, c).
    rank: the rank, None for pixels.
    num_sets: mapper sets, None unless 'mappers'.
    num_bases: memory bases, None unless 'memories' / 'lowrank_memories'.
    num_hallucinators: hallucinators, None unless 'hallucinators' /
      'lowrank_hallucinators'.
    soft_labels: whether label logits are stored.
    learn_lr: whether a student lr is stored.
    images_per_class: (training) images per class the set holds.
    floats_used: the set's storage.
    floats_allowed: the full-rank budget `ipc * classes * h * w * c`
      (a bound only for 'same-memory').
    formation: the multi-formation factor (1: none); the set stores
      `images_per_class / formation**2` images per class.
  """

  param: str
  budget: str
  ipc: int
  num_classes: int
  image_shape: tuple[int, int, int]
  rank: int | None
  num_sets: int | None
  soft_labels: bool
  learn_lr: bool
  images_per_class: int
  floats_used: int
  floats_allowed: int
  formation: int = 1
  num_bases: int | None = None
  num_hallucinators: int | None = None

  @property
  def num_images(self) -> int:
    return self.num_classes * self.images_per_class

  @property
  def ratio(self) -> float:
    """floats_used / floats_allowed."""
    return self.floats_used / self.floats_allowed


def plan(
  param: str,
  *,
  budget: str,
  ipc: int,
  num_classes: int,
  image_shape,
  rank: int | None = None,
  num_sets: int | None = None,
  num_bases: int | None = None,
  num_hallucinators: int | None = None,
  soft_labels: bool = False,
  learn_lr: bool = False,
  formation: int = 1,
) -> Budget:
  """Resolves a budget (see `images_per_class`) into a `Budget`.

  Arguments the parameterization does not use (rank for pixels, num_sets
  for factors) are ignored and recorded as None.
  """
  m = images_per_class(
    param,
    budget=budget,
    ipc=ipc,
    num_classes=num_classes,
    image_shape=image_shape,
    rank=rank,
    num_sets=num_sets,
    num_bases=num_bases,
    num_hallucinators=num_hallucinators,
    soft_labels=soft_labels,
    learn_lr=learn_lr,
    formation=formation,
  )
  kwargs = registry.kind_kwargs(
    param,
    rank=rank,
    num_sets=num_sets,
    num_bases=num_bases,
    num_hallucinators=num_hallucinators,
  )
  shape = tuple(int(d) for d in image_shape)
  return Budget(
    param=param,
    budget=budget,
    ipc=ipc,
    num_classes=num_classes,
    image_shape=shape,
    rank=kwargs.get("rank"),
    num_sets=kwargs.get("num_sets"),
    soft_labels=bool(soft_labels),
    learn_lr=bool(learn_lr),
    images_per_class=m,
    floats_used=storage_floats(
      param,
      num_classes=num_classes,
      images_per_class=m,
      image_shape=shape,
      soft_labels=soft_labels,
      learn_lr=learn_lr,
      formation=formation,
      **kwargs,
    ),
    floats_allowed=full_rank_floats(
      ipc=ipc, num_classes=num_classes, image_shape=shape
    ),
    formation=int(formation),
    num_bases=kwargs.get("num_bases"),
    num_hallucinators=kwargs.get("num_hallucinators"),
  )


def budget_table(b: Budget) -> str:
  """A small aligned text table of a budget, one header row and one row."""
  h, w, c = b.image_shape
  labels = "soft" if b.soft_labels else "hard"
  columns = [
    ("parameterization", b.param),
    ("budget", b.budget),
    ("image", f"{h}x{w}x{c}"),
    ("rank", "-" if b.rank is None else str(b.rank)),
    ("sets", "-" if b.num_sets is None else str(b.num_sets)),
    *([("bases", str(b.num_bases))] if b.num_bases is not None else []),
    *(
      [("hallucinators", str(b.num_hallucinators))]
      if b.num_hallucinators is not None
      else []
    ),
    ("labels", labels + (" +lr" if b.learn_lr else "")),
    *([("formation", str(b.formation))] if b.formation > 1 else []),
    ("ipc", str(b.ipc)),
    ("images/class", str(b.images_per_class)),
    ("total images", str(b.num_images)),
    ("floats used", f"{b.floats_used:,}"),
    ("floats allowed", f"{b.floats_allowed:,}"),
    ("ratio", f"{b.ratio:.3f}"),
  ]
  widths = [max(len(name), len(value)) for name, value in columns]
  header = "  ".join(n.ljust(wd) for (n, _), wd in zip(columns, widths))
  row = "  ".join(v.ljust(wd) for (_, v), wd in zip(columns, widths))
  return f"{header.rstrip()}\n{row.rstrip()}"
