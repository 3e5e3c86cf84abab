"""The ConvNet of dataset distillation (DC, DSA, DM, MTT) and its variants."""

import flax.linen as nn

from lowrank_distill.models import layers
from lowrank_distill.models.conv import Conv, Dense


def first_padding(x, *, default: int, mnist: int) -> int:
  """Padding of a network's first conv: `mnist` for 28x28 inputs.

  The references pad MNIST-sized inputs more so that feature maps behave as
  those of 32x32 images (their rule is "one input channel"; ours looks at the
  size, so 8x8 digits keep the default).
  """
  return mnist if tuple(x.shape[1:3]) == (28, 28) else default


class ConvNetFeatures(nn.Module):
  """depth x [conv3x3 -> norm -> activation -> pool], flattened."""

  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  activation: str = "relu"
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, width * h' * w'] (h' = h // 2**depth)."""
    pad = first_padding(x, default=1, mnist=3)
    for d in range(self.depth):
      x = Conv(
        self.width,
        3,
        padding=pad if d == 0 else 1,
        impl=self.conv_impl,
        bias_cancelled=layers.cancels_channel_bias(self.norm),
        name=f"conv_{d}",
      )(x)
      x = layers.norm(x, self.norm, train=train, name=f"norm_{d}")
      x = layers.activation(x, self.activation)
      x = layers.pool(x, self.pooling)
    return x.reshape(x.shape[0], -1)


class ConvNet(nn.Module):
  """The default network of dataset distillation.

  `depth` blocks of `conv3x3 (pad 1, width channels) -> norm -> activation
  -> 2x2 pool`, then one linear classifier on the flattened feature map. For
  28x28 inputs the first conv pads by 3 so maps are those of a 32x32 image.
  Norms: 'instance' (GroupNorm, one group per channel, affine), 'batch',
  'layer' (over the whole [C, H, W] map, elementwise affine), 'group'
  (4 groups), 'none'.

  Features are flattened in (h, w, c) order, not PyTorch's (c, h, w); the
  classifier's rows are permuted accordingly, which changes nothing else.

  Params: {'features': {'conv_d': ..., 'norm_d': ...}, 'classifier': ...}.

  References:
    Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
    ICLR 2021 (the ConvNet of their `networks.py`, after Gidaris & Komodakis,
    2018).
  """

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  activation: str = "relu"
  conv_impl: str = "xla"

  def setup(self):
    self.features = ConvNetFeatures(
      width=self.width,
      depth=self.depth,
      norm=self.norm,
      pooling=self.pooling,
      activation=self.activation,
      conv_impl=self.conv_impl,
    )
    self.classifier = Dense(self.num_classes)

  def embed(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, d] flattened features (the classifier's input)."""
    return self.features(x, train)

  def __call__(self, x, train: bool = False):
    """x: [n, h, w, c] -> [n, num_classes] logits."""
    return self.classifier(self.embed(x, train))
