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
  assert got.se_models_only == pytest.approx(0, abs=1e-12)
  assert got.se_images == pytest.approx(np.std(cols, ddof=1) / math.sqrt(8))
  assert got.se == pytest.approx(got.se_images)


def test_a_table_of_model_effects_alone_has_only_the_models_error():
  rows = np.array([0.2, 0.5, 0.3, 0.9, 0.4])
  got = compare.crossed_mean(np.tile(rows[:, None], (1, 6)))
  expected = np.std(rows, ddof=1) / math.sqrt(5)
  assert got.se_images == pytest.approx(0, abs=1e-12)
  assert got.se_interaction == pytest.approx(0, abs=1e-12)
  assert got.se_models == pytest.approx(expected)
  assert got.se_models_only == pytest.approx(expected)
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
  assert np.mean([e.se_models_only for e in estimates]) < 0.8 * expected


@pytest.mark.parametrize("shape", [(1, 10), (10, 1), (10,)])
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
  assert got.difference.se > got.difference.se_models_only
  report = compare.report(got, names=("A", "B"))
  assert "4 paired models x 50 test images" in report and "A - B:" in report
  json.dumps(got.to_json())


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

  refused = subprocess.run(
    [sys.executable, "launch/compare.py", f"--a={tmp_path}", "--b=/nowhere"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert refused.returncode != 0
  assert "compare: " in refused.stderr and "no evaluation log" in refused.stderr
