r"""Back-propagation through time: DD (learned images) and LD (learned labels).

  python launch/distill.py --workdir=/tmp/bptt_dd \
    --config=configs/bptt.py:method=dd
  python launch/distill.py --workdir=/tmp/bptt_ld \
    --config=configs/bptt.py:method=ld

Arguments: dataset, method (dd | ld), ipc (the storage budget in full-size
images per class), param (pixels|factors|mappers|memories|lowrank_memories|
hallucinators|lowrank_hallucinators: every parameterization composes with
DD; LD keeps whatever it holds fixed), rank (0: the plugin's table in
configs/dm.py; digits 2), num_sets (mappers), num_bases (memories),
num_hallucinators (hallucinators), formation (multi-formation, 1: none),
budget (empty:
same-images for pixels, whose learned lr or soft labels exceed the
same-memory budget, else same-memory), iterations (0: the setting below),
runlocal (a few seconds on a CPU), validation (images per class held out of
training and evaluated on instead of the test split; 0: the test split).

Each iteration initialises a fresh network, trains it `syn_steps` SGD steps
on the synthetic set (differentiated end to end, checkpointed) and descends
its cross-entropy on `batch_real` real images of every class.
- `method=dd` (Wang et al., arXiv 2018, "Dataset Distillation"): the images
  (any parameterization) start from standard normal noise, as DD's do, with
  hard labels; the student lr is learned too (as a log), from DD's 0.02.
- `method=ld` (Bohdal et al., NeurIPS 2020 Workshop, "Flexible Dataset
  Distillation: Learn Labels Instead of Images"): the images are real images
  kept fixed (`distill.learn_images=False`), the soft labels (logits, one-hot
  init) are learned; the student lr is LD's fixed 0.01.

Published settings. DD (its code's defaults): MNIST with LeNet, 10 images per
class distilled as 10 steps of one image per class, repeated for 3 epochs (30
unrolled steps, one learned lr per step, from 0.02); Adam lr 0.01 on the images
and lrs; real batches of 1024; 400 epochs of MNIST (~23,000 iterations), lr
halved every 40 epochs; random network init each iteration. LD (its code's
MNIST settings): LeNet, one real base image per class, 10 inner steps of lr
0.01, real batches of 1024, 400 epochs; its network is trained alongside and
reset when it stops improving, where here every iteration starts a fresh one as
DD's does. Here the network is the ConvNet of DESIGN 3.2
(`--config.model.name=lenet` for theirs), each step sees `batch_syn` images (0:
all; DD's per-step one image per class is `batch_syn=10` at IPC 10), one lr for
every step, Adam on the set (as both papers; DD's lr 0.01), no augmentation
while distilling (neither paper has one), and the evaluation protocol of DESIGN
3.8 (1000 epochs with DSA).

Reported (as quoted in the low-rank plugin paper's Table 1, NeurIPS 2023):
DD MNIST IPC 10 79.5 ± 8.1, CIFAR-10 IPC 10 36.8 ± 1.2; LD MNIST IPC 1
60.9 ± 3.2, IPC 10 87.3 ± 0.7, IPC 50 93.3 ± 0.3; CIFAR-10 IPC 1 / 10 / 50
25.7 ± 0.7 / 38.3 ± 0.4 / 42.5 ± 0.4; CIFAR-100 IPC 1 11.5 ± 0.4.

`dataset=digits` (the embedded default, 8x8), IPC 1, test split, 5 models, on
the 2-core CPU shared with other runs (docs/RESULTS.md): with Adam, `method=dd`
22.12 ± 2.83 (2.6 min in all), `method=ld` 73.59 ± 0.94 (2.5 min); with SGD on
the set (lr 1, 100 on the labels) they were 2.45 ± 1.19 and 53.09 ± 1.12. DD's
meta-loss stays near chance (2.31) at this budget: a fresh ConvNet trained 10
steps on 10 images barely generalises, so the images learn little; LD's labels
do move its fixed real images' accuracy. Neither reproduces the papers, whose
budgets are thousands of iterations. MNIST, 3 models: `method=ld` with
`iterations=200` 64.38 ± 1.28 (its initial set 54.75 ± 1.59; ~33 min);
`method=dd` with `iterations=100` 42.12 ± 6.86 (meta-loss 2.29 -> 1.51,
still falling; ~19 min).
"""

from configs import common
from configs import dm as dm_config
from lowrank_distill import checks, config_utils

METHODS = ("dd", "ld")
# Pixels keep `ipc` full images: a learned lr (one float) or soft labels
# exceed the same-memory budget, so they count as same-images.
BUDGET_BY_PARAM = {"pixels": "same-images"}
RANK_BY_DATASET = {"digits": 2}

# method -> the distillation settings; a (method, dataset) row overrides.
# Adam on the set, as both papers, with DD's lr 0.01 (on the images, the
# log lr and, for LD, the label logits). Adam's steps do not shrink with the
# meta-gradient, which is tiny here: with SGD (lr 1, 100 on labels) the
# images and labels barely moved on digits (DD 2.45 %, LD 53.09 %, test
# split, 200 iterations) and RememberThePast's memories diverged. 30
# unrolled steps of the ConvNet on noise images explode on digits
# (gradient norms ~1e5 at the first iteration, ~10 at 10 steps).
OPTIMIZER = "adam"
SETTINGS = {
  "dd": dict(
    syn_steps=30,
    lr_student=0.02,
    lr_images=0.01,
    lr_lr=0.01,
    lr_labels=0.0,
  ),
  ("dd", "digits"): dict(syn_steps=10),
  "ld": dict(
    syn_steps=10,
    lr_student=0.01,
    lr_images=0.01,
    lr_lr=0.0,
    lr_labels=0.01,
  ),
}
# Real images per class in a meta-batch: ~1024 in all for 10 classes as
# both papers; digits has ~180 a class.
BATCH_REAL = {"digits": 64}
DEFAULT_BATCH_REAL = 100
ITERATIONS = {"digits": 200}
DEFAULT_ITERATIONS = 20000


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    dataset="digits",
    method="dd",
    ipc=1,
    param="pixels",
    rank=0,
    num_sets=4,
    budget="",
    iterations=0,
    runlocal=False,
    validation=0,
    formation=1,
    num_bases=16,
    num_hallucinators=5,
  )
  checks.check_choice("config arg method", arg.method, METHODS)
  row = {**SETTINGS[arg.method], **SETTINGS.get((arg.method, arg.dataset), {})}
  dd = arg.method == "dd"
  config = config_utils.base_config(
    dataset=arg.dataset,
    dsa=True,
    runlocal=arg.runlocal,
    validation_per_class=arg.validation,
  )
  config.method = "bptt"
  config.eval.dsa_strategy = common.dsa_strategy(arg.dataset)
  config.synset = dict(
    param=arg.param,
    ipc=arg.ipc,
    rank=arg.rank
    or RANK_BY_DATASET.get(
      arg.dataset,
      dm_config.RANKS.get((arg.dataset, arg.ipc), dm_config.DEFAULT_RANK),
    ),
    num_sets=arg.num_sets,
    budget=arg.budget or BUDGET_BY_PARAM.get(arg.param, "same-memory"),
    init="noise" if dd else "real",
    # With init 'set': an exported set to start from (a `synset` folder).
    init_set="",
    formation=arg.formation,
    num_bases=arg.num_bases,
    num_hallucinators=arg.num_hallucinators,
  )
  config.labels = dict(
    kind="hard" if dd else "soft",
    init="onehot",
    lr=row["lr_labels"],
    momentum=0.5,
    # An expert buffer (launch/experts.py) for labels.init='expert'.
    experts="",
  )
  config.distill = config_utils.distill_config(
    iterations=arg.iterations
    or ITERATIONS.get(arg.dataset, DEFAULT_ITERATIONS),
    lr_images=row["lr_images"],
    optimizer=OPTIMIZER,
    learn_images=dd,
    # The unroll differentiates convolutions inside a scan: 'auto' picks
    # 'canonical' on the CPU, where autodiff's conv gradients in a loop are
    # naive.
    conv_impl="auto",
    eval_every=0,
    image_every=100,
    checkpoint_every=20,
    learn_lr=dd,
    lr_student=row["lr_student"],
    lr_lr=row["lr_lr"],
    max_loss=1e3,
    syn_steps=row["syn_steps"],
    # DD and LD's students take plain SGD steps (RememberThePast's have
    # momentum: configs/rtp.py).
    inner_momentum=0.0,
    # 0: every synthetic image in every student step.
    batch_syn=0,
    batch_real=BATCH_REAL.get(arg.dataset, DEFAULT_BATCH_REAL),
    dsa_strategy="none",
    remat=True,
  )
  if arg.runlocal:
    config.distill.update(
      config_utils.RUNLOCAL_DISTILL, syn_steps=3, batch_real=16
    )
  return config
