r"""Evaluation throughput: K ConvNets trained vmapped vs one after another.

Same work both ways: K models, each trained for `--epochs` (+1) epochs on the
same synthetic set with its own seed (DSA `--dsa_strategy` on every batch, as
the protocol does), then tested. The vmapped program trains all K at once
(`evaluate.evaluate_set`); the sequential one trains them one at a time
(`models_per_batch=1`, one compiled program reused K times). Timed as
`sidebyside.alternate` does (one untimed call each, which compiles, then
`--calls` alternating calls).

  python benchmarks/eval_throughput.py --num_models=20 --epochs=300
"""

import jax
import numpy as np
import sidebyside
from absl import app, flags

from lowrank_distill import evaluate

flags.DEFINE_integer("num_models", 20, "K")
flags.DEFINE_integer("epochs", 20, "Protocol epochs E (E + 1 are run).")
flags.DEFINE_integer("ipc", 10, "Images per class of the synthetic set.")
flags.DEFINE_integer("size", 28, "Image size (28: MNIST-shaped).")
flags.DEFINE_integer("width", 128, "ConvNet width (small for smoke runs).")
flags.DEFINE_integer("test_size", 2000, "Test images.")
flags.DEFINE_string(
  "dsa_strategy", "color_crop_cutout_scale_rotate", "DSA on every batch."
)
flags.DEFINE_integer("calls", 2, "Timed calls per side (after one warm-up).")
flags.DEFINE_string("name", "eval_vmapped", "Name of the SUMMARY line.")
flags.DEFINE_integer(
  "cores",
  1,
  "CPUs the process runs on (sidebyside.pin_cores): 1 is the primary "
  "figure, 2 the two-thread one, 0 every core.",
)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(f"placement: {sidebyside.pin_cores(FLAGS.cores)}", flush=True)
  rng = np.random.default_rng(0)
  n = 10 * FLAGS.ipc
  shape = (FLAGS.size, FLAGS.size, 1)
  images = rng.normal(size=(n, *shape)).astype(np.float32)
  labels = np.repeat(np.arange(10), FLAGS.ipc)
  test_images = rng.normal(size=(FLAGS.test_size, *shape)).astype(np.float32)
  test_labels = rng.integers(0, 10, FLAGS.test_size)
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s); "
    f"K={FLAGS.num_models}, {n} images {shape}, E={FLAGS.epochs}, width "
    f"{FLAGS.width}, DSA {FLAGS.dsa_strategy}"
  )
  accuracy = {}

  def evaluation(label, per_batch):
    def call():
      result = evaluate.evaluate_set(
        jax.random.key(0),
        images,
        labels,
        test_images,
        test_labels,
        num_classes=10,
        num_models=FLAGS.num_models,
        epochs=FLAGS.epochs,
        dsa_strategy=FLAGS.dsa_strategy,
        model_options={"width": FLAGS.width},
        models_per_batch=per_batch,
      )
      accuracy[label] = result.mean  # a host value: the work is done

    return call

  times = sidebyside.alternate(
    {
      "vmapped": evaluation("vmapped", None),
      "sequential": evaluation("sequential", 1),
    },
    calls=FLAGS.calls,
  )
  for label, timing in times.items():
    print(f"{label:>10}: {timing}; mean acc {accuracy[label]:.3f}")
  speedup = times["sequential"].median / times["vmapped"].median
  verdict = "met" if speedup >= 5 else "NOT met"
  sidebyside.summary_line(
    FLAGS.name,
    f"{FLAGS.num_models} models x {FLAGS.epochs + 1} epochs on {n} images: "
    f"vmapped {times['vmapped'].median:.2f} s, one after another "
    f"{times['sequential'].median:.2f} s (medians of {FLAGS.calls}); "
    f"vmapped {speedup:.2f}x faster (target >= 5x: {verdict})",
  )


if __name__ == "__main__":
  app.run(main)
