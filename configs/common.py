"""Settings every config shares (as big_vision's `configs/common.py`)."""

from lowrank_distill import augment

# Digit datasets get no horizontal flip: a mirrored digit is another glyph.
DSA_NO_FLIP = "color_crop_cutout_scale_rotate"
DSA_STRATEGY = {
  "digits": DSA_NO_FLIP,
  "mnist": DSA_NO_FLIP,
  "svhn_cropped": DSA_NO_FLIP,
}


def dsa_strategy(dataset: str) -> str:
  """The DSA strategy of `dataset`: the table's, else DSA's default."""
  return DSA_STRATEGY.get(dataset, augment.DEFAULT_STRATEGY)
