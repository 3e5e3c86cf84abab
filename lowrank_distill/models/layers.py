"""Normalisation, pooling and activation layers as in the PyTorch references.

All norms use eps 1e-5 and the biased variance, initialise the scale to 1
and the bias to 0, and name their parameters 'scale' and 'bias'.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-5

NORMS = ("instance", "batch", "layer", "group", "none")
POOLINGS = ("avg", "max", "none")
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")


def _sums(arrays, axes: tuple[int, ...]) -> tuple:
  """Each array summed over `axes`, all arrays in each variadic reduce.

  Axes above the minor one are summed one at a time: one reduce over
  several of them (an image's h and w, the channels kept) reads the
  activations strided, and XLA:CPU took 6x as long as for the same sums
  one axis at a time (the first norm's statistics, 10 MNIST images: 1.2 ms
  of a 20 ms training step, docs/RESULTS.md); the barrier keeps XLA from
  merging the stages back. A sum over the minor axis reads contiguous rows
  and stays one reduce. Size-1 axes are dropped first.
  """
  arrays = tuple(arrays)
  shape = arrays[0].shape
  singles = {a for a in axes if shape[a] == 1}
  if singles:
    squeezed = [n for a, n in enumerate(shape) if a not in singles]
    arrays = tuple(x.reshape(squeezed) for x in arrays)
    axes = tuple(
      a - sum(b < a for b in singles) for a in axes if a not in singles
    )
  if not axes:
    return arrays
  zero = jnp.zeros((), arrays[0].dtype)

  def reduce(arrays, axes):
    return tuple(
      jax.lax.reduce(
        arrays,
        (zero,) * len(arrays),
        lambda a, b: tuple(x + y for x, y in zip(a, b)),
        axes,
      )
    )

  if arrays[0].ndim - 1 in axes:
    return reduce(arrays, axes)
  for done, axis in enumerate(sorted(axes)):
    if done:
      arrays = jax.lax.optimization_barrier(arrays)
    arrays = reduce(arrays, (axis - done,))
  return arrays


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def moments(x, axes):
  """Mean and biased variance over `axes` (kept), in one pass over `x`.

  The sums of d and d**2 with d = x - x[first element along `axes`] are
  taken together (`_sums`): one read of `x` where the two-pass form reads
  the first layer's activations twice more (~10% of a DM step on CPU). The
  shift keeps E[d**2] - E[d]**2 from cancelling when the mean is large
  against the spread. Derivatives use the textbook formulas
  (`_moments_jvp`): JAX's derivative of a variadic reduce made second-order
  unrolls (trajectory matching) ~25% slower.
  """
  shift = x[
    tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
  ]
  d = x - shift
  sum_d, sum_d2 = _sums((d, jnp.square(d)), tuple(axes))
  count = math.prod(x.shape[a] for a in axes)
  kept = [1 if a in axes else n for a, n in enumerate(x.shape)]
  mean_d = (sum_d / count).reshape(kept)
  var = (sum_d2 / count).reshape(kept) - jnp.square(mean_d)
  return mean_d + shift, jnp.maximum(var, 0.0)


@moments.defjvp
def _moments_jvp(axes, primals, tangents):
  (x,), (dx,) = primals, tangents
  mean, var = moments(x, axes)
  dmean = jnp.mean(dx, axis=axes, keepdims=True)
  dvar = 2.0 * jnp.mean((x - mean) * dx, axis=axes, keepdims=True)
  return (mean, var), (dmean, dvar)


def _normalize(x, axes):
  mean, var = moments(x, axes)
  return (x - mean) * jax.lax.rsqrt(var + EPS)


def _group_statistics(x, groups: int):
  """Mean and 1/sqrt(var + EPS) of [n, h, w, C] per image and channel group.

  Both [n, 1, 1, groups, 1], for `x` viewed as [n, h, w, groups, C/groups].
  """
  n, h, w, c = x.shape
  mean, var = moments(x.reshape(n, h, w, groups, c // groups), (1, 2, 4))
  return mean, jax.lax.rsqrt(var + EPS)


def _normalized(x, mean, inv_std):
  n, h, w, c = x.shape
  groups = mean.shape[3]
  grouped = x.reshape(n, h, w, groups, c // groups)
  return ((grouped - mean) * inv_std).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def group_norm(x, scale, bias, groups: int):
  """`nn.GroupNorm(groups, C)` with its per-channel affine, on [n, h, w, C].

  Args:
    x: [n, h, w, C] activations; C divisible by `groups`.
    scale, bias: [C] affine parameters.
    groups: channel groups (C: the instance norm of the ConvNets).

  Returns:
    [n, h, w, C]: each image's channel group normalised to zero mean and unit
    biased variance (eps `EPS`), then scaled and shifted per channel.

  The backward pass is written out (`_group_norm_bwd`); derivatives of any
  order follow from it, and forward-mode (`jax.jvp`) is not defined.
  """
  mean, inv_std = _group_statistics(x, groups)
  c = x.shape[-1]
  return _normalized(x, mean, inv_std) * scale.reshape(1, 1, 1, c) + (
    bias.reshape(1, 1, 1, c)
  )


def _group_norm_fwd(x, scale, bias, groups):
  # The output comes from `group_norm` itself, not from its body: a second
  # derivative differentiates this rule, and must meet the written-out
  # backward again rather than autodiff's.
  mean, inv_std = _group_statistics(x, groups)
  return group_norm(x, scale, bias, groups), (x, mean, inv_std, scale)


def _group_norm_bwd(groups, residuals, dy):
  """dx = inv_std (g - mean(g) - x_hat mean(g x_hat)) per group, g = dy*scale.

  The means are over each image's group; the parameters' gradients are the
  sums of dy x_hat and dy over everything but the channel.
  """
  x, mean, inv_std, scale = residuals
  n, h, w, c = x.shape
  x_hat = _normalized(x, mean, inv_std)
  sum_dy, sum_dy_x_hat = _image_sums(dy, dy * x_hat)  # [n, C] each

  def group_mean(per_channel):  # [n, C] -> [n, 1, 1, groups, 1]
    summed = jnp.sum((per_channel * scale[None]).reshape(n, groups, -1), 2)
    return summed.reshape(n, 1, 1, groups, 1) / (h * w * (c // groups))

  grouped = (n, h, w, groups, c // groups)
  dx = inv_std * (
    (dy * scale.reshape(1, 1, 1, c)).reshape(grouped)
    - group_mean(sum_dy)
    - x_hat.reshape(grouped) * group_mean(sum_dy_x_hat)
  )
  return dx.reshape(x.shape), jnp.sum(sum_dy_x_hat, 0), jnp.sum(sum_dy, 0)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


@jax.custom_jvp
def _image_sums(*maps):
  """Each [n, h, w, C] map summed over h and w: [n, C] each.

  The per-channel gradients of the norms and conv biases sum these over the
  batch. Left to itself XLA merges the two stages into one reduction over
  (n, h, w), which XLA:CPU splits into reduce-windows that read the
  activations at a fraction of the speed: the first block's norm, ReLU and
  pool took twice as long backward (docs/RESULTS.md). The barrier keeps the
  stages apart. The maps are summed together (`_sums`: one pass over what
  they are computed from, then over the partial sums); the derivative,
  linear, sums the tangents with plain sums, which JAX can transpose.
  """
  return jax.lax.optimization_barrier(_sums(maps, (1, 2)))


@_image_sums.defjvp
def _image_sums_jvp(maps, tangents):
  return _image_sums(*maps), jax.lax.optimization_barrier(
    tuple(jnp.sum(t, axis=(1, 2)) for t in tangents)
  )


@jax.custom_vjp
def add_channel_bias(x, bias):
  """[n, h, w, C] + [C], whose bias gradient sums each image first."""
  return x + bias.reshape(1, 1, 1, -1)


def _add_channel_bias_fwd(x, bias):
  return add_channel_bias(x, bias), None


def _add_channel_bias_bwd(_, dy):
  # The layer below reads dy too (a conv's gradients): without the barrier
  # XLA fuses what computes dy into this sum and computes it twice.
  dy = jax.lax.optimization_barrier(dy)
  (per_image,) = _image_sums(dy)
  return dy, jnp.sum(per_image, 0)


add_channel_bias.defvjp(_add_channel_bias_fwd, _add_channel_bias_bwd)


class GroupNorm(nn.Module):
  """`nn.GroupNorm(num_groups, C, affine=True)` on [n, h, w, C].

  `num_groups=None` means one group per channel: the "instancenorm" of the
  DC/DSA/DM/MTT ConvNet (`nn.GroupNorm(C, C)`), which unlike
  `nn.InstanceNorm2d` has a per-channel affine.
  """

  num_groups: int | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    groups = c if self.num_groups is None else self.num_groups
    if c % groups:
      raise ValueError(
        f"GroupNorm: {c} channels are not divisible into {groups} groups"
      )
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return group_norm(x, scale, bias, groups)


class LayerNorm(nn.Module):
  """`nn.LayerNorm([C, H, W])` on [n, h, w, C]: one mean/var per image.

  Elementwise affine over the whole map: 'scale' and 'bias' are [h, w, C]
  (2*C*H*W parameters, as in the reference ConvNet's 'layernorm').
  """

  @nn.compact
  def __call__(self, x):
    shape = x.shape[1:]
    scale = self.param("scale", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    y = _normalize(x, (1, 2, 3))
    return y * scale.reshape(1, *shape) + bias.reshape(1, *shape)


class BatchNorm(nn.Module):
  """`nn.BatchNorm2d(C)` (momentum 0.1, eps 1e-5) on [n, h, w, C] or [n, C].

  Train mode normalises with the batch's mean and biased variance and, when
  the 'batch_stats' collection is mutable (and not while initialising),
  updates the running averages as PyTorch does: `mean <- 0.9 mean + 0.1
  batch_mean`, `var <- 0.9 var + 0.1 unbiased_batch_var`. Train mode with an
  immutable 'batch_stats' normalises with the batch and leaves the running
  averages alone (what gradient matching needs). Eval mode uses the running
  averages.

  Variables: params 'scale', 'bias' [C]; batch_stats 'mean' (init 0),
  'var' (init 1) [C].
  """

  momentum: float = 0.1

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    bshape = (1,) * (x.ndim - 1) + (c,)
    axes = tuple(range(x.ndim - 1))
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable(
      "batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)
    )
    ra_var = self.variable(
      "batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)
    )
    if train:
      mean, var = (m.reshape(c) for m in moments(x, axes))
      count = x.size // c
      if self.is_mutable_collection("batch_stats") and not (
        self.is_initializing()
      ):
        m = self.momentum
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean.reshape(bshape)) * jax.lax.rsqrt(var.reshape(bshape) + EPS)
    return y * scale.reshape(bshape) + bias.reshape(bshape)


def cancels_channel_bias(kind: str) -> bool:
  """Whether norm `kind` removes a per-channel constant added to its input.

  The instance norm subtracts each image's per-channel mean in every mode,
  so a conv bias before it never changes the output and its gradient is
  exactly zero. Batch norm does so only in train mode (its nets are matched
  in eval mode), the group and layer norms mix channels: not these.
  """
  return kind == "instance"


def norm(x, kind: str, *, train: bool, name: str):
  """Applies one of `NORMS` by name; 'none' is the identity.

  Call it inside a compact method: the norm module becomes a child called
  `name` of the calling module.
  """
  if kind == "instance":
    return GroupNorm(name=name)(x)
  if kind == "group":
    return GroupNorm(num_groups=4, name=name)(x)
  if kind == "layer":
    return LayerNorm(name=name)(x)
  if kind == "batch":
    return BatchNorm(name=name)(x, train)
  if kind == "none":
    return x
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def activation(x, kind: str):
  """ReLU, sigmoid or LeakyReLU (slope 0.01) by name."""
  if kind == "relu":
    return jax.nn.relu(x)
  if kind == "sigmoid":
    return jax.nn.sigmoid(x)
  if kind == "leakyrelu":
    return jax.nn.leaky_relu(x, 0.01)
  raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")


def pool(x, kind: str, window: int = 2):
  """`nn.AvgPool2d` / `nn.MaxPool2d` (window = stride, no padding, floor)."""
  if kind == "none":
    return x
  if x.shape[1] < window or x.shape[2] < window:
    raise ValueError(
      f"cannot {kind}-pool a {x.shape[1]}x{x.shape[2]} feature map with a "
      f"{window}x{window} window: the input image is too small"
    )
  dims = (window, window)
  if kind == "avg":
    # A reshape and a mean, not a reduce-window: XLA fuses the mean with the
    # norm and activation before it into one pass over the activations.
    n, h, w, c = x.shape
    h, w = h // window, w // window
    x = x[:, : h * window, : w * window].reshape(n, h, window, w, window, c)
    return jnp.mean(x, axis=(2, 4))
  if kind == "max":
    return nn.max_pool(x, dims, strides=dims)
  raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
