r"""Class-incremental GDumb with coreset or distilled memories (DESIGN 3.10).

  python launch/continual.py --workdir=/tmp/cl_mnist \
    --config=configs/continual.py:dataset=mnist,ipc=10,steps=5 \
    --config.dataset.source=idx --config.dataset.path=../shared/datasets/mnist

Arguments: dataset, methods ('+'-separated names of MEMORIES, run and
plotted in that order; default random+herding+dm+lodm), ipc (the storage
budget of every memory, in full-size images per class), steps (T, 5 or 10;
must divide the classes), orders (class orders: seeds 0..orders-1), rank
(of the low-rank methods' factors), iterations (distillation iterations per
step; 0: the method's config's), batch_real (DM's and DC/DSA's real images
per class; 0: their config's), num_experts and expert_epochs (the experts
each step trains for the trajectory-matching methods; 0: configs/experts.py's,
with at least the epochs the distillation's start epochs need),
coreset_epochs (training of the herding / k-center / forgetting network on
a step's classes, +1 as the protocol's loop), runlocal (seconds on a CPU).

Each step's memory is built from the new classes' training images alone;
coresets keep `ipc` real images per class, distillation methods run their
own full config (`continual.memories.<name>.config`: configs/dm.py for
dm/lodm, configs/gm.py for dc/lodc/dsa/lodsa, configs/tm.py for
mtt/lomtt/mtt_lss) at the 'same-memory' budget of `ipc` (mtt with its
config's fixed student lr: a learned one costs a float over it).
Trajectory-matching memories first train their experts
(`continual.memories.<name>.experts`, a configs/experts.py config) on the
step's classes; configs/tm.py has settings for IPC 1 on digits and MNIST.
A fresh ConvNet-3 with all C outputs trains from scratch on the accumulated
memory (1000 epochs, DSA) and is tested on the seen classes' test images.

Published setting (Zhao & Bilen, WACV 2023, and Yang et al., NeurIPS 2023,
following GDumb): CIFAR-100, 20 images per class, 5 and 10 steps, class
orders from seeds 0..4, reported as accuracy-vs-classes curves (no tables),
with DM above herding and random at every step and LoDM above DM. Our
MNIST benchmark (benchmarks/continual_mnist.sh) is a CPU-sized version.

Reached here (docs/RESULTS.md, 2-core CPU; MNIST, 5 steps, IPC 10 storage,
100 distillation iterations a step, 50 evaluation epochs, 1 model, 1
order): final accuracy random 87.37, herding 91.32, DM 91.78, LoDM 93.55
(average over steps 87.83 / 94.48 / 94.20 / 95.26); steps 3-5 took 22 min.
"""

from configs import common
from configs import dm as dm_config
from configs import experts as experts_config
from configs import gm as gm_config
from configs import tm as tm_config
from lowrank_distill import config_utils
from lowrank_distill.objectives import trajectory_matching


def _coreset(method: str):
  def entry(arg):
    return dict(
      kind="coreset",
      method=method,
      train_epochs=0 if arg.runlocal else arg.coreset_epochs,
      lr=0.01,
      batch_size=256,
    )

  return entry


def _matching(config_module, param: str, **method):
  """A distillation memory from configs/dm.py or configs/gm.py."""

  def entry(arg):
    config = config_module.get_config(
      dataset=arg.dataset,
      ipc=arg.ipc,
      param=param,
      rank=arg.rank if param == "factors" else 0,
      iterations=arg.iterations,
      runlocal=arg.runlocal,
      **method,
    )
    # A step's distillation is evaluated only through the continual
    # protocol; mid-run evaluations and pictures would cost time per step.
    config.distill.update(eval_every=0, image_every=0)
    if arg.batch_real:
      config.distill.batch_real = arg.batch_real
    return dict(kind="distill", config=config)

  return entry


def _tm(variant: str):
  def entry(arg):
    config = tm_config.get_config(
      dataset=arg.dataset,
      variant=variant,
      ipc=arg.ipc,
      iterations=arg.iterations,
      budget="same-memory",
      runlocal=arg.runlocal,
    )
    if config.synset.param == "pixels":
      # Every memory holds the same storage: a learned lr (one float) would
      # put MTT's `ipc` full images per class over it, so its memory
      # distils with the config's fixed student lr.
      config.distill.learn_lr = False
    config.distill.update(eval_every=0, image_every=0)
    experts = experts_config.get_config(
      dataset=arg.dataset,
      num_experts=arg.num_experts,
      epochs=arg.expert_epochs,
      runlocal=arg.runlocal,
    )
    if not arg.expert_epochs:
      # Enough snapshots for every start epoch the distillation can draw.
      _, needed = trajectory_matching.snapshot_window(
        schedule=config.distill.start,
        max_start=config.distill.max_start,
        delta=config.distill.start_delta,
        expert_epochs=config.distill.expert_epochs,
      )
      experts.experts.epochs = max(experts.experts.epochs, needed - 1)
    return dict(kind="trajectory", experts=experts, config=config)

  return entry


# Memory methods: name -> builder of its `continual.memories` entry.
MEMORIES = {
  "random": _coreset("random"),
  "herding": _coreset("herding"),
  "kcenter": _coreset("kcenter"),
  "forgetting": _coreset("forgetting"),
  "dm": _matching(dm_config, "pixels"),
  "lodm": _matching(dm_config, "factors"),
  "dc": _matching(gm_config, "pixels", method="dc"),
  "lodc": _matching(gm_config, "factors", method="dc"),
  "dsa": _matching(gm_config, "pixels", method="dsa"),
  "lodsa": _matching(gm_config, "factors", method="dsa"),
  "mtt": _tm("mtt"),
  "lomtt": _tm("lomtt"),
  "mtt_lss": _tm("mtt_lss"),
}


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    dataset="digits",
    methods="random+herding+dm+lodm",
    ipc=10,
    steps=5,
    orders=5,
    rank=2,
    iterations=0,
    batch_real=0,
    num_experts=0,
    expert_epochs=0,
    coreset_epochs=10,
    runlocal=False,
  )
  methods = [m for m in arg.methods.split("+") if m]
  unknown = [m for m in methods if m not in MEMORIES]
  if unknown or not methods:
    raise ValueError(
      f"config arg methods={arg.methods!r}: unknown {unknown}; valid: "
      f"{list(MEMORIES)} ('+'-separated)"
    )
  config = config_utils.base_config(
    dataset=arg.dataset, dsa=True, runlocal=arg.runlocal
  )
  config.eval.dsa_strategy = common.dsa_strategy(arg.dataset)
  config.continual = dict(
    # Tuples: `--config.continual.methods=random,dm` on the command line.
    methods=tuple(methods),
    orders=tuple(range(1 if arg.runlocal else arg.orders)),
    steps=arg.steps,
    ipc=arg.ipc,
    memories={name: MEMORIES[name](arg) for name in methods},
  )
  return config
