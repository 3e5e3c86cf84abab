"""Tests of config helpers and of every configs/*.py file."""

import importlib
import pathlib
import re

import numpy as np
import pytest

from lowrank_distill import augment, config_utils, distill
from lowrank_distill.objectives import trajectory_matching

# Every config file (configs/common.py holds shared settings, no config).
CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
  if p.stem not in ("__init__", "common")
)


def test_parse_arg_converts_to_the_default_types():
  arg = config_utils.parse_arg(
    "ipc=10,dsa=false,param=pixels", ipc=1, dsa=True, param="factors"
  )
  assert (arg.ipc, arg.dsa, arg.param) == (10, False, "pixels")


@pytest.mark.parametrize(
  "text,match",
  [("colour=red", "valid"), ("ipc", "key=value"), ("ipc=ten", "int")],
)
def test_parse_arg_errors_name_the_problem(text, match):
  with pytest.raises(ValueError, match=match):
    config_utils.parse_arg(text, ipc=1)


@pytest.mark.parametrize(
  "values,match",
  [
    ({"colour": "red"}, "valid"),
    ({"ipc": "10"}, "ipc='10': expected int"),
    ({"ipc": True}, "expected int"),
    ({"dsa": 1}, "expected bool"),
    ({"lr": "0.1"}, "expected float"),
  ],
)
def test_keyword_args_are_checked_as_strings_are(values, match):
  with pytest.raises(ValueError, match=match):
    config_utils.parse_arg(None, values, ipc=1, dsa=True, lr=0.5)


def test_keyword_args_equal_the_string_and_not_both():
  defaults = dict(ipc=1, dsa=True, lr=0.5, param="factors")
  text = config_utils.parse_arg("ipc=10,dsa=false,lr=2,param=x", **defaults)
  values = dict(ipc=10, dsa=False, lr=2, param="x")
  keywords = config_utils.parse_arg(None, values, **defaults)
  assert keywords.to_dict() == text.to_dict()
  assert isinstance(keywords.lr, float)
  with pytest.raises(ValueError, match="not both"):
    config_utils.parse_arg("ipc=2", {"ipc": 3}, **defaults)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_get_config_takes_keywords_as_its_string(name):
  module = importlib.import_module(f"configs.{name}")
  values = {
    "evaluate": dict(synset="/tmp/x", num_models=2),
    "experts": dict(dataset="mnist", epochs=3, runlocal=True),
    "tm": dict(dataset="mnist", ipc=1, variant="lomtt", runlocal=True),
    "haba": dict(dataset="mnist", ipc=1, variant="lohaba", runlocal=True),
  }.get(name, dict(dataset="mnist", ipc=2, runlocal=True))
  arg = ",".join(f"{k}={v}" for k, v in values.items())
  assert module.get_config(**values).to_dict() == (
    module.get_config(arg).to_dict()
  )


def _validator(name):
  """The checks the run of config `name` makes before any compute."""
  from lowrank_distill import continual, coreset, evaluate, experts

  return {
    "continual": continual.validate,
    "coreset": coreset.validate,
    "evaluate": evaluate.validate,
    "experts": experts.validate,
  }.get(name, distill.validate)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal=true"])
def test_every_config_builds_and_passes_its_run_checks(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg)
  assert "seed" in config and "eval" in config
  # Inputs the command line names: an expert buffer, a saved set.
  if "experts" in config and "path" in config.experts:
    config.experts.path = "/a/buffer"
  if name == "evaluate":
    config.synset = "/a/set"
  _validator(name)(config)


@pytest.mark.parametrize(
  "name, field, value, message",
  [
    ("dm", "synset.param", "wavelets", "synset.param 'wavelets'"),
    ("experts", "experts.epochs", 0, "experts.epochs must be an integer"),
    ("coreset", "coreset.method", "greedy", "coreset.method 'greedy'"),
    ("coreset", "coreset.ipc", 0, "coreset.ipc must be an integer"),
    ("evaluate", "eval.models", ["convnet", "vit"], "'vit'"),
    ("continual", "continual.methods", [], "continual.methods"),
  ],
)
def test_run_checks_refuse_a_bad_field_by_name(name, field, value, message):
  config = importlib.import_module(f"configs.{name}").get_config(
    "runlocal=true"
  )
  if name == "evaluate":
    config.synset = "/a/set"
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    _validator(name)(config)


def test_trajectory_matching_configs_hold_the_published_settings():
  from configs import tm

  config = tm.get_config("dataset=cifar10,ipc=1,variant=mtt")
  cfg = config.distill
  assert (cfg.syn_steps, cfg.expert_epochs, cfg.max_start) == (50, 2, 2)
  assert cfg.lr_images == 100 and cfg.lr_student == 0.01
  assert cfg.lr_lr == pytest.approx(1e-7 / 0.01**2)
  assert config.dataset.zca == "mtt" and config.synset.param == "pixels"
  ipc10 = tm.get_config("dataset=cifar10,ipc=10,variant=mtt").distill
  assert (ipc10.syn_steps, ipc10.max_start, ipc10.lr_student) == (30, 20, 1e-3)
  lomtt = tm.get_config("dataset=cifar10,ipc=1,variant=lomtt")
  assert lomtt.distill.max_start == 5 and lomtt.distill.lr_images == 1000
  assert lomtt.synset.rank == 2
  lss = tm.get_config("dataset=cifar10,ipc=1,variant=mtt_lss")
  assert (lss.synset.param, lss.synset.rank, lss.synset.num_sets) == (
    "mappers",
    8,
    4,
  )
  assert lss.labels.kind == "soft" and lss.labels.init == "random"
  assert lss.distill.start == "progressive" and lss.distill.learn_lr


def test_experts_and_trajectory_matching_share_the_model():
  from configs import experts, tm

  for dataset in ("digits", "mnist", "fashion_mnist", "cifar10"):
    a = experts.get_config(f"dataset={dataset}")
    b = tm.get_config(f"dataset={dataset},ipc=1")
    assert a.model.to_dict() == b.model.to_dict(), dataset
    assert a.dataset.to_dict() == b.dataset.to_dict(), dataset


@pytest.mark.parametrize("variant", ["mtt", "lomtt", "mtt_lss"])
def test_default_expert_buffers_cover_the_trajectory_matching_rows(variant):
  from configs import experts, tm

  rows = {key[:2] for key in tm.SETTINGS}
  for dataset, ipc in sorted(rows):
    buffer = experts.get_config(f"dataset={dataset}").experts
    config = tm.get_config(f"dataset={dataset},ipc={ipc},variant={variant}")
    _, needed = trajectory_matching.snapshot_window(
      schedule=config.distill.start,
      max_start=config.distill.max_start,
      delta=config.distill.start_delta,
      expert_epochs=config.distill.expert_epochs,
    )
    assert buffer.epochs + 1 >= needed, (dataset, ipc, buffer.epochs, needed)
    if config.distill.start == "uniform":
      # Every start epoch the run can draw has its target in the buffer.
      last_start = config.distill.max_start - 1
      assert last_start + config.distill.expert_epochs <= buffer.epochs


def test_gradient_matching_config_holds_the_published_settings():
  from configs import gm

  config = gm.get_config("dataset=mnist,ipc=10,method=dsa")
  cfg = config.distill
  assert (cfg.outer_loop, cfg.inner_loop) == (10, 50)
  assert cfg.iterations == 1000 and cfg.lr_images == 0.1
  assert cfg.lr_net == 0.01 and cfg.batch_real == 256
  assert cfg.dsa_strategy == "color_crop_cutout_scale_rotate"
  assert gm.get_config("dataset=mnist,method=dc").distill.dsa_strategy == "none"


def test_idc_config_holds_the_reference_settings():
  from configs import idc

  config = idc.get_config("dataset=mnist,variant=idc")
  cfg = config.distill
  assert (config.synset.param, config.synset.formation) == ("pixels", 2)
  assert (cfg.distance, cfg.net_data, cfg.outer_loop) == ("l1", "real", 100)
  assert (cfg.net_momentum, cfg.net_weight_decay, cfg.lr_net) == (
    0.9,
    5e-4,
    0.01,
  )
  assert cfg.iterations == 500 and cfg.dsa_strategy == "color_crop_cutout"
  # The reference's 5e-3 * ipc / 10 on [0, 1] pixels, in standardised units.
  np.testing.assert_allclose(cfg.lr_images, 5e-4 / 0.3081**2)
  low = idc.get_config("dataset=mnist,variant=loidc_i")
  assert (low.synset.param, low.synset.formation, low.synset.rank) == (
    "factors",
    1,
    2,
  )
  assert idc.get_config("variant=idc,formation=4").synset.formation == 4
  with pytest.raises(ValueError, match="config arg variant"):
    idc.get_config("variant=haba")


def test_dm_config_holds_the_published_settings():
  from configs import dm

  config = dm.get_config("dataset=mnist,ipc=10")
  assert config.distill.iterations == 20000
  assert config.distill.lr_images == 1.0 and config.distill.momentum == 0.5
  assert config.distill.batch_real == 256
  assert config.synset.init == "real" and config.synset.rank == 8
  assert config.eval.epochs == 1000


def test_dm_config_takes_the_mapper_shape_chosen_on_held_out_data():
  from configs import dm

  mappers = dm.get_config("dataset=mnist,param=mappers").synset
  assert (mappers.rank, mappers.num_sets) == dm.MAPPER_SHAPES[("mnist", 1)]
  given = dm.get_config("dataset=mnist,param=mappers,rank=6,num_sets=2").synset
  assert (given.rank, given.num_sets) == (6, 2)
  factors = dm.get_config("dataset=mnist,param=factors").synset
  assert factors.rank == dm.RANKS[("mnist", 1)]
  unlisted = dm.get_config("dataset=mnist,ipc=10,param=mappers").synset
  assert ("mnist", 10) not in dm.MAPPER_SHAPES
  assert (unlisted.rank, unlisted.num_sets) == (
    dm.RANKS[("mnist", 10)],
    dm.MAPPER_SETS,
  )


def test_configs_import_no_run_module(fresh_python):
  code = (
    "import sys, importlib\n"
    "for name in ('dm', 'gm', 'idc', 'tm', 'bptt', 'rtp', 'experts', "
    "'coreset', 'continual', 'evaluate'):\n"
    "  importlib.import_module('configs.' + name)\n"
    "runs = ('distill', 'continual', 'experts', 'evaluate', 'coreset', "
    "'checkpoint')\n"
    "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
    "[['lowrank_distill', r] for r in runs]))\n"
  )
  assert fresh_python(code).strip() == "[]"


@pytest.mark.parametrize(
  "name", ["dm", "gm", "tm", "bptt", "experts", "continual"]
)
def test_digit_datasets_get_dsa_without_flip(name):
  from configs import common

  module = importlib.import_module(f"configs.{name}")
  for dataset, strategy in (("mnist", common.DSA_NO_FLIP), ("cifar10", None)):
    config = module.get_config(f"dataset={dataset}")
    assert config.eval.dsa_strategy == (strategy or augment.DEFAULT_STRATEGY)
    if "experts" in config and "dsa_strategy" in config.experts:
      assert config.experts.dsa_strategy == config.eval.dsa_strategy


def test_coreset_evaluates_with_the_dataset_dsa_strategy():
  from configs import common, coreset

  config = coreset.get_config("dataset=mnist,dsa=true")
  assert config.eval.dsa_strategy == common.DSA_NO_FLIP
  assert coreset.get_config("dataset=mnist").eval.dsa_strategy == "none"


def _numeric_fields(tree, prefix=""):
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _numeric_fields(value, f"{prefix}{name}.")
    elif isinstance(value, int | float) and not isinstance(value, bool):
      yield f"{prefix}{name}"


def _run_ranges(name):
  from lowrank_distill import coreset, evaluate
  from lowrank_distill.continual import planning as continual_planning
  from lowrank_distill.experts import loop as experts_loop

  return {
    "continual": continual_planning.RANGES,
    "coreset": coreset.RANGES,
    "evaluate": evaluate.RANGES,
    "experts": experts_loop.RANGES,
  }.get(name, distill.RANGES)


def _fields_without_a_range(config, ranges):
  from lowrank_distill.continual import memories
  from lowrank_distill.experts import loop as experts_loop

  missing = []
  for field in _numeric_fields(config):
    if not field.startswith("continual.memories."):
      missing += [] if field in ranges else [field]
  for name, entry in config.get("continual", {}).get("memories", {}).items():
    parts = {
      "": (
        {k: v for k, v in entry.items() if k not in ("config", "experts")},
        memories.CORESET_RANGES,
      ),
      "config.": (entry.get("config", {}), distill.RANGES),
      "experts.": (entry.get("experts", {}), experts_loop.RANGES),
    }
    for where, (tree, allowed) in parts.items():
      missing += [
        f"continual.memories.{name}.{where}{field}"
        for field in _numeric_fields(tree)
        if field not in allowed
      ]
  return missing


def _range_cases():
  from configs import continual

  every_memory = "methods=" + "+".join(continual.MEMORIES) + ",ipc=1"
  args = {
    "evaluate": ["synset=/x", "synset=/x,runlocal=true"],
    "tm": [f"ipc=1,dataset={d}" for d in ("digits", "mnist", "cifar10")],
    "continual": [every_memory, every_memory + ",dataset=mnist"],
  }
  default = [None, "runlocal=true", "dataset=mnist", "dataset=cifar10"]
  return [(name, arg) for name in CONFIGS for arg in args.get(name, default)]


@pytest.mark.parametrize("name,arg", _range_cases())
def test_every_numeric_field_of_every_config_has_a_range(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg).to_dict()
  assert _fields_without_a_range(config, _run_ranges(name)) == []
