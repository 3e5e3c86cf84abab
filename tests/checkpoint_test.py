"""Tests for lowrank_distill.checkpoint (Orbax run checkpoints and pytrees)."""

import logging
import os
import pathlib

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_distill import checkpoint

# When Orbax's restore fails on a corrupt file, TensorStore reads still in
# flight later try to call back into Orbax's already closed event loop; Python
# reports that as an unraisable RuntimeError ("Event loop is closed") in
# whichever test runs at that moment. It is noise from the error path.
pytestmark = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)

CONFIG = {"dataset": "mnist", "ipc": 1, "param": "pixels", "opt": {"lr": 0.1}}


@flax.struct.dataclass
class State:
  params: dict
  key: jax.Array
  step: jax.Array
  extra: dict


def make_state(seed: int) -> State:
  return State(
    params={
      "w": jnp.full((4, 3), float(seed), jnp.float32),
      "b": jnp.arange(3, dtype=jnp.int32) + seed,
      "h": jnp.ones((2,), jnp.bfloat16) * seed,
    },
    key=jax.random.key(seed),
    step=jnp.asarray(seed, jnp.int32),
    extra={"keys": jax.random.split(jax.random.key(seed + 100), 3)},
  )


def abstract_state():
  return jax.eval_shape(lambda: make_state(0))


def assert_states_equal(got: State, want: State):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
  chex.assert_trees_all_equal(
    checkpoint._keys_to_data(got), checkpoint._keys_to_data(want)
  )


def snapshot(directory: pathlib.Path) -> dict:
  return {
    str(p.relative_to(directory)): p.stat().st_mtime_ns
    for p in sorted(directory.rglob("*"))
  }


@pytest.fixture
def ckpt_dir(tmp_path):
  return tmp_path / "workdir" / "checkpoints"


def test_round_trip_with_typed_keys(ckpt_dir, caplog):
  state = make_state(3)
  with caplog.at_level(logging.WARNING):
    with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
      assert ckpt.save(3, state, metrics={"loss": np.float32(0.5), "n": 2})
      ckpt.wait()
      restored, metrics = ckpt.restore(abstract_state())
  assert isinstance(restored, State)
  assert_states_equal(restored, state)
  assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
  assert restored.extra["keys"].shape == (3,)
  # The restored keys draw the same numbers as the originals.
  np.testing.assert_array_equal(
    jax.random.normal(restored.key, (3,)), jax.random.normal(state.key, (3,))
  )
  assert metrics == {"loss": 0.5, "n": 2}
  orbax_warnings = [r for r in caplog.records if "orbax" in r.pathname]
  assert not orbax_warnings, [r.getMessage() for r in orbax_warnings]


def test_latest_step_and_max_to_keep(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() is None
    for step in range(5):
      assert ckpt.save(step, make_state(step))
    ckpt.wait()
    assert ckpt.latest_step() == 4
    assert ckpt.all_steps() == [3, 4]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["3", "4"]
    assert ckpt.save(4, make_state(4)) is False  # already saved
    state, _ = ckpt.restore(abstract_state(), step=3)
    assert int(state.step) == 3
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for"):
      ckpt.restore(abstract_state(), step=1)
  # A fresh Checkpointer (the resumed run) sees the same steps.
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    assert ckpt.latest_step() == 4
    state, _ = ckpt.restore_or_none(abstract_state())
    assert int(state.step) == 4


def test_save_interval_steps(ckpt_dir):
  with checkpoint.Checkpointer(
    ckpt_dir, config=CONFIG, save_interval_steps=5
  ) as ckpt:
    saved = [step for step in range(12) if ckpt.save(step, make_state(step))]
    assert ckpt.save(12, make_state(12), force=True)
    ckpt.wait()
    assert saved == [0, 5, 10]
    assert ckpt.latest_step() == 12


def test_restore_or_none_on_missing_and_empty_dir(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    assert ckpt.restore_or_none(abstract_state()) is None
    assert not ckpt_dir.exists()  # nothing written before the first save
    with pytest.raises(checkpoint.CheckpointError, match=str(ckpt_dir)):
      ckpt.restore(abstract_state())
  ckpt_dir.mkdir(parents=True)
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    assert ckpt.restore_or_none(abstract_state()) is None
  # Only the remains of a first save that was killed: still a fresh start.
  (ckpt_dir / "0.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    assert ckpt.restore_or_none(abstract_state()) is None
    assert ckpt.save(0, make_state(0))
    ckpt.wait()
  assert sorted(p.name for p in ckpt_dir.iterdir()) == ["0"]


def test_restore_into_a_mismatched_state_raises(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    ckpt.save(0, {"w": jnp.ones((4, 3))})
    with pytest.raises(checkpoint.CheckpointError, match=str(ckpt_dir / "0")):
      ckpt.restore({"w": jax.ShapeDtypeStruct((5, 3), jnp.float32)})


def test_mismatched_config_raises_and_touches_nothing(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    ckpt.save(0, make_state(0))
    ckpt.save(1, make_state(1))
  before = snapshot(ckpt_dir)
  other = {**CONFIG, "ipc": 10, "param": "factors", "opt": {"lr": 0.2}}
  with checkpoint.Checkpointer(ckpt_dir, config=other, max_to_keep=1) as ckpt:
    with pytest.raises(checkpoint.CheckpointError) as e:
      ckpt.restore_or_none(abstract_state())
    message = str(e.value)
    assert str(ckpt_dir / "1") in message
    assert "ipc 1 != 10" in message
    assert "param 'pixels' != 'factors'" in message
    assert "opt.lr 0.1 != 0.2" in message
    assert "dataset" not in message.split(":", 1)[1]
    # Writing beside them (which would also prune them) is refused too.
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
      ckpt.save(2, make_state(2))
  assert snapshot(ckpt_dir) == before


def _corrupt(path: pathlib.Path, how: str):
  files = (
    [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
  )
  for f in files:
    if how == "delete":
      f.unlink()
    else:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize(
  "relative, how",
  [
    ("state/manifest.ocdbt", "delete"),
    ("state/d", "truncate"),
    ("state/_METADATA", "truncate"),
    ("config/metadata", "truncate"),
    ("config", "delete"),
  ],
)
def test_corrupt_checkpoint_raises_naming_the_path(ckpt_dir, relative, how):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    ckpt.save(0, make_state(0))
  _corrupt(ckpt_dir / "0" / relative, how)
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=str(ckpt_dir / "0")):
      ckpt.restore_or_none(abstract_state())


def test_foreign_directories_raise_naming_the_path(tmp_path):
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "readme.txt").write_text("not a checkpoint")
  with checkpoint.Checkpointer(notes, config=CONFIG) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=str(notes)):
      ckpt.restore_or_none(abstract_state())
    with pytest.raises(checkpoint.CheckpointError, match=str(notes)):
      ckpt.save(0, make_state(0))
  steps = tmp_path / "steps"
  (steps / "3").mkdir(parents=True)
  (steps / "3" / "weights.npz").write_bytes(b"\0" * 16)
  with checkpoint.Checkpointer(steps, config=CONFIG) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=str(steps / "3")):
      ckpt.restore_or_none(abstract_state())
  # A save_tree export is not a checkpoint directory either.
  export = tmp_path / "export"
  checkpoint.save_tree(export, {"x": np.zeros(2)})
  with checkpoint.Checkpointer(export, config=CONFIG) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=str(export)):
      ckpt.restore_or_none(abstract_state())
  assert (steps / "3" / "weights.npz").exists()


def test_save_killed_midway_keeps_the_last_checkpoint(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    ckpt.save(1, make_state(1))
  # What a process killed while writing step 2 leaves behind.
  partial = ckpt_dir / "2.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "manifest.ocdbt").write_bytes(b"\0\1")
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    assert ckpt.latest_step() == 1
    state, _ = ckpt.restore_or_none(abstract_state())
    assert int(state.step) == 1
    assert ckpt.save(2, make_state(2))
    ckpt.wait()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["1", "2"]
    state, _ = ckpt.restore(abstract_state())
    assert int(state.step) == 2


def _mesh_sharding():
  mesh = jax.make_mesh(
    (4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _sharded_state(sharding):
  return {
    "x": jax.device_put(jnp.arange(32.0).reshape(8, 4), sharding),
    "keys": jax.device_put(jax.random.split(jax.random.key(1), 8), sharding),
    "count": jnp.int32(7),
  }


def _abstract_on(state, sharding):
  def abstract(x):
    leaf_sharding = sharding
    if x.ndim == 0 and isinstance(sharding, jax.sharding.NamedSharding):
      leaf_sharding = sharding.update(spec=jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=leaf_sharding)

  return jax.tree.map(abstract, state)


def test_sharded_to_single_device_and_back(tmp_path):
  sharded = _mesh_sharding()
  single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = _sharded_state(sharded)
  assert len(state["x"].sharding.device_set) == 4
  with checkpoint.Checkpointer(tmp_path / "a", config=CONFIG) as ckpt:
    ckpt.save(0, state)
    restored, _ = ckpt.restore(_abstract_on(state, single))
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == single
  assert_trees_equal_with_keys(restored, state)

  with checkpoint.Checkpointer(tmp_path / "b", config=CONFIG) as ckpt:
    ckpt.save(0, jax.device_put(state, single))
    restored, _ = ckpt.restore(_abstract_on(state, sharded))
  assert restored["x"].sharding == sharded
  assert len(restored["keys"].sharding.device_set) == 4
  assert_trees_equal_with_keys(restored, state)


def assert_trees_equal_with_keys(got, want):
  chex.assert_trees_all_equal(
    checkpoint._keys_to_data(got), checkpoint._keys_to_data(want)
  )
  assert jax.dtypes.issubdtype(got["keys"].dtype, jax.dtypes.prng_key)


def test_save_tree_load_tree_round_trip(tmp_path):
  path = tmp_path / "synset"
  tree = {
    "images": np.random.default_rng(0).normal(size=(6, 8, 8, 1)),
    "labels": np.arange(6, dtype=np.int32),
    "params": {"A": jnp.ones((2, 8, 2)), "lr": jnp.float32(0.01)},
    "pair": [np.zeros(2, np.uint8), 3.5],
  }
  metadata = {"format": "x/1", "storage": 12, "nested": {"t": (1, 2)}}
  checkpoint.save_tree(path, tree, metadata=metadata)
  loaded, meta = checkpoint.load_tree(path)
  assert meta == {"format": "x/1", "storage": 12, "nested": {"t": [1, 2]}}
  assert checkpoint.load_metadata(path) == meta
  assert jax.tree.structure(loaded) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree)):
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(got, np.asarray(want))
  # Into a given structure: jax arrays on the requested sharding.
  abstract = jax.eval_shape(lambda: tree)
  loaded, _ = checkpoint.load_tree(path, abstract_tree=abstract)
  assert isinstance(loaded["params"]["A"], jax.Array)
  chex.assert_trees_all_close(loaded, jax.tree.map(jnp.asarray, tree))


def test_save_tree_keys_and_empty_metadata(tmp_path):
  tree = {"key": jax.random.key(4), "w": jnp.ones(3)}
  checkpoint.save_tree(tmp_path / "t", tree)
  raw, meta = checkpoint.load_tree(tmp_path / "t")
  assert meta == {}
  np.testing.assert_array_equal(raw["key"], jax.random.key_data(tree["key"]))
  loaded, _ = checkpoint.load_tree(
    tmp_path / "t", abstract_tree=jax.eval_shape(lambda: tree)
  )
  assert jax.dtypes.issubdtype(loaded["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(
    jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"])
  )


def test_save_tree_refuses_to_overwrite(tmp_path):
  path = tmp_path / "export"
  checkpoint.save_tree(path, {"x": np.zeros(3)}, metadata={"v": 1})
  with pytest.raises(FileExistsError, match=str(path)):
    checkpoint.save_tree(path, {"x": np.ones(3)}, metadata={"v": 2})
  assert checkpoint.load_metadata(path) == {"v": 1}
  checkpoint.save_tree(
    path, {"y": np.ones(2)}, metadata={"v": 2}, overwrite=True
  )
  tree, meta = checkpoint.load_tree(path)
  assert meta == {"v": 2} and list(tree) == ["y"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_load_tree_missing_foreign_and_corrupt(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(checkpoint.CheckpointError, match=str(missing)):
    checkpoint.load_tree(missing)
  with pytest.raises(checkpoint.CheckpointError, match=str(missing)):
    checkpoint.load_metadata(missing)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "data.npz").write_bytes(b"PK")
  with pytest.raises(checkpoint.CheckpointError, match=str(foreign)):
    checkpoint.load_tree(foreign)
  corrupt = tmp_path / "corrupt"
  checkpoint.save_tree(corrupt, {"x": np.arange(4.0)})
  (corrupt / "tree" / "manifest.ocdbt").unlink()
  with pytest.raises(checkpoint.CheckpointError, match=str(corrupt)):
    checkpoint.load_tree(corrupt)
  with pytest.raises(checkpoint.CheckpointError, match=str(corrupt)):
    checkpoint.read_slice(corrupt, ("x",), 0)


def test_read_slice(tmp_path):
  num_epochs = 5
  rng = np.random.default_rng(0)
  buffer = {
    "conv": {"kernel": rng.normal(size=(num_epochs + 1, 4, 4, 8, 16))},
    "bias": rng.normal(size=(num_epochs + 1, 16)).astype(np.float32),
    "layers": [np.arange(num_epochs + 1)],
  }
  path = tmp_path / "expert_0"
  checkpoint.save_tree(path, buffer, metadata={"num_epochs": num_epochs})
  kernel = buffer["conv"]["kernel"]
  for index in (0, 3, -1, slice(1, 4), (2, slice(None), 1), (Ellipsis, 0)):
    got = checkpoint.read_slice(path, ("conv", "kernel"), index)
    np.testing.assert_array_equal(got, kernel[index])
    assert got.dtype == kernel.dtype
  np.testing.assert_array_equal(
    checkpoint.read_slice(path, ("bias",), 4), buffer["bias"][4]
  )
  np.testing.assert_array_equal(
    checkpoint.read_slice(path, ("layers", 0), slice(2, None)),
    buffer["layers"][0][2:],
  )
  # A subtree: every array in it at the same index.
  epoch = checkpoint.read_slice(path, (), 2)
  chex.assert_trees_all_equal(epoch, jax.tree.map(lambda x: x[2], buffer))
  with pytest.raises(checkpoint.CheckpointError, match="valid keys"):
    checkpoint.read_slice(path, ("conv", "weights"), 0)
  with pytest.raises(IndexError):
    checkpoint.read_slice(path, ("bias",), num_epochs + 1)


def test_orbax_info_logs_are_filtered():
  record = logging.LogRecord(
    "absl",
    logging.INFO,
    f"{os.sep}x{os.sep}orbax{os.sep}a.py",
    1,
    "m",
    (),
    None,
  )
  assert not checkpoint.ORBAX_INFO_FILTER.filter(record)
  record.levelno = logging.WARNING
  assert checkpoint.ORBAX_INFO_FILTER.filter(record)


def test_importing_changes_no_logging_and_the_launchers_quiet_orbax(
  fresh_python,
):
  code = (
    "import logging\n"
    "from lowrank_distill import checkpoint\n"
    "absl = logging.getLogger('absl')\n"
    "before = checkpoint.ORBAX_INFO_FILTER in absl.filters\n"
    "checkpoint.quiet_orbax_logs(); checkpoint.quiet_orbax_logs()\n"
    "print(before, absl.filters.count(checkpoint.ORBAX_INFO_FILTER))\n"
  )
  assert fresh_python(code).split() == ["False", "1"]
  launcher = pathlib.Path(__file__).resolve().parents[1] / "launch/common.py"
  assert "checkpoint.quiet_orbax_logs()" in launcher.read_text()


@pytest.mark.parametrize("relative", ["state/d", "config/metadata"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(
  ckpt_dir, relative
):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG, max_to_keep=3) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, make_state(step))
  _corrupt(ckpt_dir / "3" / relative, "truncate")
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG, max_to_keep=3) as ckpt:
    state, _ = ckpt.restore_or_none(abstract_state())
    chex.assert_trees_all_equal(state, make_state(2))
    # The corrupt step is kept aside and saved again by the resumed run.
    assert ckpt.all_steps() == [1, 2]
    assert (ckpt_dir / f"{checkpoint.CORRUPT_PREFIX}3").is_dir()
    assert ckpt.save(3, make_state(3))
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG, max_to_keep=3) as ckpt:
    state, _ = ckpt.restore_or_none(abstract_state())
    chex.assert_trees_all_equal(state, make_state(3))


def test_another_configs_checkpoint_is_not_skipped_as_corrupt(ckpt_dir):
  with checkpoint.Checkpointer(ckpt_dir, config=CONFIG) as ckpt:
    ckpt.save(1, make_state(1))
  other = {**CONFIG, "seed": 1234}
  with checkpoint.Checkpointer(ckpt_dir, config=other) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
      ckpt.restore_or_none(abstract_state())
  assert not list(ckpt_dir.glob(f"{checkpoint.CORRUPT_PREFIX}*"))
