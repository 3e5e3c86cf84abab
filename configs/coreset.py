r"""Coreset baselines: random, herding, k-center, forgetting (DESIGN 3.9).

  python launch/coreset.py --workdir=/tmp/coreset \
    --config=configs/coreset.py:dataset=mnist,method=random,ipc=10

Arguments: dataset (digits|mnist|fashion_mnist|cifar10|...), method
(random|herding|kcenter|forgetting), ipc, dsa (evaluate with DSA: 1000
epochs, else 300), runlocal (seconds on a CPU), validation (images per class
held out of training and evaluated on instead of the test split; 0: none).

Published ConvNet accuracies (Zhao et al., ICLR 2021, Table 1), MNIST:
random 64.9 (IPC 1) / 95.1 (IPC 10) / 97.9 (IPC 50); herding 89.2 / 93.7 /
94.8; forgetting 35.5 / 68.1 / 88.2. CIFAR-10: random 14.4 / 26.0 / 43.4;
herding 21.5 / 31.6 / 40.4.

Reached here (docs/RESULTS.md, 2-core CPU, 300 epochs without DSA, 3
models): MNIST random 64.35 ± 0.71 (IPC 1, 5 min) / 90.38 ± 0.31 (IPC 10, 11
min); herding with a 1-epoch feature network 82.28 ± 0.79 (13 min) / 94.09
± 0.01 (2 models, 11 min).
"""

from configs import common
from lowrank_distill import config_utils


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    dataset="digits",
    method="random",
    ipc=1,
    dsa=False,
    runlocal=False,
    validation=0,
  )
  config = config_utils.base_config(
    dataset=arg.dataset,
    dsa=arg.dsa,
    runlocal=arg.runlocal,
    validation_per_class=arg.validation,
  )
  if arg.dsa:
    config.eval.dsa_strategy = common.dsa_strategy(arg.dataset)
  config.coreset = dict(
    method=arg.method,
    ipc=arg.ipc,
    # Herding and k-center embed with, and forgetting counts events of, a
    # ConvNet trained on the whole training set for train_epochs (+1).
    train_epochs=0 if arg.runlocal else 10,
    lr=0.01,
    batch_size=256,
  )
  return config
