"""tests/conftest.py: the XLA flags every test process starts with."""

import os

import conftest


def test_a_flag_this_jaxlib_does_not_know_is_refused_not_fatal():
  # XLA aborts a process at an unknown XLA_FLAGS entry; the probe runs in a
  # child, so the suite goes on without the flag.
  assert not conftest._accepts("--xla_no_such_flag_for_the_test=1")


def test_each_optional_flag_is_set_exactly_where_this_jaxlib_accepts_it():
  # By name: XLA_FLAGS given to pytest may set either with another value.
  flags = os.environ["XLA_FLAGS"]
  for name, value in conftest._OPTIONAL_XLA_FLAGS.items():
    accepted = conftest._accepts(f"--{name}={value}")
    assert (f"--{name}=" in flags) == accepted, (name, flags)
  for name in conftest._DEFAULT_XLA_FLAGS:
    assert f"--{name}=" in flags, (name, flags)


def test_flags_already_named_are_kept_as_given():
  given = "--xla_cpu_use_fusion_emitters=true"
  merged = conftest._with_flags(given, {"xla_cpu_use_fusion_emitters": "false"})
  assert merged == given
  assert conftest._with_flags("", {"a": "1", "b": "2"}) == "--a=1 --b=2"
