"""Tests of expert trajectories (lowrank_distill.experts)."""

import functools
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import pytest

from configs import experts as experts_config
from lowrank_distill import checkpoint, data, experts, models, train
from lowrank_distill.parameterize import labels as labels_lib

NUM_EXPERTS = 3
EPOCHS = 3
DSA = "color_crop_cutout_scale_rotate"


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def train_set(digits):
  """A third of the digits training split: [480, 8, 8, 1], [480]."""
  return digits.train_images[:480], digits.train_labels[:480]


@pytest.fixture(scope="module")
def model():
  return models.create(
    "convnet", num_classes=10, image_shape=(8, 8, 1), width=8, depth=1
  )


def _train(model, train_set, **kwargs):
  kwargs = {
    "model": model,
    "num_experts": NUM_EXPERTS,
    "epochs": EPOCHS,
    "num_classes": 10,
    "batch_size": 32,
    "dsa_strategy": DSA,
    **kwargs,
  }
  fn = jax.jit(functools.partial(experts.train_experts, **kwargs))
  return fn(jax.random.key(0), *train_set)


@pytest.fixture(scope="module")
def trajectories(model, train_set):
  return jax.device_get(_train(model, train_set))


def _expert(tree, i):
  return jax.tree.map(lambda t: t[i], tree)


def _snapshot(tree, i, epoch):
  return jax.tree.map(lambda t: t[i, epoch], tree)


def _init(model, key):
  return jax.jit(train.init_variables, static_argnums=(1, 2))(
    key, model, (8, 8, 1)
  )


def _abstract_init(model):
  return jax.eval_shape(
    functools.partial(train.init_variables, model=model, image_shape=(8, 8, 1)),
    jax.random.key(0),
  )


def test_trajectories_have_an_expert_and_an_epoch_axis(model, trajectories):
  params = _abstract_init(model)
  jax.tree.map(
    lambda t, p: chex.assert_shape(t, (NUM_EXPERTS, EPOCHS + 1, *p.shape)),
    trajectories,
    params["params"],
  )
  chex.assert_tree_all_finite(trajectories)


def test_snapshot_zero_is_the_init_of_the_experts_key(model, trajectories):
  for i in range(NUM_EXPERTS):
    key = experts.init_key(experts.expert_key(jax.random.key(0), i))
    init = _init(model, key)["params"]
    chex.assert_trees_all_equal(_snapshot(trajectories, i, 0), init)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(
      _snapshot(trajectories, 0, 0), _snapshot(trajectories, 1, 0)
    )


def test_epochs_move_the_params_and_lower_the_loss(model, digits, trajectories):
  targets = labels_lib.targets(digits.train_labels, 10)

  def loss(params):
    logits = model.apply({"params": params}, digits.train_images)
    return float(jnp.mean(labels_lib.soft_cross_entropy(logits, targets)))

  for i in range(NUM_EXPERTS):
    for epoch in range(EPOCHS):
      with pytest.raises(AssertionError):
        chex.assert_trees_all_close(
          _snapshot(trajectories, i, epoch),
          _snapshot(trajectories, i, epoch + 1),
        )
    losses = [loss(_snapshot(trajectories, i, e)) for e in range(EPOCHS + 1)]
    assert losses[-1] < losses[0] - 0.05, losses


def test_an_expert_does_not_depend_on_the_experts_beside_it(
  model, train_set, trajectories
):
  alone = jax.device_get(_train(model, train_set, num_experts=1, first=1))
  # Same computation; XLA's batched matmuls round differently (~1e-8).
  chex.assert_trees_all_close(
    _expert(alone, 0), _expert(trajectories, 1), atol=1e-6, rtol=1e-6
  )


def test_an_expert_trained_in_parts_is_the_one_trained_at_once(
  model, train_set
):
  images, labels = train_set
  targets = labels_lib.targets(labels, 10)
  key = experts.expert_key(jax.random.key(0), 1)
  hparams = dict(model=model, batch_size=32, dsa_strategy=DSA)
  whole = jax.jit(
    functools.partial(experts.train_expert, epochs=EPOCHS, **hparams)
  )(key, images, targets)
  carry = experts.start_expert(key, model=model, image_shape=(8, 8, 1))
  chex.assert_trees_all_equal(carry[0], _snapshot_of(whole.trajectory, 0))
  one_epoch = jax.jit(
    functools.partial(experts.train_expert_epochs, epochs=1, **hparams)
  )
  for epoch in range(EPOCHS):
    carry, record = one_epoch(
      carry, key, images, targets, first_epoch=jnp.int32(epoch)
    )
    chex.assert_shape(record.loss, (1,))
    chex.assert_trees_all_close(
      carry[0], _snapshot_of(whole.trajectory, epoch + 1), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(
      record.loss[0], whole.train_loss[epoch], rtol=1e-5
    )


def _snapshot_of(trajectory, epoch):
  return jax.tree.map(lambda t: t[epoch], trajectory)


def test_batch_norm_experts_snapshot_params_only(digits):
  model = models.create(
    "convnet_bn", num_classes=10, image_shape=(8, 8, 1), width=8, depth=1
  )
  images = digits.train_images[:200]
  targets = labels_lib.targets(digits.train_labels[:200], 10)
  expert = jax.jit(
    functools.partial(experts.train_expert, model=model, epochs=1)
  )(jax.random.key(1), images, targets)
  assert set(expert.state) == {"batch_stats"}
  assert "batch_stats" not in expert.trajectory
  init = _abstract_init(model)
  jax.tree.map(
    lambda t, p: chex.assert_shape(t, (2, *p.shape)),
    expert.trajectory,
    init["params"],
  )
  chex.assert_shape(expert.train_loss, (1,))


# ----------------------------------------------------------------------------
# Storage.


def _identity(digits, width=8):
  config = experts_config.get_config("runlocal=true")
  config.model.options.update(width=width, depth=1)
  config.experts.epochs = EPOCHS
  return experts.buffer_identity(digits, config)


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory, digits, trajectories):
  path = tmp_path_factory.mktemp("buffer")
  identity = _identity(digits)
  (path / experts.BUFFER_FILE).write_text(
    json.dumps(
      {
        "format": experts.BUFFER_FORMAT,
        "version": experts.BUFFER_VERSION,
        "num_snapshots": EPOCHS + 1,
        "identity": identity,
      }
    )
  )
  for i in range(NUM_EXPERTS):
    experts.save_expert(
      path, i, _expert(trajectories, i), metadata={"identity": identity}
    )
  return path


def test_read_gives_back_the_saved_epochs_exactly(buffer_dir, trajectories):
  buffer = experts.open_buffer(buffer_dir)
  assert buffer.num_experts == NUM_EXPERTS
  assert buffer.num_snapshots == EPOCHS + 1
  assert buffer.indices == tuple(range(NUM_EXPERTS))
  for i, (start, stop) in [(0, (0, EPOCHS + 1)), (2, (1, 3)), (1, (3, 4))]:
    got = buffer.read(i, start, stop)
    want = jax.tree.map(lambda t: t[i, start:stop], trajectories)
    chex.assert_trees_all_equal(got, want)
    for leaf in jax.tree.leaves(got):
      assert leaf.shape[0] == stop - start
  chex.assert_trees_all_equal(
    buffer.snapshot(2, 1), _snapshot(trajectories, 2, 1)
  )
  abstract = buffer.abstract_params()
  chex.assert_trees_all_equal_shapes_and_dtypes(
    abstract, _snapshot(trajectories, 0, 0)
  )
  metadata = checkpoint.load_metadata(buffer_dir / "expert_000001")
  assert metadata["expert"] == 1
  assert metadata["num_snapshots"] == EPOCHS + 1
  with pytest.raises(IndexError, match="snapshots"):
    buffer.read(0, 2, EPOCHS + 2)
  with pytest.raises(IndexError, match="expert"):
    buffer.read(NUM_EXPERTS, 0, 1)
  with pytest.raises(FileExistsError):
    experts.save_expert(buffer_dir, 0, _expert(trajectories, 0), metadata={})


def test_check_buffer_accepts_its_own_identity(buffer_dir, digits):
  buffer = experts.check_buffer(
    buffer_dir, _identity(digits), min_snapshots=EPOCHS + 1
  )
  assert buffer.num_experts == NUM_EXPERTS
  other_training = _identity(digits)
  other_training["training"]["lr"] = 0.5
  experts.check_buffer(buffer, other_training)


def test_check_buffer_refuses_another_dataset_or_model(buffer_dir, digits):
  expected = _identity(digits, width=16)
  expected["dataset"]["zca"] = {"flavour": "mtt", "eps": 0.1}
  with pytest.raises(checkpoint.CheckpointError) as info:
    experts.check_buffer(buffer_dir, expected, field="distill.experts")
  message = str(info.value)
  assert "distill.experts" in message and str(buffer_dir) in message
  assert "model.options.width 8 != 16" in message
  assert "dataset.zca None != {'flavour': 'mtt', 'eps': 0.1}" in message
  assert "dataset.name" not in message
  assert isinstance(info.value, ValueError)


def test_check_buffer_refuses_missing_and_short_buffers(
  buffer_dir, digits, tmp_path
):
  identity = _identity(digits)
  with pytest.raises(checkpoint.CheckpointError, match="experts.path.*no such"):
    experts.check_buffer(tmp_path / "nowhere", identity)
  with pytest.raises(checkpoint.CheckpointError, match="no buffer.json"):
    experts.check_buffer(tmp_path, identity)
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"holds 4 snapshots.*needs 6 \(distill.max_start_epoch",
  ):
    experts.check_buffer(
      buffer_dir,
      identity,
      min_snapshots=6,
      needed_by="distill.max_start_epoch + distill.expert_epochs",
    )
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(buffer_dir / experts.BUFFER_FILE, empty)
  with pytest.raises(checkpoint.CheckpointError, match="holds 0 experts"):
    experts.check_buffer(empty, identity)
  (empty / experts.BUFFER_FILE).write_text('{"format": "other"}')
  with pytest.raises(checkpoint.CheckpointError, match="not written by"):
    experts.open_buffer(empty)


# ----------------------------------------------------------------------------
# The run.


def _run_config(**experts_overrides):
  config = experts_config.get_config("runlocal=true")
  config.model.options.update(width=8, depth=1)
  config.experts.update(experts_overrides)
  return config


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_run_trains_saves_and_resumes_only_the_missing_expert(tmp_path, digits):
  config = _run_config(num_experts=2, epochs=2, experts_in_parallel=2)
  summary = experts.run(config, tmp_path)
  assert summary["trained"] == [0, 1]
  buffer = experts.check_buffer(
    tmp_path, experts.buffer_identity(digits, config), min_snapshots=3
  )
  assert (buffer.num_experts, buffer.num_snapshots) == (2, 3)
  records = _records(tmp_path)
  assert [r["expert"] for r in records] == [0, 1]
  assert all(0 <= r["test_accuracy"] <= 1 for r in records)
  assert summary["evaluation_split"] == "test"
  assert 0 <= summary["mean_test_accuracy"] <= 1
  assert (tmp_path / "config.json").exists()
  original, _ = checkpoint.load_tree(tmp_path / "expert_000001")
  kept = (tmp_path / "expert_000000").stat().st_mtime_ns

  shutil.rmtree(tmp_path / "expert_000001")
  unfinished = tmp_path / "expert_000001.orbax-checkpoint-tmp-17"
  unfinished.mkdir()
  summary = experts.run(config, tmp_path)
  assert not unfinished.exists()
  assert summary["trained"] == [1] and summary["skipped"] == [0]
  retrained, _ = checkpoint.load_tree(tmp_path / "expert_000001")
  chex.assert_trees_all_equal(retrained, original)
  assert (tmp_path / "expert_000000").stat().st_mtime_ns == kept

  other = _run_config(num_experts=2, epochs=2, lr=0.02)
  with pytest.raises(
    checkpoint.CheckpointError, match=r"training.lr 0.01 != 0.02"
  ):
    experts.run(other, tmp_path)


def test_experts_scored_on_held_out_images_name_the_validation_split(
  tmp_path,
):
  config = _run_config(num_experts=1, epochs=1)
  config.dataset.validation_per_class = 5
  summary = experts.run(config, tmp_path)
  assert summary["evaluation_split"] == "validation"
  assert "mean_test_accuracy" not in summary
  assert 0 <= summary["mean_validation_accuracy"] <= 1
  (record,) = _records(tmp_path)
  assert "test_accuracy" not in record
  assert record["validation_accuracy"] == summary["mean_validation_accuracy"]
  saved = checkpoint.load_metadata(experts.expert_dir(tmp_path, 0))
  assert saved["validation_accuracy"] == record["validation_accuracy"]
  assert "test_accuracy" not in saved


class _Killed(Exception):
  """Stands for a run killed in the middle of a chunk."""


_TRAIN_EPOCH = experts.loop._Programs.epoch


def _kill_at(monkeypatch, epoch_to_die: int | None, epochs_run: list):
  """Makes `run` train epoch by epoch into `epochs_run` and die (raise
  `_Killed`) when it reaches `epoch_to_die` (counting from 0)."""

  def epoch_or_kill(self, carry, epoch, *args):
    if epoch == epoch_to_die:
      raise _Killed
    epochs_run.append(epoch)
    return _TRAIN_EPOCH(self, carry, epoch, *args)

  monkeypatch.setattr(experts.loop._Programs, "epoch", epoch_or_kill)


def _saved_experts(workdir):
  return [
    checkpoint.load_tree(experts.expert_dir(workdir, i))[0]
    for i in experts.saved_indices(workdir)
  ]


def test_a_killed_run_continues_its_chunk_after_the_last_epoch(
  tmp_path, monkeypatch
):
  config = _run_config(num_experts=2, epochs=3, experts_in_parallel=2)
  never_stopped = tmp_path / "never_stopped"
  experts.run(config, never_stopped)

  killed, epochs_run = tmp_path / "killed", []
  _kill_at(monkeypatch, 2, epochs_run)
  with pytest.raises(_Killed):
    experts.run(config, killed)
  assert experts.saved_indices(killed) == []
  progress = experts.buffer.progress_dir(killed, 0)
  assert sorted(p.name for p in progress.iterdir()) == [
    "epoch_0001",
    "epoch_0002",
  ]
  # A save of epoch 3 cut short, as a kill mid-write leaves it.
  unfinished = progress / "epoch_0003.orbax-checkpoint-tmp-4"
  unfinished.mkdir()

  epochs_run.clear()
  _kill_at(monkeypatch, None, epochs_run)
  summary = experts.run(config, killed)
  assert epochs_run == [2]
  assert summary["trained"] == [0, 1]
  assert not progress.exists()
  assert [r["resumed_after_epoch"] for r in _records(killed)] == [2, 2]
  # The same programs on the same carries: the bits of a run never stopped.
  chex.assert_trees_all_equal(
    _saved_experts(killed), _saved_experts(never_stopped)
  )


def test_progress_of_another_chunk_layout_is_not_used(tmp_path, monkeypatch):
  config = _run_config(num_experts=2, epochs=2, experts_in_parallel=2)
  _kill_at(monkeypatch, 1, [])
  with pytest.raises(_Killed):
    experts.run(config, tmp_path)
  assert experts.buffer.progress_chunks(tmp_path) == [0]

  epochs_run = []
  _kill_at(monkeypatch, None, epochs_run)
  config.experts.experts_in_parallel = 1
  experts.run(config, tmp_path)
  # Chunks [0, 1) and [1, 2), each from its first epoch.
  assert epochs_run == [0, 1, 0, 1]
  assert experts.buffer.progress_chunks(tmp_path) == []
  assert experts.saved_indices(tmp_path) == [0, 1]


def test_run_compiles_the_experts_with_the_library_options(
  tmp_path, monkeypatch
):
  # An option XLA does not know, from `models.compiler_options`, must reach
  # the compiler of the experts' program.
  impls = []

  def options(impl):
    impls.append(impl)
    return {"xla_no_such_option_for_the_test": True}

  monkeypatch.setattr(models, "compiler_options", options)
  config = _run_config(num_experts=1, epochs=1, experts_in_parallel=1)
  with pytest.raises(Exception, match="xla_no_such_option_for_the_test"):
    experts.run(config, tmp_path)
  assert impls == [config.model.conv_impl]


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("model.name", "transformer", "model.name"),
    ("experts.num_experts", 0, "experts.num_experts"),
    ("experts.epochs", 0, "experts.epochs"),
    ("experts.experts_in_parallel", 0, "experts.experts_in_parallel"),
    ("experts.dsa_strategy", "color_blur", "experts.dsa_strategy"),
    ("experts.lr", 0.0, "experts.lr"),
  ],
)
def test_bad_config_values_raise_before_compute(tmp_path, field, value, match):
  config = _run_config()
  section, name = field.split(".")
  config[section][name] = value
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    experts.run(config, workdir)
  assert not workdir.exists()


def test_configs_hold_the_published_settings():
  cifar = experts_config.get_config("dataset=cifar10")
  assert (cifar.experts.num_experts, cifar.experts.epochs) == (100, 50)
  assert cifar.experts.lr == 0.01 and cifar.experts.batch_size == 256
  assert cifar.experts.momentum == 0 and cifar.experts.weight_decay == 0
  assert cifar.dataset.zca == "mtt"
  assert cifar.experts.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
  mnist = experts_config.get_config("dataset=mnist,num_experts=7")
  assert mnist.experts.num_experts == 7 and mnist.dataset.zca == "none"
  assert "flip" not in mnist.experts.dsa_strategy


def test_buffer_identity_names_the_held_out_split_and_old_buffers_match():
  model = {"name": "convnet", "options": {}}
  plain = experts.buffer_identity(data.load("digits"), model=model)
  held = experts.buffer_identity(
    data.load("digits", validation_per_class=5), model=model
  )
  assert plain["dataset"]["validation_per_class"] == 0
  assert held["dataset"]["validation_per_class"] == 5
  diffs = experts.identity_diff(plain, held, sections=("dataset",))
  assert any("validation_per_class" in d for d in diffs)
  # A buffer written before the field existed matches a run without one.
  old = {**plain, "dataset": dict(plain["dataset"])}
  del old["dataset"]["validation_per_class"]
  assert not experts.identity_diff(old, plain)
  assert experts.identity_diff(old, held, sections=("dataset",))
