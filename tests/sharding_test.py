"""Tests of `lowrank_distill.sharding` and of the sharded paths.

The helpers and the one-device no-op are tested here. The sharded paths
(DM, gradient-matching and trajectory-matching steps, experts, evaluation,
checkpoints) are the checks of `tests/sharded_checks.py`, run here on the 4
fake CPU devices of `tests/conftest.py`: each compares a mesh of 4 devices
with the single-device result.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sharded_checks

from configs import continual, coreset, dm, evaluate, experts, gm, tm
from lowrank_distill import distill, sharding

# ----------------------------------------------------------------------------
# Meshes and helpers (this process).


def test_a_mesh_of_one_device_leaves_everything_unchanged():
  mesh = sharding.make_mesh(1)
  assert sharding.data_size(mesh) == 1 and not sharding.is_sharded(mesh)
  tree = {"x": jnp.arange(4.0), "k": jax.random.key(0)}
  for m in (mesh, None):
    assert sharding.put(tree, m) is tree
    assert sharding.put(tree, m, axis=0) is tree
    assert sharding.constrain(tree, m, axis=0) is tree
    assert sharding.padded_size(5, m) == 5
    sharding.check_divisible(5, m, field="distill.batch_real", what="images")


@pytest.mark.parametrize("data", [0, -2, 10**6])
def test_a_bad_device_count_names_the_field(data):
  with pytest.raises(ValueError, match=r"mesh\.data="):
    sharding.make_mesh(data)


def test_mesh_from_config_defaults_to_every_device():
  assert sharding.data_size(
    sharding.mesh_from_config(ml_collections.ConfigDict())
  ) == len(jax.devices())
  config = dm.get_config("runlocal=true")
  config.mesh.data = 1
  assert sharding.data_size(sharding.mesh_from_config(config)) == 1


@pytest.mark.parametrize(
  "module", [dm, gm, tm, experts, evaluate, coreset, continual]
)
def test_every_config_has_a_mesh_over_all_devices(module):
  mesh = sharding.mesh_from_config(module.get_config("runlocal=true"))
  assert len(jax.devices()) == 4  # tests/conftest.py's fake devices
  assert sharding.data_size(mesh) == 4
  assert tuple(mesh.devices.ravel()) == tuple(jax.devices())


def test_an_uneven_axis_is_refused_with_the_field_and_the_nearest_values():
  mesh = jax.sharding.AbstractMesh((4,), (sharding.DATA,))
  with pytest.raises(ValueError) as error:
    sharding.check_divisible(
      6, mesh, field="distill.batch_real", what="real images"
    )
  message = str(error.value)
  for part in ("distill.batch_real=6", "multiple of 4", "4 or 8", "mesh.data"):
    assert part in message
  assert sharding.padded_size(6, mesh) == 8


def test_the_one_device_step_is_the_unsharded_program():
  """`mesh.data=1` traces the very program of the code without a mesh."""
  config = dm.get_config("runlocal=true")
  config.model.options.update(width=8, depth=1)
  config.distill.dsa_strategy = "crop"
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  inputs = distill.objective.real_data(plan)(0)
  jaxprs = [
    str(
      jax.make_jaxpr(
        distill.OBJECTIVES["dm"].build_step(plan, optimizer, mesh=m)
      )(state, jax.random.key(1), *inputs)
    )
    for m in (None, sharding.make_mesh(1))
  ]
  assert jaxprs[0] == jaxprs[1]
  assert "sharding_constraint" not in jaxprs[0]


def test_to_host_and_abstract_on_a_mesh():
  mesh = sharding.make_mesh(1)
  tree = {"x": jnp.ones((2, 3))}
  np.testing.assert_array_equal(sharding.to_host(tree)["x"], np.ones((2, 3)))
  shapes = sharding.abstract(tree, mesh)
  assert shapes["x"].shape == (2, 3) and shapes["x"].dtype == jnp.float32


# ----------------------------------------------------------------------------
# The sharded paths, on conftest's 4 fake devices (in this process).


@pytest.mark.slow
@pytest.mark.parametrize("name", sharded_checks.CHECKS)
def test_the_sharded_path_matches_one_device(name, tmp_path):
  assert jax.device_count() == sharded_checks.MESH_DEVICES
  sharded_checks.CHECKS[name](tmp_path)
