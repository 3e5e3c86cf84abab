r"""One DM iteration: ours (JAX, jitted) vs the same step in PyTorch.

Side by side in one process on the same machine: ConvNet-3 (width 128,
instance norm, avg pooling), a fresh random network per iteration, a
class-balanced real batch of `--batch_real` per class, `--ipc` synthetic
images per class, SGD momentum 0.5 on the images. DSA is off on both sides
(the timing compares the matching step itself). Needs `torch` (2.13.0 CPU
here); not part of the library's dependencies.

  python benchmarks/dm_step_vs_torch.py --size=28 --channels=1 --ipc=10
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch_models
from absl import app, flags

from lowrank_distill import models
from lowrank_distill.objectives import distribution_matching

flags.DEFINE_integer("num_classes", 10, "")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class.")
flags.DEFINE_integer("batch_real", 256, "Real images per class.")
flags.DEFINE_integer("size", 28, "")
flags.DEFINE_integer("channels", 1, "")
flags.DEFINE_integer("steps", 5, "Timed iterations (after warm-up).")
flags.DEFINE_string("conv_impl", "xla", "Ours: xla | im2col | auto.")
flags.DEFINE_integer("classes_in_parallel", 1, "Ours: classes at once.")
FLAGS = flags.FLAGS


def time_ours(real, syn):
  c = FLAGS.num_classes
  shape = (FLAGS.size, FLAGS.size, FLAGS.channels)
  model = models.create(
    "convnet", num_classes=c, image_shape=shape, conv_impl=FLAGS.conv_impl
  )
  optimizer = optax.sgd(1.0, momentum=0.5)

  @functools.partial(
    jax.jit, compiler_options=models.compiler_options(FLAGS.conv_impl)
  )
  def step(syn, opt_state, real, key):
    loss, grad = jax.value_and_grad(
      lambda s: distribution_matching.loss(
        key,
        s,
        real,
        model=model,
        dsa_strategy="none",
        classes_in_parallel=FLAGS.classes_in_parallel,
      )
    )(syn)
    updates, opt_state = optimizer.update(grad, opt_state)
    return optax.apply_updates(syn, updates), opt_state, loss

  syn, real = jnp.asarray(syn), jnp.asarray(real)
  opt_state = optimizer.init(syn)
  start = time.perf_counter()
  syn, opt_state, loss = step(syn, opt_state, real, jax.random.key(0))
  loss.block_until_ready()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(FLAGS.steps):
    syn, opt_state, loss = step(syn, opt_state, real, jax.random.key(i + 1))
  loss.block_until_ready()
  return (time.perf_counter() - start) / FLAGS.steps, compile_s


def time_torch(real, syn):
  c = FLAGS.num_classes
  # NHWC -> NCHW
  real = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 1, 4, 2, 3)))
  syn = torch.from_numpy(np.ascontiguousarray(syn.transpose(0, 1, 4, 2, 3)))
  syn = syn.reshape(-1, *syn.shape[2:]).requires_grad_(True)
  optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
  ipc = FLAGS.ipc

  def step():
    net = torch_models.ConvNet(
      channel=FLAGS.channels,
      num_classes=c,
      net_width=128,
      net_depth=3,
      net_act="relu",
      net_norm="instancenorm",
      net_pooling="avgpooling",
      im_size=(FLAGS.size, FLAGS.size),
    )
    net.train()
    for p in net.parameters():
      p.requires_grad = False
    loss = torch.tensor(0.0)
    for k in range(c):
      out_real = net.embed(real[k]).detach()
      out_syn = net.embed(syn[k * ipc : (k + 1) * ipc])
      loss = loss + torch.sum((out_real.mean(dim=0) - out_syn.mean(dim=0)) ** 2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss

  step()
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    step()
  return (time.perf_counter() - start) / FLAGS.steps


def main(_):
  torch.set_num_threads(max(1, torch.get_num_threads()))
  rng = np.random.default_rng(0)
  c, s, ch = FLAGS.num_classes, FLAGS.size, FLAGS.channels
  real = rng.normal(size=(c, FLAGS.batch_real, s, s, ch)).astype(np.float32)
  syn = rng.normal(size=(c, FLAGS.ipc, s, s, ch)).astype(np.float32)
  print(
    f"DM step: {c} classes x {FLAGS.batch_real} real + {FLAGS.ipc} syn, "
    f"{s}x{s}x{ch}; torch {torch.__version__} ({torch.get_num_threads()} "
    f"threads), jax {jax.__version__} ({jax.default_backend()}, conv "
    f"{FLAGS.conv_impl}, {FLAGS.classes_in_parallel} classes at once)"
  )
  ours, compile_s = time_ours(real, syn)
  theirs = time_torch(real, syn)
  print(f"ours  : {ours * 1e3:.0f} ms/iteration (compile {compile_s:.1f} s)")
  print(f"torch : {theirs * 1e3:.0f} ms/iteration")
  print(f"ratio ours/torch: {ours / theirs:.2f}")


if __name__ == "__main__":
  app.run(main)
