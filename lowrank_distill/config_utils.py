"""Helpers for `configs/*.py`: argument strings and the shared sub-configs.

`get_config(arg)` files take `arg` as `key=value,key=value`
(`configs/dm.py:dataset=mnist,ipc=10`), parsed against typed defaults.
"""

import ml_collections

from lowrank_distill import augment, checks, data, models

EVAL_EPOCHS_WITH_DSA = 1000
EVAL_EPOCHS_WITHOUT_DSA = 300


def _convert(name: str, text: str, default):
  if isinstance(default, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"config arg {name}={text!r}: expected true or false")
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(
      f"config arg {name}={text!r}: expected {type(default).__name__}"
    ) from None


def _check_value(name: str, value, default):
  """`value` as the type of `default` (an int is a float too)."""
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int | float):
    ok = isinstance(value, type(default) | int) and not isinstance(value, bool)
  else:  # a string argument (default '' or None)
    ok = isinstance(value, str)
  if not ok:
    expected = "str" if default is None else type(default).__name__
    raise ValueError(f"config arg {name}={value!r}: expected {expected}")
  return float(value) if isinstance(default, float) else value


def parse_arg(
  arg: str | None, values: dict | None = None, /, **defaults
) -> ml_collections.ConfigDict:
  """The arguments of a `get_config`, against typed `defaults`.

  Args:
    arg: `key=value,...` as a launcher's `--config=file.py:arg` gives it.
    values: the same arguments as Python values (`get_config(ipc=10)`),
      for code that builds configs; not both.
    **defaults: every known argument and its default (its type is the
      argument's).

  Raises:
    ValueError: an unknown name, or a value of another type.
  """
  if arg and values:
    raise ValueError(
      f"config arg: give a string ({arg!r}) or keywords ({sorted(values)}), "
      f"not both"
    )
  parsed = dict(defaults)
  given = {}
  for item in filter(None, (arg or "").split(",")):
    name, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"config arg {item!r} is not of the form key=value")
    given[name] = text
  for name in [*given, *(values or {})]:
    if name not in defaults:
      raise ValueError(
        f"config arg {name!r} is not known; valid: {sorted(defaults)}"
      )
  for name, text in given.items():
    parsed[name] = _convert(name, text, defaults[name])
  for name, value in (values or {}).items():
    parsed[name] = _check_value(name, value, defaults[name])
  return ml_collections.ConfigDict(parsed)


def load_dataset(dataset_config: ml_collections.ConfigDict):
  """The dataset a run's `dataset` section names (`data.load`)."""
  return data.load(dataset_config.name, **dataset_kwargs(dataset_config))


def dataset_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """Arguments of `lowrank_distill.data.load`."""
  config = ml_collections.ConfigDict(
    {
      "name": name,
      "source": "",
      "path": "",
      "data_dir": "",
      "manual_dir": "",
      "zca": "none",
      # > 0: evaluate on this many train images per class held out of
      # training (choosing settings), not on the test split.
      "validation_per_class": 0,
    }
  )
  config.update(overrides)
  return config


# `eval.dsa_strategy` of an evaluation run (`evaluate.run`) that takes the
# strategy the set's own recipe names (our exports; configs/evaluate.py's
# default).
DSA_FROM_SET = "set"


def eval_config(
  *, dsa: bool, num_models: int = 5, runlocal: bool = False, **overrides
) -> ml_collections.ConfigDict:
  """The evaluation protocol of DESIGN 3.8 (DC/DSA reference settings)."""
  config = ml_collections.ConfigDict(
    {
      # A tuple: `--config.eval.models=convnet,lenet` on the command line.
      "models": ("convnet",),
      "num_models": num_models,
      "epochs": EVAL_EPOCHS_WITH_DSA if dsa else EVAL_EPOCHS_WITHOUT_DSA,
      "lr": 0.01,
      "batch_size": 256,
      "momentum": 0.9,
      "weight_decay": 5e-4,
      "dsa_strategy": augment.DEFAULT_STRATEGY if dsa else "none",
      # 0: `evaluate.auto_models_per_batch` (one at a time on a CPU, where
      # vmapping 10 seeds measured 1.36x slower; all at once elsewhere).
      "models_per_batch": 0,
      "test_batch_size": 500,
      # Each batch's gradient in chunks of at most this many images; 0:
      # `evaluate.auto_grad_chunk` (32 on a CPU, where a model's evaluation
      # took 0.78x the whole batch's time on 170 MNIST-size images and
      # 0.89x on 70, one core; the whole batch for batch-norm models and on
      # accelerators). The batch size turns chunking off.
      "grad_chunk": 0,
    }
  )
  if runlocal:
    config.update({"num_models": 2, "epochs": 20})
  config.update(overrides)
  return config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The network: a `lowrank_distill.models` name, its options, conv impl."""
  config = ml_collections.ConfigDict(
    {
      "name": "convnet",
      "conv_impl": "auto",
      # Used by the ConvNet family only (DESIGN 3.2 defaults).
      "options": {
        "width": 128,
        "depth": 3,
        "norm": "instance",
        "pooling": "avg",
        "activation": "relu",
      },
    }
  )
  config.update(overrides)
  return config


def mesh_config(**overrides) -> ml_collections.ConfigDict:
  """The device mesh (`lowrank_distill.sharding`): one 'data' axis.

  `data` is the number of devices along it; -1 (the default) uses every
  device of every process, 1 runs unsharded on the first device.
  """
  config = ml_collections.ConfigDict({"data": -1})
  config.update(overrides)
  return config


def _or_none(value):
  return None if value in ("", None) else value


def dataset_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `data.load` from a `dataset_config`."""
  return {
    "source": _or_none(config.source),
    "path": _or_none(config.path),
    "data_dir": _or_none(config.data_dir),
    "manual_dir": _or_none(config.manual_dir),
    "zca": config.zca,
    "validation_per_class": config.get("validation_per_class", 0),
  }


def eval_kwargs(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `evaluate.evaluate_set` from an `eval_config`."""
  return {
    "num_models": config.num_models,
    "epochs": config.epochs,
    "lr": config.lr,
    "batch_size": config.batch_size,
    "momentum": config.momentum,
    "weight_decay": config.weight_decay,
    "dsa_strategy": config.dsa_strategy,
    "models_per_batch": config.models_per_batch or None,
    "test_batch_size": config.test_batch_size,
    "grad_chunk": config.grad_chunk or None,
  }


# The ranges of the fields every run config has (`checks.check_ranges`);
# each run adds its own section's.
COMMON_RANGES = {
  "seed": checks.Range(low=0, integer=True),
  "dataset.validation_per_class": checks.count_or(0, "the test split"),
  "mesh.data": checks.count_or(-1, "every device"),
  "model.options.width": checks.COUNT,
  "model.options.depth": checks.COUNT,
  "eval.num_models": checks.COUNT,
  "eval.epochs": checks.COUNT,
  "eval.lr": checks.RATE,
  "eval.batch_size": checks.COUNT,
  "eval.momentum": checks.MOMENTUM,
  "eval.weight_decay": checks.NON_NEGATIVE,
  "eval.models_per_batch": checks.count_or(0, "auto"),
  "eval.test_batch_size": checks.COUNT,
  "eval.grad_chunk": checks.count_or(0, "auto"),
}


def split_comma_lists(config: ml_collections.ConfigDict) -> None:
  """Splits the comma-separated strings of every tuple field, in place.

  ml_collections overrides a tuple field from `--config.eval.models=a,b`
  as `('a,b',)` (and from repeated flags as `('a', 'b')`); this turns the
  first into the second, so either way of writing a list works.
  """
  for name, value in list(config.items()):
    if isinstance(value, ml_collections.ConfigDict):
      split_comma_lists(value)
    elif isinstance(value, tuple | list) and any(
      isinstance(v, str) and "," in v for v in value
    ):
      items = []
      for v in value:
        parts = v.split(",") if isinstance(v, str) else [v]
        items += [part.strip() for part in parts if part.strip()]
      config[name] = type(value)(items)


def evaluation_settings(config: ml_collections.ConfigDict) -> dict:
  """Keyword settings of `evaluate.evaluate_on_test_set` from a run config.

  The protocol (`config.eval`), the architectures and their options, and
  the conv impl (`config.model`): resolved once by a run's plan, so the
  evaluations that follow read no config.
  """
  names = list(config.eval.models)
  return {
    "model_names": names,
    "model_options": {
      name: models.options_for(name, config.model.options) for name in names
    },
    "conv_impl": config.model.conv_impl,
    **eval_kwargs(config.eval),
  }


def base_config(
  *,
  dataset: str,
  dsa: bool,
  runlocal: bool,
  seed: int = 0,
  validation_per_class: int = 0,
) -> ml_collections.ConfigDict:
  """Fields every run has: seed, dataset, model, eval, mesh.

  `validation_per_class` > 0 holds that many train images per class out and
  evaluates on them instead of the test split (`data.load`).
  """
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.dataset = dataset_config(
    dataset, validation_per_class=validation_per_class
  )
  config.model = model_config()
  config.eval = eval_config(dsa=dsa, runlocal=runlocal)
  config.mesh = mesh_config()
  if runlocal:
    config.model.options.update(width=16, depth=2)
  return config


# The loop's bookkeeping in a `runlocal` config: a few steps, every artifact.
RUNLOCAL_DISTILL = {
  "iterations": 4,
  "log_every": 2,
  "image_every": 0,
  "checkpoint_every": 2,
}


def distill_config(
  *,
  iterations: int,
  lr_images: float,
  conv_impl: str,
  eval_every: int,
  image_every: int,
  checkpoint_every: int,
  momentum: float = 0.5,
  learn_lr: bool = False,
  lr_student: float = 0.01,
  lr_lr: float = 0.0,
  max_loss: float = 1e8,
  log_every: int = 10,
  learn_images: bool = True,
  lr_hallucinators: float = 0.0,
  optimizer: str = "sgd",
  lr_mappers: float = 0.0,
  orthonormal_mappers: bool = False,
  ema_decay: float = 0.0,
  **objective_fields,
) -> ml_collections.ConfigDict:
  """`config.distill`: the loop's fields every objective has, plus its own.

  Args:
    iterations, lr_images, momentum: the synthetic set's SGD.
    learn_images: False keeps the images (their parameterization) as
      initialised, e.g. real images whose labels alone are learned (LD).
    lr_hallucinators: the lr of a hallucinator set's networks (0: the
      images' lr).
    optimizer: every group's update rule, 'sgd' (with `momentum`) or
      'adam'.
    lr_mappers: the lr of shared mappers (`synset.param='mappers'`; 0: the
      images' lr, their codes keep it).
    orthonormal_mappers: shared mappers (`synset.param='mappers'`) are made
      orthonormal again after every update, their scale moved into the
      codes (`mappers.orthonormalize`; the images do not change).
    ema_decay: the run evaluates and exports an exponential moving average
      of its set with this decay (FTD; `step.with_average`); 0: the last
      set.
    conv_impl: the distillation network's convolution ('xla' | 'im2col' |
      'canonical' | 'auto'); evaluation uses `model.conv_impl`.
    eval_every, image_every, checkpoint_every, log_every: intervals in
      iterations (0: never, except at the end).
    learn_lr, lr_student, lr_lr: the student lr (trajectory matching).
    max_loss: losses above it skip the update (counted).
    **objective_fields: the objective's own fields (batch_real, loops, ...).
  """
  return ml_collections.ConfigDict(
    {
      "iterations": iterations,
      "lr_images": lr_images,
      "learn_images": learn_images,
      "lr_hallucinators": lr_hallucinators,
      "optimizer": optimizer,
      "lr_mappers": lr_mappers,
      "orthonormal_mappers": orthonormal_mappers,
      "ema_decay": ema_decay,
      "momentum": momentum,
      "conv_impl": conv_impl,
      "learn_lr": learn_lr,
      "lr_student": lr_student,
      "lr_lr": lr_lr,
      "max_loss": max_loss,
      "log_every": log_every,
      "eval_every": eval_every,
      "image_every": image_every,
      "checkpoint_every": checkpoint_every,
      **objective_fields,
    }
  )
