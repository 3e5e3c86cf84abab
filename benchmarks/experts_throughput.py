r"""Expert training throughput: experts vmapped together vs one at a time.

Same work every way: K experts, each trained for `--epochs` epochs of SGD
(batch 256, per-sample DSA) on the same images. With `in_parallel = P`, the
K experts train in K / P calls of one compiled program that vmaps P experts
(`experts.train_experts`); P = 1 is one expert at a time. Compilation is
timed apart (ahead-of-time), so the table compares training only.

  python benchmarks/experts_throughput.py --num_experts=8 --epochs=2 \
    --in_parallel=1,2,4,8 --num_images=2560 --size=32 --channels=3

Small flags for a CPU smoke run:

  python benchmarks/experts_throughput.py --num_experts=2 --epochs=1 \
    --in_parallel=1,2 --num_images=256 --size=8 --width=16 --depth=2
"""

import functools
import time

import jax
import numpy as np
from absl import app, flags

from lowrank_distill import augment, experts, models

flags.DEFINE_integer("num_experts", 8, "K, experts trained in all.")
flags.DEFINE_integer("epochs", 2, "Epochs per expert.")
flags.DEFINE_list("in_parallel", ["1", "8"], "Experts vmapped per call (P).")
flags.DEFINE_integer("num_images", 2560, "Training images (random).")
flags.DEFINE_integer("size", 32, "Image height and width.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("width", 128, "ConvNet width.")
flags.DEFINE_integer("depth", 3, "ConvNet depth.")
flags.DEFINE_integer("batch_size", 256, "SGD batch size.")
flags.DEFINE_string("dsa", augment.DEFAULT_STRATEGY, "DSA strategy or none.")
flags.DEFINE_string("conv_impl", "auto", "xla, im2col or auto.")
FLAGS = flags.FLAGS


def time_chunks(images, labels, *, model, in_parallel: int):
  """Trains FLAGS.num_experts experts in chunks; (compile s, run s)."""
  train = jax.jit(
    functools.partial(
      experts.train_experts,
      model=model,
      epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size,
      dsa_strategy=FLAGS.dsa,
      num_classes=10,
    ),
    static_argnames=("num_experts", "first"),
  )
  key = jax.random.key(0)
  sizes = [
    min(in_parallel, FLAGS.num_experts - first)
    for first in range(0, FLAGS.num_experts, in_parallel)
  ]
  start = time.perf_counter()
  compiled = {
    n: train.lower(key, images, labels, num_experts=n).compile()
    for n in set(sizes)
  }
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for n in sizes:
    # `first` only changes the keys; the compiled program is the same.
    jax.block_until_ready(compiled[n](key, images, labels))
  return compile_s, time.perf_counter() - start


def main(_):
  rng = np.random.default_rng(0)
  shape = (FLAGS.size, FLAGS.size, FLAGS.channels)
  images = rng.normal(size=(FLAGS.num_images, *shape)).astype(np.float32)
  labels = rng.integers(0, 10, FLAGS.num_images).astype(np.int32)
  model = models.create(
    "convnet",
    num_classes=10,
    image_shape=shape,
    conv_impl=FLAGS.conv_impl,
    width=FLAGS.width,
    depth=FLAGS.depth,
  )
  images, labels = jax.device_put(images), jax.device_put(labels)
  print(
    f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
    f"K={FLAGS.num_experts} experts x {FLAGS.epochs} epochs, "
    f"{FLAGS.num_images} images {shape}, ConvNet w{FLAGS.width} "
    f"d{FLAGS.depth}, batch {FLAGS.batch_size}, DSA {FLAGS.dsa}"
  )
  print("| in parallel | compile s | train s | experts/s | vs P=first |")
  print("|---|---|---|---|---|")
  baseline = None
  for in_parallel in (int(p) for p in FLAGS.in_parallel):
    compile_s, run_s = time_chunks(
      images, labels, model=model, in_parallel=in_parallel
    )
    rate = FLAGS.num_experts / run_s
    baseline = baseline or rate
    print(
      f"| {in_parallel} | {compile_s:.1f} | {run_s:.1f} | {rate:.3f} | "
      f"{rate / baseline:.2f}x |",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
