r"""Sharded runs against the single-device run, on fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python tests/sharded_checks.py [check ...]

`tests/sharding_test.py` runs every check in the test process, on the 4
fake devices of `tests/conftest.py` (the device count is fixed when JAX
starts). Every check computes the single-device result once, then the
same on a mesh of `MESH_DEVICES` devices. The counts cover both ways a
split goes: evenly (4 experts, 8 trajectories) and padded (a run's 3
experts, 10 student images and 3 evaluation models: padded to 4, 12 and
4). Run as a script, each check prints one JSON line `{"check", "devices",
"ok", "seconds", "detail"}`; the exit status is 1 when a check failed.
Without arguments every check in `CHECKS` runs.

Tolerance: rtol 1e-5, atol 1e-6. A split axis turns one reduction (a mean
over real images, a sum of per-trajectory or per-image gradients) into
per-device partial sums plus an all-reduce; float32 addition in another
order differs in the last bits, so sharded and single-device results agree
to rounding, not bit for bit.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import dm as dm_config  # noqa: E402
from configs import experts as experts_config_lib  # noqa: E402
from configs import gm as gm_config  # noqa: E402
from configs import tm as tm_config  # noqa: E402
from lowrank_distill import (  # noqa: E402
  checkpoint,
  distill,
  evaluate,
  experts,
  models,
  sharding,
)
from lowrank_distill.objectives import trajectory_matching  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
TINY = dict(width=8, depth=1)
# One DSA op keeps compile times low; its per-image draws still test that
# padding a minibatch leaves the real rows' augmentation unchanged.
DSA = "crop"


# Fewer devices would leave nothing to compare: `make_mesh` refuses them.
MESH_DEVICES = 4


def meshes():
  """The sharded meshes to compare with one device."""
  return [sharding.make_mesh(MESH_DEVICES)]


def close(a, b, what: str) -> None:
  chex.assert_trees_all_close(a, b, rtol=RTOL, atol=ATOL, custom_message=what)


def collectives(jitted, *args) -> bool:
  """Whether the compiled program exchanges data between devices."""
  text = jitted.lower(*args).compile().as_text()
  return any(op in text for op in ("all-reduce", "all-gather", "all-to-all"))


def tiny(config, **distill):
  config.model.options.update(TINY)
  config.distill.update(dsa_strategy=DSA, **distill)
  config.eval.update(epochs=1, num_models=1, dsa_strategy=DSA)
  return config


def steps(plan, config, mesh, *, iterations: int = 2) -> dict:
  """Runs the jitted step `iterations` times as `distill.run` does.

  Returns:
    {'loss': [iterations], 'update': the first step's change of the
    trainable params (-lr * gradient: the optimiser's first momentum step),
    'final': the trainable params after the last step}, and on a sharded
    mesh 'collectives': whether the compiled step exchanges data.
  """
  objective = distill.OBJECTIVES[config.method]
  state, optimizer = distill.initial_state(jax.random.key(1), plan)
  state = sharding.put(state, mesh)
  trainable = state.trainable
  step = sharding.jit(objective.build_step(plan, optimizer, mesh=mesh), mesh)
  inputs = objective.inputs(plan, mesh)
  out = {"loss": []}
  for i in range(iterations):
    key = sharding.put(jax.random.fold_in(jax.random.key(2), i), mesh)
    args = (state, key, *inputs(i))
    state, metrics = step(*args)
    assert not bool(metrics["skipped"]), f"update {i} refused"
    out["loss"].append(float(metrics["loss"]))
    if i == 0:
      out["update"] = jax.tree.map(
        np.subtract, sharding.to_host(state.trainable), trainable
      )
      if sharding.is_sharded(mesh):
        out["collectives"] = collectives(step, *args)
  out["final"] = sharding.to_host(state.trainable)
  return out


def compare_steps(plan, config, meshes) -> dict:
  """Loss, gradient (first update) and final state: sharded == unsharded."""
  one = steps(plan, config, None)
  details = {"loss": one["loss"]}
  for mesh in meshes:
    n = sharding.data_size(mesh)
    many = steps(plan, config, mesh)
    close(many["loss"], one["loss"], f"losses on {n} devices")
    close(many["update"], one["update"], f"first update on {n} devices")
    close(many["final"], one["final"], f"final state on {n} devices")
    assert many["collectives"], f"the step on {n} devices exchanges nothing"
    details[f"loss_{n}"] = many["loss"]
  return details


# ----------------------------------------------------------------------------
# Checks.


def check_dm(tmp: pathlib.Path) -> dict:
  del tmp
  config = tiny(dm_config.get_config("runlocal=true"))
  return compare_steps(distill.make_plan(config), config, meshes())


def check_gm(tmp: pathlib.Path) -> dict:
  del tmp
  # No inner loop: it trains on the (replicated) synthetic set only.
  config = tiny(gm_config.get_config("runlocal=true,method=dsa"), inner_loop=0)
  return compare_steps(distill.make_plan(config), config, meshes())


def experts_config(data: int):
  config = experts_config_lib.get_config("runlocal=true")
  config.model.options.update(TINY)
  config.experts.update(
    num_experts=3, epochs=1, experts_in_parallel=3, dsa_strategy=DSA
  )
  config.mesh.data = data
  return config


def check_experts(tmp: pathlib.Path) -> dict:
  """4 experts of `train_experts`, then 3 of `experts.run`, split.

  4 experts split evenly over 4 devices; the run's 3 are padded to 4 (the
  extra expert is trained and dropped).
  """
  config = experts_config(-1)
  dataset = distill.make_plan(
    tiny(dm_config.get_config("runlocal=true"))
  ).dataset
  model = models.create(
    "convnet", num_classes=10, image_shape=(8, 8, 1), **TINY
  )

  def train(mesh, num):
    fn = jax.jit(
      lambda key, x, y: experts.train_experts(
        key,
        x,
        y,
        model=model,
        num_experts=num,
        epochs=2,
        batch_size=16,
        dsa_strategy=DSA,
        num_classes=10,
        mesh=mesh,
      )
    )
    images, labels = dataset.train_images[:64], dataset.train_labels[:64]
    return sharding.to_host(fn(jax.random.key(6), images, labels))

  one = train(None, 4)
  for mesh in meshes():
    many = train(mesh, 4)
    assert jax.tree.leaves(many)[0].shape[0] == 4
    close(many, one, f"4 experts on {sharding.data_size(mesh)} devices")

  experts.run(experts_config(1), tmp / "experts_one")
  experts.run(config, tmp / "experts")
  one = experts.open_buffer(tmp / "experts_one")
  many = experts.open_buffer(tmp / "experts")
  assert one.num_experts == many.num_experts == 3
  for e in range(3):
    close(many.read(e, 0, 2), one.read(e, 0, 2), f"expert {e} of the run")
  return {"train_experts": 4, "run": 3}


def check_tm(tmp: pathlib.Path) -> dict:
  """Trajectories split (T = 8, even), then student minibatches of 10
  images (padded to 12 on 4 devices).
  """
  buffer = tmp / "experts"
  if not buffer.exists():
    experts.run(experts_config(-1), buffer)
  details = {}
  for name, num_trajectories, split in (
    ("trajectories", 8, distill.tm.TRAJECTORIES),
    ("minibatch", 1, distill.tm.MINIBATCH),
  ):
    config = tm_config.get_config("runlocal=true,variant=mtt,ipc=1")
    config = tiny(
      config,
      syn_steps=2,
      expert_epochs=1,
      max_start=1,
      num_trajectories=num_trajectories,
    )
    config.experts.path = str(buffer)
    plan = distill.make_plan(config)
    assert plan.num_classes * plan.images_per_class == 10
    for mesh in meshes():
      assert (
        distill.tm.mesh_split(config.distill.num_trajectories, mesh) == split
      )
    details[name] = compare_steps(plan, config, meshes())
  return details


def check_batch_norm_student_refused(tmp: pathlib.Path) -> dict:
  del tmp
  """Padding would enter BatchNorm statistics: an error names the field."""
  model = models.create(
    "convnet_bn", num_classes=10, image_shape=(8, 8, 1), **TINY
  )
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  state = {k: v for k, v in variables.items() if k != "params"}
  try:
    trajectory_matching.unroll(
      jax.random.key(1),
      variables["params"],
      jnp.zeros((10, 8, 8, 1)),
      jax.nn.one_hot(jnp.arange(10), 10),
      model=model,
      lr=0.01,
      steps=1,
      batch_size=10,
      model_state=state,
      mesh=meshes()[0],
    )
  except ValueError as e:
    assert "distill.batch_syn" in str(e), e
    return {"error": str(e)}
  raise AssertionError("a BatchNorm student's uneven minibatch was accepted")


def check_evaluate(tmp: pathlib.Path) -> dict:
  del tmp
  """3 models, padded to 4 on 4 devices."""
  dataset = distill.make_plan(
    tiny(dm_config.get_config("runlocal=true"))
  ).dataset

  def accuracies(mesh):
    return evaluate.evaluate_set(
      jax.random.key(9),
      dataset.train_images[:40],
      dataset.train_labels[:40],
      dataset.test_images[:200],
      dataset.test_labels[:200],
      model_options=TINY,
      num_classes=10,
      num_models=3,
      epochs=2,
      batch_size=16,
      dsa_strategy=DSA,
      mesh=mesh,
    ).accuracies

  one = accuracies(None)
  for mesh in meshes():
    np.testing.assert_array_equal(accuracies(mesh), one)
    # On a CPU, models left open train one per device at a time.
    assert evaluate.auto_models_per_batch(3, mesh) == 3
  return {"accuracies": one.tolist()}


def run_config(data: int, iterations: int):
  config = tiny(dm_config.get_config("runlocal=true"), iterations=iterations)
  config.mesh.data = data
  return config


def check_checkpoint(tmp: pathlib.Path) -> dict:
  """Saved on N devices, restored on one: directly and by a resumed run."""
  mesh = meshes()[-1]
  n = sharding.data_size(mesh)
  tree = {
    "replicated": sharding.put(jnp.arange(6.0), mesh),
    "split": sharding.put(jnp.arange(4.0 * n).reshape(n, 4), mesh, axis=0),
    "key": sharding.put(jax.random.key(3), mesh),
  }
  assert len(tree["split"].sharding.device_set) == n
  with checkpoint.Checkpointer(tmp / "ckpt", config={"a": 1}) as ckpt:
    ckpt.save(1, tree)
  single = jax.eval_shape(lambda: jax.device_put(tree, jax.devices()[0]))
  with checkpoint.Checkpointer(tmp / "ckpt", config={"a": 1}) as ckpt:
    restored, _ = ckpt.restore(single)
  for name in ("replicated", "split"):
    assert len(restored[name].sharding.device_set) == 1
    np.testing.assert_array_equal(restored[name], np.asarray(tree[name]))
  np.testing.assert_array_equal(
    jax.random.key_data(restored["key"]),
    np.asarray(jax.random.key_data(tree["key"])),
  )

  # A run stopped on N devices after 2 iterations, restored on one: the
  # restored state is the saved one, and the run goes on from it.
  distill.run(run_config(n, 2), tmp / "run", final_eval=False)
  saved = checkpoint.load_tree(tmp / "run" / "synset")[0]
  distill.run(run_config(1, 2), tmp / "run", final_eval=False)
  chex.assert_trees_all_equal(
    checkpoint.load_tree(tmp / "run" / "synset")[0], saved
  )
  summary = distill.run(run_config(1, 3), tmp / "run", final_eval=False)
  assert summary["iterations"] == 3
  return {"saved_on": n, "restored_on": 1}


def check_uneven_real_batch_refused(tmp: pathlib.Path) -> dict:
  """batch_real = N + 2: refused, naming the field, before any file."""
  n = jax.device_count()
  for make in (dm_config.get_config, gm_config.get_config):
    config = tiny(make("runlocal=true"), batch_real=n + 2)
    workdir = tmp / f"uneven_{make.__module__}"
    try:
      distill.run(config, workdir)
    except ValueError as e:
      assert "distill.batch_real" in str(e), e
      assert not workdir.exists(), "files written before the check"
      message = str(e)
      continue
    raise AssertionError(f"batch_real={n + 2} on {n} devices was accepted")
  return {"error": message}


CHECKS = {
  "dm": check_dm,
  "gm": check_gm,
  "experts": check_experts,
  "tm": check_tm,
  "batch_norm_student": check_batch_norm_student_refused,
  "evaluate": check_evaluate,
  "checkpoint": check_checkpoint,
  "uneven_real_batch": check_uneven_real_batch_refused,
}


def main(names) -> int:
  failed = 0
  with tempfile.TemporaryDirectory() as tmp:
    for name in names or CHECKS:
      failed += not run_check(name, pathlib.Path(tmp))
  return 1 if failed else 0


def run_check(name: str, tmp: pathlib.Path) -> bool:
  """Runs one check and prints its JSON line; True when it passed."""
  check = CHECKS[name]
  start = time.perf_counter()
  try:
    detail, ok = check(tmp), True
  except Exception:  # Reported, then the next check runs.
    detail, ok = traceback.format_exc(), False
  record = {
    "check": name,
    "devices": [sharding.data_size(m) for m in meshes()],
    "ok": ok,
    "seconds": round(time.perf_counter() - start, 2),
    "detail": detail,
  }
  print(json.dumps(record), flush=True)
  return ok


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
