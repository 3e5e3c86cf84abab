"""Gradient matching as the loop sees it (lowrank_distill.distill.gm).

The pure losses are tested in gradient_matching_test.py.
"""

import pathlib

import chex
import jax
import label_experts_helpers
import numpy as np
import pytest

from configs import gm as gm_config
from configs import idc as idc_config
from lowrank_distill import checkpoint, distill, experts

REPO = pathlib.Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------
# IDC's matching (configs/idc.py): the network trains on real images.


def _idc_config(arg="variant=idc"):
  config = idc_config.get_config("runlocal=true," + arg)
  config.model.options.update(width=8, depth=1)
  config.eval.update(epochs=1, num_models=1)
  config.distill.update(iterations=1, checkpoint_every=1)
  return config


def _one_step(config, key=1):
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  objective = distill.OBJECTIVES["gm"]
  chex.clear_trace_counter()
  step = jax.jit(
    chex.assert_max_traces(objective.build_step(plan, optimizer), n=1)
  )
  inputs = objective.inputs(plan)
  new, metrics = step(state, jax.random.key(key), *inputs(0))
  return plan, state, new, metrics


def test_idc_matching_updates_the_stored_images_of_a_formed_set():
  plan, state, new, metrics = _one_step(_idc_config())
  assert plan.budget.formation == 2 and plan.images_per_class == 4
  chex.assert_shape(new.trainable["images"]["images"], (10, 8, 8, 1))
  assert int(new.skipped) == 0 and np.isfinite(float(metrics["loss"]))
  assert not np.allclose(
    new.trainable["images"]["images"], state.trainable["images"]["images"]
  )


def test_the_network_trains_on_what_net_data_names():
  # With the network all but frozen (lr_net 1e-30 leaves every float32
  # weight as it is) real and synthetic training agree; with it learning,
  # the second matching sees another network.
  losses = {}
  for lr_net in (1e-30, 0.05):
    for net_data in ("real", "synthetic"):
      config = _idc_config()
      config.distill.update(
        lr_net=lr_net, net_data=net_data, inner_loop=1, outer_loop=2
      )
      if net_data == "synthetic":
        config.distill.update(
          net_momentum=0.0, net_weight_decay=0.0, net_cutmix=0.0
        )
      _, _, new, _ = _one_step(config)
      losses[lr_net, net_data] = new.trainable["images"]["images"]
  # Two compiled programs for the same math: XLA:CPU may round them an ulp
  # apart on some processors (1 of 640 pixels, 1.9e-9, on an Intel Xeon).
  chex.assert_trees_all_close(
    losses[1e-30, "real"], losses[1e-30, "synthetic"], rtol=1e-6, atol=0.0
  )
  assert not np.allclose(losses[0.05, "real"], losses[0.05, "synthetic"])


def test_net_momentum_is_refused_when_the_network_trains_on_synthetic():
  config = _config()
  config.distill.net_momentum = 0.9
  with pytest.raises(ValueError, match="distill.net_momentum"):
    distill.validate(config)
  config = _config()
  config.distill.net_cutmix = 0.5
  with pytest.raises(ValueError, match="distill.net_cutmix"):
    distill.validate(config)
  config = _idc_config()
  config.distill.net_cutmix = 1.5
  with pytest.raises(ValueError, match="distill.net_cutmix must be"):
    distill.validate(config)
  config = _idc_config()
  config.distill.net_data = "both"
  with pytest.raises(ValueError, match="distill.net_data 'both'"):
    distill.validate(config)


def test_class_steps_update_each_class_on_its_own_distance():
  # A class's distance depends on its own pixels only, so without momentum
  # one update per class equals one update on the sum; with momentum the
  # earlier classes move again at every later class's update.
  sets = {}
  for class_steps in (False, True):
    for momentum in (0.0, 0.5):
      config = _idc_config("variant=idc_i")
      config.distill.update(
        class_steps=class_steps, momentum=momentum, outer_loop=2
      )
      _, state, new, metrics = _one_step(config)
      assert int(new.skipped) == 0 and np.isfinite(float(metrics["loss"]))
      sets[class_steps, momentum] = new.trainable["images"]["images"]
  start = state.trainable["images"]["images"]
  assert not np.allclose(sets[True, 0.0], start)
  chex.assert_trees_all_close(sets[True, 0.0], sets[False, 0.0], atol=1e-6)
  assert not np.allclose(sets[True, 0.5], sets[False, 0.5], atol=1e-6)


def test_class_steps_guard_and_count_every_class_update():
  config = _idc_config()
  config.distill.update(class_steps=True, outer_loop=2, max_loss=1e-30)
  plan, state, new, _ = _one_step(config)
  assert int(new.skipped) == 2 * plan.num_classes
  chex.assert_trees_all_equal(new.trainable, state.trainable)


def test_idc_configs_step_by_class_and_cutmix_the_real_pass():
  config = idc_config.get_config("variant=loidc,dataset=mnist")
  assert config.distill.class_steps
  assert config.distill.net_cutmix == idc_config.NET_CUTMIX == 0.5
  dc = gm_config.get_config()
  assert not dc.distill.class_steps and dc.distill.net_cutmix == 0.0


def test_a_real_pass_larger_than_a_class_is_refused_before_compute():
  config = _idc_config()
  config.distill.net_real_per_class = 10_000
  with pytest.raises(ValueError, match="distill.net_real_per_class"):
    distill.make_plan(config)


# One variant per config through the launcher (each costs a process and its
# compiles): loidc has factors, the formation and the real-data network;
# the other variants differ in settings the in-process tests cover.
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["loidc"])
def test_one_iteration_of_each_idc_variant_runs_through_the_launcher(
  variant, tmp_path, launch_distill
):
  workdir = tmp_path / variant
  results, output = launch_distill(
    f"configs/idc.py:runlocal=true,variant={variant}", workdir
  )
  assert results["method"] == "gm" and results["iterations"] == 1
  assert results["param"] == idc_config.VARIANTS[variant]["param"]
  assert (workdir / "images" / "stored_000001.png").exists()
  assert "formation" in output


def test_clamp_images_clips_pixels_to_the_real_range_before_matching():
  config = _idc_config()
  config.distill.update(max_loss=1e-30)  # refuse every update: clip only
  plan = distill.make_plan(config)
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  images = state.trainable["images"]["images"]
  wild = images.at[0].set(100.0).at[1].set(-100.0)
  state = state.replace(
    trainable={**state.trainable, "images": {"images": wild}}
  )
  objective = distill.OBJECTIVES["gm"]
  step = jax.jit(objective.build_step(plan, optimizer))
  new, _ = step(state, jax.random.key(1), *objective.inputs(plan)(0))
  real = plan.dataset.train_images
  got = np.asarray(new.trainable["images"]["images"])
  np.testing.assert_allclose(got[0], real.max(), rtol=1e-6)
  np.testing.assert_allclose(got[1], real.min(), rtol=1e-6)
  np.testing.assert_array_equal(got[2:], np.asarray(images[2:]))


def test_clamp_images_is_refused_for_a_set_without_pixels():
  config = _idc_config("variant=loidc")
  config.distill.clamp_images = True
  with pytest.raises(ValueError, match="distill.clamp_images"):
    distill.validate(config)
  assert not _idc_config("variant=loidc").distill.clamp_images
  assert _idc_config("variant=idc").distill.clamp_images


@pytest.fixture(scope="module")
def label_buffer(tmp_path_factory):
  """One expert trained 2 epochs on digits with `_config`'s network."""
  return label_experts_helpers.train_label_buffer(
    tmp_path_factory.mktemp("label_experts"), width=8, depth=1
  )


def _soft_expert_config(path):
  config = _config("param=pixels,budget=same-images")
  config.labels.update(kind="soft", init="expert", lr=1.0, experts=str(path))
  return config


def test_soft_labels_start_from_the_named_buffers_trained_expert(
  label_buffer,
):
  plan = distill.make_plan(_soft_expert_config(label_buffer))
  state, optimizer = distill.initial_state(jax.random.key(0), plan)
  images = plan.reconstructor.materialize(state.trainable["images"])
  expected = label_experts_helpers.trained_expert_predictions(
    label_buffer, plan.model, images
  )
  chex.assert_trees_all_close(state.trainable["labels"], expected, atol=1e-5)
  untrained = plan.model.apply(
    {"params": experts.open_buffer(label_buffer).snapshot(0, 0)},
    images,
    train=True,
  )
  assert not np.allclose(state.trainable["labels"], untrained, atol=1e-3)
  # Gradient matching then learns them.
  objective = distill.OBJECTIVES["gm"]
  new, _ = jax.jit(objective.build_step(plan, optimizer))(
    state, jax.random.key(1), *objective.inputs(plan)(0)
  )
  assert not np.allclose(new.trainable["labels"], state.trainable["labels"])


def test_a_label_buffer_of_another_network_is_refused(label_buffer):
  config = _soft_expert_config(label_buffer)
  config.model.options.width = 16
  with pytest.raises(checkpoint.CheckpointError, match="labels.experts"):
    distill.make_plan(config)


def test_a_missing_label_buffer_names_the_field(tmp_path):
  config = _soft_expert_config(tmp_path / "nowhere")
  with pytest.raises(Exception, match="labels.experts"):
    distill.make_plan(config)


def test_the_digits_setting_keeps_the_set_in_the_real_range(tmp_path):
  # configs/gm.py's digits row, its network and step sizes: with a depth-3
  # ConvNet one iteration took the factors from the real images' range to
  # +-2e3 (the run ends in DegenerateResultError).
  config = gm_config.get_config()
  config.eval.update(epochs=1, num_models=1)
  config.distill.update(iterations=1, checkpoint_every=1)
  summary = distill.run(config, tmp_path / "digits")
  assert summary["iterations"] == 1
