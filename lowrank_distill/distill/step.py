"""The distillation state, its optimiser, the guarded update and the step.

The trainable state is a dict of parameter groups, each with its own optax
optimiser: 'images' (the reconstructor's parameters: pixels, factors or
mappers and codes), optionally 'labels' (learnable label logits) and
'log_lr' (a learned student lr, kept positive as a log). An objective turns
the trainable dict, a key and the real data into a scalar loss; the step
differentiates it, refuses non-finite or exploding losses (counted, never
applied), and updates every group.
"""

from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from lowrank_distill import checks, train

PyTree = Any
LossFn = Callable[..., jax.Array]
StepFn = Callable[..., tuple["DistillState", dict]]


@flax.struct.dataclass
class DistillState:
  """Everything a checkpoint holds.

  Attributes:
    step: iterations done.
    trainable: {'images': reconstructor params, 'labels'?: [n, C] logits,
      'log_lr'?: scalar}.
    opt_state: the optax state of `trainable`.
    skipped: updates refused for a non-finite or exploding loss.
  """

  step: jax.Array
  trainable: dict
  opt_state: PyTree
  skipped: jax.Array


@flax.struct.dataclass
class DistillStateWithAux(DistillState):
  """A `DistillState` with networks the objective trains beside the set.

  A subclass, not an optional field, so that the checkpoints of runs
  without such networks keep their structure.

  Attributes:
    aux: the objective's own state, e.g. HaBa's feature extractor
      {'params', 'opt_state'}; never exported.
  """

  aux: dict


def holds_subgroup(group, keys) -> bool:
  """Whether a trainable group (a dict) holds every key of a sub-group."""
  return isinstance(group, dict) and all(key in group for key in keys)


def _keep() -> optax.GradientTransformation:
  """Updates that leave the params as they are, bit for bit.

  -0.0, not 0.0: `p + (-0.0)` is `p` for every float, while `-0.0 + 0.0`
  would turn a negative zero positive.
  """

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# Parts of a trainable group that take their own optimiser when `groups`
# names them: sub-group name -> the keys of the group's dict it takes (a
# hallucinator set's networks beside its bases; shared mappers beside their
# codes).
SUBGROUPS = {
  "images": {"hallucinators": ("hallucinators",), "mappers": ("u", "v")}
}


# The update rules a set's groups can take: SGD with momentum (DC, DM, MTT)
# or Adam (DD and LD; its `momentum` field is unused, optax's betas).
OPTIMIZERS = ("sgd", "adam")


def _projected(
  inner: optax.GradientTransformation, project: Callable[[dict], dict]
) -> optax.GradientTransformation:
  """`inner`'s update, then `project` on the updated params.

  The returned updates are `project(params + inner's) - params`, so that
  `optax.apply_updates` lands on the projected params (to float rounding).
  The state is `inner`'s: checkpoints keep their structure.
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("a projected optimiser needs the params")
    updates, state = inner.update(updates, state, params)
    projected = project(optax.apply_updates(params, updates))
    return jax.tree.map(jnp.subtract, projected, params), state

  return optax.GradientTransformation(inner.init, update)


def make_optimizer(
  groups: dict[str, tuple[float, float] | None],
  *,
  kind: str = "sgd",
  project: Callable[[dict], dict] | None = None,
):
  """SGD with momentum (or Adam) per parameter group.

  Args:
    groups: group name -> (learning rate, momentum), or None for a group
      kept as initialised (frozen: every update leaves it unchanged). A
      name of `SUBGROUPS` (e.g. 'hallucinators', 'mappers') takes that part
      of its group ('images') out of the group's optimiser.
    kind: 'sgd' (momentum from each group) or 'adam' (optax's defaults,
      the group's lr).
    project: applied to the whole trainable dict after every update (e.g.
      mappers held orthonormal, `planning.projection`); None: no projection.

  Returns:
    An optax transformation over a dict with exactly these groups.
  """
  checks.check_choice("distill.optimizer", kind, OPTIMIZERS)

  def rule(lr, momentum):
    if kind == "adam":
      return optax.adam(lr)
    return optax.sgd(lr, momentum=momentum or None)

  transforms = {
    name: _keep() if group is None else rule(*group)
    for name, group in groups.items()
  }

  def label(name, subtree):
    """Leaves of a group, with its sub-groups that have an optimiser."""
    labels = jax.tree.map(lambda _: name, subtree)
    for sub, keys in SUBGROUPS.get(name, {}).items():
      if sub in groups and holds_subgroup(subtree, keys):
        for key in keys:
          labels[key] = jax.tree.map(lambda _: sub, subtree[key])
    return labels

  def group_of(tree):
    return {name: label(name, tree[name]) for name in tree}

  optimizer = optax.multi_transform(transforms, group_of)
  return optimizer if project is None else _projected(optimizer, project)


# The groups an average of the set (`with_average`) covers: what the set
# stores. The learned student lr is not averaged: as in FTD, the averaged
# set is trained with the run's last learned lr.
AVERAGED_GROUPS = ("images", "labels")


class AveragedState(NamedTuple):
  """`with_average`'s optimiser state.

  Attributes:
    inner: the state of the wrapped optimiser.
    average: {group: params} for the `AVERAGED_GROUPS` the trainable dict
      holds, the exponential moving average of the updated params.
  """

  inner: PyTree
  average: dict


def with_average(
  inner: optax.GradientTransformation, *, decay: float
) -> optax.GradientTransformation:
  """`inner`, keeping an exponential moving average of the updated set.

  FTD's average of the synthetic images (Du et al., CVPR 2023: the set
  evaluated and exported is `average`, updated after every step as
  `average + (1 - decay) * (params - average)` from the initial params).
  It never feeds back into the training; a refused update
  (`guarded_update`) leaves it unchanged with the rest of the state, and a
  group kept as initialised keeps its value.

  Args:
    inner: the set's optimiser (`make_optimizer`).
    decay: in [0, 1); 0 makes the average the last params.

  Returns:
    An optax transformation whose state is an `AveragedState`; `averaged`
    reads the set back from it.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")

  def held(params: dict) -> dict:
    return {name: params[name] for name in AVERAGED_GROUPS if name in params}

  def init(params):
    return AveragedState(inner=inner.init(params), average=held(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("an averaged optimiser needs the params")
    updates, inner_state = inner.update(updates, state.inner, params)
    new = held(optax.apply_updates(params, updates))
    average = jax.tree.map(
      lambda mean, value: mean + (1.0 - decay) * (value - mean),
      state.average,
      new,
    )
    return updates, AveragedState(inner=inner_state, average=average)

  return optax.GradientTransformation(init, update)


def averaged(state: DistillState) -> dict:
  """The set a run reports: its trainable dict with the averaged groups
  of `with_average` in place of the last ones, or the trainable dict as
  it is when the optimiser keeps no average."""
  if not isinstance(state.opt_state, AveragedState):
    return state.trainable
  return {**state.trainable, **state.opt_state.average}


def init_state(trainable: dict, optimizer, *, aux=None) -> DistillState:
  """The state before the first step; a `DistillStateWithAux` when `aux`
  (the objective's own networks) is given."""
  fields = dict(
    step=jnp.int32(0),
    trainable=trainable,
    opt_state=optimizer.init(trainable),
    skipped=jnp.int32(0),
  )
  if aux is None:
    return DistillState(**fields)
  return DistillStateWithAux(**fields, aux=aux)


def guarded_update(
  state: DistillState, loss, grads, optimizer, *, max_loss: float
) -> tuple[DistillState, jax.Array]:
  """Applies `grads` unless the loss or a gradient is bad.

  A non-finite loss or gradient, or a loss above `max_loss`, leaves the
  trainable params and the optimiser state untouched and increments
  `skipped`. `step` is not changed.

  Returns:
    (state, refused): the new state and whether the update was refused.
  """
  ok = train.finite(loss, grads) & (loss <= max_loss)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  new_state = state.replace(
    trainable=train.keep_where(ok, trainable, state.trainable),
    opt_state=train.keep_where(ok, opt_state, state.opt_state),
    skipped=state.skipped + (~ok).astype(jnp.int32),
  )
  return new_state, ~ok


def make_train_step(
  loss_fn: LossFn,
  optimizer,
  *,
  max_loss: float,
  frozen: Collection[str] = (),
  has_aux: bool = False,
):
  """One distillation iteration with a guard against bad losses.

  Args:
    loss_fn: (trainable, key, *data) -> scalar loss, or with `has_aux`
      (loss, metrics): a dict of scalars added to the step's metrics.
    optimizer: from `make_optimizer`.
    max_loss: losses above this (or non-finite losses or gradients) skip the
      update and increment `skipped`.
    frozen: trainable groups kept as initialised (`None` groups of
      `make_optimizer`): the loss sees them through `stop_gradient`, so
      their (zero) gradient costs nothing.
    has_aux: `loss_fn` returns (loss, metrics).

  Returns:
    train_step(state, key, *data) -> (state, metrics); jit it where used.
  """

  def train_step(state: DistillState, key, *data_args):
    def objective(trainable):
      trainable = {
        name: jax.lax.stop_gradient(group) if name in frozen else group
        for name, group in trainable.items()
      }
      return loss_fn(trainable, key, *data_args)

    if has_aux:
      (loss, extra), grads = jax.value_and_grad(objective, has_aux=True)(
        state.trainable
      )
    else:
      loss, grads = jax.value_and_grad(objective)(state.trainable)
      extra = {}
    state, refused = guarded_update(
      state, loss, grads, optimizer, max_loss=max_loss
    )
    return state.replace(step=state.step + 1), {
      **extra,
      "loss": loss,
      "skipped": refused,
    }

  return train_step
