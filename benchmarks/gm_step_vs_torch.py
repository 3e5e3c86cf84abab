r"""One gradient-matching (DC) iteration: ours (JAX, jitted) vs PyTorch.

Ours is the library's own step, `distill.OBJECTIVES['gm'].build_step(plan,
config, optimizer)` (what `distill.run` jits), with a config from
`configs/gm.py` (method=dc, param=pixels) and a `distill.plan` over random
data. PyTorch is the same iteration written below after the DC reference: a
fresh ConvNet (`torch_models.ConvNet`); `outer_loop` times: per class, the
gradient of CE on a real batch (detached) and on that class's synthetic
images (`create_graph=True`), distance 'ours' (sum over output channels of
`1 - cos`, 1-D params ignored), one SGD step on the images (the config's
lr 0.1, momentum 0.5); then, except after the last outer loop, `inner_loop`
epochs of plain SGD of the network on the synthetic set (lr 0.01, batch
`--batch_train`). The image gradient
is taken with `torch.autograd.grad(loss, [images])`, so torch computes what
ours does and no gradient of the network's parameters. DSA is off on both
sides (DC). Both sides: ConvNet-3 (`--width`, instance norm, avg pooling),
`--batch_real` random "real" images per class (the pool holds exactly that
many, so each outer loop's real batch is the whole class in a fresh order),
`--ipc` synthetic images per class.

Correctness first: a step with 2 outer loops and 1 inner epoch over the whole
synthetic set (one batch, so the shuffle cannot change the result) runs on
both sides from the same network weights (ours' fresh network, initialised
as `distill.gm.make_step` does, copied into torch) and the same data; the mean
matching loss and the image update must agree (loss to 1e-4 relative).

Timing: as every ours-vs-PyTorch figure (`sidebyside.py`): after one
warm-up iteration per side, `--steps` iterations alternate ours / torch in
this process; each side's median and min s/iteration are reported, with our
compile time (lower + compile of the jitted step). Ours runs on JAX's default
backend, torch on `--torch_device`. Needs `torch` (the `bench` extra); not
part of the library's dependencies.

Full size (MNIST-like, IPC 10: 10 outer loops x 50 inner epochs):

  python benchmarks/gm_step_vs_torch.py --size=28 --channels=1 --ipc=10 \
    --conv_impl=auto --steps=5

CIFAR-like: `--size=32 --channels=3`. `--cores` (1, the primary figure,
by default) pins both sides. Smoke run (about a minute on two CPU cores,
mostly compiling):

  python benchmarks/gm_step_vs_torch.py --width=16 --ipc=2 --outer_loop=2 \
    --inner_loop=1 --batch_real=8 --steps=1
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import sidebyside
import torch
import torch.nn.functional as F
import torch_models
from absl import app, flags

from lowrank_distill import data, distill, models

# `configs` is a top-level folder of the repository, not an installed package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import gm as gm_config  # noqa: E402

flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class.")
flags.DEFINE_integer(
  "outer_loop", -1, "Outer loops per iteration (-1: configs/gm.py's table)."
)
flags.DEFINE_integer(
  "inner_loop", -1, "Inner epochs per outer loop (-1: configs/gm.py's table)."
)
flags.DEFINE_integer("batch_real", 256, "Real images per class and loop.")
flags.DEFINE_integer("batch_train", 256, "Inner-loop minibatch size.")
flags.DEFINE_integer("size", 28, "Image height and width (28: MNIST-like).")
flags.DEFINE_integer("channels", 1, "Image channels (1: MNIST, 3: CIFAR).")
flags.DEFINE_integer("width", 128, "ConvNet width (small for smoke runs).")
flags.DEFINE_integer("steps", 5, "Timed iterations per side (after warm-up).")
flags.DEFINE_enum(
  "conv_impl",
  "auto",
  ["xla", "im2col", "canonical", "auto"],
  "Ours: convolution.",
)
flags.DEFINE_integer("classes_in_parallel", 1, "Ours: classes at once.")
flags.DEFINE_bool("check", True, "Compare losses on shared weights first.")
flags.DEFINE_integer(
  "cores",
  1,
  "CPUs the process runs on, torch on as many threads (sidebyside."
  "pin_cores): 1 is the primary figure, 2 the two-thread one, 0 every core.",
)
flags.DEFINE_string("torch_device", "cpu", "PyTorch's device: cpu | cuda.")
flags.DEFINE_string("name", "gm_iteration", "Name of the SUMMARY line.")
FLAGS = flags.FLAGS

LOSS_RTOL = 1e-4


def _loops():
  table = gm_config.LOOPS.get(FLAGS.ipc, (0, 0))
  outer = FLAGS.outer_loop if FLAGS.outer_loop >= 0 else table[0]
  inner = FLAGS.inner_loop if FLAGS.inner_loop >= 0 else table[1]
  if outer < 1:
    raise app.UsageError(
      f"no loop setting for --ipc={FLAGS.ipc}; pass --outer_loop and "
      f"--inner_loop (table: {gm_config.LOOPS})"
    )
  return outer, inner


# ---------------------------------------------------------------------------
# Ours: the library's step.


def make_config(*, outer_loop, inner_loop, batch_train):
  """configs/gm.py (DC, pixels) with this benchmark's sizes."""
  dataset_name = "mnist" if FLAGS.channels == 1 else "cifar10"
  config = gm_config.get_config(
    f"dataset={dataset_name},method=dc,ipc={FLAGS.ipc},param=pixels"
  )
  config.synset.budget = "same-images"
  config.model.options.width = FLAGS.width
  config.distill.update(
    outer_loop=outer_loop,
    inner_loop=inner_loop,
    batch_real=FLAGS.batch_real,
    batch_train=batch_train,
    conv_impl=FLAGS.conv_impl,
    classes_in_parallel=FLAGS.classes_in_parallel,
    dsa_strategy="none",
  )
  return config


class Ours:
  """The jitted `_gm_step` of `distill` for one config."""

  def __init__(self, real, syn, config):
    c, m = real.shape[:2]
    shape = real.shape[2:]
    labels = np.repeat(np.arange(c, dtype=np.int32), m)
    dataset = data.Dataset(
      name="random",
      train_images=real.reshape(c * m, *shape),
      train_labels=labels,
      test_images=real[:, 0],
      test_labels=np.arange(c, dtype=np.int32),
      num_classes=c,
      image_shape=shape,
      mean=(0.0,) * shape[-1],
      std=(1.0,) * shape[-1],
      zca=None,
      class_names=tuple(str(i) for i in range(c)),
      source="npz",
    )
    self.config = config
    self.plan = distill.make_plan(config, dataset=dataset)
    if self.plan.images_per_class != FLAGS.ipc:
      raise ValueError(f"plan has {self.plan.images_per_class} images/class")
    trainable = {"images": {"images": jnp.asarray(syn.reshape(-1, *shape))}}
    self.optimizer = distill.make_optimizer(
      distill.optimizer_groups(self.plan, trainable)
    )
    self.state = distill.init_state(trainable, self.optimizer)
    self.inputs = distill.objective.real_data(self.plan)(0)
    # The options `distill.loop` compiles the step with.
    step = jax.jit(
      distill.OBJECTIVES["gm"].build_step(self.plan, self.optimizer),
      compiler_options=models.compiler_options(self.plan.conv_impl),
    )
    start = time.perf_counter()
    self.step = step.lower(
      self.state, jax.random.key(0), *self.inputs
    ).compile()
    self.compile_s = time.perf_counter() - start

  def initial_variables(self, key):
    """The fresh network `_gm_step` builds for `key` (mirrors its code)."""
    net_key, _ = jax.random.split(key)
    return self.plan.model.init(net_key, self.inputs[0][:1])

  def images(self):
    return np.asarray(self.state.trainable["images"]["images"])

  def __call__(self, key):
    self.state, metrics = self.step(self.state, key, *self.inputs)
    return float(metrics["loss"])


# ---------------------------------------------------------------------------
# PyTorch: the DC reference iteration.


def distance_ours(gw_syn, gw_real):
  """Sum over layers and output channels of `1 - cos` (reference
  `match_loss` with dis_metric 'ours'); 1-D params are ignored."""
  total = torch.zeros((), device=gw_syn[0].device)
  for gs, gr in zip(gw_syn, gw_real, strict=True):
    if gs.dim() == 1:
      continue
    gs = gs.reshape(gs.shape[0], -1)
    gr = gr.reshape(gr.shape[0], -1)
    cos = torch.sum(gs * gr, dim=-1) / (
      torch.norm(gs, dim=-1) * torch.norm(gr, dim=-1) + 1e-6
    )
    total = total + torch.sum(1.0 - cos)
  return total


def new_torch_net():
  return torch_models.ConvNet(
    channel=FLAGS.channels,
    num_classes=FLAGS.num_classes,
    net_width=FLAGS.width,
    net_depth=3,
    net_act="relu",
    net_norm="instancenorm",
    net_pooling="avgpooling",
    im_size=(FLAGS.size, FLAGS.size),
  )


class Torch:
  """The DC iteration in PyTorch, with the config's loops and lrs."""

  def __init__(self, real, syn, config, device):
    cfg = config.distill
    self.device = device
    # NHWC -> NCHW.
    real = np.array(real.transpose(0, 1, 4, 2, 3))
    self.real = torch.from_numpy(real).to(device)
    syn = syn.reshape(-1, *syn.shape[2:]).transpose(0, 3, 1, 2)
    syn = torch.from_numpy(np.array(syn)).to(device)
    self.syn = syn.requires_grad_(True)
    self.optimizer = torch.optim.SGD(
      [self.syn], lr=cfg.lr_images, momentum=cfg.momentum
    )
    self.outer_loop, self.inner_loop = cfg.outer_loop, cfg.inner_loop
    self.batch_train, self.lr_net = cfg.batch_train, cfg.lr_net
    c, ipc = FLAGS.num_classes, FLAGS.ipc
    self.labels = torch.arange(c).repeat_interleave(ipc).to(device)

  def images(self):
    return self.syn.detach().cpu().numpy().transpose(0, 2, 3, 1)

  def __call__(self, net=None):
    """One iteration; returns the mean over outer loops of the loss."""
    c, ipc, m = FLAGS.num_classes, FLAGS.ipc, self.real.shape[1]
    net = (new_torch_net() if net is None else net).to(self.device)
    net.train()
    params = list(net.parameters())
    losses = []
    for ol in range(self.outer_loop):
      loss = torch.zeros((), device=self.device)
      for k in range(c):
        img_real = self.real[k, torch.randperm(m)[: FLAGS.batch_real]]
        lab_real = torch.full((img_real.shape[0],), k, device=self.device)
        loss_real = F.cross_entropy(net(img_real), lab_real)
        gw_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
        sl = slice(k * ipc, (k + 1) * ipc)
        loss_syn = F.cross_entropy(net(self.syn[sl]), self.labels[sl])
        gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        loss = loss + distance_ours(gw_syn, gw_real)
      self.optimizer.zero_grad()
      (self.syn.grad,) = torch.autograd.grad(loss, [self.syn])
      self.optimizer.step()
      losses.append(loss.item())
      if ol == self.outer_loop - 1:
        break
      images = self.syn.detach().clone()
      net_optimizer = torch.optim.SGD(params, lr=self.lr_net)
      for _ in range(self.inner_loop):
        for idx in torch.randperm(images.shape[0]).split(self.batch_train):
          net_optimizer.zero_grad()
          F.cross_entropy(net(images[idx]), self.labels[idx]).backward()
          net_optimizer.step()
    return float(np.mean(losses))


# ---------------------------------------------------------------------------


def check(real, syn, outer_loop, inner_loop, device):
  """Same weights and data on both sides; returns True when they agree."""
  n = FLAGS.num_classes * FLAGS.ipc
  config = make_config(
    outer_loop=min(outer_loop, 2), inner_loop=min(inner_loop, 1), batch_train=n
  )
  ours = Ours(real, syn, config)
  theirs = Torch(real, syn, config, device)
  key = jax.random.key(123)
  variables = ours.initial_variables(key)
  net = torch_models.from_flax(
    new_torch_net(), ours.plan.model, variables, real[0, :1]
  )
  loss_ours = ours(key)
  loss_torch = theirs(net)
  rel = abs(loss_ours - loss_torch) / abs(loss_torch)
  d_ours = ours.images() - syn.reshape(n, *syn.shape[2:])
  d_torch = theirs.images() - syn.reshape(n, *syn.shape[2:])
  rel_update = np.linalg.norm(d_ours - d_torch) / np.linalg.norm(d_torch)
  ok = rel <= LOSS_RTOL
  print(
    f"check ({config.distill.outer_loop} outer loops x "
    f"{config.distill.inner_loop} inner "
    f"epochs, full-batch inner loop, shared initial weights): mean matching "
    f"loss ours {loss_ours:.6f} torch {loss_torch:.6f} rel diff {rel:.1e} "
    f"(tol {LOSS_RTOL:g}); image update rel diff {rel_update:.1e} -> "
    f"{'OK' if ok else 'MISMATCH'}"
  )
  return ok


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  outer_loop, inner_loop = _loops()
  placement = sidebyside.pin_cores(FLAGS.cores)
  print(f"placement: {placement}", flush=True)
  device = sidebyside.torch_device(FLAGS.torch_device)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  c, s, ch = FLAGS.num_classes, FLAGS.size, FLAGS.channels
  m = max(FLAGS.batch_real, FLAGS.ipc)
  real = rng.normal(size=(c, m, s, s, ch)).astype(np.float32)
  syn = rng.normal(size=(c, FLAGS.ipc, s, s, ch)).astype(np.float32)
  print(
    f"GM (DC, no DSA) iteration: {c} classes x {FLAGS.batch_real} real + "
    f"{FLAGS.ipc} syn, {s}x{s}x{ch}, ConvNet-3 width {FLAGS.width} "
    f"instance norm, outer_loop {outer_loop}, inner_loop {inner_loop}, "
    f"batch_train {FLAGS.batch_train}; torch {torch.__version__} "
    f"({device}, {torch.get_num_threads()} threads), jax {jax.__version__} "
    f"({jax.default_backend()}, conv {FLAGS.conv_impl}, "
    f"{FLAGS.classes_in_parallel} classes at once)"
  )
  agree = not FLAGS.check or check(real, syn, outer_loop, inner_loop, device)
  if not agree:
    print(
      "WARNING: the two sides disagree; the timings compare different "
      "computations."
    )
  config = make_config(
    outer_loop=outer_loop,
    inner_loop=inner_loop,
    batch_train=FLAGS.batch_train,
  )
  ours = Ours(real, syn, config)
  theirs = Torch(real, syn, config, device)
  keys = iter(range(1, 10**9))

  def ours_call():
    ours(jax.random.key(next(keys)))  # float(loss) waits for the result

  def torch_call():
    theirs()  # loss.item() waits for the result

  times = sidebyside.alternate(
    {"ours": ours_call, "torch": torch_call}, calls=FLAGS.steps
  )
  print(
    f"ours  : {times['ours']} an iteration (compile {ours.compile_s:.1f} s)"
  )
  print(f"torch : {times['torch']} an iteration")
  sidebyside.summary_line(
    FLAGS.name,
    f"ours {times['ours'].median:.3f} s, torch {times['torch'].median:.3f} s "
    f"(medians of {FLAGS.steps}); ours/torch median "
    + sidebyside.ratio_text(
      times["ours"].median, times["torch"].median, target=0.8
    )
    + ", min "
    + sidebyside.ratio_text(times["ours"].min, times["torch"].min)
    + ("" if agree else "; the two sides DISAGREE (see the check)"),
  )


if __name__ == "__main__":
  app.run(main)
