"""Tests of lowrank_distill.models.registry."""

import jax.numpy as jnp
import pytest
from models_helpers import TINY, _abstract_variables

from lowrank_distill import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_uses_batch_norm_agrees_with_the_variables(name):
  shape = (32, 32, 3)
  options = models.options_for(name, TINY)
  model = models.create(name, num_classes=10, image_shape=shape, **options)
  variables, _ = _abstract_variables(model, shape, batch=1)
  assert models.uses_batch_norm(model) == ("batch_stats" in variables)
  assert models.uses_batch_norm(model) == ("bn" in name.split("_"))


def test_unknown_names_and_options_list_valid_values():
  kwargs = {"num_classes": 10, "image_shape": (8, 8, 1)}
  with pytest.raises(ValueError, match=r"unknown model 'convnett'.*resnet18"):
    models.create("convnett", **kwargs)
  with pytest.raises(ValueError, match=r"norm must be one of .*instance"):
    models.create("convnet", norm="instancenorm", **kwargs)
  with pytest.raises(ValueError, match=r"pooling must be one of .*max"):
    models.create("convnet", pooling="mean", **kwargs)
  with pytest.raises(ValueError, match=r"activation must be one of .*sigmoid"):
    models.create("convnet", activation="gelu", **kwargs)
  with pytest.raises(ValueError, match=r"width must be a positive integer"):
    models.create("convnet", width=0, **kwargs)
  with pytest.raises(ValueError, match=r"no option 'dropout'.*width, depth"):
    models.create("convnet", dropout=0.5, **kwargs)
  with pytest.raises(ValueError, match=r"'lenet' has no option 'width'.*none"):
    models.create("lenet", width=8, image_shape=(28, 28, 1), num_classes=10)
  with pytest.raises(ValueError, match=r"fixes norm='batch'"):
    models.create("convnet_bn", norm="instance", **kwargs)
  with pytest.raises(ValueError, match=r"width % 4"):
    models.create("convnet_gn", width=6, **kwargs)
  with pytest.raises(ValueError, match=r"conv_impl must be one of .*im2col"):
    models.create("convnet", conv_impl="cudnn", **kwargs)
  with pytest.raises(ValueError, match=r"impl must be one of"):
    models.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")
  with pytest.raises(ValueError, match=r"num_classes"):
    models.create("convnet", num_classes=0, image_shape=(8, 8, 1))
  with pytest.raises(ValueError, match=r"cannot take images.*too small"):
    models.create("convnet", depth=4, **kwargs)
  with pytest.raises(ValueError, match=r"unknown eval model 'vit'.*lenet"):
    models.check_names(["convnet", "vit"], field="eval model")
  models.check_names(["convnet", "resnet18_bn"])
  # Passing a variant's own fixed value is fine.
  assert models.create("convnet_bn", norm="batch", **kwargs).norm == "batch"


def test_options_for_keeps_what_each_model_takes():
  options = {"width": 16, "depth": 2, "norm": "instance", "pooling": "avg"}
  assert models.options_for("convnet", options) == options
  assert models.options_for("convnet_bn", options) == {
    "width": 16,
    "depth": 2,
    "pooling": "avg",
  }
  assert models.options_for("lenet", options) == {}
  assert models.options_for("resnet18", None) == {}
  with pytest.raises(ValueError, match=r"unknown model option 'widht'"):
    models.options_for("convnet", {"widht": 16})
  with pytest.raises(ValueError, match=r"unknown model 'vgg'"):
    models.options_for("vgg", options)
  model = models.create(
    "convnet_bn",
    num_classes=10,
    image_shape=(8, 8, 1),
    **models.options_for("convnet_bn", options),
  )
  assert (model.width, model.depth, model.norm) == (16, 2, "batch")
