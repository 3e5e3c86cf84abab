"""Class-incremental GDumb with coreset or distilled memories.

  python launch/continual.py --workdir=/tmp/cl_mnist \
    --config=configs/continual.py:dataset=mnist,ipc=10,steps=5 \
    --config.dataset.source=idx --config.dataset.path=../shared/datasets/mnist
"""

import common

from lowrank_distill import continual

common.define_flags("configs/continual.py")

if __name__ == "__main__":
  common.launch(continual.run)
