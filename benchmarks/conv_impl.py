"""Times the two convolution implementations ('xla', 'im2col') of the models.

Two workloads on the default ConvNet (width 128, depth 3, instancenorm,
32x32x3 images, 10 classes):

- `fwd_bwd`: forward and backward (gradient of the cross-entropy wrt the
  parameters) on a batch of `--batch` images;
- `unroll`: a trajectory-matching style `lax.scan` of `--steps` SGD steps
  of a student network on `--batch` synthetic images, differentiated end to
  end wrt the images and the learning rate (`jax.checkpoint` on the body, as
  the MTT objective does).

Compile (lower + compile) and run times (median of `--repeats` runs) are
printed per implementation:

  python benchmarks/conv_impl.py                    # both impls, CPU
  python benchmarks/conv_impl.py --impls xla --workloads unroll --repeats 1
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from lowrank_distill import models


def _time(fn, args, repeats):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return compile_s, statistics.median(runs)


def workloads(impl, *, batch, steps, width, depth):
  """(name, fn, args) of the two timed programs for one conv impl."""
  model = models.create(
    "convnet",
    num_classes=10,
    image_shape=(32, 32, 3),
    conv_impl=impl,
    width=width,
    depth=depth,
  )
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch, 32, 32, 3))
  labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 10)
  params = model.init(jax.random.fold_in(key, 2), images[:1])["params"]
  target = jax.tree.map(lambda p: p + 0.01, params)

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def fwd_bwd(params, x, y):
    return jax.value_and_grad(loss)(params, x, y)

  def unroll(x, log_lr, params, target):
    @jax.checkpoint
    def step(p, _):
      g = jax.grad(loss)(p, x, labels)
      return jax.tree.map(lambda a, b: a - jnp.exp(log_lr) * b, p, g), None

    final, _ = jax.lax.scan(step, params, None, length=steps)
    sq = lambda a, b: sum(
      jnp.sum(jnp.square(u - v))
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    return sq(final, target) / sq(params, target)

  meta_grad = jax.value_and_grad(unroll, argnums=(0, 1))
  return [
    ("fwd_bwd", fwd_bwd, (params, images, labels)),
    ("unroll", meta_grad, (images, jnp.log(0.01), params, target)),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--impls", default="xla,im2col")
  parser.add_argument("--workloads", default="fwd_bwd,unroll")
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(
    f"backend={jax.default_backend()} devices={jax.device_count()} "
    f"batch={args.batch} steps={args.steps} width={args.width} "
    f"depth={args.depth}"
  )
  for impl in args.impls.split(","):
    for name, fn, fn_args in workloads(
      impl,
      batch=args.batch,
      steps=args.steps,
      width=args.width,
      depth=args.depth,
    ):
      if name not in args.workloads.split(","):
        continue
      compile_s, run_s = _time(fn, fn_args, args.repeats)
      print(
        f"{impl:7s} {name:8s} compile {compile_s:7.2f} s   run {run_s:8.3f} s",
        flush=True,
      )


if __name__ == "__main__":
  main()
