"""benchmarks/chain_gpu.py: its commands, options and archive.

The script runs on a GPU host only when one is lent; these checks keep its
commands in step with the configs between calls (its `--tiny` run, about
three CPU minutes, is left out of the suite).
"""

import importlib
import json
import pathlib
import tarfile

import pytest

from configs import tm as tm_config

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def chain_gpu(monkeypatch):
  monkeypatch.syspath_prepend(str(BENCHMARKS))
  return importlib.import_module("chain_gpu")


def _flag(cmd, name):
  values = [
    str(part).split("=", 1)[1]
    for part in cmd
    if str(part).startswith(f"--{name}=")
  ]
  assert len(values) == 1, (name, cmd)
  return values[0]


def test_every_candidate_sets_fields_configs_tm_has(chain_gpu):
  config = tm_config.get_config(
    "dataset=fashion_mnist,variant=mtt_lss,labels=hard,rank=8,num_sets=2"
  )
  for name, fields in chain_gpu.CANDIDATES.items():
    for field in fields:
      assert field in config.distill, (name, field)
  assert set(chain_gpu.NEXT_CANDIDATES) <= set(chain_gpu.CANDIDATES)
  assert set(chain_gpu.TINY_CANDIDATES) <= set(chain_gpu.CANDIDATES)


def test_unknown_candidates_are_refused_with_the_valid_names(chain_gpu, capsys):
  with pytest.raises(SystemExit):
    chain_gpu.parse_args(["--candidates=ee1_s20_m6,bogus"])
  err = capsys.readouterr().err
  assert "--candidates" in err and "cpu_chain" in err and "ee2_s40_m8" in err
  args = chain_gpu.parse_args(["--candidates=cpu_chain"])
  assert args.candidates == ("cpu_chain",)
  assert chain_gpu.parse_args([]).candidates == chain_gpu.NEXT_CANDIDATES


def test_candidates_that_start_past_the_buffer_are_refused(chain_gpu, capsys):
  # The progressive window's top reaches max_start + delta - 1 in its last
  # iterations; the late window sits at start_delta from the first.
  assert chain_gpu.latest_start("cpu_chain", iterations=300) == 2
  assert chain_gpu.latest_start("ee1_s20_m6", iterations=300) == 6
  assert chain_gpu.latest_start("ee1_s20_late6", iterations=300) == 6
  assert chain_gpu.latest_start("ee2_s40_m8", iterations=300) == 8
  with pytest.raises(SystemExit):
    chain_gpu.parse_args(["--candidates=ee1_s20_m6,ee1_s20_m10"])
  err = capsys.readouterr().err
  assert "--expert_epochs=8" in err and "ee1_s20_m10" in err
  assert ">= 11 epochs" in err
  with pytest.raises(SystemExit):
    chain_gpu.parse_args(["--candidates=ee2_s40_m8", "--expert_epochs=9"])
  assert "ee2_s40_m8" in capsys.readouterr().err
  args = chain_gpu.parse_args(
    ["--candidates=ee1_s20_m10", "--expert_epochs=11"]
  )
  assert args.candidates == ("ee1_s20_m10",)
  assert chain_gpu.parse_args(["--candidates=ee1_s20_m6", "--expert_epochs=7"])


def test_only_the_heldout_split_holds_images_out(chain_gpu, tmp_path):
  args = chain_gpu.parse_args(["--candidates=ee1_s20_m6", "--validation=100"])
  one = chain_gpu.stage_one_commands(args, tmp_path)
  two = chain_gpu.stage_two_commands(args, tmp_path)
  assert set(one) == {
    "heldout/dm_start",
    "heldout/experts",
    "test/dm_start",
    "test/experts",
  }
  assert set(two) == {"heldout/ee1_s20_m6", "test/ee1_s20_m6"}
  for name, cmd in {**one, **two}.items():
    split = name.split("/")[0]
    held = ",validation=100" in _flag(cmd, "config")
    assert held == (split == "heldout"), name
  for split in chain_gpu.SPLITS:
    cmd = two[f"{split}/ee1_s20_m6"]
    assert _flag(cmd, "config.synset.init_set") == str(
      tmp_path / split / "dm_start" / "synset"
    )
    assert _flag(cmd, "config.experts.path") == str(
      tmp_path / split / "experts"
    )
    assert _flag(cmd, "config.distill.max_start") == "6"


def test_a_finished_dm_start_is_not_run_again(chain_gpu, tmp_path):
  (tmp_path / "test" / "dm_start").mkdir(parents=True)
  (tmp_path / "test" / "dm_start" / "results.json").write_text("{}")
  args = chain_gpu.parse_args([])
  assert set(chain_gpu.stage_one_commands(args, tmp_path)) == {
    "heldout/dm_start",
    "heldout/experts",
    "test/experts",
  }


def test_resumed_runs_of_another_heldout_split_are_made_again(
  chain_gpu, tmp_path
):
  runs = {
    "heldout/dm_start": 100,  # session 30's held-out split
    "heldout/ee1_s20_m6": 100,
    "heldout/ee1_s20_m6_lr02": 500,
    "test/dm_start": 0,
    "test/ee1_s20_m6": 0,
  }
  for name, validation in runs.items():
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / "results.json").write_text("{}")
    (tmp_path / name / "config.json").write_text(
      json.dumps({"dataset": {"validation_per_class": validation}})
    )
  args = chain_gpu.parse_args(["--validation=500"])
  dropped = chain_gpu.drop_runs_of_other_splits(args, tmp_path)
  assert dropped == ["heldout/dm_start", "heldout/ee1_s20_m6"]
  assert not (tmp_path / "heldout" / "dm_start").exists()
  assert (tmp_path / "heldout" / "ee1_s20_m6_lr02").is_dir()
  assert (tmp_path / "test" / "ee1_s20_m6").is_dir()
  assert "heldout/dm_start" in chain_gpu.stage_one_commands(args, tmp_path)
  assert chain_gpu.drop_runs_of_other_splits(args, tmp_path) == []


def test_the_archive_keeps_every_run_but_the_buffers(chain_gpu, tmp_path):
  root = tmp_path / "full"
  files = [
    "heldout/dm_start/synset/tree/x",
    "heldout/ee1_s20_m6/checkpoints/20/state",
    "heldout/ee1_s20_m6/metrics.jsonl",
    "heldout/ee1_s20_m6/synset_000100/tree/x",
    "heldout/experts/expert_0/snapshots",
    "test/experts/buffer.json",
  ]
  for name in files:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(name)
  target = tmp_path / "runs.tar.gz"
  chain_gpu.archive_runs(root, target)
  with tarfile.open(target) as tar:
    names = {m.name for m in tar.getmembers() if m.isfile()}
  assert names == {f"full/{name}" for name in files[:4]}


def test_a_missing_or_unstarted_buffer_counts_as_no_experts(
  chain_gpu, tmp_path
):
  assert chain_gpu._saved_experts(tmp_path / "absent") == 0
  (tmp_path / "empty").mkdir()
  assert chain_gpu._saved_experts(tmp_path / "empty") == 0


def test_the_test_split_evaluates_with_the_protocols_epochs(
  chain_gpu, tmp_path
):
  args = chain_gpu.parse_args(["--candidates=ee1_s20_m6"])
  commands = {
    **chain_gpu.stage_one_commands(args, tmp_path),
    **chain_gpu.stage_two_commands(args, tmp_path),
  }
  for name, cmd in commands.items():
    if name.endswith("/experts"):
      continue
    expected = "300" if name.startswith("heldout/") else "1000"
    assert _flag(cmd, "config.eval.epochs") == expected, name
  tiny = chain_gpu.parse_args(["--tiny"])
  for cmd in chain_gpu.stage_two_commands(tiny, tmp_path).values():
    assert _flag(cmd, "config.eval.epochs") == "1"


def test_non_positive_epochs_are_refused_naming_the_flag(chain_gpu, capsys):
  with pytest.raises(SystemExit):
    chain_gpu.parse_args(["--test_epochs=0"])
  assert "--test_epochs=0" in capsys.readouterr().err
