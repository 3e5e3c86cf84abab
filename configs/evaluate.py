r"""Evaluates a saved synthetic set or coreset with the protocol (DESIGN 3.8).

  python launch/evaluate.py --workdir=/tmp/eval \
    --config=configs/evaluate.py:synset=/tmp/run/synset,dsa=true

Cross-architecture: add `--config.eval.models=convnet,lenet,alexnet,vgg11`
(`resnet18`, the `_bn` variants, and `resnet18_bn_ap`, the reference tables'
ResNet18BN_AP); commas, repeated flags or a tuple all work. The test set
is the one the set was distilled from unless `--config.dataset.name` names
another. Papers report mean ± std over 5 distilled sets x 20 models, with
DSA: 1000 epochs.
"""

from lowrank_distill import config_utils


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    synset="",
    dsa=True,
    num_models=5,
    runlocal=False,
  )
  config = config_utils.base_config(
    dataset="", dsa=arg.dsa, runlocal=arg.runlocal
  )
  config.synset = arg.synset
  config.use_learned_lr = True
  if not arg.runlocal:
    config.eval.num_models = arg.num_models
  return config
