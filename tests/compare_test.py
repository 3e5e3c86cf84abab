"""Tests of comparisons over models and images (lowrank_distill.compare)."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from lowrank_distill import compare, evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_a_table_of_image_effects_alone_has_only_the_images_error():
  cols = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
  got = compare.crossed_mean(np.tile(cols, (4, 1)))
  assert got.mean == pytest.approx(cols.mean())
  assert got.se_models == pytest.approx(0, abs=1e-12)
  assert got.se_interaction == pytest.approx(0, abs=1e-12)
  assert got.se_images_fixed == pytest.approx(0, abs=1e-12)
  assert got.se_images == pytest.approx(np.std(cols, ddof=1) / math.sqrt(8))
  assert got.se == pytest.approx(got.se_images)


def test_a_table_of_model_effects_alone_has_only_the_models_error():
  rows = np.array([0.2, 0.5, 0.3, 0.9, 0.4])
  got = compare.crossed_mean(np.tile(rows[:, None], (1, 6)))
  expected = np.std(rows, ddof=1) / math.sqrt(5)
  assert got.se_images == pytest.approx(0, abs=1e-12)
  assert got.se_interaction == pytest.approx(0, abs=1e-12)
  assert got.se_models == pytest.approx(expected)
  assert got.se_images_fixed == pytest.approx(expected)
  assert (got.num_models, got.num_images) == (5, 6)


def test_the_standard_error_matches_the_spread_of_repeated_draws():
  # Models, images and their interaction all vary; the estimated standard
  # error must match the spread of the grand mean over fresh draws of both,
  # which the models-only error understates.
  rng = np.random.default_rng(0)
  k, m = 6, 300

  def draw():
    return (
      rng.normal(0, 0.5, (k, 1))
      + rng.normal(0, 4.0, (1, m))
      + rng.normal(0, 1.0, (k, m))
    )

  tables = [draw() for _ in range(2000)]
  spread = np.std([t.mean() for t in tables])
  estimates = [compare.crossed_mean(t) for t in tables[:300]]
  expected = math.sqrt(0.25 / k + 16.0 / m + 1.0 / (k * m))
  assert spread == pytest.approx(expected, rel=0.05)
  assert np.sqrt(np.mean([e.se**2 for e in estimates])) == pytest.approx(
    expected, rel=0.05
  )
  assert np.mean([e.se_images_fixed for e in estimates]) < 0.8 * expected


def test_sets_models_and_images_match_the_spread_of_repeated_draws():
  # Three crossed random factors and all their interactions: the estimate
  # must match the spread of the grand mean over fresh draws of all three.
  rng = np.random.default_rng(2)
  s, k, m = 3, 4, 200
  scales = {
    (1, 0, 0): 1.0,  # sets
    (0, 1, 0): 0.5,  # models
    (0, 0, 1): 8.0,  # images
    (1, 1, 0): 0.7,
    (1, 0, 1): 1.5,
    (0, 1, 1): 1.0,
    (1, 1, 1): 2.0,
  }

  def draw():
    return sum(
      rng.normal(
        0, scale, tuple(n if on else 1 for n, on in zip((s, k, m), axes))
      )
      for axes, scale in scales.items()
    )

  expected = math.sqrt(
    sum(
      scale**2 / math.prod(n for n, on in zip((s, k, m), axes) if on)
      for axes, scale in scales.items()
    )
  )
  tables = [draw() for _ in range(2000)]
  assert np.std([t.mean() for t in tables]) == pytest.approx(expected, rel=0.05)
  estimates = [compare.crossed_mean(t) for t in tables[:400]]
  assert np.sqrt(np.mean([e.se**2 for e in estimates])) == pytest.approx(
    expected, rel=0.08
  )
  for e in estimates[:5]:
    assert e.se**2 == pytest.approx(
      e.se_sets**2 + e.se_models**2 + e.se_images**2 + e.se_interaction**2
    )
  # With the images fixed, everything but the images' own share: the
  # per-(set, model) means still carry the sets', the models' and every
  # interaction's.
  images_fixed = math.sqrt(expected**2 - 8.0**2 / m)
  assert np.sqrt(
    np.mean([e.se_images_fixed**2 for e in estimates])
  ) == pytest.approx(images_fixed, rel=0.08)
  assert images_fixed < 0.8 * expected


def test_models_nested_in_sets_err_high_only_through_the_truncation():
  # A distillation's own evaluation trains other networks for each seed:
  # model k of one set has nothing to do with model k of another. The
  # crossed estimate still holds, a little high where the models' (zero)
  # main effect is truncated at 0.
  rng = np.random.default_rng(6)
  s, k, m = 3, 4, 200

  def draw():
    return (
      rng.normal(0, 1.0, (s, 1, 1))
      + rng.normal(0, 2.0, (s, k, 1))  # a model of its own in each set
      + rng.normal(0, 5.0, (1, 1, m))
      + rng.normal(0, 3.0, (s, k, m))
    )

  expected = math.sqrt(1 / s + 4 / (s * k) + 25 / m + 9 / (s * k * m))
  tables = [draw() for _ in range(500)]
  assert np.std([t.mean() for t in tables]) == pytest.approx(expected, rel=0.08)
  estimated = np.sqrt(
    np.mean([compare.crossed_mean(t).se ** 2 for t in tables])
  )
  assert expected < estimated < 1.2 * expected


def test_a_table_of_set_effects_alone_has_only_the_sets_error():
  sets = np.array([0.1, 0.6, 0.3])
  got = compare.crossed_mean(np.tile(sets[:, None, None], (1, 4, 7)))
  expected = np.std(sets, ddof=1) / math.sqrt(3)
  assert got.se_sets == pytest.approx(expected)
  assert got.se == pytest.approx(expected)
  assert got.se_images_fixed == pytest.approx(expected)
  assert got.se_models == pytest.approx(0, abs=1e-12)
  assert got.se_images == pytest.approx(0, abs=1e-12)
  assert (got.num_sets, got.num_models, got.num_images) == (3, 4, 7)


def test_one_set_is_the_models_by_images_table():
  table = np.random.default_rng(4).random((5, 30))
  assert compare.crossed_mean(table[None]) == compare.crossed_mean(table)
  assert compare.crossed_mean(table).num_sets == 1
  assert compare.crossed_mean(table).se_sets == 0


@pytest.mark.parametrize(
  "shape", [(1, 10), (10, 1), (10,), (2, 1, 10), (2, 2, 2, 2)]
)
def test_a_table_too_small_to_estimate_both_spreads_is_refused(shape):
  with pytest.raises(ValueError, match="table"):
    compare.crossed_mean(np.zeros(shape))


def _write_log(path, correct_images, *, fingerprint="f" * 64, digest="d" * 16):
  log = evaluate.ModelLog(path)
  log.record(
    fingerprint,
    np.arange(len(correct_images)),
    np.asarray(correct_images, bool),
    split_digest=digest,
  )
  return log


def test_paired_comparison_of_two_logs(tmp_path):
  rng = np.random.default_rng(1)
  a = rng.random((4, 50)) < 0.8
  b = a.copy()
  b[:, :5] = ~b[:, :5]  # b differs on five images, for every model
  b[0, 10] = not b[0, 10]
  (tmp_path / "a").mkdir()
  _write_log(tmp_path / "a" / evaluate.MODEL_LOG, a)
  _write_log(tmp_path / "b.jsonl", b, fingerprint="e" * 64)
  got = compare.paired(
    compare.load(tmp_path / "a"), compare.load(tmp_path / "b.jsonl")
  )
  diff = a.astype(int) - b.astype(int)
  np.testing.assert_array_equal(got.models, np.arange(4))
  np.testing.assert_allclose(got.per_model, diff.mean(axis=1))
  assert got.difference.mean == pytest.approx(diff.mean())
  assert got.accuracy_a.mean == pytest.approx(a.mean())
  assert got.accuracy_b.mean == pytest.approx(b.mean())
  assert got.models_lower == int(np.sum(diff.mean(axis=1) < 0))
  assert got.difference.se > got.difference.se_images_fixed
  report = compare.report(got, names=("A", "B"))
  assert "4 paired models x 50 test images" in report and "A - B:" in report
  json.dumps(got.to_json())


def test_several_sets_a_side_pair_by_position(tmp_path):
  rng = np.random.default_rng(5)
  tables = {
    name: rng.random((3, 40)) < 0.7 for name in ("a0", "a1", "b0", "b1")
  }
  logs = {}
  for name, table in tables.items():
    log = _write_log(tmp_path / f"{name}.jsonl", table)
    logs[name] = compare.load(log.path)
  # b1 also logged a model the others did not: only shared models count.
  extra = evaluate.ModelLog(tmp_path / "b1.jsonl")
  extra.record("f" * 64, [7], tables["b1"][:1], split_digest="d" * 16)
  logs["b1"] = compare.load(extra.path)
  got = compare.paired([logs["a0"], logs["a1"]], [logs["b0"], logs["b1"]])
  diff = np.stack(
    [
      tables["a0"].astype(int) - tables["b0"],
      tables["a1"].astype(int) - tables["b1"],
    ]
  )
  np.testing.assert_array_equal(got.models, np.arange(3))
  np.testing.assert_allclose(got.per_set, diff.mean(axis=(1, 2)))
  np.testing.assert_allclose(got.per_model, diff.mean(axis=(0, 2)))
  assert got.difference == compare.crossed_mean(diff)
  assert got.difference.num_sets == 2
  report = compare.report(got)
  assert "2 sets a side x 3 paired models x 40 test images" in report
  assert "per set: " in report and "sets " in report
  with pytest.raises(ValueError, match="a has 2 set"):
    compare.paired([logs["a0"], logs["a1"]], logs["b0"])
  with pytest.raises(ValueError, match="a has 0 set"):
    compare.paired([], [])


def test_load_picks_an_evaluation_by_fingerprint(tmp_path):
  path = tmp_path / "log.jsonl"
  first = np.ones((2, 5), bool)
  second = np.zeros((3, 5), bool)
  _write_log(path, first, fingerprint="aa" + "0" * 62)
  _write_log(path, second, fingerprint="ab" + "0" * 62)
  assert compare.load(path).correct_images.shape == (3, 5)  # the last
  assert compare.load(path, fingerprint="aa").correct_images.all()
  with pytest.raises(ValueError, match="2 of the evaluations"):
    compare.load(path, fingerprint="a")
  with pytest.raises(ValueError, match="0 of the evaluations"):
    compare.load(path, fingerprint="b")


def test_load_refuses_a_log_without_the_images(tmp_path):
  path = tmp_path / "log.jsonl"
  path.write_text(json.dumps({"fingerprint": "f", "model": 0, "correct": 3}))
  with pytest.raises(ValueError, match="only correct counts"):
    compare.load(path)
  with pytest.raises(FileNotFoundError, match="no evaluation log"):
    compare.load(tmp_path / "elsewhere")


def test_paired_refuses_other_splits_and_too_few_shared_models(tmp_path):
  table = np.ones((2, 5), bool)
  a = compare.load(_write_log(tmp_path / "a.jsonl", table).path)
  other = compare.load(
    _write_log(tmp_path / "b.jsonl", table, digest="e" * 16).path
  )
  with pytest.raises(ValueError, match="different splits"):
    compare.paired(a, other)
  log = evaluate.ModelLog(tmp_path / "c.jsonl")
  log.record("f" * 64, [1, 5], table, split_digest="d" * 16)
  with pytest.raises(ValueError, match="share 1 model"):
    compare.paired(a, compare.load(log.path))


@pytest.mark.slow
def test_two_evaluations_compare_through_the_launcher(tiny_images, tmp_path):
  images, labels = tiny_images
  noisy = images + np.random.default_rng(3).normal(0, 1, images.shape)
  for name, train_images in (("a", images), ("b", noisy.astype(np.float32))):
    (tmp_path / name).mkdir()
    evaluate.evaluate_set(
      jax.random.key(1),
      train_images,
      labels,
      images,
      labels,
      model_options={"width": 8, "depth": 1},
      num_classes=10,
      num_models=2,
      epochs=2,
      log=evaluate.ModelLog(tmp_path / name / evaluate.MODEL_LOG),
    )
  out = subprocess.run(
    [
      sys.executable,
      "launch/compare.py",
      f"--a={tmp_path / 'a'}",
      f"--b={tmp_path / 'b'}",
      f"--output={tmp_path / 'a_vs_b.json'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  assert "2 paired models x 20 test images" in out.stdout
  saved = json.loads((tmp_path / "a_vs_b.json").read_text())
  assert saved["models"] == [0, 1]

  two_sets = subprocess.run(
    [
      sys.executable,
      "launch/compare.py",
      f"--a={tmp_path / 'a'},{tmp_path / 'b'}",
      f"--b={tmp_path / 'b'},{tmp_path / 'a'}",
      "--b_fingerprint=last,last",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  assert "2 sets a side x 2 paired models" in two_sets.stdout
  assert "+0.00 ± " in two_sets.stdout  # (a - b) and (b - a) cancel

  refused = subprocess.run(
    [sys.executable, "launch/compare.py", f"--a={tmp_path}", "--b=/nowhere"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert refused.returncode != 0
  assert "compare: " in refused.stderr and "no evaluation log" in refused.stderr
