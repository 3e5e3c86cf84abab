"""Mesh and placement helpers: one code path from a laptop CPU to a pod.

A run builds one `jax.sharding.Mesh` with a single axis, 'data', from its
config (`mesh_from_config`, `config.mesh.data` devices; -1, the default, is
every device of every process), with automatic axis types, so `jax.jit`
partitions the programs from the shardings of their inputs and the
`with_sharding_constraint`s inside them. Every parallel axis of the library
is laid along 'data':

  DM, gradient matching    each class's real batch ([C, m, ...]: m)
  trajectory matching      the trajectories of an iteration, or else the
                           student's synthetic minibatch of every step
  experts                  the vmapped expert axis
  evaluation               the vmapped model (seed) axis

An axis that does not divide the devices is refused with an error naming
its config field (`check_divisible`), or padded where the padding is
masked or discarded (student minibatches, experts, evaluation models).

Everything else (the synthetic set, optimiser state, a network's params) is
replicated. With one device along 'data' (or `mesh=None`) every helper
returns its input unchanged, so the single-device program is the unsharded
one, bit for bit.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

DATA = "data"
# The config field that sets the devices along DATA, named in errors.
MESH_FIELD = "mesh.data"


def make_mesh(data: int = -1, *, devices=None) -> Mesh:
  """A mesh with one axis, 'data', of `data` devices (automatic axis type).

  Args:
    data: devices along 'data'; -1 for all of `devices`. Fewer than all use
      the first `data` (single process only: every process must own some).
    devices: the devices to choose from; default `jax.devices()` (every
      process's).

  Raises:
    ValueError: `data` is 0, below -1, above the device count, or a subset
      of the devices in a multi-process run (naming `mesh.data`).
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  if data == -1:
    data = count
  if not 1 <= data <= count:
    raise ValueError(
      f"{MESH_FIELD}={data}: must be -1 (all devices) or between 1 and the "
      f"{count} devices available"
    )
  if data < count and jax.process_count() > 1:
    raise ValueError(
      f"{MESH_FIELD}={data}: a multi-process run uses every device of every "
      f"process; set {MESH_FIELD}=-1 (here {count})"
    )
  axis_types = (jax.sharding.AxisType.Auto,)
  if data == len(jax.devices()) and devices == list(jax.devices()):
    # All devices: let JAX order them for the physical topology.
    return jax.make_mesh((data,), (DATA,), axis_types=axis_types)
  return jax.make_mesh(
    (data,), (DATA,), axis_types=axis_types, devices=devices[:data]
  )


def mesh_from_config(config) -> Mesh:
  """The mesh of `config.mesh` (absent: every device along 'data'), logged.

  A run builds it once and passes it down.
  """
  settings = config.get("mesh") or {}
  mesh = make_mesh(settings.get("data", -1))
  logging.info("Mesh: %s", describe(mesh))
  return mesh


def data_size(mesh: Mesh | None) -> int:
  """Devices along 'data'; 1 without a mesh."""
  return 1 if mesh is None else mesh.shape[DATA]


def is_sharded(mesh: Mesh | None) -> bool:
  """Whether `mesh` splits anything (more than one device along 'data')."""
  return data_size(mesh) > 1


def describe(mesh: Mesh | None) -> str:
  """E.g. "4 cpu devices along 'data' (1 process)", for logs."""
  if mesh is None:
    return "1 device (no mesh)"
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  processes = len({d.process_index for d in mesh.devices.flat})
  return (
    f"{data_size(mesh)} {'/'.join(kinds)} device(s) along '{DATA}' "
    f"({processes} process(es))"
  )


# ----------------------------------------------------------------------------
# Shardings and divisibility.


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def along(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Axis `axis` split over 'data', the others whole."""
  return NamedSharding(mesh, P(*([None] * axis), DATA))


def padded_size(size: int, mesh: Mesh | None) -> int:
  """`size` rounded up to a multiple of the devices along 'data'."""
  n = data_size(mesh)
  return math.ceil(size / n) * n


def check_divisible(size: int, mesh: Mesh | None, *, field: str, what: str):
  """Raises unless `size` splits evenly over the devices along 'data'.

  Args:
    size: the length of the axis that is split.
    mesh: the run's mesh.
    field: the config field that sets `size`, named in the error.
    what: what the axis holds, e.g. "real images per class".

  Raises:
    ValueError: naming `field`, the device count and the nearest values.
  """
  n = data_size(mesh)
  if size % n == 0:
    return
  lower, upper = (size // n) * n, padded_size(size, mesh)
  options = " or ".join(str(v) for v in (lower, upper) if v > 0)
  raise ValueError(
    f"{field}={size}: the {what} are split over the {n} devices along the "
    f"mesh's '{DATA}' axis and must be a multiple of {n}; set {field} to "
    f"{options}, or {MESH_FIELD} to a divisor of {size}"
  )


# ----------------------------------------------------------------------------
# Placement (outside jit) and constraints (inside jit).


def _place(x, sharding: NamedSharding):
  if jax.process_count() == 1 or (
    isinstance(x, jax.Array) and not x.is_fully_addressable
  ):
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
    x.dtype, jax.dtypes.prng_key
  ):
    data = _place(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  # Every process holds the same host value; each sends its devices' part.
  host = np.asarray(x)
  host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype))
  return jax.make_array_from_callback(
    host.shape, sharding, lambda index: host[index]
  )


def put(tree: PyTree, mesh: Mesh | None, *, axis: int | None = None):
  """Places a pytree on the mesh: replicated, or split along `axis`.

  Leaves may be numpy or JAX arrays (typed keys included), identical on
  every process. Without a sharded mesh the tree is returned unchanged.

  Args:
    tree: the arrays.
    mesh: the run's mesh.
    axis: the axis of every leaf split over 'data' (its length must be a
      multiple of the devices), or None to replicate.
  """
  if not is_sharded(mesh):
    return tree
  sharding = replicated(mesh) if axis is None else along(mesh, axis)
  return jax.tree.map(lambda x: _place(x, sharding), tree)


def constrain(tree: PyTree, mesh: Mesh | None, *, axis: int | None = None):
  """`with_sharding_constraint` on every leaf (inside jit or vmap).

  Under `vmap` the mapped axis is not counted: `axis` indexes the leaf as
  the function sees it. Without a sharded mesh the tree is returned as is.

  Args:
    tree: traced arrays.
    mesh: the run's mesh.
    axis: the axis split over 'data', or None to replicate.
  """
  if not is_sharded(mesh):
    return tree
  sharding = replicated(mesh) if axis is None else along(mesh, axis)
  return jax.tree.map(
    lambda x: jax.lax.with_sharding_constraint(x, sharding), tree
  )


def pad_rows(x, size: int):
  """[n, ...] -> [size, ...]: zero rows appended (size >= n)."""
  extra = size - x.shape[0]
  if extra == 0:
    return x
  return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))


def abstract(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """`jax.ShapeDtypeStruct`s of `tree`, replicated on the mesh.

  The restore target of a replicated state: Orbax reads each array onto
  this mesh whatever the mesh it was saved from. Without a sharded mesh,
  `jax.eval_shape` of the tree (restored onto the default device).
  """
  shapes = jax.eval_shape(lambda: tree)
  if not is_sharded(mesh):
    return shapes
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    shapes,
  )


def jit(fn, mesh: Mesh | None, **kwargs):
  """`jax.jit(fn, **kwargs)`, with replicated outputs on a sharded mesh.

  A step's new state stays replicated (and readable on every process)
  however the partitioner split the work inside.
  """
  if is_sharded(mesh):
    kwargs.setdefault("out_shardings", replicated(mesh))
  return jax.jit(fn, **kwargs)


def to_host(tree: PyTree) -> PyTree:
  """The whole value of every leaf as numpy, on every process.

  Arrays split across processes are gathered (`process_allgather`); the
  rest are copied as `jax.device_get` does.
  """

  def one(x):
    if isinstance(x, jax.Array) and not (
      x.is_fully_addressable or x.is_fully_replicated
    ):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, jax.device_get(tree) if _local(tree) else tree)


def _local(tree: PyTree) -> bool:
  return all(
    not isinstance(x, jax.Array) or x.is_fully_addressable
    for x in jax.tree.leaves(tree)
  )
