r"""Evaluation throughput: K ConvNets trained vmapped vs one after another.

Same work both ways: K models, each trained for `--epochs` (+1) epochs on the
same synthetic set with its own seed, then tested. The vmapped program trains
all K at once (`evaluate.evaluate_set`); the sequential one trains them one at
a time (`models_per_batch=1`, one compiled program reused K times).

  python benchmarks/eval_throughput.py --num_models=10 --epochs=20
"""

import time

import jax
import numpy as np
from absl import app, flags

from lowrank_distill import evaluate

flags.DEFINE_integer("num_models", 10, "K")
flags.DEFINE_integer("epochs", 20, "Protocol epochs E (E + 1 are run).")
flags.DEFINE_integer("ipc", 10, "Images per class of the synthetic set.")
flags.DEFINE_integer("size", 28, "Image size (28: MNIST-shaped).")
flags.DEFINE_integer("test_size", 2000, "Test images.")
FLAGS = flags.FLAGS


def main(_):
  rng = np.random.default_rng(0)
  n = 10 * FLAGS.ipc
  shape = (FLAGS.size, FLAGS.size, 1)
  images = rng.normal(size=(n, *shape)).astype(np.float32)
  labels = np.repeat(np.arange(10), FLAGS.ipc)
  test_images = rng.normal(size=(FLAGS.test_size, *shape)).astype(np.float32)
  test_labels = rng.integers(0, 10, FLAGS.test_size)
  kwargs = dict(
    num_classes=10, num_models=FLAGS.num_models, epochs=FLAGS.epochs
  )
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s); "
    f"K={FLAGS.num_models}, {n} images {shape}, E={FLAGS.epochs}"
  )
  for label, per_batch in (("vmapped", None), ("sequential", 1)):
    times = []
    for _ in range(2):  # the first includes compilation
      start = time.perf_counter()
      result = evaluate.evaluate_set(
        jax.random.key(0),
        images,
        labels,
        test_images,
        test_labels,
        models_per_batch=per_batch,
        **kwargs,
      )
      times.append(time.perf_counter() - start)
    print(
      f"{label:>10}: first call {times[0]:.1f} s (with compile), "
      f"second {times[1]:.1f} s; mean acc {result.mean:.3f}"
    )
    if label == "vmapped":
      vmapped = times[1]
    else:
      print(f"speedup (second calls): {times[1] / vmapped:.2f}x")


if __name__ == "__main__":
  app.run(main)
