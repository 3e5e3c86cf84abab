r"""Trains expert trajectories for trajectory matching (MTT).

  python launch/experts.py --workdir=/tmp/experts_cifar10 \
    --config=configs/experts.py:dataset=cifar10

Restart the same command to resume: saved experts are skipped.
"""

import common

from lowrank_distill import experts

common.define_flags("configs/experts.py")

if __name__ == "__main__":
  common.launch(experts.run)
