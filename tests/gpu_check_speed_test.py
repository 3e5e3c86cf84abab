"""benchmarks/gpu_check.py's part (b), speed against PyTorch, in `--tiny` mode.

Apart from tests/gpu_check_test.py so that the two slow `--tiny` runs can
go to different test workers. Runs where torch is installed
(`pip install -e ".[bench]"`; the test extras leave it out: PyPI's default
build is CUDA's, gigabytes, for a CPU-only suite).
"""

import pytest


@pytest.mark.slow
def test_tiny_part_b_compares_with_pytorch(
  gpu_check, run_gpu_check_tiny, tmp_path
):
  pytest.importorskip(
    "torch",
    reason="part (b) compares with PyTorch: pip install -e '.[bench]' "
    "(PyTorch's CPU build)",
  )
  _, summary = run_gpu_check_tiny(tmp_path / "no_mnist", "b")
  text = "\n".join(summary)
  lines = {
    line.split(":")[0][2:]: line for line in summary if line.startswith("b ")
  }
  assert set(lines) == set(gpu_check.SPEED), text
  assert "not run in --tiny" in lines["dm_step_cifar"]
  for name in ("dm_step_mnist", "gm_iteration_mnist", "eval_protocol_mnist"):
    assert "ours/torch median" in lines[name], text
  assert "vmapped" in lines["eval_vmapped"], text
  assert "N=1 ours" in lines["tm_unroll_cifar"], text
  assert "FAILED" not in text and "cut at" not in text, text
