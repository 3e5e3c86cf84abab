"""Sets' evaluations compared set by set, model by model and image by image.

An evaluation's accuracy is a mean over a [K, m] table of which of m test
images each of K trained networks gets right, and both are samples: other
seeds train other networks, another split draws other images. A held-out
split of 1,000 images measures one set's accuracy to about a point however
many models are trained, since the images stay the same. Two sets
evaluated with the same model seeds on the same split are compared by
the mean of the table of their per-(model, image) differences, whose
standard error here counts both samples: its square is the two-way
crossed random-effects estimate (MS_models + MS_images - MS_residual) /
(K m), with each variance component kept >= 0 (e.g. Searle, Casella &
McCulloch, "Variance Components", 1992, ch. 4). The standard error with
the images fixed, the spread of the K per-model differences, is given
beside it.

A set is a sample too: another distillation seed (or buffer, or start)
makes another set. Given S sets a side, paired by position (the same
distillation seed each, say), the [S, K, m] table of differences is a
three-way crossed design, and the square of its mean's standard error
is (MS_S + MS_K + MS_m - MS_SK - MS_Sm - MS_Km + MS_SKm) / (S K m) before
each component is kept >= 0: one set a side leaves the sets' spread out.
The models need not be the same networks in every set: launch/evaluate.py
trains the same ones for every set, a distillation's own evaluation keys
them from its seed (models nested in sets). The estimate is unbiased for
both before the truncation at 0, which makes it err high; in the nested
case by about a tenth in a simulation where the models' spread was
large beside the rest (tests/compare_test.py), by nothing measurable in
one where it was small.
"""

import dataclasses
import itertools
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from lowrank_distill import evaluate

# The fingerprint `load` takes when none is named: the last one logged
# (a distillation's final evaluation, after its mid-run ones).
LAST = "last"


@dataclasses.dataclass(frozen=True)
class CrossedMean:
  """A table's mean with its standard error over sets, models and images.

  `se` is the whole standard error; `se_sets`, `se_models`, `se_images`
  and `se_interaction` (every interaction of the factors together) are
  its parts: their squares add up to its square. `se_images_fixed` is the
  standard error when the m images are taken as fixed: the same estimate
  for the table of per-(set, model) means (with one set, the spread of
  the K model means over sqrt(K)).
  """

  mean: float
  se: float
  se_sets: float
  se_models: float
  se_images: float
  se_interaction: float
  se_images_fixed: float
  num_sets: int
  num_models: int
  num_images: int


def _mean_variance_parts(table: np.ndarray) -> dict:
  """Each random effect's part of the variance of a crossed table's mean.

  The table has one number per cell of a fully crossed design whose every
  factor (axis) is random; the interaction of all the axes is the
  residual. Each effect's variance component comes from the expected mean
  squares, E[MS_T] = sum over effects U containing T of (N / n_U) s2_U
  (N cells, n_U the cells of U's axes), solved from the highest
  interaction down; a negative estimate is solved with as it is and counts
  as 0 in the parts returned.

  Args:
    table: a d-dimensional array, every axis of length >= 2.

  Returns:
    effect (a sorted tuple of axes) -> s2_effect / n_effect, its part of
    the variance of `table.mean()`.
  """
  shape = table.shape
  size = table.size
  axes = range(table.ndim)
  effects = [
    t for r in range(table.ndim, 0, -1) for t in itertools.combinations(axes, r)
  ]

  def marginal(kept):
    others = tuple(a for a in axes if a not in kept)
    return table.mean(axis=others, keepdims=True) if others else table

  def cells(effect):
    return math.prod(shape[a] for a in effect)

  components = {}
  for effect in effects:
    # The effect's deviations: inclusion-exclusion over its sub-effects.
    deviation = sum(
      (-1) ** (len(effect) - r) * marginal(kept)
      for r in range(len(effect) + 1)
      for kept in itertools.combinations(effect, r)
    )
    freedom = math.prod(shape[a] - 1 for a in effect)
    mean_square = (size / cells(effect)) * np.sum(deviation**2) / freedom
    above = sum(
      (size / cells(u)) * components[u]
      for u in components
      if set(effect) < set(u)
    )
    components[effect] = (mean_square - above) / (size / cells(effect))
  return {e: max(0.0, float(s2)) / cells(e) for e, s2 in components.items()}


def crossed_mean(table) -> CrossedMean:
  """The mean of a sets x models x images table and its standard error.

  Args:
    table: [K, m] or [S, K, m] numbers (0/1 correctness, or the difference
      of two such tables): S >= 1 sets, K >= 2 models and m >= 2 images.

  Returns:
    A `CrossedMean`.
  """
  table = np.asarray(table, np.float64)
  if table.ndim == 3 and table.shape[0] == 1:
    table = table[0]
  if table.ndim not in (2, 3):
    raise ValueError(
      f"table: expected [models, images] or [sets, models, images], got "
      f"{table.shape}"
    )
  *_, k, m = table.shape
  if k < 2 or m < 2:
    raise ValueError(
      f"table: needs at least 2 models and 2 images to estimate both "
      f"spreads, got {k} models x {m} images"
    )
  parts = _mean_variance_parts(table)
  fixed = _mean_variance_parts(table.mean(axis=-1))
  sets, models, images = (
    ((0,), (1,), (2,)) if table.ndim == 3 else (None, (0,), (1,))
  )
  main = (sets, models, images)
  return CrossedMean(
    mean=float(table.mean()),
    se=math.sqrt(sum(parts.values())),
    se_sets=math.sqrt(parts.get(sets, 0.0)),
    se_models=math.sqrt(parts[models]),
    se_images=math.sqrt(parts[images]),
    se_interaction=math.sqrt(sum(v for e, v in parts.items() if e not in main)),
    se_images_fixed=math.sqrt(sum(fixed.values())),
    num_sets=table.shape[0] if table.ndim == 3 else 1,
    num_models=k,
    num_images=m,
  )


@dataclasses.dataclass(frozen=True)
class LoggedEvaluation:
  """One evaluation read from a `ModelLog`: its models' correct images."""

  source: str
  fingerprint: str
  split_digest: str
  models: np.ndarray  # [K] model indices, sorted
  correct_images: np.ndarray  # [K, m] bool


def _log_path(path) -> pathlib.Path:
  path = pathlib.Path(path)
  return path / evaluate.MODEL_LOG if path.is_dir() else path


def load(path, *, fingerprint: str = LAST) -> LoggedEvaluation:
  """The models one evaluation logged, with the images each got right.

  Args:
    path: a workdir (its `eval_models.jsonl`) or a `ModelLog` file.
    fingerprint: which evaluation: a prefix of its fingerprint, or `LAST`,
      the last one written (a distillation logs one per evaluation, a
      cross-architecture evaluation one per architecture, in its order).

  Returns:
    A `LoggedEvaluation` of every model logged under that fingerprint.
  """
  log_path = _log_path(path)
  if not log_path.exists():
    raise FileNotFoundError(
      f"{path}: no evaluation log ({evaluate.MODEL_LOG}) there"
    )
  evaluations = evaluate.ModelLog(log_path).evaluations()
  order = list(evaluations)
  if not order:
    raise ValueError(f"{log_path}: the log holds no evaluated model")
  if fingerprint == LAST:
    chosen = order[-1]
  else:
    matches = [f for f in order if f.startswith(fingerprint)]
    if len(matches) != 1:
      raise ValueError(
        f"fingerprint {fingerprint!r}: {len(matches)} of the evaluations in "
        f"{log_path} start with it; they are "
        + ", ".join(f[:12] for f in order)
        + f" (or {LAST!r})"
      )
    chosen = matches[0]
  lines = evaluations[chosen]
  models = np.array(sorted(lines), np.int64)
  rows = [evaluate.correct_images_of(lines[i]) for i in models]
  if any(row is None for row in rows):
    raise ValueError(
      f"{log_path}: evaluation {chosen[:12]} logged only correct counts, "
      "not which images each model got wrong (written before they were "
      "recorded); evaluate the set again to compare it image by image"
    )
  digests = {lines[i].get("split_digest") for i in models}
  if len(digests) != 1:
    raise ValueError(f"{log_path}: evaluation {chosen[:12]} mixes test splits")
  return LoggedEvaluation(
    source=str(log_path),
    fingerprint=chosen,
    split_digest=digests.pop(),
    models=models,
    correct_images=np.stack(rows),
  )


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Sets a against sets b on the models every evaluation trained."""

  models: np.ndarray  # [K] shared model indices
  accuracy_a: CrossedMean
  accuracy_b: CrossedMean
  difference: CrossedMean  # a - b
  per_model: np.ndarray  # [K] a - b, each model's accuracy difference
  per_set: np.ndarray  # [S] a - b, each pair of sets' accuracy difference

  @property
  def models_lower(self) -> int:
    """Models on which a scored below b (over the sets)."""
    return int(np.sum(self.per_model < 0))

  def to_json(self) -> dict:
    return {
      "models": self.models.tolist(),
      "accuracy_a": dataclasses.asdict(self.accuracy_a),
      "accuracy_b": dataclasses.asdict(self.accuracy_b),
      "difference": dataclasses.asdict(self.difference),
      "per_model": self.per_model.tolist(),
      "per_set": self.per_set.tolist(),
      "models_lower": self.models_lower,
    }


def _as_sets(side) -> list:
  if isinstance(side, LoggedEvaluation):
    return [side]
  return list(side)


def paired(a, b) -> Comparison:
  """Compares evaluations on the same split, model index by model index.

  Models with the same index share their key (init, data order and
  augmentation) when every evaluation used the same evaluation seed, which
  is what makes the per-model differences small.

  Args:
    a: a `LoggedEvaluation`, or a sequence of them: one per set (another
      distillation seed each).
    b: the same for the other side, as many sets; a's i-th set is paired
      with b's i-th (give them the same distillation seed).

  Returns:
    A `Comparison` on the models every evaluation logged.
  """
  a, b = _as_sets(a), _as_sets(b)
  if not a or len(a) != len(b):
    raise ValueError(
      f"a has {len(a)} set(s) and b {len(b)}: give each side the same "
      "number (>= 1) of evaluations, paired by position"
    )
  every = a + b
  digests = {e.split_digest for e in every}
  if len(digests) != 1:
    raise ValueError(
      "the evaluations were tested on different splits (test digests "
      + ", ".join(f"{e.source}: {e.split_digest}" for e in every)
      + "): compare evaluations of the same dataset and held-out split"
    )
  models = every[0].models
  for e in every[1:]:
    models = np.intersect1d(models, e.models)
  if len(models) < 2:
    raise ValueError(
      "the evaluations ("
      + "; ".join(f"{e.source}: models {e.models.tolist()}" for e in every)
      + f") share {len(models)} model(s); a comparison needs at least 2"
    )

  def rows(side):
    return np.stack(
      [e.correct_images[np.searchsorted(e.models, models)] for e in side]
    )

  rows_a, rows_b = rows(a), rows(b)  # [S, K, m]
  difference = rows_a.astype(np.int8) - rows_b.astype(np.int8)
  return Comparison(
    models=models,
    accuracy_a=crossed_mean(rows_a),
    accuracy_b=crossed_mean(rows_b),
    difference=crossed_mean(difference),
    per_model=difference.mean(axis=(0, 2)),
    per_set=difference.mean(axis=(1, 2)),
  )


def _percent(x: float) -> str:
  return f"{100 * x:.2f}"


def _parts(acc: CrossedMean) -> str:
  sets = f"sets {_percent(acc.se_sets)}, " if acc.num_sets > 1 else ""
  models, images = _percent(acc.se_models), _percent(acc.se_images)
  return f"{sets}models {models}, images {images}"


def report(comparison: Comparison, names: Sequence[str] = ("a", "b")) -> str:
  """A few lines a person reads: both accuracies and their difference."""
  a, b = names
  c = comparison
  d = c.difference
  sets = f"{d.num_sets} sets a side x " if d.num_sets > 1 else ""
  lines = [f"{sets}{len(c.models)} paired models x {d.num_images} test images"]
  for name, acc in ((a, c.accuracy_a), (b, c.accuracy_b)):
    lines.append(
      f"{name}: {_percent(acc.mean)} ± {_percent(acc.se)} (standard error; "
      f"{_parts(acc)})"
    )
  lines += [
    f"{a} - {b}: {100 * d.mean:+.2f} ± {_percent(d.se)} (standard error; "
    f"{_parts(d)}, interaction {_percent(d.se_interaction)}; with the "
    f"images fixed {_percent(d.se_images_fixed)})",
    "per model: "
    + ", ".join(f"{100 * x:+.2f}" for x in c.per_model)
    + f" ({c.models_lower} of {len(c.models)} lower)",
  ]
  if d.num_sets > 1:
    lines.append("per set: " + ", ".join(f"{100 * x:+.2f}" for x in c.per_set))
  return "\n".join(lines)
