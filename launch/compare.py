r"""Compares sets' evaluations on one split, set by set, model by model and
image by image.

  python launch/compare.py --a=/tmp/eval_a --b=/tmp/eval_b \
    [--output=/tmp/a_vs_b.json]
  python launch/compare.py --a=/tmp/a_seed0,/tmp/a_seed1 \
    --b=/tmp/b_seed0,/tmp/b_seed1

Each of --a and --b is an evaluation's workdir (launch/evaluate.py's, or a
distillation's: its last evaluation unless a fingerprint is named) or its
eval_models.jsonl; or a comma-separated list of them, one per set (another
distillation seed each), as many a side, the i-th of --a paired with the
i-th of --b. Prints both accuracies and their difference with its
standard error over sets, models and test images
(`lowrank_distill.compare`).
"""

import common  # noqa: F401  (the repository root on sys.path)
from absl import app, flags

from lowrank_distill import compare
from lowrank_distill import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_list(
  "a", None, "The first side's evaluations (workdirs or their logs)."
)
flags.DEFINE_list(
  "b", None, "The second side's evaluations, on the same split, as many."
)
flags.DEFINE_list(
  "a_fingerprint",
  [compare.LAST],
  "Which of each --a's evaluations: a prefix of its fingerprint, or "
  "'last'; one for all of them or one each.",
)
flags.DEFINE_list(
  "b_fingerprint",
  [compare.LAST],
  "Which of each --b's evaluations, as --a_fingerprint.",
)
flags.DEFINE_string("output", None, "Also write the comparison to this JSON.")
flags.mark_flags_as_required(["a", "b"])


def _load_side(name: str, paths: list, fingerprints: list) -> list:
  if len(fingerprints) == 1:
    fingerprints = fingerprints * len(paths)
  if len(fingerprints) != len(paths):
    raise ValueError(
      f"--{name}_fingerprint: one for all of --{name} or one each "
      f"({len(paths)}), got {len(fingerprints)}"
    )
  return [
    compare.load(path, fingerprint=fingerprint)
    for path, fingerprint in zip(paths, fingerprints, strict=True)
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    comparison = compare.paired(
      _load_side("a", FLAGS.a, FLAGS.a_fingerprint),
      _load_side("b", FLAGS.b, FLAGS.b_fingerprint),
    )
  except (OSError, ValueError) as e:
    raise SystemExit(f"compare: {e}") from None
  names = (",".join(FLAGS.a), ",".join(FLAGS.b))
  print(compare.report(comparison, names=names))
  if FLAGS.output:
    workdir_lib.write_json(FLAGS.output, comparison.to_json())


if __name__ == "__main__":
  app.run(main)
