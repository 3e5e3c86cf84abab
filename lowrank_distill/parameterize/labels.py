"""Labels of a synthetic set: hard classes or learnable soft logits.

A set of `n = num_classes * images_per_class` images is class-major: image
`i` has hard label `i // images_per_class`. Hard labels are int32 and cost
no storage; soft labels are float32 logits `[n, num_classes]`, learned with
the images and counted in the storage budget. Training against soft labels
is cross-entropy with `softmax(logits)` as the target distribution.

References:
  Sucholutsky & Schonlau, "Soft-Label Dataset Distillation and Text Dataset
  Distillation", IJCNN 2021; Kong et al., "Efficient Dataset Distillation
  through Low-Rank Space Sampling", arXiv:2503.07998, 2025 (learnable soft
  labels, random init).
"""

import math

import jax
import jax.numpy as jnp

from lowrank_distill import checks

# Default softmax mass the 'onehot' init puts on the image's own class.
ONEHOT_MASS = 0.9


def hard(num_classes: int, images_per_class: int) -> jax.Array:
  """Class-major hard labels: [n] int32, `labels[i] = i // images_per_class`."""
  return jnp.repeat(
    jnp.arange(num_classes, dtype=jnp.int32),
    images_per_class,
    total_repeat_length=num_classes * images_per_class,
  )


def onehot_scale(num_classes: int, mass: float = ONEHOT_MASS) -> float:
  """The logit `s` for which `softmax(s * onehot)` puts `mass` on the class.

  `e^s / (e^s + C - 1) = mass` gives `s = log(mass * (C - 1) / (1 - mass))`;
  with the default 0.9: `log(81) = 4.39` for 10 classes, `log(891) = 6.79`
  for 100. 0 for a single class (its probability is 1 anyway).
  """
  if not 0.0 < mass < 1.0:
    raise ValueError(f"mass must be in (0, 1), got {mass}")
  if num_classes < 2:
    return 0.0
  return math.log(mass * (num_classes - 1) / (1.0 - mass))


def _random(key, num_classes, images_per_class, scale, expert_logits):
  del expert_logits  # unused
  n = num_classes * images_per_class
  std = 1.0 if scale is None else scale
  return std * jax.random.normal(key, (n, num_classes), jnp.float32)


def _onehot(key, num_classes, images_per_class, scale, expert_logits):
  del key, expert_logits  # deterministic
  s = onehot_scale(num_classes) if scale is None else scale
  onehot = jax.nn.one_hot(hard(num_classes, images_per_class), num_classes)
  return s * onehot.astype(jnp.float32)


def _expert(key, num_classes, images_per_class, scale, expert_logits):
  del key  # deterministic
  n = num_classes * images_per_class
  if expert_logits is None:
    raise ValueError(
      "labels.init 'expert' needs the logits a trained expert gives the "
      "set's initial images (expert_logits)"
    )
  logits = jnp.asarray(expert_logits, jnp.float32)
  if logits.shape != (n, num_classes):
    raise ValueError(
      f"expert_logits must be [{n}, {num_classes}], got {logits.shape}"
    )
  return (1.0 if scale is None else scale) * logits


# Soft-label initialisers: (key, num_classes, images_per_class, scale,
# expert_logits) -> logits [n, num_classes].
LABEL_INITS = {"random": _random, "onehot": _onehot, "expert": _expert}


def init_soft(
  key,
  *,
  num_classes: int,
  images_per_class: int,
  method: str = "random",
  scale: float | None = None,
  expert_logits=None,
) -> jax.Array:
  """Initial learnable label logits.

  Args:
    key: a `jax.random.key` (used by 'random').
    num_classes: C.
    images_per_class: images per class (class-major order).
    method: 'random': i.i.d. normal logits with std `scale` (default 1.0),
      the MTT-LSS default; 'onehot': `scale` times the one-hot of the hard
      label, default `onehot_scale(C)` so that softmax puts 0.9 of the mass
      on the image's class whatever C; 'expert': `scale` (default 1) times
      `expert_logits`, the logits a trained network gives the set's initial
      images (DESIGN 3.4: labels from expert predictions).
    scale: see `method`; None for the default.
    expert_logits: [n, num_classes], for 'expert'.

  Returns:
    [n, num_classes] float32 logits, n = num_classes * images_per_class.
  """
  checks.check_choice("labels.init", method, LABEL_INITS)
  if num_classes < 1 or images_per_class < 1:
    raise ValueError(
      f"num_classes and images_per_class must be >= 1, got {num_classes} "
      f"and {images_per_class}"
    )
  return LABEL_INITS[method](
    key, num_classes, images_per_class, scale, expert_logits
  )


def from_logits(logits) -> jax.Array:
  """Label probabilities: softmax over the last axis, [n, C] -> [n, C]."""
  return jax.nn.softmax(logits, axis=-1)


def targets(labels, num_classes: int | None = None) -> jax.Array:
  """Probability targets from hard labels or label logits.

  Args:
    labels: [n] integer class ids (-> one-hot; an id outside [0, C) gives an
      all-zero row, i.e. no loss), or [n, C] float logits (-> softmax).
    num_classes: C; required for integer labels, checked for logits.

  Returns:
    [n, C] float32 probabilities.
  """
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    if labels.ndim != 1:
      raise ValueError(f"integer labels must be [n], got {labels.shape}")
    if num_classes is None:
      raise ValueError("targets: integer labels need num_classes")
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if labels.ndim != 2:
    raise ValueError(f"label logits must be [n, C], got {labels.shape}")
  if num_classes is not None and labels.shape[-1] != num_classes:
    raise ValueError(
      f"label logits have {labels.shape[-1]} classes, expected {num_classes}"
    )
  return from_logits(labels.astype(jnp.float32))


def soft_cross_entropy(logits_pred, target_probs) -> jax.Array:
  """Per-example cross-entropy against a target distribution.

  Args:
    logits_pred: [n, C] network logits.
    target_probs: [n, C] probabilities (rows sum to 1; see `targets`).

  Returns:
    [n] `-sum_c target[c] * log_softmax(logits_pred)[c]`; with one-hot
    targets this is the usual hard-label cross-entropy.
  """
  log_probs = jax.nn.log_softmax(logits_pred, axis=-1)
  return -jnp.sum(target_probs * log_probs, axis=-1)
