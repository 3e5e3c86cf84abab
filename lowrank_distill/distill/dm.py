"""Distribution matching (DM, LoDM) as the loop sees it.

With `distill.embedder_pool` = 0 (the paper's DM) every iteration embeds
with a fresh random network. With a pool of P > 0 networks (IDM's model
sampling), the iteration embeds with one network of the pool drawn at
random, which then trains one pass on fresh real images; every
`distill.embedder_refresh` iterations the pool's oldest network is replaced
by a fresh random one, so the pool spans networks from untrained to
partly trained. `distill.ce_weight` > 0 adds IDM's class-aware term: the
drawn network's cross-entropy on the synthetic images and their labels.

References:
  Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023;
  Zhao et al., "Improved Distribution Matching for Dataset Condensation",
  CVPR 2023 (IDM).
"""

import jax
import jax.numpy as jnp

from lowrank_distill import augment, data, models, sharding, train
from lowrank_distill.distill.objective import Objective, Plan, syn_targets
from lowrank_distill.distill.step import StepFn, make_train_step
from lowrank_distill.objectives import distribution_matching, gradient_matching
from lowrank_distill.parameterize import labels as labels_lib


def check(config) -> None:
  cfg = config.distill
  if cfg.ce_weight and not cfg.embedder_pool:
    raise ValueError(
      f"distill.ce_weight: the class-aware term ({cfg.ce_weight}) is the "
      f"cross-entropy of a pool network that has trained on real images; "
      f"with distill.embedder_pool=0 every network is random. Set "
      f"distill.embedder_pool > 0 or distill.ce_weight=0"
    )


def check_plan(plan: Plan) -> None:
  if plan.step["embedder_pool"]:
    data.check_images_per_class(
      plan.dataset.train_labels,
      plan.step["embedder_real_per_class"],
      field="distill.embedder_real_per_class",
    )


def settings(config) -> dict:
  """The keyword settings of `make_step` from the run's config."""
  cfg = config.distill
  return dict(
    batch_real=cfg.batch_real,
    dsa_strategy=cfg.dsa_strategy,
    classes_in_parallel=cfg.classes_in_parallel,
    max_loss=cfg.max_loss,
    embedder_pool=cfg.embedder_pool,
    embedder_refresh=cfg.embedder_refresh,
    embedder_lr=cfg.embedder_lr,
    embedder_momentum=cfg.embedder_momentum,
    embedder_real_per_class=cfg.embedder_real_per_class,
    embedder_batch=cfg.embedder_batch,
    ce_weight=cfg.ce_weight,
    mmd_width=cfg.mmd_width,
  )


def _embedder_optimizer(momentum: float):
  return train.sgd(momentum=momentum, weight_decay=0.0)


def _fresh_embedder(key, plan: Plan, momentum: float) -> dict:
  """{'variables', 'opt_state'} of an untrained network."""
  variables = train.init_variables(key, plan.model, plan.dataset.image_shape)
  optimizer = _embedder_optimizer(momentum)
  params, _ = train.split_variables(variables)
  opt_state = () if optimizer is None else optimizer.init(params)
  return {"variables": variables, "opt_state": opt_state}


def init_aux(key, plan: Plan) -> dict | None:
  """The embedder pool, leaves [P, ...] ({'variables', 'opt_state'}), or
  None without one (`embedder_pool` = 0)."""
  pool = plan.step["embedder_pool"]
  if not pool:
    return None
  momentum = plan.step["embedder_momentum"]
  return jax.vmap(lambda k: _fresh_embedder(k, plan, momentum))(
    jax.random.split(key, pool)
  )


def make_step(
  plan: Plan,
  optimizer,
  *,
  mesh=None,
  batch_real: int,
  dsa_strategy: str,
  classes_in_parallel: int,
  max_loss: float,
  embedder_pool: int = 0,
  embedder_refresh: int = 1,
  embedder_lr: float = 0.01,
  embedder_momentum: float = 0.0,
  embedder_real_per_class: int = 10,
  embedder_batch: int = 256,
  ce_weight: float = 0.0,
  mmd_width: float = 0.0,
) -> StepFn:
  """One DM iteration; the real batch [C, batch_real, ...] is split along
  its second axis over the mesh. `mmd_width` > 0 matches each class's
  embeddings by M3D's Gaussian-kernel MMD instead of their means
  (`distribution_matching.embedding_distance`).

  With `embedder_pool` > 0 the step reads and updates the state's pool
  (`init_aux`): it draws a network, matches with it (and adds `ce_weight`
  times its cross-entropy on the DSA-augmented synthetic images), then
  trains it one pass over `embedder_real_per_class` fresh real images of
  every class (minibatches of `embedder_batch`, SGD at `embedder_lr` with
  `embedder_momentum`, DSA), and after every `embedder_refresh`-th
  iteration replaces the oldest network (slots in turn) by a fresh one.
  The metrics then add 'matching_loss' and 'ce'.
  """
  materialize = plan.reconstructor.materialize
  model = plan.model

  def matching(trainable, key, variables, real_images, class_index):
    sample_key, loss_key = jax.random.split(key)
    idx = data.sample_per_class(sample_key, class_index, n=batch_real)
    return distribution_matching.loss(
      loss_key,
      materialize(trainable["images"]).reshape(plan.syn_shape),
      sharding.constrain(real_images[idx], mesh, axis=1),
      model=model,
      dsa_strategy=dsa_strategy,
      classes_in_parallel=classes_in_parallel,
      mesh=mesh,
      variables=variables,
      mmd_width=mmd_width,
    )

  if not embedder_pool:

    def loss_fn(trainable, key, real_images, class_index):
      return matching(trainable, key, None, real_images, class_index)

    return make_train_step(loss_fn, optimizer, max_loss=max_loss)

  def pooled_loss(trainable, key, variables, real_images, class_index):
    match_key, ce_key = jax.random.split(key)
    matched = matching(
      trainable, match_key, variables, real_images, class_index
    )
    if not ce_weight:
      return matched, {"matching_loss": matched, "ce": jnp.float32(0.0)}
    images = materialize(trainable["images"])
    images = augment.augment(
      ce_key, images, strategy=dsa_strategy, siamese=False
    )
    targets = syn_targets(trainable, plan).reshape(-1, plan.num_classes)
    params, state = train.split_variables(variables)
    logits, _ = train.train_logits(model, params, state, images)
    ce = jnp.mean(labels_lib.soft_cross_entropy(logits, targets))
    return matched + ce_weight * ce, {"matching_loss": matched, "ce": ce}

  train_step = make_train_step(
    pooled_loss, optimizer, max_loss=max_loss, has_aux=True
  )
  net_optimizer = _embedder_optimizer(embedder_momentum)
  # The update is a loop over minibatches: on XLA:CPU, XLA's own conv
  # gradient inside a loop takes a naive path (a Fashion-MNIST step of 40 s
  # against 5 s with im2col, docs/RESULTS.md, session 22), so a step
  # network on 'xla' trains its pool with 'auto' (XLA's conv elsewhere).
  trainer = model
  if plan.conv_impl == "xla":
    trainer = model.clone(conv_impl=models.resolve_conv_impl("auto"))

  def train_embedder(key, embedder, real_images, class_index):
    variables, opt_state = gradient_matching.train_variables_on_real(
      key,
      embedder["variables"],
      embedder["opt_state"],
      real_images,
      class_index,
      model=trainer,
      images_per_class=embedder_real_per_class,
      lr=embedder_lr,
      batch_size=embedder_batch,
      dsa_strategy=dsa_strategy,
      optimizer=net_optimizer,
    )
    return {"variables": variables, "opt_state": opt_state}

  def step(state, key, real_images, class_index):
    pick_key, set_key, train_key, fresh_key = jax.random.split(key, 4)
    pool = state.aux
    slot = jax.random.randint(pick_key, (), 0, embedder_pool)
    embedder = jax.tree.map(lambda x: x[slot], pool)
    state, metrics = train_step(
      state,
      set_key,
      jax.lax.stop_gradient(embedder["variables"]),
      real_images,
      class_index,
    )
    embedder = train_embedder(train_key, embedder, real_images, class_index)
    pool = jax.tree.map(lambda p, e: p.at[slot].set(e), pool, embedder)
    # `state.step` counts this iteration: after iteration r * refresh the
    # slot (r - 1) mod P, the oldest, starts again.
    refresh = state.step % embedder_refresh == 0
    oldest = (state.step // embedder_refresh - 1) % embedder_pool
    fresh = _fresh_embedder(fresh_key, plan, embedder_momentum)
    pool = jax.tree.map(
      lambda p, f: p.at[oldest].set(jnp.where(refresh, f, p[oldest])),
      pool,
      fresh,
    )
    return state.replace(aux=pool), metrics

  return step


OBJECTIVE = Objective(
  make_step=make_step,
  settings=settings,
  check=check,
  check_plan=check_plan,
  init_aux=init_aux,
)
