"""One config identity for everything a run leaves and may resume from.

Checkpoints, expert buffers and workdirs record the config that made them
and refuse to continue under another. All three turn it into plain JSON
types (`to_json_types`), flatten it to dotted names, leave out the fields a
resumed run may change (`identity`) and list what differs the same way
(`diff`).
"""

import json
from collections.abc import Iterable
from typing import Any


def json_default(value: Any):
  """`json.dumps`'s `default`: ConfigDicts as dicts, arrays as lists."""
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json_types(obj):
  """`obj` as plain JSON types (tuples become lists, arrays lists)."""
  return json.loads(json.dumps(obj, default=json_default))


def flatten(config: dict, prefix: str = "") -> dict:
  """A nested dict as one dict of dotted names (empty dicts kept as values)."""
  flat = {}
  for name, value in config.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f"{prefix}{name}."))
    else:
      flat[f"{prefix}{name}"] = value
  return flat


def _covered(name: str, fields: Iterable[str]) -> bool:
  return any(name == f or name.startswith(f + ".") for f in fields)


# Fields added to the configs after runs were written, with the value that
# keeps the old behaviour: `diff` counts such a field absent on one side and
# at that value on the other as equal, so a run, checkpoint or buffer
# written before it existed still resumes.
ADDED_FIELDS = {
  "dataset.validation_per_class": 0,
  "synset.formation": 1,
  "synset.num_bases": 16,
  "synset.num_hallucinators": 5,
  "distill.net_data": "synthetic",
  "distill.net_real_per_class": 50,
  "distill.net_momentum": 0.0,
  "distill.net_weight_decay": 0.0,
  "distill.clamp_images": False,
  "distill.net_cutmix": 0.0,
  "distill.class_steps": False,
  "distill.learn_images": True,
  "distill.lr_hallucinators": 0.0,
  "distill.optimizer": "sgd",
  "distill.orthonormal_mappers": False,
  "distill.lr_mappers": 0.0,
  "distill.ema_decay": 0.0,
  "eval.grad_chunk": 0,
  "labels.experts": "",
  "distill.club_weight": 0.0,
  "distill.extractor_lr": 0.001,
  "distill.extractor_momentum": 0.9,
  "distill.extractor_cls_weight": 1.0,
  "distill.extractor_likelihood_weight": 1.0,
  "distill.extractor_contrast_weight": 1.0,
  "distill.embedder_pool": 0,
  "distill.embedder_refresh": 10,
  "distill.embedder_lr": 0.01,
  "distill.embedder_momentum": 0.9,
  "distill.embedder_real_per_class": 10,
  "distill.embedder_batch": 256,
  "distill.ce_weight": 0.0,
  "distill.mmd_width": 0.0,
  "synset.init_set": "",
}


def identity(config_dict: dict, resumable_fields: Iterable[str] = ()) -> dict:
  """The flattened config without the fields a resumed run may change.

  Args:
    config_dict: a config as a (nested) dict.
    resumable_fields: dotted names; each drops itself and its sub-fields.
  """
  resumable_fields = tuple(resumable_fields)
  return {
    k: v
    for k, v in flatten(config_dict).items()
    if not _covered(k, resumable_fields)
  }


_ABSENT = object()


def diff(
  saved: dict, current: dict, *, ignore: Iterable[str] = ()
) -> list[str]:
  """Differing fields as `"name saved != current"` strings (dotted names).

  Dicts on both sides are compared key by key; anything else (a dict
  against a value, lists, numbers) as a whole. A field of `ADDED_FIELDS`
  absent on one side and at its old-behaviour value on the other is equal.

  Args:
    saved, current: (nested) dicts of JSON types.
    ignore: dotted names (and their sub-fields) left out.
  """
  return _diff(saved, current, "", tuple(ignore))


def _fmt(value) -> str:
  return "<absent>" if value is _ABSENT else repr(value)


def _diff(saved, current, prefix: str, ignore: tuple) -> list[str]:
  if isinstance(saved, dict) and isinstance(current, dict):
    names = list(current) + [name for name in saved if name not in current]
    diffs = []
    for name in names:
      diffs += _diff(
        saved.get(name, _ABSENT),
        current.get(name, _ABSENT),
        f"{prefix}{name}.",
        ignore,
      )
    return diffs
  name = prefix[:-1]
  if _covered(name, ignore) or saved == current:
    return []
  if name in ADDED_FIELDS:
    old = ADDED_FIELDS[name]
    if (saved is _ABSENT and current == old) or (
      current is _ABSENT and saved == old
    ):
      return []
  return [f"{name} {_fmt(saved)} != {_fmt(current)}"]
