"""Tests of lowrank_distill.data as a whole: lazy import, unknown names.

Each module's own tests are in data_<module>_test.py; the
tensorflow-datasets paths are in data_tfds_test.py.
"""

import numpy as np
import pytest

from lowrank_distill import data


def test_import_is_lazy(fresh_python):
  code = (
    "import sys\n"
    "import lowrank_distill.data\n"
    "heavy = ('tensorflow', 'tensorflow_datasets', 'sklearn', 'torch')\n"
    "print([m for m in heavy if m in sys.modules])\n"
  )
  assert fresh_python(code).strip() == "[]"


def test_unknown_names_list_valid_values():
  with pytest.raises(ValueError, match=r"dataset 'foo' is not known; valid: "):
    data.load("foo")
  with pytest.raises(ValueError, match="'cifar10', 'cifar100'"):
    data.load("foo")
  with pytest.raises(
    ValueError,
    match=r"source 'ftp' is not known; "
    r"valid: \['digits', 'tfds', 'idx', 'npz'\]",
  ):
    data.load("digits", source="ftp")
  with pytest.raises(
    ValueError,
    match=r"zca flavour 'pca' is not known; valid: \['none', 'mtt', 'kip'\]",
  ):
    data.load("digits", zca="pca")
  with pytest.raises(
    ValueError, match=r"zca flavour 'none' .* valid: \['mtt', 'kip'\]"
  ):
    data.fit_zca(np.zeros((3, 2, 2, 1)), flavour="none")
  with pytest.raises(ValueError, match="tfds dataset 'digits' is not known"):
    data.prepare_tfds("digits", data_dir=None)
  with pytest.raises(ValueError, match="serves only dataset 'digits'"):
    data.load("mnist", source="digits")
