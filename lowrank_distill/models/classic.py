"""MLP, LeNet, AlexNet, VGG11, ResNet18 (and ResNet18BN_AP) as in the DC/DSA/DM
references.

Layer for layer the networks of the reference `networks.py` (Zhao et al.),
used for cross-architecture evaluation. Dense layers infer their input size,
so feature maps are flattened in (h, w, c) order and input sizes other than
28x28 / 32x32 work where the architecture leaves a non-empty map (LeNet
needs at least 16x16, VGG11 at least 32x32; ResNet18 averages globally when
its last map is smaller than the reference's 4x4 pooling window).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowrank_distill.models import layers
from lowrank_distill.models.conv import Conv, Dense
from lowrank_distill.models.convnet import first_padding


def _flatten(x):
  return x.reshape(x.shape[0], -1)


class MLP(nn.Module):
  """fc 128 -> ReLU -> fc 128 -> ReLU -> fc classes on the flattened image.

  References:
    Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
    ICLR 2021 (`MLP` of their `networks.py`).
  """

  num_classes: int
  conv_impl: str = "xla"  # Unused; keeps the constructors uniform.

  def setup(self):
    self.fc_1 = Dense(128)
    self.fc_2 = Dense(128)
    self.fc_3 = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, 128]."""
    del train
    x = jax.nn.relu(self.fc_1(_flatten(x)))
    return jax.nn.relu(self.fc_2(x))

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.fc_3(self.embed(x, train))


class LeNetFeatures(nn.Module):
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    pad = first_padding(x, default=0, mnist=2)
    x = Conv(6, 5, padding=pad, impl=self.conv_impl, name="conv_0")(x)
    x = layers.pool(jax.nn.relu(x), "max")
    x = Conv(16, 5, impl=self.conv_impl, name="conv_1")(x)
    x = layers.pool(jax.nn.relu(x), "max")
    return _flatten(x)


class LeNet(nn.Module):
  """conv5x5 6 -> ReLU -> maxpool -> conv5x5 16 -> ReLU -> maxpool -> fc 120
  -> fc 84 -> fc classes (ReLU between). The first conv pads 2 on 28x28.

  References:
    LeCun et al., "Gradient-based learning applied to document recognition",
    1998; the variant of Zhao et al.'s `networks.py`.
  """

  num_classes: int
  conv_impl: str = "xla"

  def setup(self):
    self.features = LeNetFeatures(conv_impl=self.conv_impl)
    self.fc_1 = Dense(120)
    self.fc_2 = Dense(84)
    self.fc_3 = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, 84]."""
    del train
    x = jax.nn.relu(self.fc_1(self.features(x)))
    return jax.nn.relu(self.fc_2(x))

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.fc_3(self.embed(x, train))


class AlexNetFeatures(nn.Module):
  norm: str = "none"
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool = False):
    pad = first_padding(x, default=2, mnist=4)
    specs = (  # (channels, kernel, padding, pool after)
      (128, 5, pad, True),
      (192, 5, 2, True),
      (256, 3, 1, False),
      (192, 3, 1, False),
      (192, 3, 1, True),
    )
    for i, (features, kernel, padding, pooled) in enumerate(specs):
      x = Conv(
        features,
        kernel,
        padding=padding,
        impl=self.conv_impl,
        bias_cancelled=layers.cancels_channel_bias(self.norm),
        name=f"conv_{i}",
      )(x)
      x = jax.nn.relu(layers.norm(x, self.norm, train=train, name=f"norm_{i}"))
      if pooled:
        x = layers.pool(x, "max")
    return _flatten(x)


class AlexNet(nn.Module):
  """AlexNet of the DC repo: conv5x5 128 (pad 2, 4 on 28x28), maxpool,
  conv5x5 192, maxpool, conv3x3 256, conv3x3 192, conv3x3 192, maxpool, fc.
  `norm='batch'` (AlexNetBN) puts a BatchNorm after every conv.

  References:
    Krizhevsky et al., "ImageNet classification with deep convolutional
    neural networks", 2012; the variant of Zhao et al.'s `networks.py`.
  """

  num_classes: int
  norm: str = "none"
  conv_impl: str = "xla"

  def setup(self):
    self.features = AlexNetFeatures(norm=self.norm, conv_impl=self.conv_impl)
    self.classifier = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, 192 * h' * w'] (3072 for 32x32)."""
    return self.features(x, train)

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.classifier(self.embed(x, train))


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGFeatures(nn.Module):
  cfg: tuple = VGG11_CFG
  norm: str = "instance"
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool = False):
    pad = first_padding(x, default=1, mnist=3)
    for i, item in enumerate(self.cfg):
      if item == "M":
        x = layers.pool(x, "max")
        continue
      x = Conv(
        item,
        3,
        padding=pad if i == 0 else 1,
        impl=self.conv_impl,
        bias_cancelled=layers.cancels_channel_bias(self.norm),
        name=f"conv_{i}",
      )(x)
      x = jax.nn.relu(layers.norm(x, self.norm, train=train, name=f"norm_{i}"))
    return _flatten(x)


class VGG11(nn.Module):
  """VGG11 of the DC repo: [64,M,128,M,256,256,M,512,512,M,512,512,M] with
  conv3x3 (pad 1; pad 3 for the first conv on 28x28) -> norm -> ReLU, then
  one linear classifier 512 -> classes. Norm 'instance' (GroupNorm, one
  group per channel) by default, 'batch' for VGG11BN.

  References:
    Simonyan & Zisserman, "Very deep convolutional networks for large-scale
    image recognition", ICLR 2015; the variant of Zhao et al.'s
    `networks.py`.
  """

  num_classes: int
  norm: str = "instance"
  conv_impl: str = "xla"

  def setup(self):
    self.features = VGGFeatures(norm=self.norm, conv_impl=self.conv_impl)
    self.classifier = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, 512] (for 28x28 and 32x32 inputs)."""
    return self.features(x, train)

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.classifier(self.embed(x, train))


class BasicBlock(nn.Module):
  """Two conv3x3 (no bias) with norms and a projection shortcut on change.

  `avg_pool_downsample` (the reference's `BasicBlock_AP`): the convs keep
  stride 1 and a 2x2 average pool downsamples after the first norm and in
  the shortcut (after its 1x1 conv) instead.
  """

  features: int
  stride: int = 1
  norm: str = "instance"
  conv_impl: str = "xla"
  avg_pool_downsample: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv(y, kernel, stride, padding, name):
      return Conv(
        self.features,
        kernel,
        stride=stride,
        padding=padding,
        use_bias=False,
        impl=self.conv_impl,
        name=name,
      )(y)

    pooled = self.avg_pool_downsample and self.stride != 1
    conv_stride = 1 if self.avg_pool_downsample else self.stride
    out = conv(x, 3, conv_stride, 1, "conv1")
    out = jax.nn.relu(layers.norm(out, self.norm, train=train, name="norm1"))
    if pooled:
      out = layers.pool(out, "avg", window=self.stride)
    out = conv(out, 3, 1, 1, "conv2")
    out = layers.norm(out, self.norm, train=train, name="norm2")
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(x, 1, conv_stride, 0, "shortcut_conv")
      if pooled:
        shortcut = layers.pool(shortcut, "avg", window=self.stride)
      shortcut = layers.norm(
        shortcut, self.norm, train=train, name="shortcut_norm"
      )
    return jax.nn.relu(out + shortcut)


class ResNetFeatures(nn.Module):
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  norm: str = "instance"
  conv_impl: str = "xla"
  # ResNet_AP: average-pool downsampling, and the last map flattened whole.
  avg_pool_downsample: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Conv(
      64, 3, padding=1, use_bias=False, impl=self.conv_impl, name="conv1"
    )(x)
    x = jax.nn.relu(layers.norm(x, self.norm, train=train, name="norm1"))
    for stage, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        x = BasicBlock(
          64 * 2**stage,
          stride=2 if stage > 0 and b == 0 else 1,
          norm=self.norm,
          conv_impl=self.conv_impl,
          avg_pool_downsample=self.avg_pool_downsample,
          name=f"layer{stage + 1}_{b}",
        )(x, train)
    if self.avg_pool_downsample:
      # The reference's final `avg_pool2d(kernel_size=1)` keeps the map:
      # its classifier reads 3x3x512 on MNIST, 4x4x512 on CIFAR.
      return _flatten(x)
    if min(x.shape[1:3]) >= 4:
      x = layers.pool(x, "avg", window=4)
    else:
      # The reference's 4x4 window does not fit maps of small inputs (8x8
      # digits end at 1x1); average globally there instead.
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    return _flatten(x)


class ResNet18(nn.Module):
  """ResNet18 of the DC repo: conv3x3 64 stem (stride 1, no bias), norm,
  ReLU, BasicBlock stages [2, 2, 2, 2] at widths 64..512 with strides
  1, 2, 2, 2, 4x4 average pooling, linear 512 -> classes. Norm 'instance'
  (GroupNorm, one group per channel) by default, 'batch' for ResNet18BN.
  `avg_pool_downsample` gives the references' ResNet18BN_AP (with 'batch'):
  2x2 average pools instead of strided convs, and the classifier on the
  whole last map (11,213,770 / 11,250,762 / 11,988,132 parameters on MNIST /
  CIFAR-10 / CIFAR-100 shapes, as PyTorch counts them).

  References:
    He et al., "Deep residual learning for image recognition", CVPR 2016;
    the variant of Zhao et al.'s `networks.py`.
  """

  num_classes: int
  norm: str = "instance"
  conv_impl: str = "xla"
  avg_pool_downsample: bool = False

  def setup(self):
    self.features = ResNetFeatures(
      norm=self.norm,
      conv_impl=self.conv_impl,
      avg_pool_downsample=self.avg_pool_downsample,
    )
    self.classifier = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, 512] (for inputs up to 56x56); with
    `avg_pool_downsample`, [n, (h // 8) * (w // 8) * 512]."""
    return self.features(x, train)

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.classifier(self.embed(x, train))
