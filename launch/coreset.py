r"""Selects a coreset baseline and evaluates it with the protocol.

  python launch/coreset.py --workdir=/tmp/coreset \
    --config=configs/coreset.py:dataset=mnist,method=herding,ipc=10
"""

import common

from lowrank_distill import coreset

common.define_flags("configs/coreset.py")

if __name__ == "__main__":
  common.launch(coreset.run)
