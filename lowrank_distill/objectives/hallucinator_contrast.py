"""HaBa's adversarial constraint: hallucinators kept apart by an extractor.

A feature extractor (a ConvNet whose flattened features are the embedding)
learns to recognise two hallucinations of one basis as the same content:
cross-entropy on both views, the cosine "likelihood" term and a supervised
contrastive loss (`extractor_loss`). The hallucinators (and bases) add
`club_loss`, the views' mean cosine similarity in that embedding mapped to
[0, 1], to their matching loss: each hallucinator is pushed to make images
whose content the extractor cannot tie to the other hallucinators'.

Each use draws its own pair of distinct hallucinators and applies them to
every basis; the views get per-sample DSA (not siamese), as the reference.

References:
  Liu, Wang, Yang & Wang, "Dataset Distillation via Factorization",
  NeurIPS 2022 (Sec. 3.3; the reference code's `club_content`,
  `cls_content`, `likeli_content` and `contrast_content` losses);
  Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lowrank_distill import augment, train
from lowrank_distill.parameterize import hallucinators as hallucinators_lib

PyTree = Any

# The supervised contrastive loss's temperature (and base temperature): the
# reference's.
TEMPERATURE = 0.07


def views(key, hallucinator_params: dict, bases, *, dsa_strategy: str):
  """Two distinct random hallucinators on every basis, augmented.

  Args:
    key: a `jax.random.key`.
    hallucinator_params: `hallucinators.init_hallucinators`'s dict (H >= 2).
    bases: [n, h, w, c] basis images.
    dsa_strategy: DSA on the 2n images, per sample ('none': off).

  Returns:
    (first, second): [n, h, w, c] each, the two views of every basis.
  """
  pick_key, aug_key = jax.random.split(key)
  num = jax.tree.leaves(hallucinator_params)[0].shape[0]
  pair = jax.random.choice(pick_key, num, (2,), replace=False)
  images = [
    hallucinators_lib.hallucinate(
      jax.tree.map(lambda x, i=i: x[i], hallucinator_params), bases
    )
    for i in (pair[0], pair[1])
  ]
  both = augment.augment(
    aug_key,
    jnp.concatenate(images),
    strategy=dsa_strategy,
    siamese=False,
  )
  return both[: bases.shape[0]], both[bases.shape[0] :]


def logits_and_features(module, images):
  """A ConvNet's (logits [n, C], features [n, d]) in one pass."""
  features = module.embed(images)
  return module.classifier(features), features


def _clamped_norm(x, eps: float):
  """max(||row||, eps) of x [n, d] -> [n, 1], with a finite gradient at 0."""
  squares = jnp.sum(x * x, axis=-1, keepdims=True)
  return jnp.sqrt(jnp.maximum(squares, eps * eps))


def normalize(x, eps: float = 1e-12):
  """Rows of x [n, d] over max(norm, eps) (PyTorch's `F.normalize`)."""
  return x / _clamped_norm(x, eps)


def cosine(a, b, eps: float = 1e-8):
  """[n] cosine similarity of the rows of a and b [n, d], each row over
  max(norm, eps) (PyTorch's `F.cosine_similarity`); 0 for a zero row."""
  return jnp.sum(a / _clamped_norm(a, eps) * (b / _clamped_norm(b, eps)), -1)


def club_loss(first_features, second_features):
  """Mean of (cos + 1) / 2 over the pairs [n, d]: in [0, 1], 1 alike."""
  return jnp.mean((cosine(first_features, second_features) + 1.0) / 2.0)


def likelihood_loss(first_features, second_features):
  """Mean of (1 - cos) / 2 over the pairs: 0 when the views agree."""
  return jnp.mean((1.0 - cosine(first_features, second_features)) / 2.0)


def supervised_contrastive_loss(
  features, labels, *, temperature: float = TEMPERATURE
):
  """Khosla et al.'s loss, every view an anchor ('all' mode).

  Args:
    features: [n, v, d] unit-norm embeddings, v views of each of n samples.
    labels: [n] int classes; views of samples of one class are positives.
    temperature: the softmax temperature (= the base temperature).

  Returns:
    A scalar: minus the mean over anchors of the mean log-probability of
    their positives among every other view.
  """
  n, v = features.shape[:2]
  flat = jnp.concatenate([features[:, i] for i in range(v)])  # [v n, d]
  logits = flat @ flat.T / temperature
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, 1, keepdims=True))
  tiled = jnp.tile(labels, v)
  others = ~jnp.eye(v * n, dtype=bool)
  positive = (tiled[:, None] == tiled[None, :]) & others
  log_prob = logits - jnp.log(
    jnp.sum(jnp.where(others, jnp.exp(logits), 0.0), 1, keepdims=True)
  )
  mean_positive = jnp.sum(jnp.where(positive, log_prob, 0.0), 1) / jnp.sum(
    positive, 1
  )
  return -jnp.mean(mean_positive)


def extractor_loss(
  logits,
  first_features,
  second_features,
  labels,
  *,
  cls_weight: float,
  likelihood_weight: float,
  contrast_weight: float,
):
  """What the extractor minimises on the two views.

  Args:
    logits: [2n, C], the first views' then the second's.
    first_features, second_features: [n, d].
    labels: [n] int classes of the bases.
    cls_weight, likelihood_weight, contrast_weight: the three terms'
      weights (the reference: 1 each).

  Returns:
    (loss, terms): the scalar and {'cls', 'likelihood', 'contrast'}.
  """
  both = jnp.concatenate([labels, labels])
  cls = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, both))
  likelihood = likelihood_loss(first_features, second_features)
  contrast = supervised_contrastive_loss(
    jnp.stack([normalize(first_features), normalize(second_features)], axis=1),
    labels,
  )
  terms = {"cls": cls, "likelihood": likelihood, "contrast": contrast}
  loss = (
    cls_weight * cls
    + likelihood_weight * likelihood
    + contrast_weight * contrast
  )
  return loss, terms


def extractor_optimizer(*, lr: float, momentum: float):
  """The extractor's SGD (the reference: lr 0.001, momentum 0.9)."""
  return optax.sgd(lr, momentum=momentum or None)


def embed_views(extractor, extractor_params: PyTree, first, second):
  """(logits [2n, C], first features, second features) of the two views."""
  logits, features = extractor.apply(
    {"params": extractor_params},
    jnp.concatenate([first, second]),
    method=logits_and_features,
  )
  n = first.shape[0]
  return logits, features[:n], features[n:]


def club_term(
  key,
  hallucinator_params: dict,
  bases,
  extractor_params: PyTree,
  *,
  extractor,
  dsa_strategy: str,
):
  """`club_loss` of fresh views under the (fixed) extractor: the set's
  term; differentiable in the hallucinators and the bases."""
  first, second = views(
    key, hallucinator_params, bases, dsa_strategy=dsa_strategy
  )
  _, f1, f2 = embed_views(
    extractor, jax.lax.stop_gradient(extractor_params), first, second
  )
  return club_loss(f1, f2)


def extractor_step(
  key,
  extractor_params: PyTree,
  opt_state: PyTree,
  hallucinator_params: dict,
  bases,
  labels,
  *,
  extractor,
  optimizer,
  dsa_strategy: str,
  cls_weight: float,
  likelihood_weight: float,
  contrast_weight: float,
):
  """One update of the extractor on fresh views of the (fixed) set.

  A non-finite loss or gradient leaves the params and optimiser state
  unchanged.

  Returns:
    (params, opt_state, metrics): metrics has 'extractor_loss' and its
    terms ('extractor_cls', 'extractor_likelihood', 'extractor_contrast').
  """
  first, second = jax.lax.stop_gradient(
    views(key, hallucinator_params, bases, dsa_strategy=dsa_strategy)
  )

  def loss_fn(params):
    logits, f1, f2 = embed_views(extractor, params, first, second)
    return extractor_loss(
      logits,
      f1,
      f2,
      labels,
      cls_weight=cls_weight,
      likelihood_weight=likelihood_weight,
      contrast_weight=contrast_weight,
    )

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    extractor_params
  )
  updates, new_opt_state = optimizer.update(grads, opt_state, extractor_params)
  new_params = optax.apply_updates(extractor_params, updates)
  params, opt_state = train.keep_where(
    train.finite(loss, grads),
    (new_params, new_opt_state),
    (extractor_params, opt_state),
  )
  metrics = {"extractor_loss": loss}
  metrics.update({f"extractor_{name}": value for name, value in terms.items()})
  return params, opt_state, metrics
