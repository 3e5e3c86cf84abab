"""Expert trajectories for trajectory matching (MTT, DESIGN 3.7).

An expert is a network trained on the real training set with plain SGD; its
parameters are kept at initialisation and after every epoch, so `E` epochs
give `E + 1` snapshots [E + 1, ...]. The package is split as:

  training   pure, traceable training: `train_expert` (one expert),
             `train_experts` (N vmapped, leaves [N, E + 1, ...]), the same
             in parts (`start_expert`, `train_expert_epochs`),
             `expert_key`, `init_key`, `Expert`; `final_expert_logits`
             (a trained expert's predictions, soft labels' 'expert' init)
  buffer     the on-disk buffer (`buffer.json` + `expert_<i>/`): its format,
             `save_expert`, `open_buffer` / `Buffer.read`, a chunk's
             progress (`save_progress`, `load_progress`), and the identity
             a distillation run checks (`buffer_identity`, `check_buffer`)
  loop       `run(config, workdir)`: validates an experts config, trains the
             missing experts chunk by chunk, epoch by epoch, and saves them

This module only re-exports. Submodules import their siblings directly,
never this package `__init__`.

References:
  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022 (`buffer.py` of the reference code).
"""

from lowrank_distill.experts import buffer, loop, training
from lowrank_distill.experts.buffer import (
  BUFFER_FILE,
  BUFFER_FORMAT,
  BUFFER_VERSION,
  COMPARED_SECTIONS,
  DATASET_KEYS,
  TRAINING_KEYS,
  Buffer,
  buffer_identity,
  check_buffer,
  expert_dir,
  identity_diff,
  model_identity,
  open_buffer,
  save_expert,
  saved_indices,
)
from lowrank_distill.experts.loop import chunks, run, validate
from lowrank_distill.experts.training import (
  Expert,
  expert_key,
  final_expert_logits,
  init_key,
  start_expert,
  train_expert,
  train_expert_epochs,
  train_experts,
)

__all__ = [
  "BUFFER_FILE",
  "BUFFER_FORMAT",
  "BUFFER_VERSION",
  "COMPARED_SECTIONS",
  "DATASET_KEYS",
  "TRAINING_KEYS",
  "Buffer",
  "Expert",
  "buffer",
  "buffer_identity",
  "check_buffer",
  "chunks",
  "expert_dir",
  "expert_key",
  "final_expert_logits",
  "identity_diff",
  "init_key",
  "loop",
  "model_identity",
  "open_buffer",
  "run",
  "save_expert",
  "saved_indices",
  "start_expert",
  "train_expert",
  "train_expert_epochs",
  "train_experts",
  "training",
  "validate",
]
