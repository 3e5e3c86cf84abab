r"""Evaluates a saved synthetic set (or coreset) given its path.

  python launch/evaluate.py --workdir=/tmp/eval \
    --config=configs/evaluate.py:synset=/tmp/run/synset
"""

import common

from lowrank_distill import evaluate

common.define_flags("configs/evaluate.py")

if __name__ == "__main__":
  common.launch(evaluate.run)
