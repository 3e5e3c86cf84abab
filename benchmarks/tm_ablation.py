r"""MTT-LSS's ablation (its Table 3) and the rows that explain it, in one table.

  python benchmarks/tm_ablation.py --dataset=digits --validation=20 \
    --root=/tmp/lowrank_distill/tm_ablation_digits
  python benchmarks/tm_ablation.py --dataset=mnist --validation=1000 \
    --rows=mtt,lss,lss_onehot --iterations=100 --syn_steps=10 \
    --num_models=3 --source=idx --path=../shared/datasets/mnist

One expert buffer (configs/experts.py's setting for the dataset, holding the
same validation images out) is trained into `<root>/experts` unless there;
then every row distils with `launch/distill.py` into `<root>/<row>` and is
evaluated with the config's protocol. Each step resumes where a killed run
stopped and a finished row is not run again, so the script can be stopped
and restarted at will. With `--validation=N` the rows are evaluated on N
train images per class held out of training (choosing settings); with 0 on
the test split (report once per final setting).

The table gives, per row: the set's storage and images per class, mean ±
std over the evaluation models (and each model), the matching loss at the
start and the end, and for soft labels their entropy (nats; log C is
uniform), the mean probability of each image's own class and the fraction
whose most likely label is their class; for every row the fraction whose
label (argmax) is what the fully trained first expert predicts for the final
image, and the images each class gets by its labels (how many classes
learned labels left with none); for mappers the range of their singular
values (1 at init); and the images' root mean square (standardised real
images: about 1). The markdown table goes to stdout and
`<root>/ablation.md`, every figure to `<root>/ablation.json`, and
`<root>/ablation.png` plots every row's loss and labels' entropy against
the iteration and its final mappers' singular values.
"""

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags, logging

REPO = pathlib.Path(__file__).resolve().parents[1]

# Row name -> (what it is, configs/tm.py arguments). The first eight are
# the 2 x 2 x 2 of MTT-LSS's Table 3 (soft labels with its random init,
# progressive start, low-rank mappers); the others isolate what they mix.
ROWS = {
  "mtt": ("MTT", "variant=mtt"),
  "mtt_soft": ("+ soft labels", "variant=mtt,labels=soft,label_init=random"),
  "mtt_prog": ("+ progressive start", "variant=mtt,start=progressive"),
  "mtt_soft_prog": (
    "+ soft labels + progressive",
    "variant=mtt,labels=soft,label_init=random,start=progressive",
  ),
  "mappers": (
    "+ low-rank mappers",
    "variant=mtt_lss,labels=hard,start=uniform",
  ),
  "mappers_soft": (
    "+ mappers + soft labels",
    "variant=mtt_lss,start=uniform",
  ),
  "mappers_prog": ("+ mappers + progressive", "variant=mtt_lss,labels=hard"),
  "lss": ("MTT-LSS (all three)", "variant=mtt_lss"),
  "lss_onehot": (
    "MTT-LSS, labels from one-hot",
    "variant=mtt_lss,label_init=onehot",
  ),
  "lss_expert": (
    "MTT-LSS, labels from the expert's predictions",
    "variant=mtt_lss,label_init=expert",
  ),
  "lss_noise": (
    "MTT-LSS, mappers and codes from noise",
    "variant=mtt_lss,image_init=noise",
  ),
  "lss_lr10": ("MTT-LSS, label lr 10", "variant=mtt_lss,lr_labels=10.0"),
  "lss_lr100": ("MTT-LSS, label lr 100", "variant=mtt_lss,lr_labels=100.0"),
  # configs/tm.py gives mappers their own lr (MAPPER_LR) since session
  # 16; these rows pin the images' lr 100 that every mapper row before
  # took (the rows above now run at MAPPER_LR).
  "lss_images_lr": (
    "MTT-LSS, mappers at the images' lr 100",
    "variant=mtt_lss,lr_mappers=100.0",
  ),
  "lss_expert_images_lr": (
    "MTT-LSS, expert labels, mappers at the images' lr 100",
    "variant=mtt_lss,label_init=expert,lr_mappers=100.0",
  ),
  "lss_orth": (
    "MTT-LSS, mappers held orthonormal at the images' lr 100",
    "variant=mtt_lss,orthonormal_mappers=true,lr_mappers=100.0",
  ),
  "lss_orth_lr1": (
    "MTT-LSS, mappers held orthonormal, their lr 1",
    "variant=mtt_lss,orthonormal_mappers=true,lr_mappers=1.0",
  ),
  "lss_orth_lr01": (
    "MTT-LSS, mappers held orthonormal, their lr 0.1",
    "variant=mtt_lss,orthonormal_mappers=true,lr_mappers=0.1",
  ),
  "lss_lr1": ("MTT-LSS, mappers' lr 1", "variant=mtt_lss,lr_mappers=1.0"),
  "lss_expert_lr1": (
    "MTT-LSS, expert labels, mappers' lr 1",
    "variant=mtt_lss,label_init=expert,lr_mappers=1.0",
  ),
  "lss_expert_orth": (
    "MTT-LSS, expert labels, mappers held orthonormal at the images' lr",
    "variant=mtt_lss,label_init=expert,orthonormal_mappers=true,"
    "lr_mappers=100.0",
  ),
  "lss_expert_orth_lr1": (
    "MTT-LSS, expert labels, mappers held orthonormal, their lr 1",
    "variant=mtt_lss,label_init=expert,orthonormal_mappers=true,lr_mappers=1.0",
  ),
  "lss_expert_orth_lr01": (
    "MTT-LSS, expert labels, mappers held orthonormal, their lr 0.1",
    "variant=mtt_lss,label_init=expert,orthonormal_mappers=true,lr_mappers=0.1",
  ),
  "lomtt": ("LoMTT (factors)", "variant=lomtt"),
  "lomtt_soft": (
    "LoMTT + soft labels from one-hot",
    "variant=lomtt,labels=soft,label_init=onehot",
  ),
  "lomtt_soft_random": (
    "LoMTT + soft labels, random init",
    "variant=lomtt,labels=soft,label_init=random",
  ),
}

_DATASET = flags.DEFINE_string("dataset", "digits", "digits, mnist, ...")
_VALIDATION = flags.DEFINE_integer(
  "validation", 20, "train images per class held out and evaluated on (0: test)"
)
_ROOT = flags.DEFINE_string("root", "", "workdirs (default /tmp/...)")
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"rows, of {list(ROWS)}")
_ITERATIONS = flags.DEFINE_integer("iterations", 0, "0: the config's")
_SYN_STEPS = flags.DEFINE_integer("syn_steps", 0, "0: the config's")
_NUM_MODELS = flags.DEFINE_integer("num_models", 0, "0: the config's")
_SEED = flags.DEFINE_integer("seed", 0, "the distillations' seed")
_SOURCE = flags.DEFINE_string("source", "", "dataset source (e.g. idx)")
_PATH = flags.DEFINE_string("path", "", "dataset path for idx/npz")
_REPORT = flags.DEFINE_bool("report", False, "only print the table")


def _data_flags() -> list[str]:
  out = []
  if _SOURCE.value:
    out.append(f"--config.dataset.source={_SOURCE.value}")
  if _PATH.value:
    out.append(f"--config.dataset.path={_PATH.value}")
  return out


def _run(command: list[str], log: pathlib.Path) -> str:
  """Runs `command`, appending its output to `log`; returns '' or, when it
  failed, the last line of its output (the error)."""
  log.parent.mkdir(parents=True, exist_ok=True)
  with log.open("a") as out:
    done = subprocess.run(command, cwd=REPO, stdout=out, stderr=out)
  if not done.returncode:
    return ""
  lines = [line for line in log.read_text().splitlines() if line.strip()]
  return lines[-1] if lines else f"exit status {done.returncode}"


def train_experts(root: pathlib.Path) -> pathlib.Path:
  workdir = root / "experts"
  arg = f"dataset={_DATASET.value},validation={_VALIDATION.value}"
  error = _run(
    [
      sys.executable,
      "launch/experts.py",
      f"--config=configs/experts.py:{arg}",
      f"--workdir={workdir}",
      *_data_flags(),
    ],
    root / "experts.log",
  )
  if error:
    raise SystemExit(f"the experts failed: {error} ({root / 'experts.log'})")
  return workdir


def distil(root: pathlib.Path, name: str, experts: pathlib.Path) -> float:
  """Runs row `name` unless finished or failed; returns the seconds it took
  now. A failed run (e.g. a diverged set) leaves `<row>/FAILED` with its
  error, which the table shows; delete it to try again."""
  workdir = root / name
  if (workdir / "results.json").exists() or (workdir / "FAILED").exists():
    return 0.0
  arg = (
    f"dataset={_DATASET.value},validation={_VALIDATION.value},"
    f"iterations={_ITERATIONS.value},{ROWS[name][1]}"
  )
  command = [
    sys.executable,
    "launch/distill.py",
    f"--config=configs/tm.py:{arg}",
    f"--workdir={workdir}",
    f"--config.experts.path={experts}",
    f"--config.seed={_SEED.value}",
    *_data_flags(),
  ]
  if _SYN_STEPS.value:
    command.append(f"--config.distill.syn_steps={_SYN_STEPS.value}")
  if _NUM_MODELS.value:
    command.append(f"--config.eval.num_models={_NUM_MODELS.value}")
  tick = time.time()
  error = _run(command, root / f"{name}.log")
  if error:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "FAILED").write_text(error + "\n")
    print(f"{name} failed: {error}", flush=True)
  return time.time() - tick


def _records(workdir: pathlib.Path) -> list[dict]:
  """The run's `metrics.jsonl` records (a line cut by a kill is skipped)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def _losses(workdir: pathlib.Path) -> list[float]:
  return [r["loss"] for r in _records(workdir) if "loss" in r]


def save_plot(root: pathlib.Path, names: list[str]) -> pathlib.Path | None:
  """`<root>/ablation.png`: every finished row's loss and soft labels'
  entropy against the iteration, and its final mappers' spectra
  (`analysis.save_runs_plot`)."""
  from lowrank_distill import analysis
  from lowrank_distill import synset as synset_lib

  runs = {}
  for name in names:
    workdir = root / name
    if not (workdir / "results.json").exists():
      continue
    params = synset_lib.load(workdir / "synset").params or {}
    spectra = (
      analysis.mapper_spectra(params) if {"u", "v"} <= set(params) else None
    )
    runs[name] = {"records": _records(workdir), "spectra": spectra}
  return analysis.save_runs_plot(root / "ablation.png", runs)


def expert_agreement(exported, experts: pathlib.Path):
  """(agreement, counts) of the exported set (`synset.load`): the fraction
  of the final set whose label's argmax
  is what the buffer's first expert, fully trained, predicts for its image
  (whether labels and images agree; a low-rank image need not look like the
  class it was initialised from), and how many images each class has by
  their labels' argmax (learned labels can leave a class with none)."""
  import numpy as np

  from lowrank_distill import experts as experts_lib
  from lowrank_distill import models

  buffer = experts_lib.open_buffer(experts)
  model_identity = buffer.identity["model"]
  model = models.create(
    model_identity["name"],
    num_classes=exported.num_classes,
    image_shape=tuple(exported.dataset["image_shape"]),
    **models.options_for(model_identity["name"], model_identity["options"]),
  )
  logits = experts_lib.final_expert_logits(
    buffer, model, tuple(exported.dataset["image_shape"]), exported.images
  )
  predicted = np.asarray(logits).argmax(-1)
  labels = np.asarray(exported.labels)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  counts = np.bincount(labels, minlength=exported.num_classes)
  return float(np.mean(predicted == labels)), counts.tolist()


def image_rms(exported) -> float:
  """The root mean square of the exported set's images (standardised real
  images: about 1; a scale-blind loss lets low-rank sets grow past it)."""
  import numpy as np

  images = np.asarray(exported.images, np.float64)
  return float(np.sqrt(np.mean(np.square(images))))


def row_summary(root: pathlib.Path, name: str) -> dict | None:
  """The row's figures from its workdir, or None before it finished."""
  workdir = root / name
  path = workdir / "results.json"
  if (workdir / "FAILED").exists():
    return {
      "row": name,
      "what": ROWS[name][0],
      "args": ROWS[name][1],
      "failed": (workdir / "FAILED").read_text().strip(),
    }
  if not path.exists():
    return None
  from lowrank_distill import synset as synset_lib

  results = json.loads(path.read_text())
  exported = synset_lib.load(workdir / "synset")
  convnet = results["results"].get("convnet", {})
  stats = results.get("set_statistics", {})
  budget = results["budget"]
  losses = _losses(workdir)
  return {
    "row": name,
    "what": ROWS[name][0],
    "args": ROWS[name][1],
    "storage_floats": results["storage_floats"],
    "images_per_class": budget["images_per_class"],
    "mean": convnet.get("mean"),
    "std": convnet.get("std"),
    "accuracies": convnet.get("accuracies", []),
    "loss_first": losses[0] if losses else None,
    "loss_last": losses[-1] if losses else None,
    "lr": results.get("lr"),
    "labels": stats.get("labels"),
    "mappers": stats.get("mappers"),
    "image_rms": image_rms(exported),
    **dict(
      zip(
        ("expert_agreement", "label_counts"),
        expert_agreement(exported, root / "experts"),
      )
    ),
    "skipped_updates": results["skipped_updates"],
    "iterations": results["iterations"],
  }


def _fmt(value, spec):
  return "" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
  lines = [
    "| row | storage | img/class | accuracy (%) | per model | loss first -> "
    "last | label entropy | own-class prob | label argmax = class | label "
    "= expert's prediction | images per class by label (min-max, classes "
    "with none) | mapper singular values | image rms |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "failed" in r:
      lines.append(
        f"| {r['what']} (`{r['args']}`) | failed: {r['failed'][-160:]} "
        "||||||||||||"
      )
      continue
    labels = r["labels"] or {}
    mappers = r["mappers"]
    span = (
      f"{min(mappers['u_min_sv'], mappers['v_min_sv']):.2f}-"
      f"{max(mappers['u_max_sv'], mappers['v_max_sv']):.2f}"
      if mappers
      else ""
    )
    accuracy = (
      f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
      if r["mean"] is not None
      else ""
    )
    lines.append(
      f"| {r['what']} (`{r['args']}`) | {r['storage_floats']} | "
      f"{r['images_per_class']} | {accuracy} | "
      f"{', '.join(f'{100 * a:.1f}' for a in r['accuracies'])} | "
      f"{_fmt(r['loss_first'], '.3f')} -> {_fmt(r['loss_last'], '.3f')} | "
      f"{_fmt(labels.get('entropy'), '.3f')} | "
      f"{_fmt(labels.get('own_class_prob'), '.2f')} | "
      f"{_fmt(labels.get('argmax_accuracy'), '.2f')} | "
      f"{_fmt(r['expert_agreement'], '.2f')} | "
      f"{min(r['label_counts'])}-{max(r['label_counts'])}, "
      f"{r['label_counts'].count(0)} | {span} | "
      f"{_fmt(r.get('image_rms'), '.2f')} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  # Reading the exported sets back logs every Orbax step; keep the table.
  logging.set_verbosity(logging.WARNING)
  unknown = sorted(set(_ROWS.value) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: {unknown} not known; valid: {list(ROWS)}")
  root = pathlib.Path(
    _ROOT.value
    or f"/tmp/lowrank_distill/tm_ablation_{_DATASET.value}_v{_VALIDATION.value}"
  )
  root.mkdir(parents=True, exist_ok=True)
  if not _REPORT.value:
    experts = train_experts(root)
    for name in _ROWS.value:
      seconds = distil(root, name, experts)
      if seconds:
        print(f"{name}: {seconds:.0f} s", flush=True)
  rows = [s for name in _ROWS.value if (s := row_summary(root, name))]
  text = table(rows)
  (root / "ablation.md").write_text(text + "\n")
  (root / "ablation.json").write_text(json.dumps(rows, indent=1))
  save_plot(root, _ROWS.value)
  split = "validation" if _VALIDATION.value else "test"
  print(f"{_DATASET.value}, {split} split, {root}")
  print(text)


if __name__ == "__main__":
  app.run(main)
