"""Class-incremental GDumb with coreset or distilled memories.

  python launch/continual.py --workdir=/tmp/cl_mnist \
    --config=configs/continual.py:dataset=mnist,ipc=10,steps=5 \
    --config.dataset.source=idx --config.dataset.path=../shared/datasets/mnist
"""

import pathlib
import sys

# configs/continual.py builds its memories from the other config files
# (`from configs import dm`), so the repository root must be importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from absl import app  # noqa: E402

from lowrank_distill import continual  # noqa: E402

common.define_flags("configs/continual.py")

if __name__ == "__main__":
  app.run(common.main_for(continual.run))
