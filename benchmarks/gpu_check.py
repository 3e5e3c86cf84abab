r"""One prepared check of the library on an accelerator host, in one call.

Run by `benchmarks/gpu_check.sh` (which installs what the host lacks first);
every figure lands in its own file under `--out` as soon as it is known, so
a run stopped by its time limit loses nothing:

  summary.txt    one line per part (and per benchmark), appended as they end
  env.txt        host, devices, versions, commit
  a_tests.log    (a) correctness: the test modules of the models, the
                 objectives, distill, evaluate and experts, JAX on the GPU
                 (`JAX_PLATFORMS=cuda,cpu`: the GPU is the default backend;
                 the sharded checks of `sharding_test.py` are not among them
                 and stay on fake CPU devices), one line per test as it ends
  a_failures.txt (a) each failing test's id and short traceback, written
                 the moment it fails (benchmarks/failure_stream.py), so a
                 part cut by the deadline still says which tests failed and
                 why
  b_speed.log    (b) speed and memory, ours vs PyTorch on the same device, as
                 `sidebyside.py` takes every such figure: DM step (MNIST- and
                 CIFAR-shaped), GM iteration, TM unroll at N = 10, 30, 80
                 (time and peak device memory), evaluation of 20 models
                 vmapped vs one after another
  c_mnist.log    (c) real MNIST at the published protocol: DM and LoDM at the
                 storage of 1 image per class, 20,000 iterations, 256 real
                 images per class, 20 models evaluated (1000 epochs, DSA)
                 every 2,000 iterations and at the end; then, if time
                 remains, an expert buffer and the LoMTT and MTT-LSS rows
  c_workdirs.tar.gz  part (c)'s workdirs (checkpoints, metrics, pictures): a
                 later call resumes them with `--resume_from`

Order: (b) first, alone on the device (timings); then (a) and (c) side by
side until `--budget` seconds have passed since the start. (c) is cut at the
deadline and says how far it got; its runs resume from their checkpoints.

`--tiny` runs every part on the CPU in a couple of minutes (tiny networks,
a few iterations); the test suite runs it (`tests/gpu_check_test.py`, part
b in `tests/gpu_check_speed_test.py`), so the script cannot rot between the
rare calls on a GPU host.

  benchmarks/gpu_check.sh --out=/tmp/gpu_check --mnist=../shared/datasets/mnist
"""

import argparse
import collections
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import tarfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SUMMARY_PREFIX = "SUMMARY "
A_FAILURES = "a_failures.txt"
# benchmarks/failure_stream.py reads the file to write from this variable.
FAILURE_STREAM_ENV = "FAILURE_STREAM"
_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")

# (a): the test modules that exercise models, objectives, distill, evaluate
# and experts. pytest runs them about in this order, so those no GPU call
# has reached come first (session 30's ended in distill_gm_test after 273 of
# 377 tests: train, evaluate, experts and most of distill_tm and distill_gm
# have not run on a GPU).
TEST_MODULES = (
  "tests/train_test.py",
  "tests/evaluate_test.py",
  "tests/experts_test.py",
  "tests/distill_tm_test.py",
  "tests/distill_gm_test.py",
  "tests/distill_test.py",
  "tests/models_test.py",
  "tests/models_conv_test.py",
  "tests/models_layers_test.py",
  "tests/distribution_matching_test.py",
  "tests/gradient_matching_test.py",
  "tests/trajectory_matching_test.py",
)
# One quick test: --tiny checks that part (a) runs and is read, not the suite.
TINY_TEST_MODULES = (
  "tests/distribution_matching_test.py::"
  "test_loss_is_positive_for_different_sets_and_sums_classes",
)

# (b): name -> (script, arguments), full size and tiny. Timed calls: >= 5
# per side where the budget allows (sidebyside.py). Run in this order and
# cut at part (b)'s deadline: the target the first call missed
# (eval_vmapped, session 29) first, then the ones measured once, the TM
# unroll (measured in session 30's call, all three targets met) last.
SPEED = {
  "eval_vmapped": (
    "eval_throughput.py",
    "--num_models=20 --epochs=300 --ipc=1 --calls=2",
    "--num_models=2 --epochs=1 --ipc=1 --size=8 --width=8 --test_size=20 "
    "--calls=1",
  ),
  "dm_step_mnist": (
    "dm_step_vs_torch.py",
    "--size=28 --channels=1 --ipc=10 --batch_real=256 --steps=5",
    "--size=8 --channels=1 --ipc=2 --batch_real=4 --width=8 --steps=1",
  ),
  "gm_iteration_mnist": (
    "gm_step_vs_torch.py",
    "--size=28 --channels=1 --ipc=10 --batch_real=256 --steps=5",
    "--ipc=1 --outer_loop=1 --inner_loop=1 --batch_real=2 --width=8 --steps=1",
  ),
  "eval_protocol_mnist": (
    "eval_vs_torch.py",
    "--epochs=300 --calls=5 --sizes=10,70,170",
    "--epochs=1 --calls=1 --sizes=10 --width=8 --test_size=50 --check_epochs=1",
  ),
  "dm_step_cifar": (
    "dm_step_vs_torch.py",
    "--size=32 --channels=3 --ipc=10 --batch_real=256 --steps=5",
    None,  # --tiny: the script and code path of dm_step_mnist
  ),
  "tm_unroll_cifar": (
    "tm_unroll_vs_torch.py",
    "--ns=10,30,80 --size=32 --channels=3 --ipc=10 --batch_syn=100 --steps=5",
    "--ns=1 --size=8 --ipc=1 --batch_syn=5 --width=8 --steps=1",
  ),
}

# (c): the published DM protocol on MNIST (configs/dm.py's MNIST rows).
MNIST_DM = {
  "dm": "configs/dm.py:dataset=mnist,ipc=1,param=pixels",
  "lodm": "configs/dm.py:dataset=mnist,ipc=1,param=factors",
}
MNIST_DM_FLAGS = (
  "--config.eval.num_models=20",
  "--config.distill.eval_every=2000",
)
MNIST_TM = ("lomtt", "mtt_lss")
# --tiny: one row of each (DM and LoMTT run the same code as LoDM and
# MTT-LSS with another parameterization).
TINY_MNIST_DM = ("lodm",)
TINY_MNIST_TM = ("mtt_lss",)
# --tiny: MNIST cut to its first images (still IDX files) and tiny networks.
TINY_MNIST = {"train": 1000, "t10k": 200}
TINY_MODEL_FLAGS = (
  "--config.model.options.width=8",
  "--config.model.options.depth=1",
)
TINY_EVAL_FLAGS = (
  "--config.eval.num_models=2",
  "--config.eval.epochs=1",
  "--config.eval.test_batch_size=100",
)
TINY_LOOP_FLAGS = (
  "--config.distill.iterations=2",
  "--config.distill.eval_every=1",
  "--config.distill.checkpoint_every=1",
  "--config.distill.image_every=0",
)


class Report:
  """The output folder: summary lines and per-part logs, flushed at once."""

  def __init__(self, out: pathlib.Path):
    self.out = out
    out.mkdir(parents=True, exist_ok=True)

  def summary(self, line: str) -> None:
    print(line, flush=True)
    with open(self.out / "summary.txt", "a") as f:
      f.write(line + "\n")

  def log_path(self, name: str) -> pathlib.Path:
    return self.out / name


def _env(tiny: bool, platforms: str) -> dict:
  env = dict(os.environ)
  env["PYTHONUNBUFFERED"] = "1"
  # Several JAX processes share the device in (a) and (c).
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env["JAX_PLATFORMS"] = "cpu" if tiny else platforms
  paths = [str(REPO), str(BENCHMARKS), env.get("PYTHONPATH", "")]
  env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
  return env


def _summaries_in(log: pathlib.Path, since: int) -> list[str]:
  text = log.read_text(errors="replace")[since:]
  return [
    line[len(SUMMARY_PREFIX) :]
    for line in text.splitlines()
    if line.startswith(SUMMARY_PREFIX)
  ]


def environment(report: Report, args) -> None:
  lines = [
    f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    f"commit: {args.commit or 'unknown'}",
    f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
    f"python: {sys.version.split()[0]} ({sys.executable})",
    f"mode: {'tiny (CPU)' if args.tiny else 'full'}; budget {args.budget} s",
  ]
  probe = (
    "import jax, flax, optax, orbax.checkpoint as o\n"
    "print('jax', jax.__version__, 'flax', flax.__version__, 'optax', "
    "optax.__version__, 'orbax', o.__version__)\n"
    "print('jax devices:', jax.devices())\n"
    "try:\n"
    "  import torch\n"
    "  print('torch', torch.__version__, 'cuda:', "
    "torch.cuda.is_available() and torch.cuda.get_device_name(0))\n"
    "except ImportError as e:\n"
    "  print('torch: not importable:', e)\n"
  )
  env = _env(args.tiny, args.platforms)
  proc = subprocess.run(
    [args.python, "-c", probe], capture_output=True, text=True, env=env
  )
  lines += (proc.stdout + proc.stderr[-2000:]).strip().splitlines()
  if not args.tiny:
    smi = subprocess.run(
      [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.sm",
        "--format=csv",
      ],
      capture_output=True,
      text=True,
    )
    lines += (smi.stdout or smi.stderr).strip().splitlines()
  (report.out / "env.txt").write_text("\n".join(lines) + "\n")
  report.summary("env: " + "; ".join(lines[:2] + lines[5:8]))


def part_b(report: Report, args, deadline: float) -> None:
  log = report.log_path("b_speed.log")
  env = _env(args.tiny, args.platforms)
  torch_device = "cpu" if args.tiny else "cuda"
  probe = subprocess.run(
    [args.python, "-c", "import torch"], capture_output=True, text=True
  )
  if probe.returncode != 0:
    report.summary(
      f"b: not run: PyTorch is not importable by {args.python} "
      f"({probe.stderr.strip().splitlines()[-1:]})"
    )
    return
  for name, (script, full, tiny) in SPEED.items():
    if args.tiny and tiny is None:
      report.summary(f"b {name}: not run in --tiny (another's code path)")
      continue
    left = deadline - time.time()
    if left < 20:
      report.summary(f"b {name}: not run ({left:.0f} s left of part b)")
      continue
    since = log.stat().st_size if log.exists() else 0
    cmd = [
      args.python,
      BENCHMARKS / script,
      *(tiny if args.tiny else full).split(),
      f"--name={name}",
    ]
    if script != "eval_throughput.py":
      cmd.append(f"--torch_device={torch_device}")
    # On a GPU host the host side is not what is measured: every core.
    cmd.append("--cores=0" if torch_device == "cuda" else "--cores=1")
    with open(log, "a") as handle:
      rc, seconds = _run(cmd, log=handle, env=env, deadline=deadline)
    lines = _summaries_in(log, since)
    if rc is None:
      report.summary(f"b {name}: cut at {seconds:.0f} s (part b's deadline)")
    elif rc != 0 or not lines:
      report.summary(f"b {name}: FAILED (exit {rc}); see b_speed.log")
    for line in lines:
      report.summary(f"b {line} [{seconds:.0f} s]")


def part_a_command(args) -> tuple:
  """Part (a)'s pytest command and environment."""
  env = _env(args.tiny, args.platforms)
  # Absolute: pytest runs at the repository root, whatever the caller's cwd.
  env[FAILURE_STREAM_ENV] = str(pathlib.Path(args.out).resolve() / A_FAILURES)
  modules = TINY_TEST_MODULES if args.tiny else TEST_MODULES
  cmd = [
    args.python,
    "-m",
    "pytest",
    "-v",
    "--tb=short",
    "-p",
    "no:cacheprovider",
    "-p",
    "failure_stream",
    "-n",
    "0" if args.tiny else str(args.test_workers),
    "-o",
    "addopts=--strict-markers -ra",
    *modules,
  ]
  return cmd, env


def count_outcomes(log_text: str) -> dict:
  """Tests ended so far, by outcome, from pytest's `-v` lines.

  Args:
    log_text: part (a)'s log: `path::test PASSED [ 1%]`, or under xdist
      `[gw0] [ 1%] PASSED path::test`.

  Returns:
    outcome -> count, e.g. {"PASSED": 120, "FAILED": 3}.
  """
  matches = (_OUTCOME.search(line) for line in log_text.splitlines())
  return dict(
    collections.Counter(m.group(1) for m in matches if m and "::" in m.string)
  )


def _mnist_flags(args) -> list[str]:
  return [
    "--config.dataset.source=idx",
    f"--config.dataset.path={args.mnist}",
  ]


def _tiny_dm_flags() -> list[str]:
  return [
    *TINY_MODEL_FLAGS,
    *TINY_LOOP_FLAGS,
    "--config.distill.batch_real=4",
    *TINY_EVAL_FLAGS,
  ]


def _tiny_tm_flags() -> list[str]:
  return [
    *TINY_MODEL_FLAGS,
    *TINY_LOOP_FLAGS,
    "--config.distill.syn_steps=2",
    *TINY_EVAL_FLAGS,
  ]


def tiny_mnist(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  """The first images of an MNIST folder, as uncompressed IDX files.

  Args:
    source: a folder with the four MNIST IDX files (plain or `.gz`).
    target: where to write them (created).

  Returns:
    `target`.
  """
  import gzip  # noqa: PLC0415

  target.mkdir(parents=True, exist_ok=True)
  for split, count in TINY_MNIST.items():
    for kind, rank in (("images", 3), ("labels", 1)):
      stem = f"{split}-{kind}-idx{rank}-ubyte"
      path = source / stem
      raw = (
        path.read_bytes()
        if path.exists()
        else gzip.decompress((source / (stem + ".gz")).read_bytes())
      )
      header = 4 + 4 * rank
      dims = [
        int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)
      ]
      record = 1
      for d in dims[1:]:
        record *= d
      n = min(count, dims[0])
      out = raw[:4] + n.to_bytes(4, "big") + raw[8:header]
      (target / stem).write_bytes(out + raw[header : header + n * record])
  return target


def read_run(workdir: pathlib.Path, iterations: int) -> str:
  """How far a distillation got: iteration, speed, evaluations."""
  metrics = workdir / "metrics.jsonl"
  if not metrics.exists():
    return "no metrics written (did not reach its first log step)"
  step, seconds, evals, final = 0, None, [], None
  for line in metrics.read_text().splitlines():
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      continue
    step = max(step, int(entry.get("step", 0)))
    if "seconds_per_step" in entry:
      seconds = entry["seconds_per_step"]
    if "eval" in entry:
      results = {
        name: f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} "
        f"({len(r['accuracies'])} models)"
        for name, r in entry["eval"].items()
      }
      evals.append((int(entry["step"]), results))
      if entry.get("final"):
        final = results
  text = f"iteration {step}/{iterations}"
  if seconds is not None:
    text += f" ({seconds * 1e3:.1f} ms/iteration, last logged)"
  if final is not None:
    return text + f"; FINAL {final}"
  if evals:
    at, results = evals[-1]
    return text + f"; last evaluation at {at}: {results}"
  return text + "; no evaluation reached yet"


def part_c_runs(args, workroot: pathlib.Path) -> list:
  """The DM / LoDM runs as (name, cmd, workdir, iterations)."""
  runs = []
  for name, config in MNIST_DM.items():
    if args.tiny and name not in TINY_MNIST_DM:
      continue
    workdir = workroot / name
    cmd = [
      args.python,
      REPO / "launch" / "distill.py",
      f"--config={config}" + (",runlocal=true" if args.tiny else ""),
      f"--workdir={workdir}",
      *_mnist_flags(args),
      *MNIST_DM_FLAGS,
    ]
    iterations = 20000
    if args.tiny:
      cmd += _tiny_dm_flags()
      iterations = 2
    runs.append((name, cmd, workdir, iterations))
  return runs


def _start(cmd, *, log, env) -> tuple:
  """Starts `cmd` with its output appended to the open file `log`."""
  log.write(f"\n$ {shlex.join(map(str, cmd))}\n")
  log.flush()
  proc = subprocess.Popen(
    list(map(str, cmd)),
    stdout=log,
    stderr=subprocess.STDOUT,
    env=env,
    cwd=REPO,
    start_new_session=True,
  )
  return proc, time.time()


def _wait_all(procs: dict, deadline: float, on_done) -> None:
  """Waits for every process; kills those still running at `deadline`.

  Args:
    procs: name -> (Popen, start time).
    deadline: `time.time()` at which the rest are killed.
    on_done: called as `on_done(name, rc, seconds)` when one ends; rc is
      None for a process killed at the deadline.
  """
  pending = dict(procs)
  while pending:
    for name, (proc, started) in list(pending.items()):
      rc = proc.poll()
      if rc is None and time.time() < deadline:
        continue
      if rc is None:
        os.killpg(proc.pid, 9)
        proc.wait()
      del pending[name]
      on_done(name, rc, time.time() - started)
    time.sleep(0.5)


def _run(cmd, *, log, env, deadline: float) -> tuple:
  """Runs `cmd` to its end or `deadline`, output appended to the open `log`.

  Returns:
    (rc, seconds); rc is None when it was killed at the deadline.
  """
  ended = {}
  _wait_all(
    {"run": _start(cmd, log=log, env=env)},
    deadline,
    lambda _, rc, seconds: ended.update(rc=rc, seconds=seconds),
  )
  log.write(f"[exit {ended['rc']} after {ended['seconds']:.0f} s]\n")
  log.flush()
  return ended["rc"], ended["seconds"]


def _state(rc) -> str:
  return "" if rc == 0 else (" (cut)" if rc is None else f" (exit {rc})")


def part_c_tm(report, args, workroot, deadline, log, env) -> None:
  """An expert buffer, then LoMTT and MTT-LSS side by side, as time allows."""
  experts = workroot / "experts"
  left = deadline - time.time()
  if left < 60 and not args.tiny:
    report.summary(f"c tm rows: not started ({left:.0f} s left)")
    return
  local = ",runlocal=true" if args.tiny else ""
  cmd = [
    args.python,
    REPO / "launch" / "experts.py",
    f"--config=configs/experts.py:dataset=mnist{local}",
    f"--workdir={experts}",
    *_mnist_flags(args),
  ]
  if args.tiny:
    cmd += [*TINY_MODEL_FLAGS, "--config.experts.num_experts=1"]
  rc, seconds = _run(cmd, log=log, env=env, deadline=deadline)
  if rc != 0:
    state = "cut by the deadline" if rc is None else f"FAILED (exit {rc})"
    report.summary(f"c experts: {state} after {seconds:.0f} s")
    return
  report.summary(f"c experts: buffer trained in {seconds:.0f} s")
  if deadline - time.time() < 30 and not args.tiny:
    report.summary("c tm rows: not started (under 30 s left)")
    return
  procs = {}
  for variant in TINY_MNIST_TM if args.tiny else MNIST_TM:
    cmd = [
      args.python,
      REPO / "launch" / "distill.py",
      f"--config=configs/tm.py:dataset=mnist,variant={variant}{local}",
      f"--workdir={workroot / variant}",
      f"--config.experts.path={experts}",
      *_mnist_flags(args),
      "--config.eval.num_models=20",
      *(_tiny_tm_flags() if args.tiny else []),
    ]
    procs[variant] = _start(cmd, log=log, env=env)
  iterations = 2 if args.tiny else "the config's"

  def done(variant, rc, seconds):
    progress = read_run(workroot / variant, iterations)
    report.summary(f"c {variant}{_state(rc)}: {progress} [{seconds:.0f} s]")

  _wait_all(procs, deadline, done)


def parts_a_and_c(report: Report, args, deadline: float) -> None:
  workroot = pathlib.Path(args.workroot)
  if args.resume_from:
    with tarfile.open(args.resume_from) as tar:
      tar.extractall(workroot.parent, filter="data")
  env = _env(args.tiny, args.platforms)
  procs = {}
  a_log = report.log_path("a_tests.log")
  c_log = open(report.log_path("c_mnist.log"), "a")
  with open(a_log, "a") as a_handle:
    if "a" in args.parts:
      cmd, a_env = part_a_command(args)
      procs["a"] = _start(cmd, log=a_handle, env=a_env)
    runs = {}
    if "c" in args.parts and not pathlib.Path(args.mnist).is_dir():
      report.summary(f"c: not run: no MNIST folder at {args.mnist}")
    elif "c" in args.parts:
      if args.tiny:
        args.mnist = str(
          tiny_mnist(pathlib.Path(args.mnist), workroot.parent / "tiny_mnist")
        )
      runs = {
        name: (cmd, it) for name, cmd, _, it in part_c_runs(args, workroot)
      }
    for name, (cmd, _) in runs.items():
      procs[name] = _start(cmd, log=c_log, env=env)

    def done(name, rc, seconds):
      if name == "a":
        text = a_log.read_text(errors="replace")
        tail = [
          line
          for line in text.splitlines()
          if line.startswith("=")
          and (" passed" in line or " failed" in line or " error" in line)
        ]
        state = "cut by the deadline; " if rc is None else f"exit {rc}; "
        if tail:
          summary = tail[-1].strip("= ")
        else:
          ended = count_outcomes(text)
          summary = "no pytest summary; ended so far: " + (
            ", ".join(f"{n} {k.lower()}" for k, n in sorted(ended.items()))
            or "none"
          )
        failures = report.log_path(A_FAILURES)
        if failures.exists():
          summary += f"; failures and tracebacks in {A_FAILURES}"
        report.summary(f"a tests: {state}{summary} [{seconds:.0f} s]")
      else:
        progress = read_run(workroot / name, runs[name][1])
        report.summary(f"c {name}{_state(rc)}: {progress} [{seconds:.0f} s]")

    _wait_all(procs, deadline, done)
  if runs:
    finished = all((workroot / name / "results.json").exists() for name in runs)
    if finished and not args.skip_tm:
      part_c_tm(report, args, workroot, deadline, c_log, env)
    elif not finished:
      report.summary(
        "c tm rows: not started (the DM rows did not finish in the budget)"
      )
    archive = report.out / "c_workdirs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
      tar.add(workroot, arcname=workroot.name)
    report.summary(
      f"c: workdirs saved to {archive.name} ({archive.stat().st_size} bytes); "
      "resume with --resume_from"
    )
  c_log.close()


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/tmp/gpu_check")
  parser.add_argument(
    "--mnist", default=str(REPO.parent / "shared/datasets/mnist")
  )
  parser.add_argument(
    "--budget",
    type=float,
    default=480.0,
    help="seconds for everything, from the start",
  )
  parser.add_argument(
    "--speed_share",
    type=float,
    default=0.55,
    help="share of the budget for part b",
  )
  parser.add_argument("--parts", default="abc")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--python", default=sys.executable)
  parser.add_argument(
    "--platforms", default="cuda,cpu", help="JAX_PLATFORMS for the full mode"
  )
  parser.add_argument("--test_workers", type=int, default=8)
  parser.add_argument(
    "--workroot",
    default="",
    help="part (c)'s workdirs; default /tmp/gpu_check_work/{full,tiny}/c",
  )
  parser.add_argument(
    "--resume_from", default="", help="a c_workdirs.tar.gz of an earlier call"
  )
  parser.add_argument("--skip_tm", action="store_true")
  parser.add_argument(
    "--commit", default=os.environ.get("GPU_CHECK_COMMIT", "")
  )
  args = parser.parse_args(argv)
  if not args.workroot:
    mode = "tiny" if args.tiny else "full"
    args.workroot = f"/tmp/gpu_check_work/{mode}/c"
  bad = set(args.parts) - set("abc")
  if bad:
    parser.error(f"--parts={args.parts!r}: valid letters are a, b, c")
  if not 0 < args.speed_share < 1:
    parser.error(f"--speed_share={args.speed_share}: must be in (0, 1)")
  if args.budget <= 0:
    parser.error(f"--budget={args.budget}: must be > 0")
  return args


def main(argv=None) -> int:
  start = time.time()
  args = parse_args(argv)
  report = Report(pathlib.Path(args.out))
  environment(report, args)
  if "b" in args.parts:
    part_b(report, args, start + args.budget * args.speed_share)
  if "a" in args.parts or "c" in args.parts:
    parts_a_and_c(report, args, start + args.budget)
  report.summary(f"done in {time.time() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
