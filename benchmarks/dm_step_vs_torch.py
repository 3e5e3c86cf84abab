r"""One DM iteration: ours (JAX, jitted) vs the same step in PyTorch.

Side by side in one process on the same machine: ConvNet-3 (width 128,
instance norm, avg pooling), a fresh random network per iteration, a
class-balanced real batch of `--batch_real` per class, `--ipc` synthetic
images per class, SGD momentum 0.5 on the images. DSA is off on both sides
(the timing compares the matching step itself). Timed as every
ours-vs-PyTorch figure is (`sidebyside.py`: calls alternating, median and
min). Ours runs on JAX's default backend, torch on `--torch_device`. Needs
`torch` (the `bench` extra); not part of the library's dependencies.

  python benchmarks/dm_step_vs_torch.py --size=28 --channels=1 --ipc=10
  python benchmarks/dm_step_vs_torch.py --size=32 --channels=3 --ipc=10 \
    --torch_device=cuda   # on a GPU host
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sidebyside
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
flags.DEFINE_integer("steps", 5, "Timed iterations per side (after warm-up).")
flags.DEFINE_integer("width", 128, "ConvNet width (small for smoke runs).")
flags.DEFINE_string("torch_device", "cpu", "PyTorch's device: cpu | cuda.")
flags.DEFINE_integer(
  "cores",
  1,
  "CPUs the process runs on, torch on as many threads (sidebyside."
  "pin_cores): 1 is the primary figure, 2 the two-thread one, 0 every core.",
)
flags.DEFINE_string("name", "dm_step", "Name of the SUMMARY line.")
flags.DEFINE_string(
  "conv_impl", "xla", "Ours: xla | im2col | canonical | auto."
)
flags.DEFINE_integer("classes_in_parallel", 1, "Ours: classes at once.")
FLAGS = flags.FLAGS


def make_ours(real, syn):
  """One jitted DM iteration; returns a call that runs the next one."""
  c = FLAGS.num_classes
  shape = (FLAGS.size, FLAGS.size, FLAGS.channels)
  model = models.create(
    "convnet",
    num_classes=c,
    image_shape=shape,
    conv_impl=FLAGS.conv_impl,
    width=FLAGS.width,
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
  keys = iter(range(10**9))
  start = time.perf_counter()
  compiled = step.lower(syn, opt_state, real, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  state = [syn, opt_state]

  def call():
    syn, opt_state, loss = compiled(*state, real, jax.random.key(next(keys)))
    state[:] = [syn, opt_state]
    loss.block_until_ready()

  return call, compile_s


def make_torch(real, syn, device):
  c = FLAGS.num_classes
  # NHWC -> NCHW
  real = torch.from_numpy(np.ascontiguousarray(real.transpose(0, 1, 4, 2, 3)))
  syn = torch.from_numpy(np.ascontiguousarray(syn.transpose(0, 1, 4, 2, 3)))
  real = real.to(device)
  syn = syn.reshape(-1, *syn.shape[2:]).to(device).requires_grad_(True)
  optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
  ipc = FLAGS.ipc

  def step():
    # A fresh network per iteration, built and moved as the reference does.
    net = torch_models.ConvNet(
      channel=FLAGS.channels,
      num_classes=c,
      net_width=FLAGS.width,
      net_depth=3,
      net_act="relu",
      net_norm="instancenorm",
      net_pooling="avgpooling",
      im_size=(FLAGS.size, FLAGS.size),
    ).to(device)
    net.train()
    for p in net.parameters():
      p.requires_grad = False
    loss = torch.zeros((), device=device)
    for k in range(c):
      out_real = net.embed(real[k]).detach()
      out_syn = net.embed(syn[k * ipc : (k + 1) * ipc])
      loss = loss + torch.sum((out_real.mean(dim=0) - out_syn.mean(dim=0)) ** 2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sidebyside.sync(device)

  return step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  placement = sidebyside.pin_cores(FLAGS.cores)
  print(f"placement: {placement}", flush=True)
  device = sidebyside.torch_device(FLAGS.torch_device)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  c, s, ch = FLAGS.num_classes, FLAGS.size, FLAGS.channels
  real = rng.normal(size=(c, FLAGS.batch_real, s, s, ch)).astype(np.float32)
  syn = rng.normal(size=(c, FLAGS.ipc, s, s, ch)).astype(np.float32)
  print(
    f"DM step: {c} classes x {FLAGS.batch_real} real + {FLAGS.ipc} syn, "
    f"{s}x{s}x{ch}, ConvNet-3 width {FLAGS.width}; torch {torch.__version__} "
    f"({device}, {torch.get_num_threads()} threads), jax {jax.__version__} "
    f"({jax.default_backend()}, conv {FLAGS.conv_impl}, "
    f"{FLAGS.classes_in_parallel} classes at once)"
  )
  ours, compile_s = make_ours(real, syn)
  theirs = make_torch(real, syn, device)
  times = sidebyside.alternate(
    {"ours": ours, "torch": theirs}, calls=FLAGS.steps
  )
  print(f"ours  : {times['ours']} a step (compile {compile_s:.1f} s)")
  print(f"torch : {times['torch']} a step")
  sidebyside.summary_line(
    FLAGS.name,
    f"ours {times['ours'].median * 1e3:.1f} ms, torch "
    f"{times['torch'].median * 1e3:.1f} ms (medians of {FLAGS.steps}); "
    "ours/torch median "
    + sidebyside.ratio_text(
      times["ours"].median, times["torch"].median, target=0.7
    )
    + ", min "
    + sidebyside.ratio_text(times["ours"].min, times["torch"].min),
  )


if __name__ == "__main__":
  app.run(main)
