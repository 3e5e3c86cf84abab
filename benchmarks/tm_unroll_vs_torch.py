r"""One trajectory-matching (MTT) outer iteration: ours (JAX) vs PyTorch.

For each number of student steps N in `--ns`: the loss `||theta_N -
theta*_target||^2 / ||theta*_start - theta*_target||^2` after N SGD steps of
a student ConvNet-3 (`--width`, instance norm, avg pooling) on minibatches of
`--batch_syn` synthetic images, and its gradient w.r.t. the images and the
student lr.

- Ours: `trajectory_matching.trajectory_loss` under
  `jax.jit(jax.value_and_grad(..., argnums=(images, lr)))` (the `lax.scan`
  unroll, `jax.checkpoint` on its body with `--remat`; `--no_remat_too` also
  measures it without), compiled ahead of time, `--conv_impl` ('auto': im2col
  on the CPU).
- PyTorch: the MTT reference unroll written below: the student is one flat
  parameter vector (as MTT's ReparamModule, run through
  `torch.func.functional_call`), every step appends `theta - lr * grad` with
  `torch.autograd.grad(ce, theta, create_graph=True)`, and the normalised
  distance is differentiated back to the images and the lr
  (`torch.autograd.grad(loss, [images, lr])`).

Both start from the same expert params (a torch ConvNet's init, copied into
Flax with `torch_models.to_flax`) and target (the start plus small noise).

Correctness first: at N = `--check_steps` with the whole synthetic set as
the batch (every step sees the same images in some order, which changes
nothing), the two losses must agree to 1e-4 relative; the gradients' relative
differences are printed too.

Memory: one subprocess per (side, N) (the script re-invokes itself with
`--side=ours|ours_noremat|torch --n=N`), so peaks never mix. In it: set up
the data and params, (ours: compile,) run one warm-up iteration, release
freed heap (`malloc_trim`), reset the kernel's peak-RSS mark
(`/proc/self/clear_refs`), then run the measured iteration; the figure is
the peak RSS after it (VmHWM; `ru_maxrss` would keep the peaks of exited
compile threads, and is the fallback where the mark cannot be reset) minus
the RSS before it. The peak from the end of setup through compile and
warm-up, over the RSS at the end of setup, is printed as well, and for ours
the compiled executable's `memory_analysis()` temp size. On an accelerator
the figure is the device allocator's instead (`sidebyside.jax_memory` /
`torch_memory`): the peak over the bytes in use before the measured call
(JAX's peak counts from the process's start, so it includes the warm-up,
which runs the same program). The memory runs come first, and a side whose
subprocess failed (e.g. killed for memory) is not timed.

Time: in this process, as every ours-vs-PyTorch figure (`sidebyside.py`):
after one warm-up call per side, `--steps` calls alternate ours / torch;
each side's median (and min) is reported. Ours runs on JAX's default
backend, torch on `--torch_device`.

Targets (the issue): at N = 30 ours <= 1.0x torch's time and <= 0.25x its
peak memory; ours' peak memory at N = 80 within 1.5x of ours at N = 10.
Needs `torch` (the `bench` extra); not part of the library's dependencies.

Full size (CIFAR-10-like, IPC 10 -> 100 images, batch_syn 100):

  python benchmarks/tm_unroll_vs_torch.py --ns=10,30,80 --size=32 \
    --channels=3 --ipc=10 --batch_syn=100 --width=128 --conv_impl=auto \
    --steps=3

Both sides run on `--cores` CPUs (1, the primary figure, by default).
PyTorch's memory grows linearly in N (every step's graph is kept); where it
outgrows the machine its subprocess is reported as failed and it is not
timed. Smoke run (a few minutes on two CPU cores, mostly compiling: one
compile per side and N in its subprocess, one in this process, one for the
check):

  python benchmarks/tm_unroll_vs_torch.py --ns=2 --width=16 --ipc=2 \
    --batch_syn=10 --steps=1
"""

import copy
import ctypes
import gc
import json
import re
import resource
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import sidebyside
import torch
import torch.nn.functional as F
import torch_models
from absl import app, flags

from lowrank_distill import models
from lowrank_distill.objectives import trajectory_matching

flags.DEFINE_list("ns", ["10", "30", "80"], "Student steps N to measure.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class.")
flags.DEFINE_integer("batch_syn", 100, "Synthetic images per student step.")
flags.DEFINE_integer("size", 32, "Image height and width.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("width", 128, "ConvNet width (small for smoke runs).")
flags.DEFINE_float("lr", 0.01, "Student lr (differentiated).")
flags.DEFINE_integer("steps", 3, "Timed iterations per side and N.")
flags.DEFINE_enum(
  "conv_impl",
  "auto",
  ["xla", "im2col", "canonical", "auto"],
  "Ours: convolution.",
)
flags.DEFINE_bool("remat", True, "Ours: jax.checkpoint the scan body.")
flags.DEFINE_bool("no_remat_too", False, "Also measure ours without remat.")
flags.DEFINE_bool("check", True, "Compare losses on shared weights first.")
flags.DEFINE_integer("check_steps", 2, "N of the correctness check.")
flags.DEFINE_bool("memory", True, "Measure peak memory (subprocesses).")
flags.DEFINE_bool("timing", True, "Measure time (in this process).")
flags.DEFINE_integer(
  "cores",
  1,
  "CPUs the process runs on, torch on as many threads (sidebyside."
  "pin_cores): 1 is the primary figure, 2 the two-thread one, 0 every core.",
)
flags.DEFINE_enum(
  "side",
  "",
  ["", "ours", "ours_noremat", "torch"],
  "Internal: measure one side's memory at --n in this process.",
)
flags.DEFINE_integer("n", 0, "Internal: N for --side.")
flags.DEFINE_string("torch_device", "cpu", "PyTorch's device: cpu | cuda.")
flags.DEFINE_string("name", "tm_unroll", "Name of the SUMMARY line.")
FLAGS = flags.FLAGS

LOSS_RTOL = 1e-4
MB = 2**20


def setup():
  """Images, labels, both nets and the expert params, seeded."""
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  c, s, ch = FLAGS.num_classes, FLAGS.size, FLAGS.channels
  n = c * FLAGS.ipc
  images = rng.normal(size=(n, s, s, ch)).astype(np.float32)
  labels = np.repeat(np.arange(c), FLAGS.ipc)
  net = torch_models.ConvNet(
    channel=ch,
    num_classes=c,
    net_width=FLAGS.width,
    net_depth=3,
    net_act="relu",
    net_norm="instancenorm",
    net_pooling="avgpooling",
    im_size=(s, s),
  )
  net.train()
  target_net = copy.deepcopy(net)
  with torch.no_grad():
    for p in target_net.parameters():
      p.add_(0.01 * torch.randn_like(p))
  model = models.create(
    "convnet",
    num_classes=c,
    image_shape=(s, s, ch),
    conv_impl=FLAGS.conv_impl,
    width=FLAGS.width,
  )
  variables = model.init(jax.random.key(0), images[:1])
  return types.SimpleNamespace(
    images=images,
    labels=labels,
    model=model,
    net=net,
    start=torch_models.to_flax(net, model, variables, images[:1])["params"],
    target=torch_models.to_flax(target_net, model, variables, images[:1])[
      "params"
    ],
    start_flat=flat_params(net),
    target_flat=flat_params(target_net),
  )


# ---------------------------------------------------------------------------
# Ours.


class Ours:
  """`trajectory_loss` and its gradient, compiled for one N."""

  def __init__(self, problem, *, steps, batch_size, remat):
    model = problem.model

    def loss(images, lr, key, start, target, targets):
      return trajectory_matching.trajectory_loss(
        key,
        start,
        target,
        images,
        targets,
        model=model,
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        dsa_strategy="none",
        remat=remat,
      )

    self.args = (
      jnp.asarray(problem.images),
      jnp.float32(FLAGS.lr),
      jax.random.key(1),
      jax.tree.map(jnp.asarray, problem.start),
      jax.tree.map(jnp.asarray, problem.target),
      jax.nn.one_hot(problem.labels, FLAGS.num_classes, dtype=jnp.float32),
    )
    start = time.perf_counter()
    # The options `distill.loop` compiles the step with.
    f = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1)),
      compiler_options=models.compiler_options(FLAGS.conv_impl),
    )
    self.compiled = f.lower(*self.args).compile()
    self.compile_s = time.perf_counter() - start
    stats = self.compiled.memory_analysis()
    self.temp_bytes = getattr(stats, "temp_size_in_bytes", None)

  def __call__(self):
    """-> (loss, d loss / d images [n, h, w, c], d loss / d lr)."""
    loss, (g_images, g_lr) = self.compiled(*self.args)
    jax.block_until_ready((loss, g_images, g_lr))
    return float(loss), np.asarray(g_images), float(g_lr)


# ---------------------------------------------------------------------------
# PyTorch: the MTT reference unroll.


def flat_params(net):
  return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


class Torch:
  """MTT's unroll on a flat parameter vector (ReparamModule-like)."""

  def __init__(self, problem, *, steps, batch_size, device):
    self.device = device
    self.net = problem.net.to(device)
    named = list(self.net.named_parameters())
    self.names = [name for name, _ in named]
    self.shapes = [p.shape for _, p in named]
    self.numels = [p.numel() for _, p in named]
    # NHWC -> NCHW, copied (a view could be shared with the numpy array).
    images = np.array(problem.images.transpose(0, 3, 1, 2))
    self.images = torch.from_numpy(images).to(device).requires_grad_(True)
    self.labels = torch.from_numpy(problem.labels).to(device)
    self.lr = torch.tensor(FLAGS.lr, device=device, requires_grad=True)
    self.start = problem.start_flat.to(device)
    self.target = problem.target_flat.to(device)
    self.steps, self.batch_size = steps, batch_size

  def forward(self, flat, x):
    views = [v.view(s) for v, s in zip(flat.split(self.numels), self.shapes)]
    params = dict(zip(self.names, views, strict=True))
    return torch.func.functional_call(self.net, params, (x,))

  def __call__(self):
    """-> (loss, d loss / d images [n, h, w, c], d loss / d lr)."""
    num = self.images.shape[0]
    student = [self.start.clone().requires_grad_(True)]
    chunks = []
    for _ in range(self.steps):
      if not chunks:
        chunks = list(torch.randperm(num).split(self.batch_size))
      idx = chunks.pop()
      out = self.forward(student[-1], self.images[idx])
      ce = F.cross_entropy(out, self.labels[idx])
      (grad,) = torch.autograd.grad(ce, student[-1], create_graph=True)
      student.append(student[-1] - self.lr * grad)
    loss = torch.sum((student[-1] - self.target) ** 2) / torch.sum(
      (self.start - self.target) ** 2
    )
    g_images, g_lr = torch.autograd.grad(loss, [self.images, self.lr])
    return (
      loss.item(),
      g_images.cpu().numpy().transpose(0, 2, 3, 1),
      g_lr.item(),
    )


# ---------------------------------------------------------------------------
# Memory (one subprocess per side and N).


def _status_bytes(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_bytes():
  return _status_bytes("VmRSS")


def _peak_bytes(reset):
  # After a reset the live mark (VmHWM) is the one to read: `ru_maxrss`
  # also keeps the peaks that exited threads (XLA's compile threads) saw
  # before it.
  if reset:
    return _status_bytes("VmHWM")
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_and_reset_peak():
  """Returns freed heap to the OS; resets the peak-RSS mark if possible."""
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def measure_device_memory(side, n, device):
  """The accelerator's figures for `side` at N = n, or None on CPU."""
  problem = setup()
  batch_size = min(FLAGS.batch_syn, problem.images.shape[0])
  if side == "torch":
    if device.type == "cpu":
      return None
    fn = Torch(problem, steps=n, batch_size=batch_size, device=device)
    fn()  # warm-up
    sidebyside.reset_torch_peak(device)
    base, _ = sidebyside.torch_memory(device)
    fn()
    _, peak = sidebyside.torch_memory(device)
    temp = None
  else:
    if sidebyside.jax_memory() is None:
      return None
    fn = Ours(problem, steps=n, batch_size=batch_size, remat=side == "ours")
    base, _ = sidebyside.jax_memory()
    fn()  # warm-up: the same program as the measured call
    fn()
    _, peak = sidebyside.jax_memory()
    temp = fn.temp_bytes
  return {
    "side": side,
    "n": n,
    "run_peak": peak - base,
    "whole_peak": peak - base,
    "base": base,
    "reset": True,
    "xla_temp": temp,
    "device": True,
  }


def measure_memory(side, n, device):
  """Prints one `MEMORY {json}` line for `side` at N = n."""
  entry = measure_device_memory(side, n, device)
  if entry is not None:
    print("MEMORY " + json.dumps(entry))
    return
  problem = setup()
  batch_size = min(FLAGS.batch_syn, problem.images.shape[0])
  reset = _release_and_reset_peak()
  setup_rss = _rss_bytes()
  if side == "torch":
    fn = Torch(problem, steps=n, batch_size=batch_size, device=device)
    temp = None
  else:
    fn = Ours(problem, steps=n, batch_size=batch_size, remat=side == "ours")
    temp = fn.temp_bytes
  fn()  # warm-up
  whole_peak = _peak_bytes(reset)
  reset = _release_and_reset_peak() and reset
  base = _rss_bytes()
  fn()
  peak = _peak_bytes(reset)
  print(
    "MEMORY "
    + json.dumps(
      {
        "side": side,
        "n": n,
        "run_peak": peak - base,
        "whole_peak": max(whole_peak, peak) - setup_rss,
        "base": base,
        "reset": reset,
        "xla_temp": temp,
        "device": False,
      }
    )
  )


def memory_in_subprocess(side, n):
  cmd = [sys.executable, __file__, *sys.argv[1:], f"--side={side}", f"--n={n}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("MEMORY "):
      return json.loads(line[len("MEMORY ") :])
  tail = "\n".join((proc.stderr or "").strip().splitlines()[-3:])
  print(f"memory run {side} N={n} failed (rc {proc.returncode}): {tail}")
  return None


# ---------------------------------------------------------------------------


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def check(problem, device):
  n_syn = problem.images.shape[0]
  steps = FLAGS.check_steps
  remat = FLAGS.remat
  ours = Ours(problem, steps=steps, batch_size=n_syn, remat=remat)
  theirs = Torch(problem, steps=steps, batch_size=n_syn, device=device)
  loss_o, g_img_o, g_lr_o = ours()
  loss_t, g_img_t, g_lr_t = theirs()
  rel = abs(loss_o - loss_t) / abs(loss_t)
  ok = rel <= LOSS_RTOL
  print(
    f"check (N={steps}, full-batch steps, shared expert params): loss ours "
    f"{loss_o:.7f} torch {loss_t:.7f} rel diff {rel:.1e} (tol "
    f"{LOSS_RTOL:g}); d/d images rel diff {_rel(g_img_o, g_img_t):.1e}; "
    f"d/d lr ours {g_lr_o:.5g} torch {g_lr_t:.5g} rel diff "
    f"{abs(g_lr_o - g_lr_t) / abs(g_lr_t):.1e} -> "
    f"{'OK' if ok else 'MISMATCH'}"
  )
  return ok


def _fmt(value, spec, unit=1.0):
  """`format(value / unit, spec)`, or 'n/a' padded to the spec's width."""
  if value is None:
    width = re.match(r"\d*", spec).group()
    return "n/a".rjust(int(width or 0))
  return format(value / unit, spec)


def _ratio(a, b):
  return None if a is None or b is None or not b else a / b


def _verdict(value, limit):
  if value is None:
    return "n/a"
  return (
    f"{value:.2f} (target <= {limit}: {'met' if value <= limit else 'NOT met'})"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  placement = sidebyside.pin_cores(FLAGS.cores)
  print(f"placement: {placement}", flush=True)
  device = sidebyside.torch_device(FLAGS.torch_device)
  if FLAGS.side:
    measure_memory(FLAGS.side, FLAGS.n, device)
    return
  ns = [int(n) for n in FLAGS.ns]
  ours_sides = ["ours"] if FLAGS.remat else ["ours_noremat"]
  if FLAGS.no_remat_too and FLAGS.remat:
    ours_sides.append("ours_noremat")
  sides = [*ours_sides, "torch"]
  n_syn = FLAGS.num_classes * FLAGS.ipc
  batch_size = min(FLAGS.batch_syn, n_syn)
  print(
    f"TM unroll: {n_syn} synthetic images {FLAGS.size}x{FLAGS.size}x"
    f"{FLAGS.channels}, batch_syn {batch_size}, ConvNet-3 width "
    f"{FLAGS.width} instance norm; torch {torch.__version__} "
    f"({device}, {torch.get_num_threads()} threads), jax {jax.__version__} "
    f"({jax.default_backend()}, conv {FLAGS.conv_impl}, remat "
    f"{FLAGS.remat})"
  )
  problem = setup()
  agree = not FLAGS.check or check(problem, device)
  if not agree:
    print(
      "WARNING: the two sides disagree; the figures compare different "
      "computations."
    )

  mem = {}
  if FLAGS.memory:
    for n in ns:
      for side in sides:
        mem[side, n] = memory_in_subprocess(side, n)

  times, mins, compile_s = {}, {}, {}
  if FLAGS.timing:
    for n in ns:
      fns = {}
      for side in sides:
        if FLAGS.memory and mem[side, n] is None:
          continue  # its memory run failed; it would fail here too
        if side == "torch":
          fns[side] = Torch(
            problem, steps=n, batch_size=batch_size, device=device
          )
        else:
          fns[side] = Ours(
            problem, steps=n, batch_size=batch_size, remat=side == "ours"
          )
          compile_s[side, n] = fns[side].compile_s
      timings = sidebyside.alternate(fns, calls=FLAGS.steps)
      for side, timing in timings.items():
        times[side, n] = timing.median
        mins[side, n] = timing.min
      del fns

  def mem_of(side, n, field="run_peak"):
    entry = mem.get((side, n))
    return None if entry is None else entry[field]

  ours = ours_sides[0]
  on_device = any(e is not None and e["device"] for e in mem.values())
  what = (
    "the device allocator's peak over the bytes in use before the call"
    if on_device
    else "peak RSS of the measured call over the RSS before it"
  )
  print(
    f"\ntime: median of {FLAGS.steps} alternating calls after 1 warm-up "
    f"(one process); memory: {what} (one subprocess per side and N); "
    "MB = 2^20 bytes"
  )
  header = (
    f"{'N':>4} {'ours s':>8} {'torch s':>8} {'t ratio':>8} "
    f"{'ours MB':>8} {'torch MB':>9} {'m ratio':>8} {'XLA tmp MB':>11} "
    f"{'compile s':>9}"
  )
  if len(ours_sides) > 1:
    header += f" {'noremat s':>9} {'noremat MB':>10} {'nr tmp MB':>9}"
  print(header)
  for n in ns:
    t_o, t_t = times.get((ours, n)), times.get(("torch", n))
    m_o, m_t = mem_of(ours, n), mem_of("torch", n)
    row = (
      f"{n:4d} {_fmt(t_o, '8.3f')} {_fmt(t_t, '8.3f')} "
      f"{_fmt(_ratio(t_o, t_t), '8.2f')} {_fmt(m_o, '8.0f', MB)} "
      f"{_fmt(m_t, '9.0f', MB)} {_fmt(_ratio(m_o, m_t), '8.3f')} "
      f"{_fmt(mem_of(ours, n, 'xla_temp'), '11.0f', MB)} "
      f"{_fmt(compile_s.get((ours, n)), '9.1f')}"
    )
    if len(ours_sides) > 1:
      row += (
        f" {_fmt(times.get(('ours_noremat', n)), '9.3f')}"
        f" {_fmt(mem_of('ours_noremat', n), '10.0f', MB)}"
        f" {_fmt(mem_of('ours_noremat', n, 'xla_temp'), '9.0f', MB)}"
      )
    print(row)
  if mem:
    print(
      "\nmemory detail (MB): 'call' = the measured call's peak over the RSS "
      "before it (the figure above); 'setup->' = the peak from the end of "
      "setup through compile, warm-up and the call, over the RSS at the end "
      "of setup; 'rss' = the RSS before the measured call"
    )
    print(
      f"  {'side':13s} {'N':5s} {'call':>9} {'setup->':>9} {'rss':>9} "
      f"{'XLA tmp':>9}"
    )
    for (side, n), entry in mem.items():
      if entry is None:
        print(f"  {side:13s} {n:<5d} failed")
        continue
      note = "" if entry["reset"] else " (peak mark not reset)"
      print(
        f"  {side:13s} {n:<5d} {entry['run_peak'] / MB:9.0f} "
        f"{entry['whole_peak'] / MB:9.0f} {entry['base'] / MB:9.0f} "
        f"{_fmt(entry['xla_temp'], '9.0f', MB)}{note}"
      )

  t30 = _ratio(times.get((ours, 30)), times.get(("torch", 30)))
  m30 = _ratio(mem_of(ours, 30), mem_of("torch", 30))
  m80 = _ratio(mem_of(ours, 80), mem_of(ours, 10))

  def row(n):
    min_ratio = _ratio(mins.get((ours, n)), mins.get(("torch", n)))
    return (
      f"N={n} ours {_fmt(times.get((ours, n)), '.3f')} s torch "
      f"{_fmt(times.get(('torch', n)), '.3f')} s "
      f"(min ratio {_fmt(min_ratio, '.2f')}), "
      f"mem ours {_fmt(mem_of(ours, n), '.0f', MB)} MB torch "
      f"{_fmt(mem_of('torch', n), '.0f', MB)} MB"
    )

  rows = "; ".join(row(n) for n in ns)
  print("\ntargets (the issues; CPU: time <= 1.0x, accelerator: <= 0.5x):")
  time_target = 0.5 if on_device else 1.0
  print("  N=30 time ours/torch: " + _verdict(t30, time_target))
  print("  N=30 peak memory ours/torch: " + _verdict(m30, 0.25))
  print(
    "  ours peak memory N=80 / N=10: "
    + _verdict(m80, 1.5)
    + "; XLA temp N=80 / N=10: "
    + _fmt(
      _ratio(mem_of(ours, 80, "xla_temp"), mem_of(ours, 10, "xla_temp")),
      ".2f",
    )
  )
  sidebyside.summary_line(
    FLAGS.name,
    f"{rows}; N=30 time ratio {_verdict(t30, time_target)}, memory ratio "
    f"{_verdict(m30, 0.25)}; ours N=80/N=10 memory {_verdict(m80, 1.5)}"
    + ("" if agree else "; the two sides DISAGREE (see the check)"),
  )


if __name__ == "__main__":
  app.run(main)
