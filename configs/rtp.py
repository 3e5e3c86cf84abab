r"""RememberThePast: addressable memories, and LoRememberThePast.

  python launch/distill.py --workdir=/tmp/rtp_digits \
    --config=configs/rtp.py:variant=rtp
  python launch/distill.py --workdir=/tmp/lortp_digits_tm \
    --config=configs/rtp.py:variant=lortp,objective=tm \
    --config.experts.path=/tmp/lowrank_distill/experts_digits

Arguments: dataset, variant (rtp: full-size bases | lortp: the low-rank
plugin's rank-r bases), objective (bptt: back-propagation through the
student's training, as the paper | tm: trajectory matching from an expert
buffer), ipc (the storage budget in full-size images per class), num_bases
(0: the table below), rank (0: the plugin's table in configs/dm.py),
budget, iterations (0: the objective's), runlocal, validation (images per
class held out of training and evaluated on instead of the test split).

The set (Deng & Russakovsky, NeurIPS 2022): `num_bases` bases shared by
every class and an address (a row of `num_bases` coefficients) per image;
learned soft labels (one-hot init); the student lr learned. At the same
memory as `ipc` full images with soft labels, MNIST IPC 1 holds 5 full
bases and 26 images per class (`rtp`), or 16 rank-2 bases and 23 images per
class (`lortp`). Bases and addresses start from the SVD of real images of
each class.

With `objective=bptt` every iteration trains a fresh network `syn_steps`
steps of SGD with momentum 0.9 (the paper's BPTT with momentum) on the set
and descends its loss on real images (configs/bptt.py has the rest of the
settings); `objective=tm` matches expert trajectories as configs/tm.py's
`variant=mtt` does, with memories and soft labels. Published (CIFAR-10 IPC
1, ConvNet-3): RememberThePast 66.4; low-rank plugin paper Table 4:
LoRememberThePast 68.4. The reference also stores bases at half resolution
and tunes on a 10% validation split; not done here. No MNIST figure is
published.

Reached here (docs/RESULTS.md, 2-core CPU shared with other runs, digits,
storage of 1 image per class, 2 images per class with soft labels, test
split, 5 models, ~2.7 min each): `objective=bptt` RememberThePast 54.37 ±
0.73, LoRememberThePast 76.77 ± 1.20; `objective=tm` (the digits expert
buffer, configs/tm.py's digits row) RememberThePast 66.41 ± 2.84 (3.5 min);
LoRememberThePast diverged at that row's lr_images 100 (the export refused
the set) and reached 89.36 ± 0.69 at 10 (`LR_IMAGES_TM`). MNIST, 3 models,
`objective=tm` on configs/experts.py's MNIST buffer, 40 iterations of 10
student steps: LoRememberThePast 93.32 ± 0.72 (~45 min + 1 h evaluation),
RememberThePast 80.93 ± 1.85 (~32 min + ~2 h evaluation, CPU shared).
"""

from configs import bptt as bptt_config
from configs import dm as dm_config
from configs import tm as tm_config
from lowrank_distill import checks, config_utils

VARIANTS = {"rtp": "memories", "lortp": "lowrank_memories"}
OBJECTIVES = ("bptt", "tm")
# (dataset, variant) -> bases; anything else falls back to DEFAULT_BASES.
NUM_BASES = {
  ("digits", "rtp"): 4,
  ("digits", "lortp"): 8,
  ("mnist", "rtp"): 5,
  ("mnist", "lortp"): 16,
}
DEFAULT_BASES = 16
INNER_MOMENTUM = 0.9
# Trajectory matching's lr on the set, per variant (else configs/tm.py's):
# low-rank memories left the images' range at its digits lr 100; 10 was the
# one other value run (digits, test split: 89.36 ± 0.69), not chosen on a
# held-out split.
LR_IMAGES_TM = {"lortp": 10.0}


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    dataset="digits",
    variant="rtp",
    objective="bptt",
    ipc=1,
    num_bases=0,
    rank=0,
    budget="same-memory",
    iterations=0,
    runlocal=False,
    validation=0,
  )
  checks.check_choice("config arg variant", arg.variant, VARIANTS)
  checks.check_choice("config arg objective", arg.objective, OBJECTIVES)
  param = VARIANTS[arg.variant]
  num_bases = arg.num_bases or NUM_BASES.get(
    (arg.dataset, arg.variant), DEFAULT_BASES
  )
  rank = arg.rank or dm_config.RANKS.get(
    (arg.dataset, arg.ipc), dm_config.DEFAULT_RANK
  )
  common = dict(
    dataset=arg.dataset,
    ipc=arg.ipc,
    param=param,
    rank=rank,
    budget=arg.budget,
    iterations=arg.iterations,
    runlocal=arg.runlocal,
    validation=arg.validation,
    num_bases=num_bases,
  )
  if arg.objective == "tm":
    config = tm_config.get_config(
      variant="mtt", labels="soft", label_init="onehot", **common
    )
    if arg.variant in LR_IMAGES_TM:
      config.distill.lr_images = LR_IMAGES_TM[arg.variant]
  else:
    config = bptt_config.get_config(method="dd", **common)
    config.labels.update(kind="soft", init="onehot", lr=0.01)
    config.distill.inner_momentum = INNER_MOMENTUM
  config.synset.init = "real"
  return config
