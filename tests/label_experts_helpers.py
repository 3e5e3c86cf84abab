"""Helpers shared by the tests of soft labels that start from a trained
expert's predictions (`labels.init='expert'`, `labels.experts`)."""

from configs import experts as experts_config
from lowrank_distill import experts


def train_label_buffer(workdir, **model_options):
  """One expert trained 2 epochs on digits into `workdir` (the runlocal
  network, updated with `model_options`); returns `workdir`."""
  config = experts_config.get_config("runlocal=true")
  config.model.options.update(model_options)
  config.experts.update(num_experts=1, epochs=2, experts_in_parallel=1)
  experts.run(config, workdir)
  return workdir


def trained_expert_predictions(buffer_path, model, images):
  """The logits [n, C] that the buffer's first expert, after its last
  epoch, gives `images` [n, h, w, c], applied in train mode as a student
  is: what the labels' 'expert' init should store."""
  buffer = experts.open_buffer(buffer_path)
  trained = buffer.snapshot(0, buffer.num_snapshots - 1)
  return model.apply({"params": trained}, images, train=True)
