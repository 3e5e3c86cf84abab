"""2-D convolution with a selectable implementation, and PyTorch-style layers.

Three implementations of the same convolution (NHWC inputs, HWIO kernels):

- `'xla'`: `lax.conv_general_dilated`, the right choice on GPU/TPU.
- `'im2col'`: the `kh*kw` shifted (strided) slices of the padded input are
  concatenated on the channel axis and multiplied by the reshaped kernel in
  one matmul. On XLA:CPU the gradients autodiff gives `lax.conv` inside a
  loop (training, trajectory-matching unrolls) fall back to a naive loop
  that is more than an order of magnitude slower; slices, concatenation and
  a matmul all have fast CPU kernels.
- `'canonical'`: `lax.conv` for the forward pass, and its input and kernel
  gradients written as forward `lax.conv`s in the NHWC/HWIO layout too (a
  `custom_vjp` that calls itself, so every order of reverse derivative stays
  in that form). XLA:CPU runs such convolutions on its fast kernels inside
  loops as well; only the gradients autodiff derives (other dimension
  numbers) take the naive path. Inputs of fewer than
  `CANONICAL_MIN_CHANNELS` channels and strides other than 1 use im2col.
  The CPU default ('auto'): faster than im2col in every loop measured
  (docs/RESULTS.md, session 13).

Layers initialise as PyTorch's `nn.Conv2d` / `nn.Linear` defaults: weight and
bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (`kaiming_uniform_(a=sqrt(5))` for
the weight). Distribution matching samples random networks, so the
initialisation is part of the method.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lowrank_distill.models import layers

CONV_IMPLS = ("xla", "im2col", "canonical")
# 'canonical' convolves inputs of at least this many channels; thinner ones
# (a first layer) use im2col, whose small patches beat a convolution with
# one or three images per batch in its kernel gradient. One core of the
# 2-core AMD EPYC, a 3x3 conv to 128 channels trained in a loop, 70 images
# (docs/RESULTS.md, session 13): 1 channel 12.0 (im2col) vs 13.9 ms
# (canonical), 16: 68.8 vs 84.5, 32: 127.2 vs 113.5, 128 at 14x14: 34.3
# vs 21.6 ms.
CANONICAL_MIN_CHANNELS = 32

Padding = int | Sequence[int] | Sequence[tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'canonical' on the CPU backend, 'xla' elsewhere; checks names."""
  if impl == "auto":
    return "canonical" if jax.default_backend() == "cpu" else "xla"
  if impl not in CONV_IMPLS:
    raise ValueError(
      f"conv_impl must be one of {('auto', *CONV_IMPLS)}, got {impl!r}"
    )
  return impl


# On every CPU program with these networks, XLA's elemental emitters with
# 512-bit vectors build the instance norms' reductions and the normalise-
# ReLU-pool loops faster than its fusion emitters, with the same accuracy
# against float64 (one core of the 2-core AMD EPYC, docs/RESULTS.md, session
# 12): a DM step 3.16 -> 2.35 s (with the option below), a trajectory-
# matching unroll of 10 steps 19.2 -> 16.7 s, a gradient-matching iteration
# 10.28 -> 10.07 s, an evaluation training step on 70 images 321 -> 316 ms.
_CPU_OPTIONS = {
  "xla_cpu_use_fusion_emitters": False,
  "xla_cpu_prefer_vector_width": "512",
}
# XLA:CPU hands convolutions and the reductions after them (instance norm)
# to YNNPACK as one fused graph; for `lax.conv` outside a loop that ran the
# DM network's forward 1.6x slower than XLA's own kernels on the 2-core
# machine (docs/RESULTS.md), and a canonical conv layer trained in a loop
# 2.6x slower (210 vs 82 ms, session 13). im2col's matmuls are faster with
# it, so only 'xla' and 'canonical' turn it off.
_CPU_XLA_CONV_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_accepts(option: str, value: str | bool) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(
      jnp.float32(0)
    ).compile()
  except Exception:  # pylint: disable=broad-except
    return False  # A jaxlib without the (experimental) option.
  return True


def compiler_options(impl: str) -> dict[str, str | bool] | None:
  """XLA compiler options for `jax.jit` of code whose convolutions use `impl`.

  On the CPU backend: the elemental emitters with 512-bit vectors, and for
  'xla' (after resolving 'auto') XLA's own fused kernels instead of YNNPACK
  graph fusions; only the options this jaxlib accepts. Elsewhere None (the
  defaults).
  """
  impl = resolve_conv_impl(impl)
  if jax.default_backend() != "cpu":
    return None
  wanted = dict(_CPU_OPTIONS)
  if impl in ("xla", "canonical"):
    wanted.update(_CPU_XLA_CONV_OPTIONS)
  accepted = {k: v for k, v in wanted.items() if _cpu_accepts(k, v)}
  return accepted or None


def _pair(value, field: str) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  if len(value) != 2:
    raise ValueError(f"{field} must be an int or a pair, got {value!r}")
  return value


def _padding_pairs(padding: Padding) -> tuple[tuple[int, int], ...]:
  """int p, (ph, pw) or ((top, bottom), (left, right)) -> two (lo, hi)."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  if len(padding) == 2 and all(len(p) == 2 for p in padding):
    return tuple(tuple(int(q) for q in p) for p in padding)
  raise ValueError(
    "padding must be an int, (ph, pw) or ((top, bottom), (left, right)), "
    f"got {padding!r}"
  )


def conv2d(x, kernel, *, stride: int | Sequence[int] = 1, padding=0, impl):
  """Cross-correlation of NHWC images with an HWIO kernel (no bias).

  Same arithmetic as `torch.nn.functional.conv2d` with zero padding.

  Args:
    x: [n, h, w, cin] images.
    kernel: [kh, kw, cin, cout].
    stride: an int or (sh, sw).
    padding: zero padding, an int, (ph, pw) or ((top, bottom), (left, right)).
    impl: 'xla' (`lax.conv_general_dilated`), 'im2col' (shifted slices and
      one matmul) or 'canonical' (`lax.conv` with convolutions for
      gradients; im2col for thin inputs and strides).

  Returns:
    [n, oh, ow, cout] with oh = (h + top + bottom - kh) // sh + 1 (same for w).
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
      f"conv2d expects x [n, h, w, c] and kernel [kh, kw, cin, cout], got "
      f"shapes {x.shape} and {kernel.shape}"
    )
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(
      f"conv2d: x has {x.shape[-1]} channels but the kernel expects "
      f"{kernel.shape[2]} (x {x.shape}, kernel {kernel.shape})"
    )
  sh, sw = _pair(stride, "stride")
  pads = _padding_pairs(padding)
  kh, kw = kernel.shape[:2]
  oh = (x.shape[1] + sum(pads[0]) - kh) // sh + 1
  ow = (x.shape[2] + sum(pads[1]) - kw) // sw + 1
  if oh < 1 or ow < 1:
    raise ValueError(
      f"conv2d: input {x.shape[1]}x{x.shape[2]} with padding {pads} is "
      f"smaller than the {kh}x{kw} kernel"
    )
  if impl == "xla":
    return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(sh, sw),
      padding=pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  if (
    impl == "canonical"
    and (sh, sw) == (1, 1)
    and x.shape[-1] >= CANONICAL_MIN_CHANNELS
    and _canonical_pads(pads, kh, kw)
  ):
    return _canonical_conv(x, kernel, pads)
  if impl in ("im2col", "canonical"):
    return _conv2d_im2col(x, kernel, strides=(sh, sw), pads=pads, out=(oh, ow))
  raise ValueError(f"impl must be one of {CONV_IMPLS}, got {impl!r}")


def _canonical_pads(pads, kh: int, kw: int) -> bool:
  """Whether the input gradient's padding (k - 1 - p) is non-negative."""
  (top, bottom), (left, right) = pads
  return max(top, bottom) <= kh - 1 and max(left, right) <= kw - 1


def _forward_conv(x, kernel, pads):
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=pads,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _canonical_conv(x, kernel, pads):
  """Stride-1 `lax.conv` whose gradients are stride-1 `lax.conv`s too.

  x: [n, h, w, cin]; kernel: [kh, kw, cin, cout]; pads: ((top, bottom),
  (left, right)) with each at most k - 1. Returns [n, oh, ow, cout].
  """
  return _forward_conv(x, kernel, pads)


def _canonical_conv_fwd(x, kernel, pads):
  # Itself, not `_forward_conv`: a second-order derivative differentiates
  # this rule, and must meet the custom rule again rather than autodiff's.
  return _canonical_conv(x, kernel, pads), (x, kernel)


def _input_gradient_pads(pads, kh: int, kw: int):
  (top, bottom), (left, right) = pads
  return ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))


def _turned(kernel):
  """The kernel turned by 180 degrees with its channels swapped."""
  return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def _canonical_conv_bwd(pads, residuals, dy):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  # dx: the full correlation of dy [n, oh, ow, cout] with the turned kernel,
  # less the forward padding.
  dx = _canonical_conv(dy, _turned(kernel), _input_gradient_pads(pads, kh, kw))
  return dx, _kernel_gradient(x, dy, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _kernel_gradient(x, dy, pads):
  """d(sum(conv(x, k, pads) * dy))/dk as one stride-1 convolution.

  The padded input with its channels as the batch and the images as the
  channels, correlated with dy as an [oh, ow, n, cout] kernel. x: [n, h, w,
  cin]; dy: [n, oh, ow, cout]. Returns [kh, kw, cin, cout].
  """
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  dk = _forward_conv(
    jnp.transpose(padded, (3, 1, 2, 0)),
    jnp.transpose(dy, (1, 2, 0, 3)),
    ((0, 0), (0, 0)),
  )  # [cin, kh, kw, cout]
  return jnp.transpose(dk, (1, 2, 0, 3))


def _kernel_gradient_fwd(x, dy, pads):
  # Itself, for the reason of `_canonical_conv_fwd`.
  return _kernel_gradient(x, dy, pads), (x, dy)


def _kernel_gradient_bwd(pads, residuals, g):
  # The kernel gradient is bilinear in (x, dy): its cotangents are the
  # forward convolution and the input gradient with g [kh, kw, cin, cout]
  # as the kernel; autodiff would instead correlate with dy-sized kernels.
  x, dy = residuals
  kh, kw = g.shape[:2]
  d_x = _canonical_conv(dy, _turned(g), _input_gradient_pads(pads, kh, kw))
  return d_x, _canonical_conv(x, g, pads)


_kernel_gradient.defvjp(_kernel_gradient_fwd, _kernel_gradient_bwd)


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def _conv2d_im2col(x, kernel, *, strides, pads, out):
  n, _, _, cin = x.shape
  kh, kw, _, cout = kernel.shape
  (sh, sw), (oh, ow) = strides, out
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  patches = [
    lax.slice(
      x,
      (0, i, j, 0),
      (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, cin),
      (1, sh, sw, 1),
    )
    for i in range(kh)
    for j in range(kw)
  ]
  # Channel order (i, j, cin) matches the row-major reshape of HWIO.
  patches = patches[0] if len(patches) == 1 else jnp.concatenate(patches, -1)
  # A 2-D matmul: with the 4-D patches as operand, XLA:CPU transposed them
  # for the kernel gradient, and the second-order TM unroll ran 1.26x slower.
  y = jnp.dot(patches.reshape(n * oh * ow, -1), kernel.reshape(-1, cout))
  return y.reshape(n, oh, ow, cout)


def torch_uniform(fan_in: int):
  """Initializer U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """`nn.Conv2d` (zero padding, PyTorch init) over NHWC inputs.

  Attributes:
    features: output channels.
    kernel_size: an int or (kh, kw).
    stride: an int or (sh, sw).
    padding: see `conv2d`.
    use_bias: add a learned bias.
    impl: 'xla', 'im2col' or 'canonical', see `conv2d`.
    bias_cancelled: the output goes straight into a norm that removes any
      per-channel constant (`layers.cancels_channel_bias`): the bias cannot
      change the network's output, so its gradient, exactly zero, is not
      summed from every activation (the first conv's sum took 10 % of the
      evaluation's training step at 10 MNIST images, docs/RESULTS.md). The
      bias is kept, with PyTorch's init and under weight decay, so the
      parameters and checkpoints are the reference's.

  Params: 'kernel' [kh, kw, cin, cout] and 'bias' [cout].
  """

  features: int
  kernel_size: int | tuple[int, int] = 3
  stride: int | tuple[int, int] = 1
  padding: Padding = 0
  use_bias: bool = True
  impl: str = "xla"
  bias_cancelled: bool = False

  @nn.compact
  def __call__(self, x):
    """x: [n, h, w, cin] -> [n, oh, ow, features]."""
    kh, kw = _pair(self.kernel_size, "kernel_size")
    cin = x.shape[-1]
    init = torch_uniform(kh * kw * cin)
    kernel = self.param("kernel", init, (kh, kw, cin, self.features))
    y = conv2d(
      x, kernel, stride=self.stride, padding=self.padding, impl=self.impl
    )
    if self.use_bias:
      bias = self.param("bias", init, (self.features,))
      if self.bias_cancelled:
        y = y + jax.lax.stop_gradient(bias).reshape(1, 1, 1, -1)
      else:
        y = layers.add_channel_bias(y, bias)
    return y


class Dense(nn.Module):
  """`nn.Linear` with PyTorch init. Params: 'kernel' [in, out], 'bias' [out]."""

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    """x: [n, d] -> [n, features]."""
    init = torch_uniform(x.shape[-1])
    kernel = self.param("kernel", init, (x.shape[-1], self.features))
    y = jnp.dot(x, kernel)
    if self.use_bias:
      bias = self.param("bias", init, (self.features,))
      y = y + bias.reshape(1, self.features)
    return y
