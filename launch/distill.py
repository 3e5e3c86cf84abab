r"""Distils a synthetic set: DM/LoDM (and the other objectives as they land).

  python launch/distill.py --workdir=/tmp/lodm_digits --config=configs/dm.py

Override any field with flags, e.g. `--config.distill.iterations=500`. A
killed run resumes from its last checkpoint when started again with the same
workdir and config.
"""

import common

from lowrank_distill import distill

common.define_flags("configs/dm.py")

if __name__ == "__main__":
  common.launch(distill.run)
