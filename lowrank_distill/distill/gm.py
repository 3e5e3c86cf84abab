"""Gradient matching (DC, DSA, LoDC, LoDSA, IDC's matching) as the loop
sees it.

Between matchings the network trains on the synthetic set (DC, DSA:
`distill.net_data='synthetic'`) or on fresh real images (IDC: 'real').

References:
  Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
  ICLR 2021; Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
  Augmentation", ICML 2021; Kim et al., "Dataset Condensation via
  Efficient Synthetic-Data Parameterization", ICML 2022 (IDC).
"""

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_distill import checks, data, models, sharding, train
from lowrank_distill.distill.objective import Objective, Plan, syn_targets
from lowrank_distill.distill.step import DistillState, StepFn, guarded_update
from lowrank_distill.objectives import gradient_matching

# What the network trains on between matchings.
NET_DATA = ("synthetic", "real")


def check(config) -> None:
  cfg = config.distill
  gradient_matching.check_distance(cfg.distance)
  if cfg.outer_loop < 1 or cfg.inner_loop < 0:
    raise ValueError(
      f"distill.outer_loop / distill.inner_loop: no loop setting for IPC "
      f"{config.synset.ipc} (got outer_loop={cfg.outer_loop}, "
      f"inner_loop={cfg.inner_loop}); set both, e.g. "
      f"--config.distill.outer_loop=10 --config.distill.inner_loop=50 (the "
      f"published table is in configs/gm.py)"
    )
  checks.check_choice("distill.net_data", cfg.net_data, NET_DATA)
  if cfg.net_data == "synthetic" and (
    cfg.net_momentum or cfg.net_weight_decay or cfg.net_cutmix
  ):
    raise ValueError(
      f"distill.net_momentum / distill.net_weight_decay / "
      f"distill.net_cutmix: the network trains on the synthetic set with "
      f"plain SGD, as DC's reference does; all must be 0 with "
      f"distill.net_data='synthetic' (got {cfg.net_momentum}, "
      f"{cfg.net_weight_decay}, {cfg.net_cutmix}); they apply to "
      f"net_data='real' (IDC)"
    )
  if cfg.clamp_images and config.synset.param != "pixels":
    raise ValueError(
      f"distill.clamp_images keeps pixels inside the real images' range; "
      f"synset.param {config.synset.param!r} stores no pixels (use "
      f"synset.param='pixels' or clamp_images=False)"
    )


def check_plan(plan: Plan) -> None:
  if plan.step["net_data"] == "real":
    data.check_images_per_class(
      plan.dataset.train_labels,
      plan.step["net_real_per_class"],
      field="distill.net_real_per_class",
    )
  if models.uses_batch_norm(plan.model):
    data.check_images_per_class(
      plan.dataset.train_labels,
      gradient_matching.BN_IMAGES_PER_CLASS,
      field="dataset (images per class for the BatchNorm statistics)",
    )


def settings(config) -> dict:
  """The keyword settings of `make_step` from the run's config."""
  cfg = config.distill
  return dict(
    distance=cfg.distance,
    outer_loop=cfg.outer_loop,
    inner_loop=cfg.inner_loop,
    lr_net=cfg.lr_net,
    batch_real=cfg.batch_real,
    batch_train=cfg.batch_train,
    dsa_strategy=cfg.dsa_strategy,
    classes_in_parallel=cfg.classes_in_parallel,
    max_loss=cfg.max_loss,
    net_data=cfg.net_data,
    net_real_per_class=cfg.net_real_per_class,
    net_momentum=cfg.net_momentum,
    net_weight_decay=cfg.net_weight_decay,
    clamp_images=cfg.clamp_images,
    net_cutmix=cfg.net_cutmix,
    class_steps=cfg.class_steps,
  )


def make_step(
  plan: Plan,
  optimizer,
  *,
  mesh=None,
  distance: str,
  outer_loop: int,
  inner_loop: int,
  lr_net: float,
  batch_real: int,
  batch_train: int,
  dsa_strategy: str,
  classes_in_parallel: int,
  max_loss: float,
  net_data: str = "synthetic",
  net_real_per_class: int = 50,
  net_momentum: float = 0.0,
  net_weight_decay: float = 0.0,
  clamp_images: bool = False,
  net_cutmix: float = 0.0,
  class_steps: bool = False,
) -> StepFn:
  """One iteration: `outer_loop` synthetic updates on one fresh network.

  Per outer loop: (BatchNorm networks: set the running statistics from a
  real batch), match the gradients of a class-balanced real batch and of the
  synthetic set, update the synthetic set (guarded), then train the network,
  except after the last outer loop: on the synthetic set for `inner_loop`
  epochs of plain SGD (`net_data='synthetic'`, DC and DSA), or for one pass
  over `net_real_per_class` fresh real images of every class with SGD
  (`net_momentum`, `net_weight_decay`, its state kept across the
  iteration's passes; `net_data='real'`, IDC). With `clamp_images` (a
  pixel set), the pixels are first clipped to the real training images'
  per-channel range, as IDC's reference clamps them to [0, 1] before every
  iteration; `net_cutmix` > 0 CutMixes that pass's batches with this
  probability (IDC's `mixup_net='cut'`). With `class_steps` the set takes
  one guarded update per class, in class order, each on that class's
  distance alone (IDC's reference; a refusal counts per class), instead of
  one update on the sum. The reported loss is the mean over outer loops of
  the summed class distances. With a mesh, the matched real batch
  [C, m, ...] is split along m.
  """
  model = plan.model
  materialize = plan.reconstructor.materialize
  image_shape = plan.dataset.image_shape
  batch_norm = models.uses_batch_norm(model)

  def match(trainable, key, real, variables):
    return gradient_matching.matching_loss(
      key,
      materialize(trainable["images"]).reshape(plan.syn_shape),
      syn_targets(trainable, plan),
      real,
      model=model,
      variables=variables,
      distance=distance,
      dsa_strategy=dsa_strategy,
      classes_in_parallel=classes_in_parallel,
      mesh=mesh,
    )

  def match_by_class(state, key, real, variables):
    def one(state, c):
      def loss_fn(trainable):
        images = materialize(trainable["images"]).reshape(plan.syn_shape)
        return gradient_matching.class_matching_loss(
          key,
          c,
          images[c],
          syn_targets(trainable, plan)[c],
          real[c],
          model=model,
          variables=variables,
          num_classes=plan.num_classes,
          distance=distance,
          dsa_strategy=dsa_strategy,
          mesh=mesh,
        )

      loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
      state, refused = guarded_update(
        state, loss, grads, optimizer, max_loss=max_loss
      )
      return state, (loss, refused)

    state, (losses, refused) = jax.lax.scan(
      one, state, jnp.arange(plan.num_classes)
    )
    return state, jnp.sum(losses), jnp.any(refused)

  def train_network(key, variables, trainable):
    return gradient_matching.train_on_synthetic(
      key,
      variables,
      materialize(trainable["images"]),
      syn_targets(trainable, plan).reshape(-1, plan.num_classes),
      model=model,
      epochs=inner_loop,
      lr=lr_net,
      batch_size=batch_train,
      dsa_strategy=dsa_strategy,
    )

  net_optimizer = train.sgd(
    momentum=net_momentum, weight_decay=net_weight_decay
  )

  def train_on_real(key, variables, opt_state, real_images, class_index):
    return gradient_matching.train_variables_on_real(
      key,
      variables,
      opt_state,
      real_images,
      class_index,
      model=model,
      images_per_class=net_real_per_class,
      lr=lr_net,
      batch_size=batch_train,
      dsa_strategy=dsa_strategy,
      optimizer=net_optimizer,
      cutmix_prob=net_cutmix,
    )

  if clamp_images:
    # Per-channel bounds, broadcast against [n, h, w, c].
    axes = tuple(range(plan.dataset.train_images.ndim - 1))
    low = jnp.asarray(np.min(plan.dataset.train_images, axis=axes))[
      None, None, None
    ]
    high = jnp.asarray(np.max(plan.dataset.train_images, axis=axes))[
      None, None, None
    ]

  def step(state: DistillState, key, real_images, class_index):
    if clamp_images:
      trainable = state.trainable
      images = jnp.clip(trainable["images"]["images"], low, high)
      state = state.replace(
        trainable={**trainable, "images": {"images": images}}
      )
    net_key, loop_key = jax.random.split(key)
    variables = model.init(net_key, real_images[:1])
    opt_state = (
      ()
      if net_optimizer is None
      else net_optimizer.init(train.split_variables(variables)[0])
    )

    def outer(carry, index):
      state, variables, opt_state = carry
      bn_key, real_key, match_key, inner_key = jax.random.split(
        jax.random.fold_in(loop_key, index), 4
      )
      if batch_norm:
        idx = data.sample_per_class(
          bn_key, class_index, n=gradient_matching.BN_IMAGES_PER_CLASS
        )
        variables = gradient_matching.batch_norm_statistics(
          model, variables, real_images[idx].reshape(-1, *image_shape)
        )
      idx = data.sample_per_class(real_key, class_index, n=batch_real)
      real = sharding.constrain(real_images[idx], mesh, axis=1)
      if class_steps:
        state, loss, refused = match_by_class(state, match_key, real, variables)
      else:
        loss, grads = jax.value_and_grad(match)(
          state.trainable, match_key, real, variables
        )
        state, refused = guarded_update(
          state, loss, grads, optimizer, max_loss=max_loss
        )
      if net_data == "real":
        variables, opt_state = jax.lax.cond(
          index < outer_loop - 1,
          lambda v, o: train_on_real(inner_key, v, o, real_images, class_index),
          lambda v, o: (v, o),
          variables,
          opt_state,
        )
      else:
        variables = jax.lax.cond(
          index < outer_loop - 1,
          lambda v: train_network(inner_key, v, state.trainable),
          lambda v: v,
          variables,
        )
      return (state, variables, opt_state), (loss, refused)

    (state, _, _), (losses, refused) = jax.lax.scan(
      outer, (state, variables, opt_state), jnp.arange(outer_loop)
    )
    return state.replace(step=state.step + 1), {
      "loss": jnp.mean(losses),
      "skipped": jnp.any(refused),
    }

  return step


OBJECTIVE = Objective(
  make_step=make_step,
  settings=settings,
  check=check,
  check_plan=check_plan,
  learns_labels=True,
)
