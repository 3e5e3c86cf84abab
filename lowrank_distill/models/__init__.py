"""Flax Linen networks of dataset distillation, by name.

    model = models.create('convnet', num_classes=10, image_shape=(32, 32, 3))
    variables = model.init(key, images[:1])
    logits = model.apply(variables, images)                   # [n, classes]
    feats = model.apply(variables, images, method='embed')    # [n, d]
    logits, updates = model.apply(                            # BatchNorm
        variables, images, train=True, mutable=['batch_stats'])

Inputs are NHWC float32. Conv kernels are [kh, kw, cin, cout] and dense
kernels [in, out]: the output axis is the last one. Initialisation follows
PyTorch's defaults, since distribution matching samples random networks.
"""

from lowrank_distill.models.classic import (
  MLP,
  VGG11,
  AlexNet,
  LeNet,
  ResNet18,
)
from lowrank_distill.models.conv import (
  CONV_IMPLS,
  Conv,
  Dense,
  compiler_options,
  conv2d,
  resolve_conv_impl,
)
from lowrank_distill.models.convnet import ConvNet
from lowrank_distill.models.layers import (
  ACTIVATIONS,
  NORMS,
  POOLINGS,
  BatchNorm,
  GroupNorm,
  LayerNorm,
)
from lowrank_distill.models.registry import (
  CONVNET_OPTIONS,
  MODELS,
  check_names,
  create,
  describe,
  options_for,
  uses_batch_norm,
)

__all__ = [
  "ACTIVATIONS",
  "CONVNET_OPTIONS",
  "CONV_IMPLS",
  "MODELS",
  "NORMS",
  "POOLINGS",
  "AlexNet",
  "BatchNorm",
  "Conv",
  "ConvNet",
  "Dense",
  "GroupNorm",
  "LayerNorm",
  "LeNet",
  "MLP",
  "ResNet18",
  "VGG11",
  "check_names",
  "compiler_options",
  "conv2d",
  "create",
  "describe",
  "options_for",
  "resolve_conv_impl",
  "uses_batch_norm",
]
