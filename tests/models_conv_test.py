"""Tests of lowrank_distill.models.conv."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_helpers import TINY, _assert_close, _normal, _random_variables

from lowrank_distill import models
from lowrank_distill.models import conv as conv_lib

CONV_CASES = [
  # (h, w, cin, cout, kernel, stride, padding)
  (7, 7, 3, 4, 3, 1, 1),
  (8, 8, 1, 5, 3, 1, 3),
  (9, 8, 2, 3, 5, 1, 2),
  (9, 9, 2, 3, 5, 1, 0),
  (8, 8, 3, 4, 3, 2, 1),
  (9, 7, 4, 6, 1, 2, 0),
  (10, 9, 2, 3, 4, (2, 3), ((1, 2), (0, 1))),
  (6, 6, 3, 2, (2, 3), 1, (1, 0)),
]


def _conv_inputs(h, w, cin, cout, kernel):
  """Images [2, h, w, cin] and a fan-in-scaled kernel [kh, kw, cin, cout]."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  x = _normal((2, h, w, cin), seed=0)
  k = _normal((kh, kw, cin, cout), seed=1) / math.sqrt(kh * kw * cin)
  return x, k


@pytest.mark.parametrize("h,w,cin,cout,kernel,stride,padding", CONV_CASES)
def test_conv_impls_agree_in_values_and_gradients(
  h, w, cin, cout, kernel, stride, padding
):
  x, k = _conv_inputs(h, w, cin, cout, kernel)
  out_shape = jax.eval_shape(
    lambda x, k: models.conv2d(
      x, k, stride=stride, padding=padding, impl="xla"
    ),
    x,
    k,
  ).shape
  r = _normal(out_shape, seed=2)

  @jax.jit
  def run(x, k):
    def loss(x, k, impl):
      y = models.conv2d(x, k, stride=stride, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y) * r), y

    grad = jax.grad(loss, (0, 1), has_aux=True)
    return grad(x, k, "xla"), grad(x, k, "im2col")

  (g_xla, y_xla), (g_col, y_col) = run(x, k)
  _assert_close(y_col, y_xla)
  _assert_close(g_col, g_xla)


@pytest.mark.parametrize("h,w,cin,cout,kernel,stride,padding", CONV_CASES)
def test_conv_impls_agree_to_second_order(
  h, w, cin, cout, kernel, stride, padding
):
  # Trajectory matching differentiates a kernel gradient (the student's SGD
  # step) with respect to the images and the kernel.
  x, k = _conv_inputs(h, w, cin, cout, kernel)

  @jax.jit
  def run(x, k):
    def inner(k, x, impl):
      y = models.conv2d(x, k, stride=stride, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y))

    def outer(x, k, impl):
      step = k - 0.1 * jax.grad(inner)(k, x, impl)
      return jnp.sum(jnp.cos(step) * k)

    grad = jax.grad(outer, (0, 1))
    return grad(x, k, "xla"), grad(x, k, "im2col")

  g_xla, g_col = run(x, k)
  chex.assert_tree_all_finite(g_col)
  _assert_close(g_col, g_xla)


# The stride-1 cases whose padding is at most kernel - 1: 'canonical' takes
# them whatever the channels (conv2d only routes wide inputs to it).
CANONICAL_CASES = [
  case
  for case in CONV_CASES
  if case[5] == 1
  and conv_lib._canonical_pads(
    conv_lib._padding_pairs(case[6]), *conv_lib._pair(case[4], "kernel_size")
  )
]


def _canonical(x, k, padding):
  return conv_lib._canonical_conv(x, k, conv_lib._padding_pairs(padding))


def _xla(x, k, padding):
  return models.conv2d(x, k, padding=padding, impl="xla")


@pytest.mark.parametrize("h,w,cin,cout,kernel,stride,padding", CANONICAL_CASES)
def test_canonical_conv_agrees_with_xla_to_second_order(
  h, w, cin, cout, kernel, stride, padding
):
  del stride
  x, k = _conv_inputs(h, w, cin, cout, kernel)

  @jax.jit
  def run(x, k):
    def inner(k, x, conv):
      return jnp.sum(jnp.sin(conv(x, k, padding)))

    def outer(x, k, conv):
      step = k - 0.1 * jax.grad(inner)(k, x, conv)
      return jnp.sum(jnp.cos(step) * k)

    return [
      (conv(x, k, padding), jax.grad(inner, (0, 1))(k, x, conv)[::-1])
      + (jax.grad(outer, (0, 1))(x, k, conv),)
      for conv in (_xla, _canonical)
    ]

  expected, actual = run(x, k)
  chex.assert_tree_all_finite(actual)
  _assert_close(actual, expected)


def test_canonical_conv_derivatives_are_canonical_convs():
  # What makes it fast on XLA:CPU inside loops: every convolution of the
  # second-order derivative (trajectory matching's) is a stride-1 NHWC/HWIO
  # forward convolution, none of the layouts autodiff gives `lax.conv`.
  x, k = _conv_inputs(6, 6, 4, 2, 3)

  def inner(k, x):
    return jnp.sum(jnp.sin(_canonical(x, k, 1)))

  def outer(x, k):
    return jnp.sum(jnp.cos(k - 0.1 * jax.grad(inner)(k, x)) * k)

  text = jax.jit(jax.grad(outer, (0, 1))).lower(x, k).as_text()
  convs = [line for line in text.splitlines() if "convolution(" in line]
  assert len(convs) >= 6
  for line in convs:
    assert "dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in line
    assert "stride = [1, 1]" in line and "lhs_dilate = [1, 1]" in line
    assert "feature_group_count = 1 " in line
    # Either the 3x3 kernel, or a kernel gradient (a 3x3 output): never a
    # correlation with an image-sized kernel into an image-sized output,
    # which XLA:CPU unrolls into huge patches (the trajectory-matching
    # unroll ran 1.8x slower with it).
    _, kernel, out = re.findall(r"tensor<(\d+)x(\d+)x(\d+)x\d+xf32>", line)
    assert kernel[:2] == ("3", "3") or out[1:] == ("3", "3"), line


def test_canonical_conv_routes_wide_stride_one_inputs_only():
  wide = _normal((2, 6, 6, conv_lib.CANONICAL_MIN_CHANNELS), seed=0)
  kernel = _normal((3, 3, wide.shape[-1], 4), seed=1) / 10

  def uses_canonical(x, k, **kwargs):
    jaxpr = jax.make_jaxpr(
      lambda x, k: models.conv2d(x, k, impl="canonical", **kwargs)
    )(x, k)
    return "custom_vjp" in str(jaxpr)

  assert uses_canonical(wide, kernel, padding=1)
  assert not uses_canonical(wide[..., :-1], kernel[:, :, :-1], padding=1)
  assert not uses_canonical(wide, kernel, padding=1, stride=2)
  assert not uses_canonical(wide, kernel, padding=3)
  for kwargs in ({"padding": 1}, {"padding": 1, "stride": 2}):
    _assert_close(
      models.conv2d(wide, kernel, impl="canonical", **kwargs),
      models.conv2d(wide, kernel, impl="xla", **kwargs),
    )


def test_canonical_conv_vmapped_over_weights_matches_one_at_a_time():
  # Evaluation and the experts vmap networks over their seeds: the batched
  # kernels become grouped convolutions, and their gradients must hold.
  x = _normal((3, 2, 5, 5, 4), seed=0)
  k = _normal((3, 3, 3, 4, 2), seed=1) / 6

  def grads(x, k):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(_canonical(x, k, 1))), (0, 1))(
      x, k
    )

  vmapped = jax.jit(jax.vmap(grads))(x, k)
  one_by_one = [jax.jit(grads)(x[i], k[i]) for i in range(3)]
  _assert_close(vmapped, jax.tree.map(lambda *t: jnp.stack(t), *one_by_one))


def test_conv2d_matches_a_direct_sum():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
  k = rng.normal(size=(3, 3, 2, 1)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((1, 3, 3, 1), np.float32)
  for i in range(3):
    for j in range(3):
      patch = xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
      expected[0, i, j, 0] = np.sum(patch * k[..., 0])
  for impl in models.CONV_IMPLS:
    out = models.conv2d(x, k, stride=2, padding=1, impl=impl)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "name,shape", [("convnet", (28, 28, 1)), ("convnet_bn", (8, 8, 1))]
)
@pytest.mark.parametrize("impl", ["im2col", "canonical"])
def test_conv_impls_agree_on_a_whole_convnet(name, shape, impl):
  # Width 32: the canonical network's second and third convs take its path.
  options = {**TINY, "width": conv_lib.CANONICAL_MIN_CHANNELS}
  make = lambda impl: models.create(  # noqa: E731
    name, num_classes=4, image_shape=shape, conv_impl=impl, **options
  )
  xla, im2col = make("xla"), make(impl)
  x = _normal((3, *shape))
  variables = _random_variables(xla, shape)
  chex.assert_trees_all_equal_shapes(
    variables, _random_variables(im2col, shape)
  )

  def loss(params, x, model):
    out = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )[0]
    return jnp.sum(jnp.tanh(out))

  @jax.jit
  def run(variables, x):
    return [
      (
        jax.grad(loss, (0, 1))(variables["params"], x, model),
        model.apply(variables, x),
      )
      for model in (xla, im2col)
    ]

  (g_xla, y_xla), (g_col, y_col) = run(variables, x)
  _assert_close(y_col, y_xla)
  _assert_close(g_col, g_xla)


@pytest.mark.parametrize(
  "backend, expected", [("cpu", "canonical"), ("gpu", "xla"), ("tpu", "xla")]
)
def test_auto_conv_impl_is_canonical_on_cpu_and_xla_elsewhere(
  backend, expected, monkeypatch
):
  # The choice reads the default backend when a model is created; patched
  # here so that every branch runs on any host.
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  model = models.create("convnet", num_classes=10, image_shape=(8, 8, 1))
  assert model.conv_impl == expected
  assert models.resolve_conv_impl("xla") == "xla"
  assert models.resolve_conv_impl("im2col") == "im2col"


@pytest.mark.parametrize("impl", ["auto", "xla", "im2col", "canonical"])
def test_compiler_options_are_the_defaults_off_the_cpu(impl, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.compiler_options(impl) is None


def test_bias_free_strided_conv_init_and_shape():
  conv = models.Conv(6, 1, stride=2, use_bias=False, impl="im2col")
  x = jnp.zeros((2, 8, 7, 4))
  variables = conv.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"kernel"}
  chex.assert_shape(variables["params"]["kernel"], (1, 1, 4, 6))
  assert np.abs(variables["params"]["kernel"]).max() <= 0.5  # 1/sqrt(4)
  chex.assert_shape(conv.apply(variables, x), (2, 4, 4, 6))


@pytest.mark.skipif(
  jax.default_backend() != "cpu",
  reason="XLA:CPU's compiler options; off the CPU they are None (the test "
  "above)",
)
def test_compiler_options_turn_off_ynnpack_only_for_lax_convs_on_cpu():
  # The options this jaxlib accepts (jaxlib 0.10.2 accepts all of them).
  ynn = "xla_cpu_experimental_ynn_fusion_type"
  im2col = models.compiler_options("im2col")
  assert im2col and im2col.items() <= conv_lib._CPU_OPTIONS.items()
  assert ynn not in im2col
  options = models.compiler_options("xla")
  assert (
    options.items()
    <= {
      **conv_lib._CPU_OPTIONS,
      **conv_lib._CPU_XLA_CONV_OPTIONS,
    }.items()
  )
  assert options[ynn] == ""
  assert models.compiler_options("canonical") == options
  model = models.create(
    "convnet", num_classes=3, image_shape=(8, 8, 1), conv_impl="xla", width=4
  )
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  variables = model.init(jax.random.key(2), x)
  fn = lambda v: model.apply(v, x)  # noqa: E731
  chex.assert_trees_all_close(
    jax.jit(fn, compiler_options=options)(variables),
    jax.jit(fn)(variables),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.parametrize("impl", ["xla", "im2col", "canonical"])
def test_compiler_options_keep_the_input_gradient(impl):
  """DM's use (and the image gradient of GM and TM's unrolls)."""
  model = models.create(
    "convnet",
    num_classes=3,
    image_shape=(8, 8, 1),
    conv_impl=impl,
    width=conv_lib.CANONICAL_MIN_CHANNELS,
  )
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = model.init(jax.random.key(2), x)
  grad = jax.grad(
    lambda x: jnp.sum(jnp.square(model.apply(variables, x, method="embed")))
  )
  options = models.compiler_options(impl)
  default = jax.jit(grad)(x)
  # Elementwise 1e-4, and 3e-5 of the largest entry for those near zero
  # (an Intel Xeon put one of 256 entries at 1.5e-5 of it; AMD EPYC 1e-5).
  chex.assert_trees_all_close(
    jax.jit(grad, compiler_options=options)(x),
    default,
    rtol=1e-4,
    atol=3e-5 * float(jnp.max(jnp.abs(default))),
  )


def test_a_cancelled_bias_changes_only_its_own_zero_gradient():
  """A ConvNet with instance norms (every conv's bias cancelled) computes
  what the same net with the biases' gradients summed computes: the same
  logits, the same other gradients, and bias gradients that vanish there
  and are exactly zero here."""
  shape = (8, 8, 1)
  model = models.create("convnet", num_classes=4, image_shape=shape, **TINY)
  variables = _random_variables(model, shape)
  x = _normal((3, *shape))

  def loss(params):
    return jnp.sum(jnp.tanh(model.apply({"params": params}, x, train=True)))

  def run():
    return model.apply(variables, x), jax.grad(loss)(variables["params"])

  logits, grads = run()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(models.layers, "cancels_channel_bias", lambda _: False)
    summed_logits, summed = run()
  chex.assert_trees_all_equal(logits, summed_logits)
  for d in range(TINY["depth"]):
    np.testing.assert_array_equal(grads["features"][f"conv_{d}"]["bias"], 0.0)
    bias = summed["features"][f"conv_{d}"]["bias"]
    assert 0.0 < np.abs(np.asarray(bias)).max() < 1e-5  # rounding only
    summed["features"][f"conv_{d}"]["bias"] = jnp.zeros_like(bias)
  _assert_close(grads, summed)
