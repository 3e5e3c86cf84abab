r"""The evaluation protocol: ours (one model) vs the reference loop in PyTorch.

The reference's `evaluate_synset` in PyTorch, written here: ConvNet-3 (width
128, instance norm), SGD momentum 0.9, weight decay 5e-4, batch 256, lr 0.01
x 0.1 after epoch E/2 (a new optimiser, as the reference builds), E + 1
epochs over the set with DSA on every batch (`--dsa_strategy`, MNIST's by
default; `torch_dsa.py`, one op group per batch, per-image parameters, as
the reference), then the whole test set. Ours: `evaluate.evaluate_set` with
one model and the same strategy.

First two checks that the two sides compute the same thing: from the same
initial weights (ours copied into torch), `--check_epochs` epochs without
DSA at a constant lr on a set of at most one batch (so the data order
cannot differ), the final weights and loss must agree to float tolerance;
and every DSA op given the same per-image parameters on both sides must
give the same images (`torch_dsa.check`). Then the timing, as every
ours-vs-PyTorch figure (`sidebyside.py`: alternating calls, median and
min, `--cores` pinned), for each of `--sizes` images
(MNIST-shaped: 10, 70, 170 are IPC 1, LoDM's 7 per class, LoDM's 17).

  python benchmarks/eval_vs_torch.py --epochs=300 --calls=5       # one core
  python benchmarks/eval_vs_torch.py --epochs=300 --calls=5 --cores=2
  python benchmarks/eval_vs_torch.py --epochs=1000 --calls=5 --sizes=170
  python benchmarks/eval_vs_torch.py --dsa_strategy=none   # the loops alone
  python benchmarks/eval_vs_torch.py --grad_chunks=0,-1   # ours: whole batch
                                                # vs gradient in chunks
  python benchmarks/eval_vs_torch.py --epochs=2 --calls=1 --sizes=10 \
    --width=8 --test_size=50 --check_epochs=2                      # smoke

Needs `torch` (the `bench` extra).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import sidebyside
import torch
import torch.nn.functional as F
import torch_dsa
import torch_models
from absl import app, flags

from lowrank_distill import evaluate, models, train

flags.DEFINE_list("sizes", ["10", "70", "170"], "Set sizes (images).")
flags.DEFINE_integer("epochs", 300, "Protocol epochs E (E + 1 are run).")
flags.DEFINE_integer("width", 128, "ConvNet width (small for smoke runs).")
flags.DEFINE_integer("test_size", 10000, "Test images (MNIST: 10,000).")
flags.DEFINE_integer("calls", 5, "Timed calls per side (after a warm-up).")
flags.DEFINE_integer("check_epochs", 20, "Epochs of the agreement check.")
flags.DEFINE_integer(
  "cores",
  1,
  "CPUs the process runs on, torch on as many threads (sidebyside."
  "pin_cores): 1 is the primary figure, 2 the two-thread one, 0 every core.",
)
flags.DEFINE_string(
  "conv_impl", "auto", "Ours: xla | im2col | canonical | auto."
)
flags.DEFINE_string(
  "dsa_strategy",
  "color_crop_cutout_scale_rotate",
  "DSA on every training batch, both sides (MNIST's: no flip); 'none'.",
)
flags.DEFINE_integer(
  "grad_chunk",
  -1,
  "Ours: images per gradient chunk (evaluate_set's grad_chunk); -1: auto.",
)
flags.DEFINE_list(
  "grad_chunks",
  [],
  "Instead of PyTorch: ours at each of these grad_chunk values (-1: auto, "
  "0: the whole batch), alternating, each against the first.",
)
flags.DEFINE_string("torch_device", "cpu", "PyTorch's device: cpu | cuda.")
flags.DEFINE_string("name", "eval_protocol", "Name of the SUMMARY line.")
FLAGS = flags.FLAGS

SHAPE = (28, 28, 1)
LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.01, 0.9, 5e-4, 256


def _model():
  return models.create(
    "convnet",
    num_classes=10,
    image_shape=SHAPE,
    conv_impl=FLAGS.conv_impl,
    width=FLAGS.width,
  )


def _torch_net(device):
  net = torch_models.ConvNet(1, 10, im_size=SHAPE[:2], net_width=FLAGS.width)
  return net.to(device)


def _torch_train(
  net, images, labels, *, epochs, device, decay: bool, strategy: str = "none"
):
  """The reference loop: E + 1 epochs of shuffled batches, each augmented
  with `strategy`; returns the last epoch's mean loss."""
  n = images.shape[0]

  def optimizer(lr):
    return torch.optim.SGD(
      net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )

  opt = optimizer(LR)
  net.train()
  loss_sum = 0.0
  for epoch in range(epochs + 1):
    if decay and epoch == evaluate.decay_epoch(epochs) + 1:
      # The reference (lr_schedule = [E // 2 + 1]): after that epoch,
      # lr x 0.1 and a new SGD (its momentum restarts).
      opt = optimizer(LR * 0.1)
    order = torch.randperm(n, device=device)
    loss_sum = 0.0
    for start in range(0, n, BATCH):
      idx = order[start : start + BATCH]
      batch = torch_dsa.augment(images[idx], strategy)
      loss = F.cross_entropy(net(batch), labels[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
      loss_sum += float(loss.detach()) * idx.numel()
  return loss_sum / n


def _torch_test(net, images, labels) -> float:
  net.eval()
  correct = 0
  with torch.no_grad():
    for start in range(0, images.shape[0], 500):
      out = net(images[start : start + 500])
      correct += int((out.argmax(1) == labels[start : start + 500]).sum())
  return correct / images.shape[0]


def check_agreement(device) -> str:
  """Same init, constant lr, one batch: final loss and weights agree."""
  rng = np.random.default_rng(1)
  n = min(50, BATCH)
  images = rng.normal(size=(n, *SHAPE)).astype(np.float32)
  labels = np.arange(n) % 10
  model = _model()
  variables = train.init_variables(jax.random.key(3), model, SHAPE)
  epochs = FLAGS.check_epochs
  ours, record = train.train_epochs(
    variables,
    images=jnp.asarray(images),
    targets=jax.nn.one_hot(labels, 10),
    model=model,
    epochs=epochs + 1,
    lr=LR,
    batch_size=BATCH,
    order_key=jax.random.key(0),
    aug_key=jax.random.key(0),
    momentum=MOMENTUM,
    weight_decay=WEIGHT_DECAY,
  )
  net = torch_models.from_flax(_torch_net(device), model, variables, images)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  y = torch.from_numpy(labels).to(device)
  theirs_loss = _torch_train(
    net, x, y, epochs=epochs, device=device, decay=False
  )
  ours_loss = float(record.loss[-1])
  back = torch_models.to_flax(net.cpu(), model, variables, images)
  diffs = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
    ours["params"],
    back["params"],
  )
  worst = max(jax.tree.leaves(diffs))
  scale = max(
    float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(ours)
  )
  agree = abs(ours_loss - theirs_loss) <= 1e-3 * max(1.0, abs(ours_loss))
  agree = agree and worst <= 1e-3 * scale
  net.to(device)
  return (
    f"agreement after {epochs + 1} epochs on {n} images: loss ours "
    f"{ours_loss:.6f} torch {theirs_loss:.6f}; largest weight difference "
    f"{worst:.2e} (largest weight {scale:.2f}): "
    + ("AGREE" if agree else "DISAGREE")
  )


def training_flops_per_image(model) -> float:
  """XLA's FLOP count of one SGD step's forward and backward, per image
  (one step of 32 images, not in a loop, so the count is exact)."""
  variables = jax.eval_shape(
    lambda: train.init_variables(jax.random.key(0), model, SHAPE)
  )
  images = jax.ShapeDtypeStruct((32, *SHAPE), jnp.float32)

  def step(variables, images):
    def loss(params):
      logits = model.apply({**variables, "params": params}, images)
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])

    return jax.grad(loss)(variables["params"])

  cost = jax.jit(step).lower(variables, images).compile().cost_analysis()
  if isinstance(cost, list):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"]) / 32


def matmul_rate(n: int = 2048, calls: int = 5) -> tuple[float, float]:
  """(ours, torch) float32 GFLOP/s of an n x n matmul on this placement."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  t = torch.from_numpy(np.array(a))
  torch.mm(t, t)
  times = sidebyside.alternate(
    {
      "ours": lambda: dot(a, a).block_until_ready(),
      "torch": lambda: torch.mm(t, t),
    },
    calls=calls,
  )
  flops = 2.0 * n**3
  return flops / times["ours"].min / 1e9, flops / times["torch"].min / 1e9


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  torch_dsa.parse(FLAGS.dsa_strategy)  # a bad op fails before any compute
  placement = sidebyside.pin_cores(FLAGS.cores)
  device = sidebyside.torch_device(FLAGS.torch_device)
  torch.manual_seed(0)
  print(
    f"evaluation protocol, one model: ConvNet-3 width {FLAGS.width}, E = "
    f"{FLAGS.epochs} (+1), test {FLAGS.test_size}; {placement}; torch "
    f"{torch.__version__} ({device}, {torch.get_num_threads()} threads), "
    f"jax {jax.__version__} ({jax.default_backend()}, conv "
    f"{FLAGS.conv_impl}); DSA {FLAGS.dsa_strategy}",
    flush=True,
  )
  print(check_agreement(device), flush=True)
  dsa_diffs = torch_dsa.check(SHAPE)
  print(
    "DSA ops, one per-image draw given to both sides, max |ours - torch|: "
    + ", ".join(f"{op} {d:.1e}" for op, d in dsa_diffs.items())
    + (": AGREE" if max(dsa_diffs.values()) < 1e-4 else ": DISAGREE"),
    flush=True,
  )
  per_image = training_flops_per_image(_model())
  ours_rate, torch_rate = matmul_rate()
  print(
    f"training FLOPs per image (XLA's count of one step): "
    f"{per_image / 1e6:.1f} MFLOP; float32 2048^2 matmul on this "
    f"placement: ours {ours_rate:.1f} GFLOP/s, torch {torch_rate:.1f}",
    flush=True,
  )
  rng = np.random.default_rng(0)
  test_images = rng.normal(size=(FLAGS.test_size, *SHAPE)).astype(np.float32)
  test_labels = rng.integers(0, 10, FLAGS.test_size)
  t_test_x = torch.from_numpy(test_images.transpose(0, 3, 1, 2).copy()).to(
    device
  )
  t_test_y = torch.from_numpy(test_labels).to(device)
  ratios = []
  for size in map(int, FLAGS.sizes):
    images = rng.normal(size=(size, *SHAPE)).astype(np.float32)
    labels = np.arange(size) % 10
    t_x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    t_y = torch.from_numpy(labels).to(device)
    calls = iter(range(10**9))

    def ours(grad_chunk=FLAGS.grad_chunk):
      evaluate.evaluate_set(
        jax.random.key(next(calls)),
        images,
        labels,
        test_images,
        test_labels,
        num_classes=10,
        num_models=1,
        models_per_batch=1,
        epochs=FLAGS.epochs,
        lr=LR,
        model_options={"width": FLAGS.width},
        conv_impl=FLAGS.conv_impl,
        dsa_strategy=FLAGS.dsa_strategy,
        grad_chunk=None if grad_chunk < 0 else grad_chunk,
      )

    if FLAGS.grad_chunks:
      ratios.append(
        (size, *_ours_at_each_grad_chunk(ours, size, per_image, ours_rate))
      )
      continue

    def theirs():
      net = _torch_net(device)
      _torch_train(
        net,
        t_x,
        t_y,
        epochs=FLAGS.epochs,
        device=device,
        decay=True,
        strategy=FLAGS.dsa_strategy,
      )
      _torch_test(net, t_test_x, t_test_y)
      sidebyside.sync(device)

    start = time.perf_counter()
    times = sidebyside.alternate(
      {"ours": ours, "torch": theirs}, calls=FLAGS.calls
    )
    ratio = times["ours"].median / times["torch"].median
    ratios.append((size, ratio, times["ours"].min / times["torch"].min))
    # Training only: the test pass (forward, 1/3 of a step per image) too.
    flops = per_image * (size * (FLAGS.epochs + 1) + FLAGS.test_size / 3)
    achieved = flops / times["ours"].median / 1e9
    print(
      f"{size} images: ours {times['ours']}; torch {times['torch']}; "
      f"ours/torch median {ratio:.2f}x; ours at {achieved:.1f} GFLOP/s "
      f"({100 * achieved / ours_rate:.0f}% of the matmul rate) "
      f"[{time.perf_counter() - start:.0f} s]",
      flush=True,
    )
  against = (
    f"grad_chunk {FLAGS.grad_chunks[-1]}/{FLAGS.grad_chunks[0]}"
    if FLAGS.grad_chunks
    else "ours/torch"
  )
  sidebyside.summary_line(
    FLAGS.name,
    "; ".join(
      f"{size} images {against} median {r:.2f}x"
      + ("" if FLAGS.grad_chunks else " (target <= 0.70x)")
      + f", min {m:.2f}x"
      for size, r, m in ratios
    ),
  )


def _ours_at_each_grad_chunk(ours, size: int, per_image: float, matmul: float):
  """Times `ours` at each `--grad_chunks` value, alternating; prints each
  one's time and share of the matmul rate. -> (last/first median, min)."""
  start = time.perf_counter()
  chunks = [int(c) for c in FLAGS.grad_chunks]
  times = sidebyside.alternate(
    {str(c): functools.partial(ours, c) for c in chunks}, calls=FLAGS.calls
  )
  flops = per_image * (size * (FLAGS.epochs + 1) + FLAGS.test_size / 3)
  for c in chunks:
    achieved = flops / times[str(c)].median / 1e9
    print(
      f"{size} images, grad_chunk {c}: {times[str(c)]}; at {achieved:.1f} "
      f"GFLOP/s ({100 * achieved / matmul:.0f}% of the matmul rate)",
      flush=True,
    )
  first, last = times[str(chunks[0])], times[str(chunks[-1])]
  print(f"[{time.perf_counter() - start:.0f} s]", flush=True)
  return last.median / first.median, last.min / first.min


if __name__ == "__main__":
  app.run(main)
