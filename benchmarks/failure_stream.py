"""A pytest plugin: each failure written to a file the moment it happens.

pytest prints failures' tracebacks at the end of a session, so a session
cut by a time limit (gpu_check.py's part (a) on a GPU host lent for
minutes) tells only that some tests failed, not which or why. With this
plugin and `FAILURE_STREAM=PATH` in the environment, every failed test
(setup, call or teardown) appends its id and short traceback to PATH at
once; under pytest-xdist only the controller writes, so each failure
appears once.

  FAILURE_STREAM=/tmp/failures.txt python -m pytest -p failure_stream ...
"""

import os

import pytest

ENV = "FAILURE_STREAM"
_state = {"path": None}


@pytest.hookimpl
def pytest_configure(config):
  # xdist's workers have `workerinput`; their reports reach the controller,
  # which calls pytest_runtest_logreport again.
  is_worker = hasattr(config, "workerinput")
  _state["path"] = None if is_worker else os.environ.get(ENV) or None


@pytest.hookimpl
def pytest_runtest_logreport(report):
  if _state["path"] is None or not report.failed:
    return
  with open(_state["path"], "a") as f:
    f.write(f"FAILED {report.nodeid} ({report.when})\n")
    f.write(report.longreprtext.rstrip() + "\n\n")
