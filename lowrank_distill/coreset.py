"""Coreset selection baselines: random, herding, k-center greedy, forgetting.

Each method picks `ipc` real images per class; the coreset is then evaluated
with the same protocol as a synthetic set (DESIGN 3.9).

References:
  Welling, "Herding dynamical weights to learn", ICML 2009; Rebuffi et al.,
  "iCaRL", CVPR 2017 (herding in feature space).
  Sener & Savarese, "Active learning for convolutional neural networks: a
  core-set approach", ICLR 2018 (k-center greedy).
  Toneva et al., "An empirical study of example forgetting during deep
  neural network learning", ICLR 2019.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lowrank_distill import (
  augment,
  checks,
  config_utils,
  data,
  evaluate,
  models,
  rng,
  sharding,
)
from lowrank_distill import synset as synset_lib
from lowrank_distill import workdir as workdir_lib

METHODS = ("random", "herding", "kcenter", "forgetting")

# Fields a rerun in the same workdir may change: none alters the coreset or
# its evaluation (they only place and batch the work).
RESUMABLE_FIELDS = (
  "mesh",
  "eval.models_per_batch",
  "eval.test_batch_size",
  "eval.grad_chunk",  # the evaluation's sums in another order: rounding
)


def check_method(method: str, *, field: str = "coreset.method") -> None:
  checks.check_choice(field, method, METHODS)


def herding(features, *, k: int):
  """Greedy herding: each pick brings the running mean closest to the mean.

  Args:
    features: [m, d] embeddings of one class.
    k: number of examples to pick (k <= m).

  Returns:
    [k] int32 indices into `features`, in selection order.
  """
  features = jnp.asarray(features, jnp.float32)
  target = jnp.mean(features, axis=0)

  def pick(t, carry):
    chosen, total, taken = carry
    candidate_means = (total[None, :] + features) / (t + 1).astype(jnp.float32)
    dist = jnp.sum((candidate_means - target[None, :]) ** 2, axis=-1)
    i = jnp.argmin(jnp.where(taken, jnp.inf, dist))
    return chosen.at[t].set(i), total + features[i], taken.at[i].set(True)

  init = (
    jnp.zeros((k,), jnp.int32),
    jnp.zeros_like(target),
    jnp.zeros((features.shape[0],), bool),
  )
  chosen, _, _ = jax.lax.fori_loop(0, k, pick, init)
  return chosen


def kcenter(features, *, k: int):
  """K-center greedy, started from the example nearest the class mean.

  Args:
    features: [m, d] embeddings of one class.
    k: number of centres (k <= m).

  Returns:
    [k] int32 indices, each the point farthest from those already chosen.
  """
  features = jnp.asarray(features, jnp.float32)

  def sq_dist(x):
    return jnp.sum((features - x[None, :]) ** 2, axis=-1)

  first = jnp.argmin(sq_dist(jnp.mean(features, axis=0)))

  def pick(t, carry):
    chosen, min_dist = carry
    i = jnp.argmax(min_dist)
    return chosen.at[t].set(i), jnp.minimum(min_dist, sq_dist(features[i]))

  chosen = jnp.zeros((k,), jnp.int32).at[0].set(first)
  chosen, _ = jax.lax.fori_loop(1, k, pick, (chosen, sq_dist(features[first])))
  return chosen


def most_forgotten(key, forgetting, learned, *, k: int):
  """The k most forgotten examples; never-learned ones rank first.

  Args:
    key: breaks ties at random.
    forgetting: [m] forgetting-event counts; learned: [m] bool.
    k: number to pick.

  Returns:
    [k] int32 indices.
  """
  score = jnp.where(learned, forgetting.astype(jnp.float32), jnp.inf)
  tie_break = jax.random.uniform(key, score.shape)
  order = jnp.lexsort((tie_break, -score))
  return order[:k].astype(jnp.int32)


def _embed_all(
  model, variables, images, *, conv_impl: str, batch_size: int = 500
):
  """[m, d] features of `images` [m, h, w, c] in bounded-memory batches."""
  embed = jax.jit(
    lambda x: model.apply(variables, x, train=False, method="embed"),
    compiler_options=models.compiler_options(conv_impl),
  )
  return np.concatenate(
    [
      np.asarray(embed(images[i : i + batch_size]))
      for i in range(0, images.shape[0], batch_size)
    ]
  )


def select(
  key,
  images,
  labels,
  *,
  method: str,
  ipc: int,
  num_classes: int,
  model_name: str = "convnet",
  model_options: dict | None = None,
  train_epochs: int = 10,
  lr: float = 0.01,
  batch_size: int = 256,
  conv_impl: str = "auto",
) -> np.ndarray:
  """Selects `ipc` real images per class.

  Herding and k-center work in the embedding of a network trained on the
  whole training set for `train_epochs` (+1, as the protocol's loop);
  forgetting counts forgetting events while training it.

  Args:
    key: selection key.
    images: [m, h, w, c] training images; labels: [m] int.
    method: one of METHODS.
    ipc: images per class.
    num_classes: number of classes.
    model_name, model_options, conv_impl: the network used by herding,
      k-center and forgetting.
    train_epochs, lr, batch_size: its training (SGD momentum 0.9, wd 5e-4).

  Returns:
    [num_classes, ipc] int indices into `images`, class-major.
  """
  check_method(method)
  labels = np.asarray(labels)
  index = data.class_index(labels, num_classes)
  data.check_images_per_class(index, ipc, field="ipc")
  select_key, train_key = jax.random.split(key)
  if method == "random":
    return np.asarray(data.sample_per_class(select_key, index, n=ipc))

  model = models.create(
    model_name,
    num_classes=num_classes,
    image_shape=tuple(images.shape[1:]),
    conv_impl=conv_impl,
    **(model_options or {}),
  )
  images = jnp.asarray(images, jnp.float32)
  train = jax.jit(
    lambda k, x, y: evaluate.train_network(
      k,
      x,
      y,
      model=model,
      epochs=train_epochs,
      lr=lr,
      batch_size=batch_size,
      track_forgetting=method == "forgetting",
    ),
    compiler_options=models.compiler_options(conv_impl),
  )
  variables, stats = train(
    train_key, images, jax.nn.one_hot(labels, num_classes)
  )
  by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
  if method == "forgetting":
    forgetting = np.asarray(stats["forgetting"])
    learned = np.asarray(stats["learned"])
    picks = [
      most_forgotten(
        jax.random.fold_in(select_key, c), forgetting[m], learned[m], k=ipc
      )
      for c, m in enumerate(by_class)
    ]
  else:
    features = _embed_all(model, variables, images, conv_impl=conv_impl)
    pick_fn = herding if method == "herding" else kcenter
    picks = [pick_fn(features[m], k=ipc) for m in by_class]
  return np.stack([m[np.asarray(p)] for m, p in zip(by_class, picks)])


# Every numeric field of a coreset config (`checks.check_ranges`).
RANGES = {
  **config_utils.COMMON_RANGES,
  "coreset.ipc": checks.COUNT,
  # 0: the feature network of herding / k-center stays at its init.
  "coreset.train_epochs": checks.Range(low=0, integer=True),
  "coreset.lr": checks.RATE,
  "coreset.batch_size": checks.COUNT,
}


def validate(config) -> None:
  """Checks the names and values of a coreset config before any compute."""
  check_method(config.coreset.method)
  checks.check_ranges(config, RANGES)
  augment.parse_strategy(config.eval.dsa_strategy)
  models.check_names([config.model.name, *config.eval.models])


def check_workdir(workdir, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  workdir_lib.check_config(
    workdir,
    config,
    resumable_fields=RESUMABLE_FIELDS,
    what="a coreset run",
  )


def run(config, workdir) -> dict:
  """Selects a coreset, saves it, evaluates it; writes results.json.

  Reads only `config` (configs/coreset.py). Resumes: a coreset already saved
  in `workdir` is evaluated instead of being selected again. A workdir of
  another config is refused (`check_workdir`).

  Returns:
    The results dictionary written to `<workdir>/results.json`.
  """
  workdir = pathlib.Path(workdir)
  cfg = config.coreset
  validate(config)
  check_workdir(workdir, config)
  dataset = config_utils.load_dataset(config.dataset)
  data.check_images_per_class(
    dataset.train_labels, cfg.ipc, field="coreset.ipc"
  )
  mesh = sharding.mesh_from_config(config)
  writer = workdir_lib.start(workdir, config)
  key = jax.random.key(config.seed)

  synset_path = workdir / "synset"
  if synset_path.exists():
    chosen = synset_lib.load(synset_path)
    logging.info("Loaded the coreset saved in %s", synset_path)
  else:
    indices = select(
      rng.stream(key, "coreset"),
      dataset.train_images,
      dataset.train_labels,
      method=cfg.method,
      ipc=cfg.ipc,
      num_classes=dataset.num_classes,
      model_name=config.model.name,
      model_options=models.options_for(config.model.name, config.model.options),
      train_epochs=cfg.train_epochs,
      lr=cfg.lr,
      batch_size=cfg.batch_size,
      conv_impl=config.model.conv_impl,
    ).reshape(-1)
    chosen = synset_lib.SyntheticSet(
      images=dataset.train_images[indices],
      labels=dataset.train_labels[indices],
      param="coreset",
      storage_floats=int(dataset.train_images[indices].size),
      dataset=dataset.metadata(),
      info={
        "method": cfg.method,
        "ipc": cfg.ipc,
        "indices": indices.tolist(),
        "dataset_config": config.dataset.to_dict(),
      },
    )
    synset_lib.save(synset_path, chosen)

  results = evaluate.evaluate_on_test_set(
    rng.stream(key, "eval"),
    chosen.images,
    chosen.labels,
    dataset,
    mesh=mesh,
    log=evaluate.ModelLog(workdir / evaluate.MODEL_LOG),
    **config_utils.evaluation_settings(config),
  )
  summary = {
    "method": cfg.method,
    "ipc": cfg.ipc,
    "dataset": config.dataset.name,
    "storage_floats": chosen.storage_floats,
    "results": {name: r.to_json() for name, r in results.items()},
  }
  writer.write(0, eval=summary["results"], final=True)
  workdir_lib.write_json(workdir / "results.json", summary)
  for result in results.values():
    logging.info("coreset %s ipc %d: %s", cfg.method, cfg.ipc, result)
  return summary
