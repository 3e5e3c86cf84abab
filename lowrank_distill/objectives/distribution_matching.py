"""Distribution matching (DM): match embeddings of random networks, by
their means (DM) or by a Gaussian-kernel MMD (M3D).

References:
  Zhao & Bilen, "Dataset Condensation with Distribution Matching",
  WACV 2023; Zhang et al., "M3D: Dataset Condensation by Minimizing Maximum
  Mean Discrepancy", AAAI 2024.
"""

import jax
import jax.numpy as jnp

from lowrank_distill import augment, sharding


def _mean_kernel(a, b, bandwidth):
  """Mean over every pair of rows of exp(-|a_i - b_j|^2 / (2 bandwidth))."""
  squared = (
    jnp.sum(a**2, axis=1)[:, None]
    + jnp.sum(b**2, axis=1)[None, :]
    - 2.0 * a @ b.T
  )
  return jnp.mean(jnp.exp(-jnp.maximum(squared, 0.0) / (2.0 * bandwidth)))


def embedding_distance(real, syn, *, mmd_width: float = 0.0):
  """The distance between a class's real and synthetic embeddings.

  With `mmd_width` 0, DM's `|| mean(real) - mean(syn) ||^2` (the squared
  MMD of a linear kernel). With `mmd_width` > 0, M3D's squared MMD of a
  Gaussian kernel, which matches every moment rather than the mean, times
  its bandwidth h = mmd_width x the mean squared distance between the real
  embeddings (constant to the gradient): as the width grows this tends to
  DM's distance, so one lr serves both.

  Args:
    real: [m, d] real embeddings.
    syn: [k, d] synthetic embeddings.
    mmd_width: 0 (DM) or the Gaussian kernel's width in units of the real
      embeddings' mean squared distance.

  Returns:
    A scalar.
  """
  if not mmd_width:
    return jnp.sum((jnp.mean(real, axis=0) - jnp.mean(syn, axis=0)) ** 2)
  # Centred on the real mean: the distances lose no precision to the
  # embeddings' common offset.
  centre = jax.lax.stop_gradient(jnp.mean(real, axis=0, keepdims=True))
  real, syn = real - centre, syn - centre
  spread = 2.0 * jnp.mean(jnp.sum(real**2, axis=1))
  bandwidth = jax.lax.stop_gradient(mmd_width * spread)
  mmd = (
    _mean_kernel(real, real, bandwidth)
    + _mean_kernel(syn, syn, bandwidth)
    - 2.0 * _mean_kernel(real, syn, bandwidth)
  )
  return bandwidth * mmd


def class_loss(
  embed,
  real,
  syn,
  key,
  *,
  dsa_strategy: str,
  mesh=None,
  mmd_width: float = 0.0,
):
  """`embedding_distance(embed(real), embed(syn))` for one class: with
  `mmd_width` 0, `|| mean(embed(real)) - mean(embed(syn)) ||^2`.

  Args:
    embed: images [m, h, w, c] -> features [m, d].
    real: [m, h, w, c] real images of the class.
    syn: [k, h, w, c] synthetic images of the class.
    key: siamese augmentation key, the same for both batches.
    dsa_strategy: DSA strategy or 'none'.
    mesh: split `real` over the mesh's 'data' axis (m must be a multiple of
      its devices); None or one device: unsplit.
    mmd_width: `embedding_distance`'s (0: DM's mean embeddings).

  Returns:
    A scalar.
  """
  real = sharding.constrain(real, mesh, axis=0)
  if augment.parse_strategy(dsa_strategy):
    real = augment.augment(key, real, strategy=dsa_strategy, siamese=True)
    syn = augment.augment(key, syn, strategy=dsa_strategy, siamese=True)
  return embedding_distance(embed(real), embed(syn), mmd_width=mmd_width)


def loss(
  key,
  syn_images,
  real_images,
  *,
  model,
  dsa_strategy: str,
  classes_in_parallel: int = 1,
  mesh=None,
  variables=None,
  mmd_width: float = 0.0,
):
  """The DM loss of one iteration, with a fresh random network (or the
  given one): the sum over classes of `embedding_distance`.

  Args:
    key: draws the network and the per-class siamese augmentations.
    syn_images: [num_classes, k, h, w, c] synthetic images, class-major.
    real_images: [num_classes, m, h, w, c] a class-balanced real batch.
    model: a Linen module with an `embed` method; its random init is frozen
      (no gradient reaches the network).
    dsa_strategy: DSA strategy or 'none'.
    classes_in_parallel: classes embedded at once; 1 (the default) embeds
      one class after another as the reference does, bounding memory by one
      class's real batch.
    mesh: split each class's real batch (m) over the mesh's 'data' axis;
      None or one device: unsplit.
    variables: the network's variables (e.g. a trained one of IDM's pool),
      seen without gradient; None: a fresh random init drawn from `key`.
    mmd_width: 0, DM's mean embeddings; > 0, M3D's Gaussian-kernel MMD
      (`embedding_distance`).

  Returns:
    A scalar: the sum over classes of the embedding distance.
  """
  net_key, aug_key = jax.random.split(key)
  if variables is None:
    variables = model.init(net_key, real_images[0, :1])
  variables = jax.lax.stop_gradient(variables)

  def embed(x):
    # Train mode as the reference (`net.train()`): BatchNorm uses the
    # batch's statistics; the updated running stats are discarded.
    if "batch_stats" in variables:
      out, _ = model.apply(
        variables, x, train=True, method="embed", mutable=["batch_stats"]
      )
      return out
    return model.apply(variables, x, train=True, method="embed")

  num_classes = syn_images.shape[0]
  class_keys = jax.vmap(lambda c: jax.random.fold_in(aug_key, c))(
    jnp.arange(num_classes)
  )
  per_class = jax.lax.map(
    lambda args: class_loss(
      embed,
      args[0],
      args[1],
      args[2],
      dsa_strategy=dsa_strategy,
      mesh=mesh,
      mmd_width=mmd_width,
    ),
    (real_images, syn_images, class_keys),
    batch_size=classes_in_parallel,
  )
  return jnp.sum(per_class)
