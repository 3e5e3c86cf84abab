"""Tests of the reconstructors (lowrank_distill.parameterize)."""

import ast
import functools
import pathlib
import pkgutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from lowrank_distill import parameterize
from lowrank_distill.parameterize import factors, mappers, registry

KINDS = {
  "pixels": {},
  "factors": {"rank": 2},
  "mappers": {"rank": 2, "num_sets": 2},
  "memories": {"num_bases": 3},
  "lowrank_memories": {"num_bases": 3, "rank": 2},
  "hallucinators": {"num_hallucinators": 2},
  "lowrank_hallucinators": {"num_hallucinators": 2, "rank": 2},
}


def _real(num_classes, images_per_class, shape, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_classes, images_per_class, *shape)).astype(
    np.float32
  )


def _init(name, shape=(6, 5, 3), num_classes=3, ipc=2, **kwargs):
  """Initialises `name`, dropping rank / num_sets where it takes none."""
  kwargs = {**KINDS[name], **kwargs}
  every_arg = {arg for args in parameterize.KIND_ARGS.values() for arg in args}
  unused = every_arg - set(parameterize.KIND_ARGS[name])
  return parameterize.get(name).init(
    jax.random.key(0),
    num_classes=num_classes,
    images_per_class=ipc,
    image_shape=shape,
    **{k: v for k, v in kwargs.items() if k not in unused},
  )


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("shape", [(6, 6, 1), (6, 5, 3)])
@pytest.mark.parametrize("method", ["noise", "real"])
def test_materialize_shape(name, shape, method):
  real = _real(3, 2, shape) if method == "real" else None
  params = _init(name, shape, method=method, real_images=real)
  chex.assert_tree_all_finite(params)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32
  images = parameterize.get(name).materialize(params)
  chex.assert_shape(images, (6, *shape))
  assert images.dtype == jnp.float32


def test_param_shapes():
  h, w, c = 6, 5, 3

  def shapes(*args, **kwargs):
    return jax.eval_shape(lambda: _init(*args, **kwargs))

  chex.assert_trees_all_equal_shapes(
    shapes("pixels", (h, w, c)), {"images": jnp.zeros((6, h, w, c))}
  )
  chex.assert_trees_all_equal_shapes(
    shapes("factors", (h, w, c), rank=2),
    {"a": jnp.zeros((6, c, h, 2)), "b": jnp.zeros((6, c, 2, w))},
  )
  chex.assert_trees_all_equal_shapes(
    shapes("mappers", (h, w, c), rank=2, num_sets=4),
    {
      "u": jnp.zeros((4, c, h, 2)),
      "v": jnp.zeros((4, c, 2, w)),
      "codes": jnp.zeros((6, c, 2, 2)),
    },
  )


def test_pixels_real_init_copies_class_major_images():
  real = _real(3, 2, (4, 4, 1))
  params = _init("pixels", (4, 4, 1), method="real", real_images=real)
  np.testing.assert_array_equal(params["images"], real.reshape(6, 4, 4, 1))
  flat = _init(
    "pixels", (4, 4, 1), method="real", real_images=real.reshape(6, 4, 4, 1)
  )
  np.testing.assert_array_equal(flat["images"], params["images"])


@pytest.mark.parametrize("shape", [(6, 6, 1), (5, 7, 3), (7, 4, 3)])
@pytest.mark.parametrize("method", ["real", "svd"])
def test_factors_svd_full_rank_reproduces_images(shape, method):
  real = _real(3, 2, shape)
  params = _init(
    "factors", shape, method=method, real_images=real, rank=min(shape[:2])
  )
  np.testing.assert_allclose(
    factors.materialize(params), real.reshape(6, *shape), atol=1e-4
  )


def test_factors_svd_low_rank_is_the_truncated_svd():
  real = _real(2, 2, (6, 5, 2))
  params = _init("factors", (6, 5, 2), 2, 2, method="svd", real_images=real)
  images = np.asarray(factors.materialize(params))
  for i, x in enumerate(real.reshape(4, 6, 5, 2)):
    for ch in range(2):
      u, s, vt = np.linalg.svd(x[..., ch].astype(np.float64))
      best = (u[:, :2] * s[:2]) @ vt[:2]
      np.testing.assert_allclose(images[i, ..., ch], best, atol=1e-4)
  # Balanced factors: a = U sqrt(S), b = sqrt(S) V^T have equal norms.
  np.testing.assert_allclose(
    jnp.sum(params["a"] ** 2, axis=-2),
    jnp.sum(params["b"] ** 2, axis=-1),
    rtol=1e-4,
  )


@pytest.mark.parametrize(
  "num_classes,ipc,num_sets,c",
  [(2, 3, 2, 1), (5, 1, 2, 3), (3, 2, 1, 3), (2, 2, 4, 1)],
)
def test_mappers_svd_full_rank_reproduces_images(num_classes, ipc, num_sets, c):
  shape = (6, 6, c)
  real = _real(num_classes, ipc, shape)
  params = _init(
    "mappers",
    shape,
    num_classes,
    ipc,
    method="real",
    real_images=real,
    rank=6,
    num_sets=num_sets,
  )
  np.testing.assert_allclose(
    mappers.materialize(params),
    real.reshape(num_classes * ipc, *shape),
    atol=1e-4,
  )


def test_mappers_svd_low_rank_projects_onto_the_set_subspaces():
  real = _real(3, 2, (6, 5, 2)).reshape(6, 6, 5, 2)
  params = _init(
    "mappers", (6, 5, 2), method="svd", real_images=real, rank=3, num_sets=2
  )
  u, v = np.asarray(params["u"]), np.asarray(params["v"])
  eye = np.broadcast_to(np.eye(3), (2, 2, 3, 3))  # [k, c, r, r]
  np.testing.assert_allclose(np.swapaxes(u, -1, -2) @ u, eye, atol=1e-5)
  np.testing.assert_allclose(v @ np.swapaxes(v, -1, -2), eye, atol=1e-5)
  images = np.asarray(mappers.materialize(params))
  for i in range(6):
    s = i % 2
    for ch in range(2):
      x = real[i, ..., ch]
      proj = u[s, ch] @ u[s, ch].T @ x @ v[s, ch].T @ v[s, ch]
      np.testing.assert_allclose(images[i, ..., ch], proj, atol=1e-4)
  # u spans the top left singular vectors of set 0's images side by side.
  side = np.concatenate([real[i, ..., 0] for i in (0, 2, 4)], axis=1)
  top = np.linalg.svd(side.astype(np.float64))[0][:, :3]
  np.testing.assert_allclose(np.abs(top.T @ u[0, 0]), np.eye(3), atol=1e-3)
  # v spans the top right singular vectors of set 1's images stacked.
  stacked = np.concatenate([real[i, ..., 1] for i in (1, 3, 5)], axis=0)
  top = np.linalg.svd(stacked.astype(np.float64))[2][:3]
  np.testing.assert_allclose(np.abs(top @ v[1, 1].T), np.eye(3), atol=1e-3)


def _matrix_ranks(images):
  """[n, h, w, c] -> [n, c] numerical ranks of every channel."""
  images = np.moveaxis(np.asarray(images, np.float64), -1, 1)
  return np.linalg.matrix_rank(images, tol=1e-4)


@pytest.mark.parametrize("name", ["factors", "mappers"])
def test_svd_low_rank_images_have_rank_r(name):
  real = _real(3, 2, (6, 5, 3))
  params = _init(name, method="svd", real_images=real, rank=2)
  ranks = _matrix_ranks(parameterize.get(name).materialize(params))
  np.testing.assert_array_equal(ranks, np.full((6, 3), 2))
  assert np.all(_matrix_ranks(real.reshape(6, 6, 5, 3)) == 5)


@pytest.mark.parametrize(
  "name,rank", [("pixels", None), ("factors", 3), ("mappers", 3)]
)
def test_noise_init_has_unit_variance_and_rank_r(name, rank):
  kwargs = {} if rank is None else {"rank": rank}
  params = _init(name, (16, 12, 3), num_classes=10, ipc=8, **kwargs)
  images = parameterize.get(name).materialize(params)
  assert 0.8 < float(jnp.var(images)) < 1.25
  assert abs(float(jnp.mean(images))) < 0.1
  ranks = _matrix_ranks(images)
  np.testing.assert_array_equal(ranks, np.full((80, 3), rank or 12))


def test_noise_init_depends_on_the_key():
  a = _init("factors", rank=2)
  b = factors.init(
    jax.random.key(1),
    num_classes=3,
    images_per_class=2,
    image_shape=(6, 5, 3),
    rank=2,
  )
  assert not np.allclose(a["a"], b["a"])


def test_mappers_image_i_uses_set_i_mod_k():
  params = _init("mappers", num_classes=3, ipc=2, num_sets=2)
  base = mappers.materialize(params)

  def changed(new_params):
    diff = np.asarray(mappers.materialize(new_params) != base)
    return np.any(diff, axis=(1, 2, 3))

  bumped = dict(params, u=params["u"].at[1].add(1.0))
  np.testing.assert_array_equal(changed(bumped), np.arange(6) % 2 == 1)
  bumped = dict(params, v=params["v"].at[0].add(1.0))
  np.testing.assert_array_equal(changed(bumped), np.arange(6) % 2 == 0)
  bumped = dict(params, codes=params["codes"].at[4].add(1.0))
  np.testing.assert_array_equal(changed(bumped), np.arange(6) == 4)
  np.testing.assert_array_equal(mappers.set_of(5, 2), [0, 1, 0, 1, 0])


@pytest.mark.parametrize("name", list(KINDS))
def test_check_grads_of_materialize(name):
  params = _init(name)
  jtu.check_grads(
    jax.jit(parameterize.get(name).materialize),
    (params,),
    order=1,
    modes=("fwd", "rev"),
    eps=1e-2,
    atol=1e-2,
    rtol=1e-2,
  )


@pytest.mark.parametrize("name", list(KINDS))
def test_gradient_reaches_every_leaf(name):
  params = _init(name, (6, 5, 3), num_classes=3, ipc=2)
  target = jnp.asarray(_real(3, 2, (6, 5, 3)).reshape(6, 6, 5, 3))
  materialize = parameterize.get(name).materialize

  def loss(p):
    return jnp.mean((materialize(p) - target) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  chex.assert_trees_all_equal_shapes(grads, params)
  chex.assert_tree_all_finite(grads)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).sum()) > 0.0, f"no gradient reaches {path}"


class MaterializeJitTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_variants_agree(self):
    for name in KINDS:
      params = _init(name, (6, 5, 3))
      expected = parameterize.get(name).materialize(params)
      got = self.variant(parameterize.get(name).materialize)(params)
      chex.assert_trees_all_close(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(KINDS))
def test_init_is_jittable(name):
  module = parameterize.get(name)
  method = "svd" if "svd" in module.METHODS else "real"
  init = functools.partial(
    module.init,
    num_classes=3,
    images_per_class=2,
    image_shape=(6, 6, 1),
    method=method,
    **KINDS[name],
  )
  real = jnp.asarray(_real(3, 2, (6, 6, 1)))
  jitted = jax.jit(lambda key, real: init(key, real_images=real))
  chex.assert_trees_all_close(
    jitted(jax.random.key(0), real),
    init(jax.random.key(0), real_images=real),
    atol=1e-5,
  )


def test_get_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"param.*'voxels'.*pixels.*factors"):
    parameterize.get("voxels")
  with pytest.raises(ValueError, match="param"):
    parameterize.validate("voxels", image_shape=(8, 8, 1), rank=2)


@pytest.mark.parametrize("rank", [0, 9, -1, 2.5, True, None])
def test_validate_bad_rank_names_the_range(rank):
  for name in ("factors", "mappers"):
    with pytest.raises(ValueError, match=r"rank.*\[1, 8\]"):
      parameterize.validate(name, image_shape=(8, 9, 3), rank=rank, num_sets=2)
  with pytest.raises(ValueError, match=r"rank.*\[1, 8\]"):
    _init("factors", (8, 9, 3), rank=rank)


def test_validate_accepts_good_settings_and_ignores_unused_ones():
  parameterize.validate("pixels", image_shape=(8, 8, 1), rank=99, num_sets=0)
  parameterize.validate("factors", image_shape=(8, 8, 1), rank=8, num_sets=0)
  parameterize.validate(
    "mappers", image_shape=(8, 8, 1), rank=np.int64(1), num_sets=3
  )


@pytest.mark.parametrize("num_sets", [0, -2, 1.5, None])
def test_validate_bad_num_sets(num_sets):
  with pytest.raises(ValueError, match="num_sets"):
    parameterize.validate(
      "mappers", image_shape=(8, 8, 1), rank=2, num_sets=num_sets
    )


def test_more_sets_than_images_is_refused():
  with pytest.raises(ValueError, match=r"num_sets.*1\.\.6"):
    _init("mappers", num_sets=7)


def test_bad_init_method_and_real_images():
  with pytest.raises(ValueError, match=r"synset.init.*noise.*real"):
    _init("pixels", method="svd")
  with pytest.raises(ValueError, match=r"'pca'.*svd"):
    _init("factors", method="pca")
  with pytest.raises(ValueError, match="real_images"):
    _init("mappers", method="real")
  with pytest.raises(ValueError, match="real_images has shape"):
    _init(
      "factors", (6, 5, 3), method="real", real_images=_real(3, 1, (6, 5, 3))
    )
  with pytest.raises(ValueError, match="images_per_class"):
    _init("pixels", ipc=0)
  with pytest.raises(ValueError, match="image_shape"):
    _init("pixels", shape=(6, 6))


def test_kind_kwargs():
  assert parameterize.kind_kwargs("pixels", rank=2, num_sets=4) == {}
  assert parameterize.kind_kwargs("factors", rank=2, num_sets=4) == {"rank": 2}
  assert parameterize.kind_kwargs("mappers", rank=2, num_sets=4) == {
    "rank": 2,
    "num_sets": 4,
  }
  assert set(parameterize.KIND_ARGS) == set(parameterize.PARAMETERIZATIONS)


def test_num_floats_hand_counts():
  n, h, w, c, r, k = 6, 6, 5, 3, 2, 2
  assert parameterize.num_floats(_init("pixels", (h, w, c))) == n * h * w * c
  assert parameterize.num_floats(_init("factors", (h, w, c))) == (
    n * c * r * (h + w)
  )
  assert parameterize.num_floats(_init("mappers", (h, w, c), num_sets=k)) == (
    k * c * r * (h + w) + n * c * r * r
  )
  trainable = {
    "images": _init("factors", (h, w, c)),
    "labels": jnp.zeros((n, 3)),
    "log_lr": jnp.float32(0.0),
  }
  assert parameterize.num_floats(trainable) == n * c * r * (h + w) + n * 3 + 1


def test_num_floats_counts_only_floats():
  tree = {
    "hard_labels": jnp.zeros((100,), jnp.int32),
    "key": jax.random.key(0),
    "mask": jnp.zeros((7,), bool),
    "half": jnp.zeros((2, 3), jnp.bfloat16),
    "np": np.zeros((4,), np.float64),
    "lr": 0.01,
    "steps": 5,
    "shape_only": jax.ShapeDtypeStruct((2, 5), jnp.float32),
    "none": None,
  }
  assert parameterize.num_floats(tree) == 6 + 4 + 1 + 10
  assert parameterize.num_floats({}) == 0


# Every submodule of the package, found on disk so a new one is covered too.
SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(parameterize.__path__))
# What the package hands on from `registry`.
REGISTRY_NAMES = (
  "KIND_ARGS",
  "PARAMETERIZATIONS",
  "get",
  "kind_kwargs",
  "num_floats",
  "validate",
)


def test_submodules_found():
  assert {"budget", "factors", "labels", "mappers", "pixels", "registry"} <= (
    set(SUBMODULES)
  )


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_imports_first_in_a_fresh_interpreter(module, fresh_python):
  """Importing any submodule first works: the package has no import cycle."""
  code = (
    f"import lowrank_distill.parameterize.{module}\n"
    "from lowrank_distill import parameterize\n"
    "from lowrank_distill.parameterize import registry\n"
    "assert parameterize.PARAMETERIZATIONS is registry.PARAMETERIZATIONS\n"
    "assert parameterize.get is registry.get\n"
    "print('ok')\n"
  )
  assert fresh_python(code).strip() == "ok"


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_does_not_import_the_package_init(module):
  """Submodules import siblings directly, never names of `__init__`."""
  path = pathlib.Path(parameterize.__path__[0]) / f"{module}.py"
  bad = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0:
      for alias in node.names:
        if node.module == "lowrank_distill" and alias.name == "parameterize":
          bad.append(f"from lowrank_distill import {alias.name}")
        if node.module == "lowrank_distill.parameterize" and (
          alias.name not in SUBMODULES
        ):
          bad.append(f"from lowrank_distill.parameterize import {alias.name}")
    elif isinstance(node, ast.Import):
      bad += [
        f"import {a.name}"
        for a in node.names
        if a.name == "lowrank_distill.parameterize"
      ]
  assert not bad, f"{module}.py imports the package __init__: {bad}"


def test_registry_is_the_one_the_package_exposes():
  for name in REGISTRY_NAMES:
    assert getattr(parameterize, name) is getattr(registry, name), name
  assert parameterize.registry is registry
  assert set(registry.PARAMETERIZATIONS) == {
    "pixels",
    "factors",
    "mappers",
    "memories",
    "lowrank_memories",
    "hallucinators",
    "lowrank_hallucinators",
  }
  for name, module in registry.PARAMETERIZATIONS.items():
    assert getattr(parameterize, name) is module
  for name in parameterize.__all__:
    assert hasattr(parameterize, name), name
  assert set(REGISTRY_NAMES) <= set(parameterize.__all__)


def test_unknown_name_error_lists_the_valid_names():
  valid = list(registry.PARAMETERIZATIONS)
  for get in (registry.get, parameterize.get):
    with pytest.raises(ValueError) as error:
      get("voxels")
    message = str(error.value)
    assert "synset.param 'voxels' is not known" in message
    assert f"valid: {valid}" in message
  with pytest.raises(
    ValueError, match=r"'voxels'.*valid: \[.*'lowrank_hallucinators'\]"
  ):
    registry.kind_kwargs("voxels", rank=2)


def _skewed_mappers(seed=0):
  """Mappers far from orthonormal (scaled, sheared, one column negative)."""
  params = _init("mappers", (7, 5, 2), num_classes=3, ipc=3, rank=3, num_sets=2)
  rng = np.random.default_rng(seed)
  mix_u = rng.normal(size=(2, 2, 3, 3)).astype(np.float32) + 3 * np.eye(3)
  mix_v = rng.normal(size=(2, 2, 3, 3)).astype(np.float32) + 3 * np.eye(3)
  return {
    "u": -5.0 * params["u"] @ mix_u,
    "v": 0.2 * mix_v @ params["v"],
    "codes": params["codes"],
  }


def test_orthonormalize_keeps_the_images_and_makes_the_mappers_orthonormal():
  params = _skewed_mappers()
  out = mappers.orthonormalize(params)
  chex.assert_trees_all_equal_shapes(out, params)
  np.testing.assert_allclose(
    mappers.materialize(out),
    mappers.materialize(params),
    rtol=1e-4,
    atol=1e-4 * float(jnp.max(jnp.abs(mappers.materialize(params)))),
  )
  u, v = np.asarray(out["u"]), np.asarray(out["v"])
  eye = np.broadcast_to(np.eye(3), (2, 2, 3, 3))
  np.testing.assert_allclose(np.swapaxes(u, -1, -2) @ u, eye, atol=1e-5)
  np.testing.assert_allclose(v @ np.swapaxes(v, -1, -2), eye, atol=1e-5)
  # The mappers' columns (rows of v) span what they spanned before.
  for s in range(2):
    for ch in range(2):
      before = np.asarray(params["u"][s, ch])
      np.testing.assert_allclose(
        u[s, ch] @ u[s, ch].T @ before, before, atol=1e-4
      )


def test_orthonormalize_leaves_orthonormal_mappers_as_they_are():
  params = _skewed_mappers(seed=1)
  once = mappers.orthonormalize(params)
  # Orthonormal but with negatively oriented columns: kept, not flipped.
  flipped = {**once, "u": -once["u"], "codes": -once["codes"]}
  for orthonormal in (once, flipped):
    chex.assert_trees_all_close(
      mappers.orthonormalize(orthonormal), orthonormal, atol=2e-5
    )
