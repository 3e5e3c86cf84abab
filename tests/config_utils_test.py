"""Tests of config helpers and of every configs/*.py file."""

import importlib
import pathlib

import pytest

from lowrank_distill import config_utils, distill

CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
  if p.stem != "__init__"
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


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal=true"])
def test_every_config_builds(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg)
  assert "seed" in config and "eval" in config
  if "distill" in config:
    distill.validate(config)


def test_dm_config_holds_the_published_settings():
  from configs import dm

  config = dm.get_config("dataset=mnist,ipc=10")
  assert config.distill.iterations == 20000
  assert config.distill.lr_images == 1.0 and config.distill.momentum == 0.5
  assert config.distill.batch_real == 256
  assert config.synset.init == "real" and config.synset.rank == 8
  assert config.eval.epochs == 1000
