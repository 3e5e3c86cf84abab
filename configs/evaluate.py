r"""Evaluates a saved synthetic set or coreset with the protocol (DESIGN 3.8).

  python launch/evaluate.py --workdir=/tmp/eval \
    --config=configs/evaluate.py:synset=/tmp/run/synset,dsa=true

A set released by another codebase (`released=dc_pt|mtt_pt|factors|npz|npy`,
lowrank_distill/released.py) names its dataset, since the file does not:

  python launch/evaluate.py --workdir=/tmp/eval_released \
    --config=configs/evaluate.py:released=dc_pt,dataset=mnist,synset=res.pt

with `--config.released.layout`, `.labels` (hard|onehot|probs|logits),
`.value_range` (normalized|unit|uint8) and `--config.dataset.zca` for what
the file does not say.

A set made on another machine saved that machine's data folder: say where
the files are here, and it is tested on the split it was made from (its
held-out images, if it was chosen on them):

  python launch/evaluate.py --workdir=/tmp/eval_gpu_set \
    --config=configs/evaluate.py:synset=/tmp/gpu_run/synset \
    --config.dataset.source=idx \
    --config.dataset.path=../shared/datasets/fashion_mnist

DSA on every batch is the set's own (the strategy its recipe names: no flip
for digit datasets), or the named dataset's; `--config.eval.dsa_strategy`
overrides it.

Cross-architecture: add `--config.eval.models=convnet,lenet,alexnet,vgg11`
(`resnet18`, the `_bn` variants, and `resnet18_bn_ap`, the reference tables'
ResNet18BN_AP); commas, repeated flags or a tuple all work. The test set
is the one the set was distilled from unless `--config.dataset.name` names
another. Papers report mean ± std over 5 distilled sets x 20 models, with
DSA: 1000 epochs.
"""

from configs import common
from lowrank_distill import config_utils


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    synset="",
    released="",
    dataset="",
    dsa=True,
    num_models=5,
    runlocal=False,
  )
  config = config_utils.base_config(
    dataset=arg.dataset, dsa=arg.dsa, runlocal=arg.runlocal
  )
  config.synset = arg.synset
  config.use_learned_lr = True
  # DSA as the set was evaluated where it was made (its recipe: MNIST's
  # drops flip), or as the named dataset's configs do.
  if arg.dsa:
    config.eval.dsa_strategy = (
      common.dsa_strategy(arg.dataset)
      if arg.dataset
      else config_utils.DSA_FROM_SET
    )
  # A set released by another codebase (lowrank_distill/released.py): what
  # the file does not say. `format` '' reads our own export.
  config.released = dict(
    format=arg.released,
    layout="auto",
    labels="auto",
    value_range="normalized",
    experiment=0,
    labels_path="",
    lr_path="",
  )
  if not arg.runlocal:
    config.eval.num_models = arg.num_models
  return config
