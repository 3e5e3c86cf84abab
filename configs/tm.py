r"""Trajectory matching: MTT (pixels), LoMTT (factors), MTT-LSS (mappers).

  python launch/experts.py --config=configs/experts.py:dataset=digits \
    --workdir=/tmp/lowrank_distill/experts_digits
  python launch/distill.py --workdir=/tmp/lowrank_distill/mtt_lss_digits \
    --config=configs/tm.py:dataset=digits,variant=mtt_lss \
    --config.experts.path=/tmp/lowrank_distill/experts_digits

Arguments: dataset, variant (mtt|lomtt|mtt_lss), ipc (the storage budget in
full-size images per class), rank and num_sets (0: the variant's setting),
num_bases (memories: bases shared by every class), num_hallucinators
(hallucinators: images per basis),
budget (same-memory|same-images; empty: same-images for pixels, else
same-memory), iterations (0: the table's), runlocal, validation (images per
class held out of training and evaluated on instead of the test split; the
expert buffer must hold the same out).

Ablations (empty: the variant's): param
(pixels|factors|mappers|memories|lowrank_memories|hallucinators|
lowrank_hallucinators), labels
(hard|soft), label_init (random|onehot|expert), lr_labels (0: the table's),
start (uniform|progressive), image_init (real: the images, factors or
mappers from real images, the default | noise), formation (multi-formation,
IDC: every stored image gives formation**2 training images; 1: none),
orthonormal_mappers (true: mappers made orthonormal again after every
update, their scale moved into the codes; `distill.orthonormal_mappers`),
lr_mappers (the mappers' own lr; 0: MAPPER_LR). E.g.
MTT-LSS's mappers with hard labels: `variant=mtt_lss,labels=hard`; MTT with
learnable soft labels: `variant=mtt,labels=soft`.

From an exported set (every config): `--config.synset.init=set
--config.synset.init_set=<a run's synset folder>` starts from that set's
parameters (and its soft labels and learned lr when both hold them), e.g.
DM's mapper set matched further by trajectories; the set must come from the
same data, held-out split and storage shape. A coreset (or a set of another
parameterization) with the run's images per class starts it through its
images, as real images would (`launch/coreset.py`, e.g. herding).

An average of the set (every config): `--config.distill.ema_decay=<d>`
evaluates and exports an exponential moving average of the set (its
images or their parameters, and its labels; FTD, Du et al., CVPR 2023,
averages with 0.9995 over 5,000 iterations) instead of the last
iteration's, trained with the last learned lr; the last set goes beside
it to synset_last/.

Variants (the model, data and expert buffer are the same for all three):
- `mtt`: pixels, hard labels, uniform start epochs, learned student lr.
- `lomtt`: the low-rank plugin's factors with the same matching.
- `mtt_lss`: shared per-set mappers with per-image codes, learnable soft
  labels (random init), the progressive start schedule and the learned lr.
  Its paper's random labels fight the images' real-image init: the label lr
  drives each label to a near one-hot at whatever class the early
  gradients favour, so classes end under- or unrepresented and the result
  depends on the seed. `label_init=expert` starts the labels from the
  trained expert's predictions of the initial images instead
  (docs/RESULTS.md, "Why MTT-LSS loses"; chosen on held-out digits).
  Most of that drift came from the mappers moving at the images' lr;
  with their own lr (MAPPER_LR) three quarters of the random labels keep
  their start class on MNIST (session 16).

Published settings, CIFAR-10 (ConvNet-3, ZCA, experts: 100 x 50 epochs):
- MTT (Cazenavette et al., CVPR 2022), IPC 1: syn_steps 50, expert_epochs
  2, max_start 2, lr_img 100, lr_lr 1e-7, lr_teacher 0.01; IPC 10: 30 / 2 /
  20 / 100 / 1e-5 / 0.001; 5,000 iterations; batch_syn = the whole set.
  Accuracies 46.3 (IPC 1) / 65.3 (IPC 10).
- LoMTT (low-rank plugin), IPC 1: 8 images per class at rank 2, syn_steps
  50, max_start 5, lr_img 1000.
- MTT-LSS, IPC 1: rank 8, 4 mapper sets of 30 codes each (the storage of 10
  full images, soft labels and lr included).
The student lr is learned as a log here (kept positive), so the published
`lr_lr` on the lr becomes `lr_lr / lr_teacher**2` on its log (the same
first-order step). The MNIST and digits rows, and the progressive start's
`start_delta` / `start_window` and the soft labels' lr, are our own settings
sized for a CPU; no paper reports them. The model options and the data
preprocessing come from configs/experts.py, so a buffer trained with its
setting for the same dataset matches.

Reached here (docs/RESULTS.md, 2-core CPU): MNIST at the storage of 1 image
per class, a CPU budget (2 experts x 2 epochs, 18.7 min; 100 iterations x
10 student steps; 3 models): MTT 70.03 ± 0.20 (1.4-1.8 s per iteration),
LoMTT 91.52 ± 0.64 (9.4-11.7 s); MTT-LSS with the mappers at the images'
lr (before MAPPER_LR): 85.98 ± 0.67, session 9 84.40 ± 0.61, with
`label_init=expert` 89.47 ± 0.20, with `labels=hard` (9 images per class)
90.81 ± 0.74. With MAPPER_LR (session 16, one shared core, 19-21 s per
iteration, 57 min with the evaluation): **MTT-LSS 93.69 ± 0.22**; at 200
iterations (session 17, 45 min) 93.14 ± 0.13: more iterations did not help
at this buffer. With `label_init=expert` (session 18, 100 iterations, 12-20
s per iteration on a shared core, 26 min of evaluation) **94.28 ± 0.10**, a
Table-3 row reported once: on held-out digits at the mappers' lr the random
init led (79.70 against 77.53), so the default stays random.
Fashion-MNIST, the same budget and sizes: MTT 65.74 ± 0.51, LoMTT 79.04 ±
0.18 (session 14, ~15 s per iteration), MTT-LSS 78.87 ± 0.36 (session 16;
at the images' lr its images grew ~100x and the result check refused it).
From session 22's DM kernel-MMD mapper set (79.95; `configs/dm.py`) with
`variant=mtt_lss,labels=hard,rank=8,num_sets=2,iterations=100` and
`--config.synset.init=set`, one expert x 8 epochs: 80.97 ± 0.44
(held-out split: 79.80 -> 81.60; 64 min on one core, session 23; from
real images instead, held-out 80.75, session 24). Not on MNIST: the same
chain from the DM mapper set (96.09; `rank=10,num_sets=1`, one expert x 8
epochs) reached 95.17 ± 0.21, below its start (59 min on one core,
session 24); against 4 experts x 3 epochs 96.00 ± 0.08, level with its
start (96.10) but no gain (54 min on one core, session 27). With
`--config.distill.max_start=6` (session 33, 42 min on one core, the other
busy) 95.51 ± 0.08, still below its start (96.07). On a held-out split
of 5,000 images (`validation=500`, session 34) the later starts lose
(93.94 against the start's 94.85) and the default window leads (95.36),
so MNIST keeps `max_start` 2. The same three sets rank alike on the test
split (300 epochs: default window 96.03, start 95.86, later starts
94.37), so the test-split chains' losses came from their instance
(another DM start, another single expert): with one expert the chain
moves by about a point between instances.
The buffer is a lever: on Fashion-MNIST's held-out split the chain from
one DM start reached 82.40 against 4 experts x 3 epochs and 81.65 against
one expert x 8 epochs, about the same expert cost (start 80.05; session
25). On the test split, with `configs/experts.py:dataset=fashion_mnist,
num_experts=4,epochs=3` (two chunks of 23 and 38 min on 2 cores, the
second sharing them) and `--config.experts.path` to it: **81.65 ± 0.29**
from a start at 79.90, our best Fashion-MNIST set at this storage (74 min
on one core, session 26). A 10x `lr_lr` (the lr 0.0104 -> 0.0151) lowered
the matching loss but not the held-out accuracy (82.20); so did 150
iterations instead of 100 (82.10, session 27) and 8 experts x 3 epochs
instead of 4 (81.85, session 28).
Later start epochs are the lever the CPU buffers could not hold (session
30, one H200, `benchmarks/chain_gpu.py`: 4 experts x 8 epochs per split,
`iterations=300`, 10 models x 300 epochs): with `--config.distill.
max_start=6` the chain led on the held-out split at iterations 100 and
200 (82.19 and 82.68 against 81.16 and 81.61 with the default 2), and
reached 83.80 ± 0.48 on the test split at iteration 200, evaluated with
300 epochs (the runs were cut there; ~0.4 s an iteration with eight runs
sharing the GPU). On the CPU, the held-out chain against one
expert x 8 epochs went from 81.65 to 82.60 with `max_start=6` alone (100
iterations, 35 min on 2 cores after a 35-min buffer); on the test split
(`configs/experts.py:dataset=fashion_mnist,num_experts=1,epochs=8`, its
own DM start at 78.93) the same CPU row reached **82.65 ± 0.13** with the
protocol's 1000 epochs (3 models; 83.16 ± 0.06 with 300; 25 min buffer +
33 min chain on 2 cores + 20 min evaluation on one, sessions 30-31), our
best Fashion-MNIST set at this storage and 1.95 below FreD's 84.6. On the
held-out split, `max_start=8` (81.75), a window of late starts from the
first iteration (`--config.distill.max_start=1 --config.distill.
start_delta=6`, 82.95) and 200 iterations (81.95) did not pass
`max_start=6` at 100 (82.60) by more than the chain's spread (0.44;
session 31); nor did the codes' lr 300 (`--config.distill.lr_images=300`,
82.95; 30: 82.20), and the late window with it lost (81.75; session 32).
The mappers carry most of the chain's change to the images at every
codes' lr; their own lr 3 (`lr_mappers=3`) reached 82.15 there. Against
4 experts x 8 epochs (`num_experts=4`) the same held-out chain reached
82.05 at 200 iterations (81.05 at 100 of them; 70 min on 2 cores,
session 35): the bigger buffer is no lever at the CPU's evaluation.
Nor are starts later than epoch 6: against one expert x 12 epochs
(`epochs=12`, held-out accuracy 89.20 %), `max_start=10` (windows up to
[8, 10]) reached 82.35 beside `max_start=6`'s 82.60 on the same buffer and
start (100 iterations, 63 min on one core each, session 36).
Averaging the set is not a lever at the protocol (sessions 37-38): on
the same held-out `max_start=6` chain, `--config.distill.ema_decay=0.97`
led its own last set by +0.56 over four distillation seeds
(`--config.seed=0..3`; 83.29 ± 0.16 against 82.73 ± 0.52, 300-epoch
evaluations; 63 min on one core each), but on the test split at the
protocol's 1000 epochs it was level (82.64 ± 0.48 against 82.63 ± 0.18,
3 models, 33 min on 2 cores). So the CPU setting above is unchanged.
Soft labels are no lever either (session 39; 10 floats an image, so 9 images
a class): from a DM start that stores the held-out expert's predictions
(configs/dm.py with `--config.labels.kind=soft --config.labels.init=expert
--config.labels.experts=<buffer>`), the chain with `labels=soft` (lr 1000)
drives them near one-hot within ten iterations and scored 0.42 and 1.08
below the hard labels on the same six held-out models (distillation seeds 0
and 1; lower on every model); kept at one-hot 0.9 (the DM start with
`--config.labels.init=onehot`, the chain with `--config.labels.lr=0`) they
lost 2.52. Nor is a lower rank with more images (session 40): two sets of
rank 7 hold 14 images a class (`rank=7,num_sets=2`, from configs/dm.py's
start at the same shape) and lost 1.05 to rank 8 on the same six held-out
models at 300 epochs and 0.43 on four at the protocol's 1000 (91 min on
one core against ~55). Nor is ZCA whitening (session 41;
`--config.dataset.zca=mtt` for the buffer, the DM start and the chain):
its expert scored 88.80 % held out against 86.00 %, but its chains lost
1.48 and 1.98 to the standardised ones (distillation seeds 0 and 1, the
same six held-out models, lower on all twelve; 61 min on one core each).
The student lr's start is a lever, a small one (sessions 42-47): started
at twice the expert's (`--config.distill.lr_student=0.02`; the table's
`lr_teacher` 0.01), it held its set over the protocol's 1000 epochs and led the
baseline there by +0.53 and +0.60 on the held-out split (seeds 0 and 1,
six and five paired models; level at 300 epochs), but on the test split
at 1000 it was level (82.71 ± 0.16 against the baseline's 82.65 and
82.63, 3 models); 0.005 lost 0.97 at 300 and 0.04 lost 0.85 at 1000
(held-out, seed 0). Again on another machine (session 44) it led by
+0.92 on six paired held-out models, ± 0.53 once the 1,000 held-out
images count as the sample they are (`launch/compare.py`; ± 0.20 over
the models alone): a gain of half a point is below what that split can
tell apart. On a held-out split of 5,000 images (`validation=500`, a new
buffer and DM start; session 45) it led by +0.68 ± 0.28 over six models
and the images (images ± 0.12), so the held-out split keeps showing it.
On the test split, against a baseline from the same buffer, DM start and
seed (session 46), it led by +0.13 ± 0.12 over six models and the 10,000
test images (83.01 against 82.88), and by the same +0.13 with seed 1
(session 47: two seeds a side, +0.13 ± 0.12; a seed alone moves a set by
0.8, both lrs alike). Session 45's held-out sets, scored on the test
images, kept +0.48 ± 0.24 of their +0.68: the lead belongs mostly to
those sets, not to the held-out images; on the test images the lever is
worth about +0.20 ± 0.11 (session 47). So the Fashion-MNIST chain's recipe adds
`--config.distill.lr_student=0.02`, as the held-out split chose: 82.61
± 0.73 on the test split (2 seeds x 6 models at 1000 epochs; the
baseline 82.48 ± 0.70; session 31's 82.65 ± 0.13 above is one set's
models, one draw of the seed's spread). The table keeps the expert's lr,
MTT's published setting, which the other datasets here have not been
tried against.
"""

import ml_collections

from configs import common
from configs import experts as experts_config
from lowrank_distill import checks, config_utils

VARIANTS = {
  "mtt": dict(param="pixels", labels="hard", start="uniform", label_init=""),
  "lomtt": dict(param="factors", labels="hard", start="uniform", label_init=""),
  "mtt_lss": dict(
    param="mappers", labels="soft", start="progressive", label_init="random"
  ),
}
# Pixels keep `ipc` full images: with a learned lr (one float) they exceed
# the same-memory budget by that float, so they count as same-images.
BUDGET_BY_PARAM = {"pixels": "same-images"}
# Soft labels of a variant that has hard ones start from its classes.
LABEL_INIT = "onehot"

# (dataset, ipc) -> distillation settings shared by the variants; a variant
# row (dataset, ipc, variant) overrides fields of it.
SETTINGS = {
  ("cifar10", 1): dict(
    iterations=5000,
    syn_steps=50,
    expert_epochs=2,
    max_start=2,
    lr_images=100.0,
    lr_lr=1e-7,
    lr_teacher=0.01,
    lr_labels=10.0,
  ),
  ("cifar10", 1, "lomtt"): dict(max_start=5, lr_images=1000.0),
  ("cifar10", 10): dict(
    iterations=5000,
    syn_steps=30,
    expert_epochs=2,
    max_start=20,
    lr_images=100.0,
    lr_lr=1e-5,
    lr_teacher=0.001,
    lr_labels=10.0,
  ),
  # One MNIST epoch is 235 SGD steps (CIFAR-10's 2 epochs are 391), and the
  # CPU-sized buffer of configs/experts.py has 2 epochs: target = start + 1.
  ("mnist", 1): dict(
    iterations=200,
    syn_steps=20,
    expert_epochs=1,
    max_start=2,
    lr_images=100.0,
    lr_lr=1e-7,
    lr_teacher=0.01,
    lr_labels=1000.0,
  ),
  # Measured on digits after 60 iterations (300 epochs, no DSA, 2 models):
  # lr_images 100 -> MTT 86.9%, LoMTT 84.1% (1000: 83.6%, 55.2%); MTT-LSS
  # with random label init needs lr_labels ~1000 (10: 37%, 1000: 49%).
  ("digits", 1): dict(
    iterations=200,
    syn_steps=10,
    expert_epochs=2,
    max_start=5,
    lr_images=100.0,
    lr_lr=1e-7,
    lr_teacher=0.01,
    lr_labels=1000.0,
  ),
}
# Fashion-MNIST: the MNIST row (same sizes, the same CPU-sized buffer), so
# the two datasets' rows share one budget.
SETTINGS[("fashion_mnist", 1)] = SETTINGS[("mnist", 1)]
RANKS = {"factors": 2, "mappers": 8}
# Mapper sets: MTT-LSS's CIFAR setting; digits are 8x8, where rank 8 would
# be full rank, so rank 2.
NUM_SETS = 4
RANK_BY_DATASET = {("digits", "mappers"): 2, ("digits", "factors"): 2}
# The shared mappers' own lr (`distill.lr_mappers`; their codes keep
# lr_images). At the images' lr (MTT's 100) a mapper, shared by every image
# of its set, moves far more per step relative to its length than a pixel
# does; the loss cannot see an image's scale (instance norm), so those steps
# went into length: singular values 1 -> 3.5-13, images at 13-68x the real
# images' scale, and on held-out digits MTT-LSS at 54.0 (seed 0). Chosen on
# held-out digits (`validation=20`) among 100, 1 and 0.1, seeds 0-2; not
# measured on CIFAR (docs/RESULTS.md, "Session 16: MTT-LSS's mapper lr").
MAPPER_LR = 1.0
ZCA = experts_config.ZCA


def settings(dataset: str, ipc: int, variant: str) -> dict:
  """The table's row for (dataset, ipc), with the variant's overrides."""
  if (dataset, ipc) not in SETTINGS:
    raise ValueError(
      f"configs/tm.py has no setting for dataset={dataset!r}, ipc={ipc}; "
      f"rows: {sorted(k for k in SETTINGS if len(k) == 2)}; add one to "
      f"SETTINGS"
    )
  row = dict(SETTINGS[(dataset, ipc)])
  row.update(SETTINGS.get((dataset, ipc, variant), {}))
  return row


def get_config(arg=None, **values):
  arg = config_utils.parse_arg(
    arg,
    values,
    dataset="digits",
    variant="mtt_lss",
    ipc=1,
    rank=0,
    num_sets=0,
    budget="",
    iterations=0,
    runlocal=False,
    validation=0,
    param="",
    labels="",
    label_init="",
    lr_labels=0.0,
    start="",
    image_init="real",
    formation=1,
    num_bases=16,
    num_hallucinators=5,
    orthonormal_mappers=False,
    lr_mappers=0.0,
  )
  checks.check_choice("config arg variant", arg.variant, VARIANTS)
  variant = dict(VARIANTS[arg.variant])
  for name in ("param", "labels", "label_init", "start"):
    if arg[name]:
      variant[name] = arg[name]
  row = settings(arg.dataset, arg.ipc, arg.variant)
  config = config_utils.base_config(
    dataset=arg.dataset,
    dsa=True,
    runlocal=arg.runlocal,
    validation_per_class=arg.validation,
  )
  config.dataset.zca = ZCA.get(arg.dataset, "none")
  if not arg.runlocal:
    config.model.options.update(common.MODEL_OPTIONS.get(arg.dataset, {}))
  dsa = common.dsa_strategy(arg.dataset)
  config.eval.dsa_strategy = dsa
  config.method = "tm"
  param = variant["param"]
  config.synset = dict(
    param=param,
    ipc=arg.ipc,
    rank=arg.rank
    or RANK_BY_DATASET.get((arg.dataset, param), RANKS.get(param, 2)),
    num_sets=arg.num_sets or NUM_SETS,
    budget=arg.budget or BUDGET_BY_PARAM.get(param, "same-memory"),
    init=arg.image_init,
    # With init 'set': an exported set to start from (a `synset` folder).
    init_set="",
    formation=arg.formation,
    num_bases=arg.num_bases,
    num_hallucinators=arg.num_hallucinators,
  )
  soft = variant["labels"] == "soft"
  config.labels = dict(
    kind=variant["labels"],
    init=variant["label_init"] or LABEL_INIT,
    lr=(arg.lr_labels or row["lr_labels"]) if soft else 0.0,
    momentum=0.5,
    # label_init 'expert' from another buffer ('': experts.path's).
    experts="",
  )
  config.experts = ml_collections.ConfigDict(
    dict(path="", num_experts=0, max_host_bytes=8 * 2**30)
  )
  lr_teacher = row["lr_teacher"]
  config.distill = config_utils.distill_config(
    iterations=arg.iterations or row["iterations"],
    lr_images=row["lr_images"],
    # The unroll differentiates convolutions inside a scan: 'auto' picks
    # 'canonical' on the CPU, where autodiff's conv gradients in a loop are
    # naive.
    conv_impl="auto",
    eval_every=0,
    image_every=100,
    checkpoint_every=20,
    learn_lr=True,
    orthonormal_mappers=arg.orthonormal_mappers,
    lr_mappers=arg.lr_mappers or (MAPPER_LR if param == "mappers" else 0.0),
    lr_student=lr_teacher,
    lr_lr=row["lr_lr"] / lr_teacher**2,
    max_loss=1e3,
    syn_steps=row["syn_steps"],
    expert_epochs=row["expert_epochs"],
    max_start=row["max_start"],
    start=variant["start"],
    start_delta=1.0,
    start_window=2,
    # 0: every synthetic image in every student step (the reference's
    # default batch_syn).
    batch_syn=0,
    num_trajectories=1,
    dsa_strategy=dsa,
    remat=True,
    # HaBa's constraint (configs/haba.py): off here; the extractor's
    # settings are the reference's.
    club_weight=0.0,
    extractor_lr=0.001,
    extractor_momentum=0.9,
    extractor_cls_weight=1.0,
    extractor_likelihood_weight=1.0,
    extractor_contrast_weight=1.0,
  )
  if arg.runlocal:
    config.distill.update(config_utils.RUNLOCAL_DISTILL, syn_steps=3)
  return config
