"""Writes files in the IDX format (MNIST's) for the tests that read them."""

import gzip

import numpy as np

_CODES = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path, array, *, gz=False):
  """Writes `array` (uint8, int32 or float32) to `path`, gzipped if `gz`."""
  array = np.asarray(array)
  header = bytes([0, 0, _CODES[array.dtype.type], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  path.write_bytes(gzip.compress(raw) if gz else raw)
  return path
