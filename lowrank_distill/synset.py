"""The exported synthetic (or coreset) training set, loadable by path.

A run's final artifact: the materialised images, their labels (hard classes
or learned label logits), the learned lr when there is one, the
reconstructor parameters that produced the images, the storage they cost,
and the provenance (dataset metadata, method). `launch/evaluate.py` and the
notebooks load it with `load(path)`.
"""

import dataclasses
from typing import Any

import numpy as np

from lowrank_distill import checkpoint

FORMAT = "lowrank_distill.synset/1"


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
  """A training set to evaluate.

  Attributes:
    images: [n, h, w, c] float32, in the dataset's preprocessed space.
    labels: [n] int32 hard labels, or [n, num_classes] float32 label logits.
    param: the parameterization ('pixels', 'factors', 'mappers', 'coreset').
    params: the reconstructor parameters (None for a coreset).
    storage_floats: floats that must be kept to rebuild the set.
    dataset: the dataset's provenance (`Dataset.metadata()`).
    lr: the learned student lr, or None.
    info: free-form JSON provenance (method, config, indices, ...).
  """

  images: np.ndarray
  labels: np.ndarray
  param: str
  storage_floats: int
  dataset: dict
  params: dict | None = None
  lr: float | None = None
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return int(self.dataset["num_classes"])


def save(path, synset: SyntheticSet, *, overwrite: bool = False) -> None:
  """Writes `synset` atomically to `path` (a directory)."""
  tree: dict[str, Any] = {
    "images": np.asarray(synset.images, np.float32),
    "labels": np.asarray(synset.labels),
  }
  if synset.params is not None:
    tree["params"] = synset.params
  metadata = {
    "format": FORMAT,
    "param": synset.param,
    "storage_floats": int(synset.storage_floats),
    "dataset": synset.dataset,
    "lr": None if synset.lr is None else float(synset.lr),
    "info": synset.info,
  }
  checkpoint.save_tree(path, tree, metadata=metadata, overwrite=overwrite)


def load(path) -> SyntheticSet:
  """Reads a set written by `save`; a foreign directory is refused."""
  metadata = checkpoint.load_metadata(path)
  if metadata.get("format") != FORMAT:
    raise checkpoint.CheckpointError(
      f"{path} is not a synthetic set written by lowrank_distill "
      f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
    )
  tree, _ = checkpoint.load_tree(path)
  return SyntheticSet(
    images=np.asarray(tree["images"], np.float32),
    labels=np.asarray(tree["labels"]),
    param=metadata["param"],
    storage_floats=metadata["storage_floats"],
    dataset=metadata["dataset"],
    params=tree.get("params"),
    lr=metadata["lr"],
    info=metadata.get("info", {}),
  )
