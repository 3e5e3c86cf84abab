"""Tests of the launchers' shared start-up (launch/common.py): the commands
the README and the configs' docstrings write parse and pass their run's
checks as written, lists included."""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from lowrank_distill import config_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [
  "README.md",
  *sorted(p.name for p in (REPO / "configs").glob("*.py")),
]


def _commands(text: str) -> list[list[str]]:
  """Every `python launch/<x>.py ...` command of `text`, as arguments."""
  joined = re.sub(r"\\\n\s*", " ", text)
  found = []
  for match in re.finditer(r"python3? (launch/\w+\.py[^\n`\"]*)", joined):
    words = shlex.split(match.group(1).split("&&")[0].split("#")[0])
    found.append(words)
  return found


def _documented_commands():
  cases = []
  for name in DOCUMENTS:
    path = REPO / name if name == "README.md" else REPO / "configs" / name
    for i, words in enumerate(_commands(path.read_text())):
      cases.append(pytest.param(words, id=f"{name}:{i}:{words[0]}"))
  return cases


def parse(words: list[str]):
  """The config a launcher builds from `words` (launch/x.py and its flags),
  as launch/common.py's main hands it to `run`."""
  argv = [words[0]] + [w for w in words[1:] if w.startswith("--config")]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config",
    None,
    "",
    flag_values=values,
    lock_config=True,
    sys_argv=argv,
  )
  values(argv)
  config_utils.split_comma_lists(values.config)
  return values.config


def _validate(launcher: str, config) -> None:
  from lowrank_distill import continual, coreset, distill, evaluate, experts

  check = {
    "continual.py": continual.validate,
    "coreset.py": coreset.validate,
    "evaluate.py": evaluate.validate,
    "experts.py": experts.validate,
    "distill.py": distill.validate,
  }[pathlib.Path(launcher).name]
  check(config)


# Launchers without a config: their documented flags are checked by
# running them, which must get past flag parsing to their own work.
FLAG_LAUNCHERS = {"compare.py": "compare: "}


@pytest.mark.parametrize("words", _documented_commands())
def test_documented_commands_parse_and_pass_their_checks(words, monkeypatch):
  monkeypatch.chdir(REPO)
  name = pathlib.Path(words[0]).name
  if name not in FLAG_LAUNCHERS:
    _validate(words[0], parse(words))
    return
  # The documented paths do not exist here: the launcher parses its flags,
  # then says it found no evaluation there.
  done = subprocess.run(
    [sys.executable, *words], capture_output=True, text=True, timeout=120
  )
  assert done.returncode != 0
  assert "Flags parsing error" not in done.stderr, done.stderr
  assert FLAG_LAUNCHERS[name] in done.stderr, done.stderr


def test_there_are_documented_commands_to_test():
  assert len(_documented_commands()) >= 15


def test_the_readme_cross_architecture_command_names_four_models(
  monkeypatch,
):
  monkeypatch.chdir(REPO)
  (words,) = [
    w
    for w in _commands((REPO / "README.md").read_text())
    if any("eval.models=" in x for x in w)
  ]
  assert parse(words).eval.models == ("convnet", "lenet", "alexnet", "vgg11")


@pytest.mark.parametrize(
  "flags_given,expected",
  [
    (["--config.continual.methods=random,dm"], ("random", "dm")),
    (
      ["--config.continual.methods=random", "--config.continual.methods=dm"],
      ("random", "dm"),
    ),
    (["--config.continual.methods=('random', 'dm')"], ("random", "dm")),
  ],
)
def test_list_fields_take_commas_repeated_flags_or_a_tuple(
  flags_given, expected, monkeypatch
):
  monkeypatch.chdir(REPO)
  config = parse(
    [
      "launch/continual.py",
      "--config=configs/continual.py:methods=random+dm+lodm",
      *flags_given,
      "--config.continual.orders=0,3",
    ]
  )
  assert config.continual.methods == expected
  assert config.continual.orders == (0, 3)
