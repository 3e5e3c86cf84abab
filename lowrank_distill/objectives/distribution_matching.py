"""Distribution matching (DM): match mean embeddings of random networks.

References:
  Zhao & Bilen, "Dataset Condensation with Distribution Matching",
  WACV 2023.
"""

import jax
import jax.numpy as jnp

from lowrank_distill import augment, sharding


def class_loss(
  embed,
  real,
  syn,
  key,
  *,
  dsa_strategy: str,
  mesh=None,
):
  """`|| mean(embed(real)) - mean(embed(syn)) ||^2` for one class.

  Args:
    embed: images [m, h, w, c] -> features [m, d].
    real: [m, h, w, c] real images of the class.
    syn: [k, h, w, c] synthetic images of the class.
    key: siamese augmentation key, the same for both batches.
    dsa_strategy: DSA strategy or 'none'.
    mesh: split `real` over the mesh's 'data' axis (m must be a multiple of
      its devices); None or one device: unsplit.

  Returns:
    A scalar.
  """
  real = sharding.constrain(real, mesh, axis=0)
  if augment.parse_strategy(dsa_strategy):
    real = augment.augment(key, real, strategy=dsa_strategy, siamese=True)
    syn = augment.augment(key, syn, strategy=dsa_strategy, siamese=True)
  difference = jnp.mean(embed(real), axis=0) - jnp.mean(embed(syn), axis=0)
  return jnp.sum(difference**2)


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
):
  """The DM loss of one iteration, with a fresh random network (or the
  given one).

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

  Returns:
    A scalar: the sum over classes of the squared mean-embedding distance.
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
      embed, args[0], args[1], args[2], dsa_strategy=dsa_strategy, mesh=mesh
    ),
    (real_images, syn_images, class_keys),
    batch_size=classes_in_parallel,
  )
  return jnp.sum(per_class)
