r"""Compares two sets' evaluations on one split, model by model and image
by image.

  python launch/compare.py --a=/tmp/eval_a --b=/tmp/eval_b \
    [--output=/tmp/a_vs_b.json]

Each of --a and --b is an evaluation's workdir (launch/evaluate.py's, or a
distillation's: its last evaluation unless a fingerprint is named) or its
eval_models.jsonl. Prints both accuracies and their difference with its
standard error over models and test images (`lowrank_distill.compare`).
"""

import common  # noqa: F401  (the repository root on sys.path)
from absl import app, flags

from lowrank_distill import compare
from lowrank_distill import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("a", None, "The first evaluation (a workdir or its log).")
flags.DEFINE_string("b", None, "The second evaluation, on the same split.")
flags.DEFINE_string(
  "a_fingerprint",
  compare.LAST,
  "Which of --a's evaluations: a prefix of its fingerprint, or 'last'.",
)
flags.DEFINE_string(
  "b_fingerprint",
  compare.LAST,
  "Which of --b's evaluations: a prefix of its fingerprint, or 'last'.",
)
flags.DEFINE_string("output", None, "Also write the comparison to this JSON.")
flags.mark_flags_as_required(["a", "b"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    comparison = compare.paired(
      compare.load(FLAGS.a, fingerprint=FLAGS.a_fingerprint),
      compare.load(FLAGS.b, fingerprint=FLAGS.b_fingerprint),
    )
  except (OSError, ValueError) as e:
    raise SystemExit(f"compare: {e}") from None
  print(compare.report(comparison, names=(FLAGS.a, FLAGS.b)))
  if FLAGS.output:
    workdir_lib.write_json(FLAGS.output, comparison.to_json())


if __name__ == "__main__":
  app.run(main)
