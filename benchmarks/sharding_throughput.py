r"""Distillation throughput on 1 vs several devices: DM and MTT iterations/s.

Every row runs in its own process (fresh peak-memory counters, and on a CPU
its own number of fake devices): the library's jitted step of `distill.run`
(`distill.OBJECTIVES[...].build_step` on a `sharding` mesh of `devices`),
compiled ahead of time, then timed over `--iterations` iterations after
`--warmup` ones, inputs included (MTT draws and sends expert snapshots every
iteration, as the run does). Data are random images of the given shape and
the experts are random parameter trajectories: throughput does not depend
on their values. DM splits each class's real batch over the devices; MTT
splits its `--num_trajectories` trajectories when the device count divides
them, else every student minibatch (distill.tm.mesh_split).

On a CPU the devices are fake (`--xla_force_host_platform_device_count`):
they share the same cores, so 1 vs 4 measures the sharding overhead, not a
speed-up. A small CPU run:

  python benchmarks/sharding_throughput.py --devices=1,4 --syn_steps=10 \
    --size=8 --channels=1 --width=8 --depth=1 --ipc=2 --batch_real=16 \
    --iterations=5

On a GPU host (MTT at N = 30 and 80 student steps; ConvNet-3 on CIFAR-sized
images, IPC 10, the whole set in every student step):

  python benchmarks/sharding_throughput.py --devices=1 --syn_steps=30,80

Prints the device kind and, per row, iterations/s, compile seconds and the
peak device memory (`memory_stats()['peak_bytes_in_use']` of the first
device, where the backend reports it).
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

# `configs` is a top-level package of the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# The library is imported inside the functions a row runs: the parent
# process must not start a JAX backend (on a GPU it would hold the memory
# the rows measure).

flags.DEFINE_list("methods", ["dm", "tm"], "dm and/or tm (MTT).")
flags.DEFINE_list("devices", ["1", "4"], "Devices along the mesh's 'data'.")
flags.DEFINE_list("syn_steps", ["30", "80"], "MTT student steps N.")
flags.DEFINE_integer("size", 32, "Image height and width.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("train_per_class", 300, "Random real images per class.")
flags.DEFINE_integer("ipc", 10, "Synthetic images per class (pixels).")
flags.DEFINE_integer("width", 128, "ConvNet width.")
flags.DEFINE_integer("depth", 3, "ConvNet depth.")
flags.DEFINE_integer("batch_real", 256, "DM: real images per class.")
flags.DEFINE_integer("batch_syn", 0, "MTT: images per student step (0: all).")
flags.DEFINE_integer("num_trajectories", 1, "MTT: trajectories per iteration.")
flags.DEFINE_string("dsa", "color_crop_cutout_flip_scale_rotate", "DSA.")
flags.DEFINE_string("conv_impl", "auto", "xla, im2col or auto.")
flags.DEFINE_integer("iterations", 10, "Timed iterations per row.")
flags.DEFINE_integer("warmup", 2, "Untimed iterations after compiling.")
flags.DEFINE_string("row", "", "Internal: method:syn_steps:devices.")
FLAGS = flags.FLAGS


def random_dataset():
  """A `data.Dataset` of standard-normal images, class-balanced."""
  import numpy as np

  from lowrank_distill import data

  rng = np.random.default_rng(0)
  shape = (FLAGS.size, FLAGS.size, FLAGS.channels)
  n = FLAGS.train_per_class * FLAGS.num_classes
  labels = np.repeat(
    np.arange(FLAGS.num_classes, dtype=np.int32), FLAGS.train_per_class
  )
  return data.Dataset(
    name="random",
    train_images=rng.normal(size=(n, *shape)).astype(np.float32),
    train_labels=labels,
    test_images=rng.normal(size=(10, *shape)).astype(np.float32),
    test_labels=labels[:10],
    num_classes=FLAGS.num_classes,
    image_shape=shape,
    mean=(0.0,) * FLAGS.channels,
    std=(1.0,) * FLAGS.channels,
    zca=None,
    class_names=tuple(str(c) for c in range(FLAGS.num_classes)),
    source="npz",
  )


def make_config(method: str, syn_steps: int, devices: int):
  from configs import dm, tm

  if method == "dm":
    config = dm.get_config("runlocal=true,param=pixels")
    config.distill.update(batch_real=FLAGS.batch_real)
  else:
    config = tm.get_config("runlocal=true,variant=mtt")
    config.distill.update(
      syn_steps=syn_steps,
      expert_epochs=2,
      max_start=2,
      batch_syn=FLAGS.batch_syn,
      num_trajectories=FLAGS.num_trajectories,
    )
  config.synset.update(param="pixels", ipc=FLAGS.ipc, budget="same-images")
  config.model.options.update(width=FLAGS.width, depth=FLAGS.depth)
  config.distill.update(dsa_strategy=FLAGS.dsa, conv_impl=FLAGS.conv_impl)
  config.mesh.data = devices
  return config


def fake_buffer(path, dataset, config, *, num_experts: int = 2):
  """Expert files of random parameter trajectories, as `experts.run` saves."""
  import jax
  import numpy as np

  from lowrank_distill import experts, models, train, workdir

  model = models.create(
    config.model.name,
    num_classes=dataset.num_classes,
    image_shape=dataset.image_shape,
    **models.options_for(config.model.name, config.model.options),
  )
  epochs = config.distill.max_start + config.distill.expert_epochs
  identity = experts.buffer_identity(dataset, config)
  workdir.write_json(
    path / experts.BUFFER_FILE,
    {
      "format": experts.BUFFER_FORMAT,
      "version": experts.BUFFER_VERSION,
      "num_snapshots": epochs + 1,
      "identity": identity,
    },
  )
  for e in range(num_experts):
    snapshots = [
      train.init_variables(
        jax.random.key(100 * e + t), model, dataset.image_shape
      )["params"]
      for t in range(epochs + 1)
    ]
    trajectory = jax.tree.map(lambda *x: np.stack(x), *snapshots)
    experts.save_expert(path, e, trajectory, metadata={"identity": identity})
  config.experts.path = str(path)


def peak_bytes():
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_row(method: str, syn_steps: int, devices: int) -> dict:
  """One row, in this process: compile, warm up, time."""
  import jax

  from lowrank_distill import distill, sharding

  dataset = random_dataset()
  config = make_config(method, syn_steps, devices)
  with tempfile.TemporaryDirectory() as tmp:
    if method == "tm":
      fake_buffer(pathlib.Path(tmp), dataset, config)
    plan = distill.make_plan(config, dataset=dataset)
    mesh = sharding.mesh_from_config(config)
    objective = distill.OBJECTIVES[method]
    objective.check_mesh(plan, mesh)
    state, optimizer = distill.initial_state(jax.random.key(0), plan)
    state = sharding.put(state, mesh)
    step = sharding.jit(objective.build_step(plan, optimizer, mesh=mesh), mesh)
    inputs = objective.inputs(plan, mesh)

    def key(i):
      return sharding.put(jax.random.fold_in(jax.random.key(1), i), mesh)

    start = time.perf_counter()
    compiled = step.lower(state, key(0), *inputs(0)).compile()
    compile_s = time.perf_counter() - start
    for i in range(FLAGS.warmup):
      state, _ = compiled(state, key(i), *inputs(i))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(FLAGS.warmup, FLAGS.warmup + FLAGS.iterations):
      state, metrics = compiled(state, key(i), *inputs(i))
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
  split = (
    distill.tm.mesh_split(config.distill.num_trajectories, mesh)
    if method == "tm"
    else "real batch"
  )
  return {
    "device": jax.devices()[0].device_kind,
    "method": method,
    "syn_steps": syn_steps if method == "tm" else None,
    "devices": devices,
    "split": split if devices > 1 else "-",
    "it_per_s": FLAGS.iterations / seconds,
    "compile_s": compile_s,
    "peak_bytes": peak_bytes(),
    "loss": float(metrics["loss"]),
  }


def rows():
  for method in FLAGS.methods:
    for n in [int(s) for s in FLAGS.syn_steps] if method == "tm" else [0]:
      for devices in (int(d) for d in FLAGS.devices):
        yield method, n, devices


def run_row_process(method: str, syn_steps: int, devices: int) -> dict:
  """Runs one row in a child process with `devices` fake CPU devices."""
  flags_env = os.environ.get("XLA_FLAGS", "")
  fake = f"--xla_force_host_platform_device_count={devices}"
  env = {**os.environ, "XLA_FLAGS": f"{flags_env} {fake}".strip()}
  argv = [a for a in sys.argv[1:] if not a.startswith("--row")]
  done = subprocess.run(
    [sys.executable, __file__, *argv, f"--row={method}:{syn_steps}:{devices}"],
    env=env,
    capture_output=True,
    text=True,
  )
  for line in done.stdout.splitlines():
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError(
    f"row {method} N={syn_steps} devices={devices} failed:\n"
    f"{done.stderr[-3000:]}"
  )


def main(argv):
  del argv
  if FLAGS.row:
    method, syn_steps, devices = FLAGS.row.split(":")
    print(json.dumps(time_row(method, int(syn_steps), int(devices))))
    return
  print(
    f"{FLAGS.size}x{FLAGS.size}x{FLAGS.channels} images, "
    f"{FLAGS.num_classes} classes, IPC {FLAGS.ipc} (pixels), ConvNet "
    f"w{FLAGS.width} d{FLAGS.depth}, DSA {FLAGS.dsa}; DM batch_real "
    f"{FLAGS.batch_real}; MTT batch_syn {FLAGS.batch_syn or 'all'}, "
    f"{FLAGS.num_trajectories} trajectory(ies); {FLAGS.iterations} timed "
    f"iterations",
    flush=True,
  )
  print(
    "| device | method | N | devices | split | it/s | vs 1 device "
    "| compile s | peak MiB |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  baseline = {}
  for method, n, devices in rows():
    r = run_row_process(method, n, devices)
    rate = r["it_per_s"]
    base = baseline.setdefault((method, n), rate)
    peak = r["peak_bytes"]
    print(
      f"| {r['device']} | {'MTT' if method == 'tm' else 'DM'} | "
      f"{n or '-'} | {devices} | {r['split']} | {rate:.2f} | "
      f"{rate / base:.2f}x | {r['compile_s']:.1f} | "
      f"{'n/a' if peak is None else f'{peak / 2**20:.0f}'} |",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
