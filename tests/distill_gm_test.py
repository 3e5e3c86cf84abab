"""Gradient matching as the loop sees it (lowrank_distill.distill.gm).

The pure losses are tested in gradient_matching_test.py.
"""

import chex
import jax
import numpy as np
import pytest

from configs import gm as gm_config
from lowrank_distill import distill


def _config(arg=""):
  config = gm_config.get_config("runlocal=true" + ("," + arg if arg else ""))
  config.model.options.update(width=8, depth=1)
  config.eval.update(epochs=1, num_models=1)
  config.distill.update(iterations=1, checkpoint_every=1)
  return config


def test_loop_counts_come_from_the_config_table():
  assert (
    gm_config.get_config("ipc=10").distill.outer_loop,
    gm_config.get_config("ipc=10").distill.inner_loop,
  ) == gm_config.LOOPS[10]
  assert gm_config.get_config("ipc=50").distill.inner_loop == 10


def test_an_ipc_without_loop_setting_names_the_fields_to_set():
  config = gm_config.get_config("ipc=7")
  with pytest.raises(ValueError, match="distill.outer_loop"):
    distill.validate(config)


def test_every_outer_loop_makes_one_guarded_update():
  config = _config("param=pixels")
  config.distill.update(outer_loop=3, inner_loop=1, max_loss=1e-30)
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  trainable = state.trainable
  objective = distill.OBJECTIVES["gm"]
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, optimizer), n=1)
  )
  inputs = objective.inputs(plan)
  state, metrics = step(state, jax.random.key(1), *inputs(0))
  # A max_loss below any loss refuses every update: one per outer loop.
  assert int(state.skipped) == 3 and int(state.step) == 1
  chex.assert_trees_all_equal(state.trainable, trainable)
  state, _ = step(state, jax.random.key(2), *inputs(0))
  assert int(state.skipped) == 6


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_one_iteration_runs_end_to_end_on_digits(method, tmp_path):
  config = _config(f"method={method}")
  config.distill.update(outer_loop=2, inner_loop=1)
  summary = distill.run(config, tmp_path / method)
  assert summary["iterations"] == 1 and summary["skipped_updates"] == 0
  accuracy = summary["results"]["convnet"]["mean"]
  assert 0.0 <= accuracy <= 1.0
  assert (tmp_path / method / "synset").exists()


def test_soft_labels_are_learned_by_gradient_matching():
  # Soft logits cost storage: same-images keeps the image count.
  config = _config("param=pixels,budget=same-images")
  config.labels.update(kind="soft", init="onehot", lr=1.0)
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  trainable = state.trainable
  objective = distill.OBJECTIVES["gm"]
  step = jax.jit(objective.build_step(plan, optimizer))
  new, _ = step(state, jax.random.key(1), *objective.inputs(plan)(0))
  assert not np.allclose(new.trainable["labels"], trainable["labels"])
  chex.assert_tree_all_finite(new.trainable)
