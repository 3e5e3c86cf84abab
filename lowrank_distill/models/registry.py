"""Model registry: names, validated options, and `create`."""

import dataclasses
import functools
import numbers
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowrank_distill.models import classic, layers
from lowrank_distill.models.conv import resolve_conv_impl
from lowrank_distill.models.convnet import ConvNet

# Options of the ConvNet family and their defaults (DESIGN 3.2).
CONVNET_OPTIONS = {
  "width": 128,
  "depth": 3,
  "norm": "instance",
  "pooling": "avg",
  "activation": "relu",
}
_CHOICES = {
  "norm": layers.NORMS,
  "pooling": layers.POOLINGS,
  "activation": layers.ACTIVATIONS,
}

# ConvNet variants named as in the references' `get_network` (ConvNetBN,
# ConvNetD4, ...): each fixes one option.
_CONVNET_VARIANTS = {
  "convnet": {},
  "convnet_in": {"norm": "instance"},
  "convnet_bn": {"norm": "batch"},
  "convnet_ln": {"norm": "layer"},
  "convnet_gn": {"norm": "group"},
  "convnet_nn": {"norm": "none"},
  "convnet_ap": {"pooling": "avg"},
  "convnet_mp": {"pooling": "max"},
  "convnet_np": {"pooling": "none"},
  "convnet_ar": {"activation": "relu"},
  "convnet_as": {"activation": "sigmoid"},
  "convnet_al": {"activation": "leakyrelu"},
  **{f"convnet_d{d}": {"depth": d} for d in (1, 2, 3, 4)},
  **{f"convnet_w{w}": {"width": w} for w in (32, 64, 128, 256)},
}
_OTHERS = {
  "mlp": (classic.MLP, {}),
  "lenet": (classic.LeNet, {}),
  "alexnet": (classic.AlexNet, {"norm": "none"}),
  "alexnet_bn": (classic.AlexNet, {"norm": "batch"}),
  "vgg11": (classic.VGG11, {"norm": "instance"}),
  "vgg11_bn": (classic.VGG11, {"norm": "batch"}),
  "resnet18": (classic.ResNet18, {"norm": "instance"}),
  "resnet18_bn": (classic.ResNet18, {"norm": "batch"}),
  # The reference cross-architecture tables' ResNet18BN_AP.
  "resnet18_bn_ap": (
    classic.ResNet18,
    {"norm": "batch", "avg_pool_downsample": True},
  ),
}

# name -> options the name fixes (not settable through `create`).
_FIXED = {
  **_CONVNET_VARIANTS,
  **{name: fixed for name, (_, fixed) in _OTHERS.items()},
}
# name -> options `create` accepts for it.
_TUNABLE = {
  **{
    name: tuple(k for k in CONVNET_OPTIONS if k not in fixed)
    for name, fixed in _CONVNET_VARIANTS.items()
  },
  **{name: () for name in _OTHERS},
}

MODELS: dict[str, Callable[..., nn.Module]] = {
  **{
    name: functools.partial(ConvNet, **fixed)
    for name, fixed in _CONVNET_VARIANTS.items()
  },
  **{
    name: functools.partial(cls, **fixed)
    for name, (cls, fixed) in _OTHERS.items()
  },
}


def check_names(names: Iterable[str], *, field: str = "model") -> None:
  """Raises ValueError naming `field` and the valid names if any is unknown."""
  for name in names:
    if name not in MODELS:
      raise ValueError(
        f"unknown {field} {name!r}; valid names: {', '.join(MODELS)}"
      )


def _as_dict(options) -> dict:
  if options is None:
    return {}
  if hasattr(options, "to_dict"):  # ml_collections.ConfigDict
    return dict(options.to_dict())
  return dict(options)


def options_for(name: str, options: Mapping | None) -> dict:
  """The subset of `options` that model `name` takes through `create`.

  Lets one options dict (a config's ConvNet options) serve every model of a
  cross-architecture evaluation: LeNet takes none of them, 'convnet_bn' all
  but `norm` (it fixes 'batch'). Keys that no model takes raise ValueError.
  """
  check_names([name])
  options = _as_dict(options)
  for key in options:
    if key not in CONVNET_OPTIONS:
      raise ValueError(
        f"unknown model option {key!r}; valid options: "
        f"{', '.join(CONVNET_OPTIONS)}"
      )
  return {k: v for k, v in options.items() if k in _TUNABLE[name]}


def _check_options(name: str, options: dict) -> dict:
  fixed, tunable = _FIXED[name], _TUNABLE[name]
  checked = {}
  for key, value in options.items():
    if key in fixed:
      if value != fixed[key]:
        raise ValueError(
          f"model {name!r} fixes {key}={fixed[key]!r}, got {key}={value!r}"
        )
      continue
    if key not in tunable:
      raise ValueError(
        f"model {name!r} has no option {key!r}; valid options: "
        f"{', '.join(tunable) if tunable else 'none'}"
      )
    if key in _CHOICES:
      if value not in _CHOICES[key]:
        raise ValueError(
          f"{key} must be one of {', '.join(_CHOICES[key])}; got {value!r}"
        )
    elif (
      not isinstance(value, numbers.Integral)
      or isinstance(value, bool)
      or value < 1
    ):
      raise ValueError(f"{key} must be a positive integer, got {value!r}")
    else:
      value = int(value)
    checked[key] = value
  norm = checked.get("norm", fixed.get("norm"))
  width = checked.get("width", fixed.get("width"))
  if norm == "group" and width is not None and width % 4:
    raise ValueError(
      f"norm='group' (4 groups) needs width % 4 == 0, got {width}"
    )
  return checked


def create(
  name: str,
  *,
  num_classes: int,
  image_shape: tuple[int, int, int],
  conv_impl: str = "auto",
  **options,
) -> nn.Module:
  """Builds a network of `MODELS` for images of `image_shape`.

  Args:
    name: a key of `MODELS`.
    num_classes: size of the logits.
    image_shape: (h, w, c) of the input images; checked against the
      architecture (e.g. VGG11 needs at least 32x32, LeNet 16x16).
    conv_impl: 'xla', 'im2col', 'canonical', or 'auto' ('canonical' when
      JAX's default backend is the CPU, else 'xla'), resolved here.
    **options: for the ConvNet family: width (128), depth (3), norm
      ('instance' | 'batch' | 'layer' | 'group' | 'none'), pooling ('avg' |
      'max' | 'none'), activation ('relu' | 'sigmoid' | 'leakyrelu'); a
      variant such as 'convnet_bn' fixes its option. Other models take none.

  Returns:
    The Linen module: `apply(variables, x, train=False)` gives logits
    [n, num_classes] for x [n, h, w, c]; `method='embed'` the features.

  Raises:
    ValueError: an unknown name, option or value (listing the valid ones),
      or an image shape the architecture cannot take.
  """
  check_names([name])
  options = _check_options(name, options)
  if (
    not isinstance(num_classes, numbers.Integral)
    or isinstance(num_classes, bool)
    or num_classes < 1
  ):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  image_shape = tuple(image_shape)
  if len(image_shape) != 3 or not all(
    isinstance(d, numbers.Integral) and d >= 1 for d in image_shape
  ):
    raise ValueError(
      f"image_shape must be (h, w, c) positive ints, got {image_shape!r}"
    )
  impl = resolve_conv_impl(conv_impl)
  model = MODELS[name](num_classes=int(num_classes), conv_impl=impl, **options)
  _check_image_shape(name, model, tuple(int(d) for d in image_shape))
  return model


@functools.lru_cache(maxsize=256)
def _check_image_shape(name, model, image_shape):
  # Tracing shapes only (no compile: the key too is made inside); the
  # layers raise on maps that vanish.
  try:
    jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
    )
  except ValueError as e:
    raise ValueError(
      f"model {name!r} cannot take images of shape {image_shape}: {e}"
    ) from e


def describe(model) -> dict:
  """A module from `create` as JSON: its class and every option it holds."""
  fields = {
    f.name: getattr(model, f.name)
    for f in dataclasses.fields(model)
    if f.name not in ("parent", "name")
  }
  return {"class": type(model).__name__, **fields}


def uses_batch_norm(model) -> bool:
  """Whether the model's variables carry 'batch_stats'.

  Args:
    model: a module from `create`, or its variables (a mapping).
  """
  if isinstance(model, Mapping):
    return "batch_stats" in model
  return getattr(model, "norm", "none") == "batch"
