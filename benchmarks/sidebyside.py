"""How every ours-vs-PyTorch figure is taken; the `*_vs_torch.py` share it.

Both sides run in one process on the same machine. After `warmup` untimed
calls of each, `calls` timed calls alternate ours / torch / ours / ..., so
that load from other users, clock changes and thermal drift hit both alike;
each side reports the median and the minimum of its calls. A call counts
only when its device work is done: ours blocks on its outputs
(`jax.block_until_ready` or a host transfer), torch's calls end with
`sync(device)` (`torch.cuda.synchronize` on a GPU).

Peak device memory on an accelerator: `jax_memory()` reads the JAX device's
allocator (`jax.Device.memory_stats`: bytes in use and the process's peak),
`torch_memory()` torch's (`torch.cuda.memory_allocated` and
`max_memory_allocated`, whose mark `reset_torch_peak()` resets). The two
allocators are separate, so both sides can be measured in one process; JAX's
peak cannot be reset, so its figure is the peak since the process started
over the bytes in use before the measured call (measure one program per
process). On CPU both return None (the benchmarks read the process's RSS).

Each benchmark ends with one `SUMMARY <name>: ...` line (`summary_line`),
which `benchmarks/gpu_check.py` collects.
"""

import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping

SUMMARY_PREFIX = "SUMMARY "


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of one side, and the CPU seconds the process spent.

  `cpu_per_wall` is the process's CPU time over the wall time of this
  side's calls: 1.00 on one pinned core means nothing waited and nothing
  ran on a second core; near the pinned core count means all were busy.
  """

  samples: tuple[float, ...]
  cpu_samples: tuple[float, ...] = ()

  @property
  def cpu_per_wall(self) -> float | None:
    if not self.cpu_samples:
      return None
    return sum(self.cpu_samples) / sum(self.samples)

  @property
  def median(self) -> float:
    return statistics.median(self.samples)

  @property
  def min(self) -> float:
    return min(self.samples)

  def __str__(self) -> str:
    text = (
      f"median {_seconds(self.median)}, min {_seconds(self.min)} "
      f"({len(self.samples)} calls"
    )
    if self.cpu_per_wall is not None:
      text += f", cpu/wall {self.cpu_per_wall:.2f}"
    return text + ")"


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def pin_cores(cores: int) -> str:
  """Runs this process on its first `cores` CPUs, torch on as many threads.

  The primary CPU figure is `cores=1` (both sides on one core, one thread:
  what `taskset -c 0` does); `cores=2` the two-thread figure. Call it first
  in `main`, before JAX or torch computes anything, so that their thread
  pools start inside the affinity. 0 leaves the process as it is.

  Returns:
    A description for the benchmark's header line.
  """
  if cores < 0:
    raise ValueError(f"--cores must be >= 0, got {cores}")
  if cores == 0:
    return f"all {len(os.sched_getaffinity(0))} cores, default threads"
  available = sorted(os.sched_getaffinity(0))
  if cores > len(available):
    raise ValueError(
      f"--cores={cores}: this process may use only {len(available)} CPUs"
    )
  chosen = available[:cores]
  os.sched_setaffinity(0, chosen)
  try:
    import torch

    torch.set_num_threads(cores)
    torch.set_num_interop_threads(cores)
  except ImportError:
    pass
  except RuntimeError:
    # The interop pool is fixed once torch has run something.
    pass
  return f"pinned to CPU {chosen} ({cores} thread{'s' * (cores > 1)} a side)"


def _seconds(value: float) -> str:
  return f"{value * 1e3:.1f} ms" if value < 1.0 else f"{value:.3f} s"


def alternate(
  fns: Mapping[str, Callable[[], object]], *, calls: int, warmup: int = 1
) -> dict[str, Timing]:
  """Times each of `fns` `calls` times, alternating between them.

  Args:
    fns: name -> a call that returns only when its work is done.
    calls: timed calls per side (>= 1).
    warmup: untimed calls per side first (compilation, caches, autotuning).

  Returns:
    name -> its `Timing`.
  """
  if calls < 1:
    raise ValueError(f"calls must be >= 1, got {calls}")
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  samples = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(calls):
    for name, fn in fns.items():
      start, start_cpu = time.perf_counter(), _cpu_seconds()
      fn()
      samples[name].append(time.perf_counter() - start)
      cpu[name].append(_cpu_seconds() - start_cpu)
  return {name: Timing(tuple(samples[name]), tuple(cpu[name])) for name in fns}


def torch_device(name: str):
  """`torch.device(name)`, refused with a clear error when it is absent."""
  import torch

  if name not in ("cpu", "cuda"):
    raise ValueError(f"--torch_device={name!r} is not known; valid: cpu, cuda")
  if name == "cuda" and not torch.cuda.is_available():
    raise ValueError("--torch_device=cuda but torch sees no CUDA device")
  return torch.device(name)


def sync(device) -> None:
  """Waits for the torch work queued on `device`."""
  import torch

  if device.type == "cuda":
    torch.cuda.synchronize(device)


def jax_memory() -> tuple[int, int] | None:
  """(bytes in use, peak bytes in use) of JAX's first device, or None."""
  import jax

  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["bytes_in_use"]), int(stats["peak_bytes_in_use"])


def reset_torch_peak(device) -> None:
  import torch

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)


def torch_memory(device) -> tuple[int, int] | None:
  """(bytes allocated, peak since the last reset) on `device`, or None."""
  import torch

  if device.type != "cuda":
    return None
  return (
    int(torch.cuda.memory_allocated(device)),
    int(torch.cuda.max_memory_allocated(device)),
  )


def ratio_text(ours: float | None, theirs: float | None, target=None) -> str:
  """'0.61 (target <= 0.7: met)'; 'n/a' when a side is missing."""
  if ours is None or not theirs:
    return "n/a"
  value = ours / theirs
  if target is None:
    return f"{value:.2f}"
  verdict = "met" if value <= target else "NOT met"
  return f"{value:.2f} (target <= {target}: {verdict})"


def summary_line(name: str, text: str) -> str:
  """Prints and returns the one line gpu_check collects for a benchmark."""
  line = f"{SUMMARY_PREFIX}{name}: {text}"
  print(line, flush=True)
  return line
