"""Distribution matching as the loop sees it (lowrank_distill.distill.dm):
the embedder pool (IDM's model sampling) and its class-aware term.

The pure loss is tested in distribution_matching_test.py; DM's plain runs
(export, resume, labels) in distill_test.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dm as dm_config
from lowrank_distill import checkpoint, distill, train
from lowrank_distill.objectives import distribution_matching


def _config(**distill_overrides):
  config = dm_config.get_config("runlocal=true")
  config.model.options.update(width=8, depth=1)
  config.eval.update(epochs=1, num_models=1)
  config.distill.update(
    embedder_pool=3, embedder_refresh=100, embedder_real_per_class=8
  )
  config.distill.update(distill_overrides)
  return config


def _start(config):
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  objective = distill.OBJECTIVES["dm"]
  return (
    plan,
    state,
    objective.build_step(plan, optimizer),
    objective.inputs(plan),
  )


def _slot(pool, i):
  return jax.tree.map(lambda x: x[i], pool)


def _changed_slots(before, after, size):
  return [
    i
    for i in range(size)
    if not all(
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves(_slot(before, i)), jax.tree.leaves(_slot(after, i))
      )
    )
  ]


def test_without_a_pool_the_state_holds_no_networks():
  config = _config(embedder_pool=0)
  _, state, _, _ = _start(config)
  assert not hasattr(state, "aux")


def test_the_pool_holds_untrained_networks_of_the_run_model():
  plan, state, _, _ = _start(_config())
  one = train.init_variables(
    jax.random.key(0), plan.model, plan.dataset.image_shape
  )
  chex.assert_trees_all_equal_shapes(
    state.aux["variables"], jax.tree.map(lambda x: jnp.stack([x] * 3), one)
  )
  # Momentum starts at zero in every slot.
  for trace in jax.tree.leaves(state.aux["opt_state"]):
    assert not np.any(np.asarray(trace))


def test_the_step_matches_with_the_drawn_network_and_then_trains_it(
  monkeypatch,
):
  plan, state, step, inputs = _start(_config(embedder_pool=1))
  seen = []
  original = distribution_matching.loss

  def spy(*args, variables=None, **kwargs):
    seen.append(variables)
    return original(*args, variables=variables, **kwargs)

  monkeypatch.setattr(distribution_matching, "loss", spy)
  before = state.aux
  new, metrics = step(state, jax.random.key(1), *inputs(0))
  (used,) = seen
  # The one slot's network, not a fresh random one, embedded the batches.
  chex.assert_trees_all_equal(used, _slot(before["variables"], 0))
  # Then it took an SGD step on real images: params and momentum moved.
  assert _changed_slots(before, new.aux, 1) == [0]
  assert any(
    np.any(np.asarray(t)) for t in jax.tree.leaves(new.aux["opt_state"])
  )
  assert float(metrics["loss"]) == pytest.approx(
    float(metrics["matching_loss"])
  )


def test_each_iteration_trains_only_the_drawn_network():
  _, state, step, inputs = _start(_config())
  step = jax.jit(chex.assert_max_traces(step, n=1))
  for i in range(3):
    before = state.aux
    state, _ = step(state, jax.random.key(i), *inputs(i))
    assert len(_changed_slots(before, state.aux, 3)) == 1


def test_the_oldest_network_is_replaced_after_every_refresh_interval():
  _, state, step, inputs = _start(_config(embedder_refresh=2))
  step = jax.jit(step)
  start = state.aux
  replaced = []
  for i in range(6):
    state, _ = step(state, jax.random.key(i), *inputs(i))
    if (i + 1) % 2 == 0:
      replaced.append(state.aux)
  # After iterations 2, 4, 6 the slots 0, 1, 2 start again: a network
  # unlike the initial pool's, with no momentum yet.
  for slot, pool in enumerate(replaced):
    fresh = _slot(pool, slot)
    for trace in jax.tree.leaves(fresh["opt_state"]):
      assert not np.any(np.asarray(trace))
    assert _changed_slots(
      jax.tree.map(lambda x: x[slot : slot + 1], start),
      jax.tree.map(lambda x: x[slot : slot + 1], pool),
      1,
    ) == [0]


def test_a_pool_network_learns_the_real_classes():
  config = _config(embedder_pool=1, embedder_lr=0.05)
  plan, state, step, inputs = _start(config)
  step = jax.jit(step)

  def accuracy(variables):
    correct = train.count_correct(
      plan.model,
      variables,
      plan.dataset.test_images,
      plan.dataset.test_labels,
    )
    return int(correct) / plan.dataset.test_images.shape[0]

  untrained = accuracy(_slot(state.aux["variables"], 0))
  for i in range(30):
    state, _ = step(state, jax.random.key(i), *inputs(i))
  trained = accuracy(_slot(state.aux["variables"], 0))
  assert trained > max(untrained, 0.1) + 0.2


def test_the_class_aware_term_adds_its_weighted_cross_entropy():
  _, state, step, inputs = _start(_config(ce_weight=0.5))
  _, metrics = jax.jit(step)(state, jax.random.key(1), *inputs(0))
  assert float(metrics["ce"]) > 0.0
  np.testing.assert_allclose(
    float(metrics["loss"]),
    float(metrics["matching_loss"]) + 0.5 * float(metrics["ce"]),
    rtol=1e-6,
  )


def test_a_killed_and_resumed_pool_run_matches_an_uninterrupted_one(tmp_path):
  config = _config(iterations=4, checkpoint_every=2, embedder_refresh=3)
  distill.run(config, tmp_path / "straight")
  distill.run(
    _config(iterations=2, checkpoint_every=2, embedder_refresh=3),
    tmp_path / "resumed",
  )
  distill.run(config, tmp_path / "resumed")
  plan = distill.make_plan(config)
  abstract = jax.eval_shape(
    lambda: distill.initial_state(jax.random.key(0), plan)[0]
  )

  def final(workdir):
    with checkpoint.Checkpointer(
      workdir / "checkpoints", config=distill.loop._identity_config(config)
    ) as ckpt:
      state, _ = ckpt.restore(abstract)
    return state

  straight, resumed = final(tmp_path / "straight"), final(tmp_path / "resumed")
  assert int(resumed.step) == 4
  chex.assert_trees_all_equal(straight, resumed)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      dict(embedder_pool=0, ce_weight=0.5),
      r"distill.ce_weight.*distill.embedder_pool > 0",
    ),
    (dict(embedder_pool=-1), r"distill.embedder_pool must"),
    (dict(embedder_refresh=0), r"distill.embedder_refresh must"),
    (dict(embedder_lr=0.0), r"distill.embedder_lr must"),
    (dict(embedder_momentum=1.0), r"distill.embedder_momentum must"),
    (dict(ce_weight=-1.0), r"distill.ce_weight must"),
    (dict(mmd_width=-1.0), r"distill.mmd_width must"),
  ],
)
def test_bad_pool_settings_are_refused_before_anything_loads(
  overrides, message
):
  with pytest.raises(ValueError, match=message):
    distill.validate(_config(**overrides))


def test_more_real_images_than_a_class_has_are_refused_at_the_plan(tmp_path):
  config = _config(embedder_real_per_class=10_000)
  with pytest.raises(ValueError, match="distill.embedder_real_per_class"):
    distill.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_the_step_matches_by_the_kernel_its_config_names():
  losses = {}
  for width in (0.0, 1e3, 0.5):
    _, state, step, inputs = _start(_config(embedder_pool=0, mmd_width=width))
    _, metrics = jax.jit(step)(state, jax.random.key(1), *inputs(0))
    losses[width] = float(metrics["loss"])
  # A wide kernel's scaled MMD is DM's mean distance; a narrow one is not.
  assert losses[1e3] == pytest.approx(losses[0.0], rel=1e-2)
  assert losses[0.5] != pytest.approx(losses[0.0], rel=0.05)
