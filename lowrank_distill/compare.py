"""Two sets' evaluations compared model by model and image by image.

An evaluation's accuracy is a mean over a [K, m] table of which of m test
images each of K trained networks gets right, and both are samples: other
seeds train other networks, another split draws other images. A held-out
split of 1,000 images measures one set's accuracy to about a point however
many models are trained, since the images stay the same. Two sets
evaluated with the same model seeds on the same split are compared by
the mean of the table of their per-(model, image) differences, whose
standard error here counts both samples: the two-way crossed
random-effects estimate (MS_models + MS_images - MS_residual) / (K m),
with each variance component kept >= 0 (e.g. Searle, Casella & McCulloch,
"Variance Components", 1992, ch. 4). The standard error over models
alone, the spread of the K per-model differences, is given beside it; it
leaves the images out.

Neither counts the sets' own run-to-run spread (another distillation seed,
buffer or start): compare sets from several seeds for that.
"""

import dataclasses
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
  """A [K, m] table's mean with its standard error over models and images.

  `se` is the whole standard error; `se_models`, `se_images` and
  `se_interaction` are its parts (their squares add up to its square);
  `se_models_only` is the spread of the K row means over sqrt(K), the
  standard error when the m images are taken as fixed.
  """

  mean: float
  se: float
  se_models: float
  se_images: float
  se_interaction: float
  se_models_only: float
  num_models: int
  num_images: int


def crossed_mean(table) -> CrossedMean:
  """The mean of a [K, m] models x images table and its standard error.

  Args:
    table: [K, m] numbers (0/1 correctness, or the difference of two such
      tables), K >= 2 models and m >= 2 images.

  Returns:
    A `CrossedMean`.
  """
  table = np.asarray(table, np.float64)
  if table.ndim != 2:
    raise ValueError(f"table: expected [models, images], got {table.shape}")
  k, m = table.shape
  if k < 2 or m < 2:
    raise ValueError(
      f"table: needs at least 2 models and 2 images to estimate both "
      f"spreads, got {k} models x {m} images"
    )
  grand = table.mean()
  rows = table.mean(axis=1)
  cols = table.mean(axis=0)
  ms_models = m * np.sum((rows - grand) ** 2) / (k - 1)
  ms_images = k * np.sum((cols - grand) ** 2) / (m - 1)
  residual = table - rows[:, None] - cols[None, :] + grand
  ms_residual = np.sum(residual**2) / ((k - 1) * (m - 1))
  var_models = max(0.0, (ms_models - ms_residual) / m) / k
  var_images = max(0.0, (ms_images - ms_residual) / k) / m
  var_interaction = ms_residual / (k * m)
  return CrossedMean(
    mean=float(grand),
    se=math.sqrt(var_models + var_images + var_interaction),
    se_models=math.sqrt(var_models),
    se_images=math.sqrt(var_images),
    se_interaction=math.sqrt(var_interaction),
    se_models_only=float(np.std(rows, ddof=1) / math.sqrt(k)),
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
  """Set a against set b on the models both evaluations trained."""

  models: np.ndarray  # [K] shared model indices
  accuracy_a: CrossedMean
  accuracy_b: CrossedMean
  difference: CrossedMean  # a - b
  per_model: np.ndarray  # [K] a - b, each model's accuracy difference

  @property
  def models_lower(self) -> int:
    """Models on which a scored below b."""
    return int(np.sum(self.per_model < 0))

  def to_json(self) -> dict:
    return {
      "models": self.models.tolist(),
      "accuracy_a": dataclasses.asdict(self.accuracy_a),
      "accuracy_b": dataclasses.asdict(self.accuracy_b),
      "difference": dataclasses.asdict(self.difference),
      "per_model": self.per_model.tolist(),
      "models_lower": self.models_lower,
    }


def paired(a: LoggedEvaluation, b: LoggedEvaluation) -> Comparison:
  """Compares two evaluations on the same split, model index by model index.

  Models with the same index share their key (init, data order and
  augmentation) when both evaluations used the same evaluation seed, which
  is what makes the per-model differences small.
  """
  if a.split_digest != b.split_digest:
    raise ValueError(
      f"{a.source} and {b.source} were tested on different splits (test "
      f"digests {a.split_digest} and {b.split_digest}): compare evaluations "
      "of the same dataset and held-out split"
    )
  models = np.intersect1d(a.models, b.models)
  if len(models) < 2:
    raise ValueError(
      f"{a.source} (models {a.models.tolist()}) and {b.source} (models "
      f"{b.models.tolist()}) share {len(models)} model(s); a comparison "
      "needs at least 2"
    )
  rows_a = a.correct_images[np.searchsorted(a.models, models)]
  rows_b = b.correct_images[np.searchsorted(b.models, models)]
  difference = rows_a.astype(np.int8) - rows_b.astype(np.int8)
  return Comparison(
    models=models,
    accuracy_a=crossed_mean(rows_a),
    accuracy_b=crossed_mean(rows_b),
    difference=crossed_mean(difference),
    per_model=difference.mean(axis=1),
  )


def _percent(x: float) -> str:
  return f"{100 * x:.2f}"


def report(comparison: Comparison, names: Sequence[str] = ("a", "b")) -> str:
  """A few lines a person reads: both accuracies and their difference."""
  a, b = names
  c = comparison
  lines = [
    f"{len(c.models)} paired models x {c.difference.num_images} test images",
  ]
  for name, acc in ((a, c.accuracy_a), (b, c.accuracy_b)):
    lines.append(
      f"{name}: {_percent(acc.mean)} ± {_percent(acc.se)} (standard error; "
      f"models {_percent(acc.se_models)}, images {_percent(acc.se_images)})"
    )
  d = c.difference
  lines += [
    f"{a} - {b}: {100 * d.mean:+.2f} ± {_percent(d.se)} (standard error; "
    f"models {_percent(d.se_models)}, images {_percent(d.se_images)}, "
    f"interaction {_percent(d.se_interaction)}; over models alone "
    f"{_percent(d.se_models_only)})",
    "per model: "
    + ", ".join(f"{100 * x:+.2f}" for x in c.per_model)
    + f" ({c.models_lower} of {len(c.models)} lower)",
  ]
  return "\n".join(lines)
