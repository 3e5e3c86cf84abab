"""Tests of the evaluation protocol (lowrank_distill.evaluate)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from idx_helpers import write_idx

from configs import common
from configs import evaluate as evaluate_config
from lowrank_distill import config_utils, evaluate, models, sharding, train

TINY = {"width": 8, "depth": 1}


def _tiny_model(name="convnet", **options):
  return models.create(
    name,
    num_classes=10,
    image_shape=(8, 8, 1),
    **({**TINY, **options} if name.startswith("convnet") else options),
  )


def _onehot(labels):
  return jax.nn.one_hot(labels, 10)


def test_lr_schedule_decays_once_after_half():
  assert evaluate.decay_epoch(1000) == 501
  lrs = [float(evaluate._lr_at(e, lr=1.0, epochs=10)) for e in range(11)]
  assert lrs[: evaluate.decay_epoch(10) + 1] == [1.0] * 7
  np.testing.assert_allclose(lrs[7:], [0.1] * 4)


def test_vmapped_training_equals_a_loop_over_the_same_seeds(tiny_images):
  images, labels = map(jnp.asarray, tiny_images)
  model = _tiny_model()
  keys = train.model_keys(jax.random.key(3), 3)

  def train_one(k):
    variables, _ = evaluate.train_network(
      k,
      images,
      _onehot(labels),
      model=model,
      epochs=3,
      lr=0.01,
      batch_size=8,
      dsa_strategy="color_crop_cutout_scale_rotate",
    )
    return variables

  vmapped = jax.jit(jax.vmap(train_one))(keys)
  looped = [jax.jit(train_one)(keys[i]) for i in range(3)]
  for i, one in enumerate(looped):
    chex.assert_trees_all_close(
      jax.tree.map(lambda x: x[i], vmapped), one, atol=1e-5, rtol=1e-5
    )
  first, second = (jax.tree.leaves(v)[0] for v in looped[:2])
  assert not np.allclose(first, second)  # different seeds, different models


def test_evaluate_set_is_independent_of_models_per_batch(tiny_images):
  images, labels = tiny_images
  kwargs = dict(
    model_options=TINY,
    num_classes=10,
    num_models=3,
    epochs=2,
  )
  together = evaluate.evaluate_set(
    jax.random.key(1),
    images,
    labels,
    images,
    labels,
    models_per_batch=3,
    **kwargs,
  )
  one_by_one = evaluate.evaluate_set(
    jax.random.key(1),
    images,
    labels,
    images,
    labels,
    models_per_batch=1,
    **kwargs,
  )
  chex.assert_shape(together.accuracies, (3,))
  np.testing.assert_allclose(together.accuracies, one_by_one.accuracies)
  assert 0.0 <= together.mean <= 1.0 and together.std >= 0.0


def test_models_per_batch_left_open_is_one_per_cpu_device(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert evaluate.auto_models_per_batch(5) == 1
  mesh = sharding.make_mesh(data=1)
  assert evaluate.auto_models_per_batch(5, mesh) == 1


def test_models_per_batch_left_open_is_every_model_on_an_accelerator(
  monkeypatch,
):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert evaluate.auto_models_per_batch(5) == 5
  assert evaluate.auto_models_per_batch(5, sharding.make_mesh(data=1)) == 5


def test_repeated_evaluations_reuse_one_compiled_program(
  tiny_images, monkeypatch
):
  images, labels = tiny_images
  traces = []
  train_network = evaluate.train_network

  def counting_train_network(*args, **kwargs):
    traces.append(1)
    return train_network(*args, **kwargs)

  monkeypatch.setattr(evaluate, "train_network", counting_train_network)
  evaluate._train_and_test_program.cache_clear()
  kwargs = dict(model_options=TINY, num_classes=10, num_models=2, epochs=1)
  first = evaluate.evaluate_set(
    jax.random.key(1), images, labels, images, labels, **kwargs
  )
  # Another set of the same shapes and another key: no new trace.
  evaluate.evaluate_set(
    jax.random.key(2), images + 1.0, labels, images, labels, **kwargs
  )
  again = evaluate.evaluate_set(
    jax.random.key(1), images, labels, images, labels, **kwargs
  )
  assert len(traces) == 1
  np.testing.assert_array_equal(first.accuracies, again.accuracies)
  # A different setting is another program.
  evaluate.evaluate_set(
    jax.random.key(1), images, labels, images, labels, **{**kwargs, "epochs": 2}
  )
  assert len(traces) == 2


def _log_lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_model_log_resumes_an_evaluation_without_retraining(
  tiny_images, tmp_path
):
  images, labels = tiny_images
  kwargs = dict(model_options=TINY, num_classes=10, num_models=2, epochs=2)

  def run(log, **overrides):
    return evaluate.evaluate_set(
      jax.random.key(1),
      images,
      labels,
      images,
      labels,
      models_per_batch=1,
      log=log,
      **{**kwargs, **overrides},
    )

  unlogged = run(None)
  full_log = evaluate.ModelLog(tmp_path / "full.jsonl")
  np.testing.assert_array_equal(run(full_log).accuracies, unlogged.accuracies)
  records = _log_lines(full_log.path)
  assert [r["model"] for r in records] == [0, 1]

  # Killed after the first model, with a line torn by the kill.
  partial = evaluate.ModelLog(tmp_path / "partial.jsonl")
  partial.path.write_text(
    json.dumps(records[0]) + '\n{"fingerprint": "' + records[0]["fingerprint"]
  )
  np.testing.assert_array_equal(run(partial).accuracies, unlogged.accuracies)
  resumed = [
    json.loads(line) for line in partial.path.read_text().splitlines()[2:]
  ]
  assert [r["model"] for r in resumed] == [1]  # Model 0 was not retrained.

  # Logged results are read, not recomputed; other settings are not reused.
  edited = evaluate.ModelLog(tmp_path / "edited.jsonl")
  edited.path.write_text(
    "".join(
      json.dumps({**r, "correct": 7 + r["model"]}) + "\n" for r in records
    )
  )
  edited_accuracies = np.array([7, 8]) / images.shape[0]
  np.testing.assert_array_equal(run(edited).accuracies, edited_accuracies)
  assert len(_log_lines(edited.path)) == 2
  longer = run(edited, epochs=3)
  assert not np.array_equal(longer.accuracies, edited_accuracies)
  new_records = _log_lines(edited.path)[2:]
  assert [r["model"] for r in new_records] == [0, 1]
  assert new_records[0]["fingerprint"] != records[0]["fingerprint"]


def test_the_log_names_the_test_images_each_model_got_wrong(
  tiny_images, tmp_path
):
  images, labels = tiny_images
  # Each test image twice, once with its label and once with the next
  # class: a model can be right about at most one of the two.
  test_images = np.concatenate([images, images])
  test_labels = np.concatenate([labels, (labels + 1) % 10])

  def run(log):
    return evaluate.evaluate_set(
      jax.random.key(1),
      images,
      labels,
      test_images,
      test_labels,
      model_options=TINY,
      num_classes=10,
      num_models=3,
      epochs=2,
      models_per_batch=2,
      log=log,
    )

  unlogged = run(None)
  right = unlogged.correct_images
  chex.assert_shape(right, (3, 40))
  np.testing.assert_array_equal(right.sum(axis=1) / 40, unlogged.accuracies)
  assert not np.any(right[:, :20] & right[:, 20:])
  assert np.any(right) and not np.all(right)

  log = evaluate.ModelLog(tmp_path / "models.jsonl")
  np.testing.assert_array_equal(run(log).correct_images, right)
  records = _log_lines(log.path)
  digest = evaluate.split_digest(test_images, test_labels)
  for record in records:
    assert record["tested"] == 40 and record["split_digest"] == digest
    np.testing.assert_array_equal(
      record["wrong"], np.flatnonzero(~right[record["model"]])
    )
  # Read back from the log, every model's images come from its line.
  np.testing.assert_array_equal(run(log).correct_images, right)
  assert len(_log_lines(log.path)) == 3

  # A line written before the images were logged still resumes its count,
  # and the result says it cannot name the images.
  old = evaluate.ModelLog(tmp_path / "old.jsonl")
  old.path.write_text(
    "".join(
      json.dumps({k: r[k] for k in ("fingerprint", "model", "correct")}) + "\n"
      for r in records
    )
  )
  resumed = run(old)
  np.testing.assert_array_equal(resumed.accuracies, unlogged.accuracies)
  assert resumed.correct_images is None
  assert len(_log_lines(old.path)) == 3


def test_a_line_whose_wrong_images_miss_its_count_names_none():
  line = {"correct": 3, "tested": 5, "wrong": [1, 4]}
  np.testing.assert_array_equal(
    evaluate.correct_images_of(line), [True, False, True, True, False]
  )
  assert evaluate.correct_images_of({**line, "correct": 4}) is None
  assert evaluate.correct_images_of({"correct": 3}) is None


def test_the_split_digest_names_the_split():
  images = np.zeros((4, 2, 2, 1), np.float32)
  labels = np.arange(4, dtype=np.int32)
  digest = evaluate.split_digest(images, labels)
  assert len(digest) == 16
  assert digest == evaluate.split_digest(images.copy(), labels.copy())
  assert digest != evaluate.split_digest(images, labels[::-1].copy())
  assert digest != evaluate.split_digest(images + 1, labels)


def test_training_learns_a_separable_set():
  rng = np.random.default_rng(0)
  labels = np.arange(20) % 10
  centres = rng.normal(size=(10, 8, 8, 1)).astype(np.float32) * 2
  images = centres[labels] + 0.1 * rng.normal(size=(20, 8, 8, 1))
  result = evaluate.evaluate_set(
    jax.random.key(0),
    images.astype(np.float32),
    labels,
    images.astype(np.float32),
    labels,
    model_options=TINY,
    num_classes=10,
    num_models=2,
    epochs=60,
    lr=0.05,
  )
  assert result.mean == 1.0, result


def test_soft_labels_train_and_learned_lr_can_be_an_array(tiny_images):
  images, labels = tiny_images
  logits = 10.0 * np.asarray(_onehot(labels))
  result = evaluate.evaluate_set(
    jax.random.key(0),
    images,
    logits.astype(np.float32),
    images,
    labels,
    model_options=TINY,
    num_classes=10,
    num_models=1,
    epochs=2,
    lr=jnp.float32(0.02),
  )
  chex.assert_tree_all_finite(result.accuracies)


def test_forgetting_statistics(tiny_images):
  images, labels = map(jnp.asarray, tiny_images)
  variables, stats = jax.jit(
    lambda k: evaluate.train_network(
      k,
      images,
      _onehot(labels),
      model=_tiny_model(),
      epochs=20,
      lr=0.05,
      batch_size=6,
      track_forgetting=True,
    )
  )(jax.random.key(0))
  chex.assert_shape(stats["forgetting"], (20,))
  chex.assert_shape(stats["learned"], (20,))
  assert int(stats["forgetting"].min()) >= 0
  assert bool(stats["learned"].any())
  assert set(stats) == {"forgetting", "learned"}


def test_batchnorm_models_train_with_batch_statistics(tiny_images):
  images, labels = tiny_images
  result = evaluate.evaluate_set(
    jax.random.key(0),
    images,
    labels,
    images,
    labels,
    model_name="convnet_bn",
    model_options=TINY,
    num_classes=10,
    num_models=2,
    epochs=2,
  )
  chex.assert_tree_all_finite(result.accuracies)


def test_cross_architecture_validates_names_first(tiny_images):
  images, labels = tiny_images
  with pytest.raises(ValueError, match="valid"):
    evaluate.evaluate_architectures(
      jax.random.key(0),
      images,
      labels,
      images,
      labels,
      model_names=["convnet", "no_such_net"],
      num_classes=10,
    )


def test_cross_architecture_runs_each_model(tiny_images):
  images, labels = tiny_images
  results = evaluate.evaluate_architectures(
    jax.random.key(0),
    images,
    labels,
    images,
    labels,
    model_names=["convnet", "mlp"],
    model_options={"convnet": TINY},
    num_classes=10,
    num_models=2,
    epochs=1,
  )
  assert list(results) == ["convnet", "mlp"]
  # Architecture i is evaluate_set under fold_in(key, i), with its options.
  for i, (name, options) in enumerate([("convnet", TINY), ("mlp", None)]):
    alone = evaluate.evaluate_set(
      jax.random.fold_in(jax.random.key(0), i),
      images,
      labels,
      images,
      labels,
      model_name=name,
      model_options=options,
      num_classes=10,
      num_models=2,
      epochs=1,
    )
    assert results[name].model == name
    np.testing.assert_array_equal(results[name].accuracies, alone.accuracies)


def _saved_digit_set(path, *, seed: int, recipe: bool = True):
  from lowrank_distill import data, synset

  digits = data.load("digits")
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(10, *digits.image_shape)).astype(np.float32)
  synset.save(
    path,
    synset.SyntheticSet(
      images=images,
      labels=np.arange(10, dtype=np.int32),
      param="pixels",
      storage_floats=int(images.size),
      dataset=digits.metadata(),
      info={
        "dataset_config": {"name": "digits"},
        **(
          {"recipe": {"evaluation": {"dsa_strategy": common.DSA_NO_FLIP}}}
          if recipe
          else {}
        ),
      },
    ),
  )
  return path


def _evaluate_config(synset_path, **eval_overrides):
  from configs import evaluate as evaluate_config

  config = evaluate_config.get_config(f"synset={synset_path},runlocal=true")
  config.model.options.update(TINY)
  config.eval.update(epochs=1, num_models=1, **eval_overrides)
  return config


def test_run_resumes_its_own_workdir_and_refuses_another_configs(tmp_path):
  first = _saved_digit_set(tmp_path / "a", seed=0)
  second = _saved_digit_set(tmp_path / "b", seed=1)
  workdir = tmp_path / "eval"
  summary = evaluate.run(_evaluate_config(first), workdir)
  assert 0.0 <= summary["results"]["convnet"]["mean"] <= 1.0
  assert summary["dsa_strategy"] == common.DSA_NO_FLIP  # the set's recipe
  # The same config with another speed setting resumes and reads back.
  again = evaluate.run(_evaluate_config(first, test_batch_size=7), workdir)
  assert again["results"] == summary["results"]
  files = {p: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  for other in (
    _evaluate_config(second),
    _evaluate_config(first, lr=0.5),
  ):
    with pytest.raises(Exception, match="another config"):
      evaluate.run(other, workdir)
  assert {p: p.read_bytes() for p in files} == files


def test_auto_grad_chunk_chunks_on_a_cpu_unless_the_model_has_batch_stats(
  monkeypatch,
):
  def create(name):
    return models.create(name, num_classes=10, image_shape=(8, 8, 1), **TINY)

  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert evaluate.auto_grad_chunk(create("convnet"), (8, 8, 1)) == (
    evaluate.CPU_GRAD_CHUNK
  )
  assert evaluate.auto_grad_chunk(create("convnet_bn"), (8, 8, 1)) == 0
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert evaluate.auto_grad_chunk(create("convnet"), (8, 8, 1)) == 0


def test_evaluate_set_agrees_with_its_gradient_in_chunks(tiny_images):
  images, labels = tiny_images

  def accuracies(grad_chunk, model_name="convnet"):
    return evaluate.evaluate_set(
      jax.random.key(1),
      images,
      labels,
      images,
      labels,
      model_name=model_name,
      model_options=TINY,
      num_classes=10,
      num_models=2,
      epochs=2,
      batch_size=8,
      grad_chunk=grad_chunk,
    ).accuracies

  # Sums in another order: at most one of the 20 test images changes.
  np.testing.assert_allclose(accuracies(8), accuracies(3), atol=0.05)
  # The setting reaches the training: batch-norm models refuse it.
  with pytest.raises(ValueError, match="grad_chunk=3"):
    accuracies(3, model_name="convnet_bn")


def test_the_evaluate_config_takes_dsa_from_the_set_or_the_named_dataset():
  own = evaluate_config.get_config("synset=/a/synset")
  assert own.eval.dsa_strategy == config_utils.DSA_FROM_SET
  mnist = evaluate_config.get_config(
    "synset=/a/res.pt,released=dc_pt,dataset=mnist"
  )
  assert mnist.eval.dsa_strategy == common.DSA_NO_FLIP
  cifar = evaluate_config.get_config(
    "synset=/a/res.pt,released=dc_pt,dataset=cifar10"
  )
  assert cifar.eval.dsa_strategy == common.dsa_strategy("cifar10")
  assert "flip" in cifar.eval.dsa_strategy
  assert evaluate_config.get_config(
    "synset=/a,dsa=false"
  ).eval.dsa_strategy == ("none")
  # A released set has no recipe to read the strategy from.
  mnist.eval.dsa_strategy = config_utils.DSA_FROM_SET
  with pytest.raises(ValueError, match="eval.dsa_strategy 'set'"):
    evaluate.validate(mnist)


def test_a_set_without_a_recipe_needs_its_dsa_strategy_named(tmp_path):
  path = _saved_digit_set(tmp_path / "set", seed=0, recipe=False)
  with pytest.raises(ValueError, match="no recipe naming its evaluation"):
    evaluate.run(_evaluate_config(path), tmp_path / "eval")
  assert not (tmp_path / "eval").exists()  # refused before any file
  named = evaluate.run(
    _evaluate_config(path, dsa_strategy="crop"), tmp_path / "eval_named"
  )
  assert named["dsa_strategy"] == "crop"


def _idx_folder(folder, *, seed: int):
  """MNIST-format files of a 10-class dataset of 8x8 images, 3 a class."""
  from lowrank_distill import data

  rng = np.random.default_rng(seed)
  folder.mkdir()
  for stem, n in zip(data.IDX_FILES, (30, 30, 20, 20)):
    if "images" in stem:
      array = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    else:
      array = (np.arange(n) % 10).astype(np.uint8)
    write_idx(folder / stem, array)
  return folder


def _set_made_elsewhere(path, here):
  """A set whose saved dataset config names another host's folder."""
  from lowrank_distill import data, synset

  dataset = data.load("tiny", source="idx", path=here)
  synset.save(
    path,
    synset.SyntheticSet(
      images=np.random.default_rng(0)
      .normal(size=(10, 8, 8, 1))
      .astype(np.float32),
      labels=np.arange(10, dtype=np.int32),
      param="pixels",
      storage_floats=640,
      dataset=dataset.metadata(),
      info={
        "dataset_config": {
          "name": "tiny",
          "source": "idx",
          "path": ".gpu_carry/tiny",  # the GPU host's
          "validation_per_class": 1,
        },
        "recipe": {"evaluation": {"dsa_strategy": "none"}},
      },
    ),
  )
  return path


def test_a_set_made_elsewhere_reads_its_files_where_the_config_says(
  tmp_path, monkeypatch
):
  here = _idx_folder(tmp_path / "tiny", seed=0)
  path = _set_made_elsewhere(tmp_path / "set", here)
  with pytest.raises(FileNotFoundError, match=".gpu_carry/tiny"):
    evaluate.run(_evaluate_config(path), tmp_path / "eval_saved_path")
  loaded = []
  load_dataset = config_utils.load_dataset
  monkeypatch.setattr(
    config_utils,
    "load_dataset",
    lambda cfg: loaded.append(cfg.to_dict()) or load_dataset(cfg),
  )
  config = _evaluate_config(path)
  config.dataset.update(source="idx", path=str(here))
  summary = evaluate.run(config, tmp_path / "eval")
  assert 0.0 <= summary["results"]["convnet"]["mean"] <= 1.0
  # Where the files are comes from the config; the split stays the set's.
  assert loaded == [
    config_utils.dataset_config(
      "tiny", source="idx", path=str(here), validation_per_class=1
    ).to_dict()
  ]


@pytest.mark.parametrize(
  "field, value", [("validation_per_class", 2), ("zca", "full")]
)
def test_a_saved_set_refuses_another_split_unless_the_dataset_is_named(
  tmp_path, field, value
):
  here = _idx_folder(tmp_path / "tiny", seed=0)
  path = _set_made_elsewhere(tmp_path / "set", here)
  config = _evaluate_config(path)
  config.dataset.update(source="idx", path=str(here), **{field: value})
  with pytest.raises(ValueError, match=f"dataset.{field}={value!r}, but"):
    evaluate.run(config, tmp_path / "eval")
  assert not (tmp_path / "eval").exists()  # refused before any file
