"""The training command line: any constructor keyword of the model or the task as
``--config.model.hparams.<name>`` / ``--config.task.<name>``, the config's fields in
``--help``, and every command line README.md shows.

README's commands: the first training command without placeholders trains here for two
steps on tiny data, with keywords its config does not name; every other one is run by
``test_entry_points.py`` with a file as ``--workdir``: it gets through its flags and its
settings (the config and its keywords, for train) to the workdir check, the last before
any work, which is all a command that takes minutes can afford in the suite.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import ml_collections
import pytest

from experiments import cli
from seqscale.train import config as config_lib
from tests.test_train_helpers import DATA_DIR, ROOT, load_module, subprocess_env

# What README's placeholders stand for when its commands are run.
PLACEHOLDERS = {"<name>": "running_sum", "<model>": "transformer"}


def readme_commands(text: str | None = None) -> list[tuple[str, list[str]]]:
  """``(entry point, arguments)`` of every ``python -m experiments.<name>`` command line in
  README.md's code blocks and inline code (a command may run over lines, or follow ``&&``)."""
  if text is None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
      text = f.read()
  spans = [(block, True) for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S)]
  prose = re.sub(r"```.*?```", "", text, flags=re.S)
  spans += [(inline, False) for _, inline in  # a span opened by N backticks closes with N
            re.findall(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose, re.S)]
  commands = []
  for span, block in spans:
    span = span.replace("\\\n", " ")
    for line in span.splitlines() if block else [span.replace("\n", " ")]:
      for piece in line.split("&&"):
        found = re.search(r"python -m experiments\.(\w+)(.*)", piece)
        if found:
          commands.append((found.group(1), shlex.split(found.group(2))))
  return commands


def readme_train_command() -> list[str]:
  """The arguments of README's first running_sum training command without placeholders, the one
  ``test_readme_train_command_trains_on_tiny_settings`` runs (the others get the
  workdir check of test_entry_points.py)."""
  return next(args for name, args in readme_commands()
              if name == "train" and not any("<" in a for a in args)
              and any("running_sum.py" in a for a in args))


def instantiate(args: list[str], workdir: str) -> list[str]:
  """A README command's arguments made runnable: optional ``[...]`` parts kept, repeated
  ``[... ...]`` ones dropped, placeholders (``PLACEHOLDERS``) filled, ``--workdir`` set."""
  text = " ".join(args)
  text = re.sub(r"\[[^\[\]]*\.\.\.\]", "", text)
  text = re.sub(r"\[([^\[\]]*)\]", r"\1", text)
  for placeholder, value in PLACEHOLDERS.items():
    text = text.replace(placeholder, value)
  assert not re.search(r"<\w+>", text), f"a README placeholder without a value: {text}"
  out = [a for a in text.split() if not a.startswith("--workdir")]
  return out + [f"--workdir={workdir}"]


def test_readme_commands_are_found_and_name_entry_points():
  commands = readme_commands()
  names = {name for name, _ in commands}
  assert {"train", "overview", "results", "bench", "sharding"} <= names, names
  for name in names:
    assert os.path.isfile(os.path.join(ROOT, "experiments", f"{name}.py")), name
  trains = [instantiate(args, "W") for name, args in commands if name == "train"]
  assert ["--config=experiments/configs/running_sum.py:quick,transformer",
          "--workdir=W"] in trains
  assert ["--config=experiments/configs/running_sum.py:quick", "--workdir=W"] in trains
  sample = "x `python -m experiments.a --b=1\n--c` y\n```bash\nz && python -m experiments.d \\\n" \
           "  --e=DIR\n```\n"
  assert readme_commands(sample) == [("d", ["--e=DIR"]), ("a", ["--b=1", "--c"])]


def test_readme_config_fields_exist():
  """Every ``--config.<field>`` README mentions is a trainer field, or a keyword of some
  registered model (``model.hparams.*``) or task (``task.*``)."""
  from seqscale import data, models  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    # "--config.model.hparams.<keyword>" names the pattern, not a field
    paths = set(re.findall(r"--config\.([\w.]*\w)(?![\w.]*<)", f.read()))
  fields = set(config_lib.flatten(config_lib.default_config().to_dict()))
  hparams = {k for n in models.names() for k in config_lib.keywords("model", n) or ()}
  task = {k for n in data.task_names() for k in config_lib.keywords("task", n) or ()}
  assert paths, "README names no --config.<field>"
  for path in paths:
    group, _, key = path.rpartition(".")
    assert (path in fields or (group == "model.hparams" and key in hparams)
            or (group == "task" and key in task)), path


def test_literal_parser():
  parse = cli.LiteralParser().parse
  assert [parse(v) for v in ("3", "0.1", "1e-3", "true", "False", "none", "(3, 3)")] == [
      3, 0.1, 1e-3, True, False, None, (3, 3)]
  assert [parse(v) for v in ("bfloat16", "/tmp/a b", "lstm")] == ["bfloat16", "/tmp/a b", "lstm"]


def test_keywords_come_from_the_constructors():
  assert config_lib.keywords("model", "lstm")[:3] == ["in_features", "hidden_features",
                                                      "num_layers"]
  assert "rngs" not in config_lib.keywords("model", "lstm")
  assert config_lib.keywords("model", "forks.example.cummean:CumulativeMean") is not None
  assert "base" in config_lib.keywords("task", "running_sum")
  with pytest.raises(ValueError, match="unknown model 'nosuch'; known models: .*lstm"):
    config_lib.keywords("model", "nosuch")
  c = config_lib.default_config()
  c.model.hparams = ml_collections.ConfigDict({"hidden_features": 8, "dtype": "bfloat16"})
  config_lib.check_keywords(c)
  c.model.hparams.nosuch = 1
  with pytest.raises(ValueError, match=r"^config.model.hparams.nosuch: model 'lstm' takes no "
                     r"keyword 'nosuch'; it takes: in_features, hidden_features, num_layers"):
    config_lib.check_keywords(c)
  del c.model.hparams["nosuch"]
  c.task.lenght = 8
  with pytest.raises(ValueError, match=r"config.task.lenght: task 'running_sum' takes no "
                     r"keyword 'lenght'; it takes: length, base"):
    config_lib.check_keywords(c)


def test_describe_lists_every_field_with_its_comment():
  lines = config_lib.describe()
  for path in config_lib.flatten(config_lib.default_config().to_dict()):
    if path != "model.hparams":  # empty: its keywords have their own line
      assert any(line.startswith(f"--config.{path}=") for line in lines), path
  assert "--config.seed=0  # parameter init, dropout and data order" in lines
  assert lines[-2].startswith("--config.model.hparams.<keyword>=<value>: any keyword of "
                              "model 'lstm': in_features, hidden_features")
  assert "length, base" in lines[-1]


def test_readme_train_command_trains_on_tiny_settings(tmp_path):
  """README's (first concrete) training command, two steps on tiny data, with keywords its
  config does not name: the model's compute dtype (a string) and the task's seed (an int)."""
  argv = instantiate(readme_train_command(), str(tmp_path))
  path, _, arg = next(a for a in argv if a.startswith("--config=")).split("=", 1)[1].partition(":")
  config = load_module(os.path.basename(path)[:-3]).get_config(arg or None)
  task_keywords = config_lib.keywords("task", config.task.name)
  tiny = {"task.data_dir": DATA_DIR, "task.num_train": 256, "task.num_eval": 64,
          "task.length": 8, "task.seed": 3, "model.hparams.hidden_features": 16,
          "model.hparams.dtype": "bfloat16", "eval_batch_size": 32, "num_steps": 2,
          "log_every": 1}
  tiny = {k: v for k, v in tiny.items() if not k.startswith("task.")
          or k.split(".")[1] in task_keywords}
  assert "dtype" not in config.model.hparams and "seed" not in config.task  # new keys
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", *argv,
       *(f"--config.{k}={v}" for k, v in tiny.items())], cwd=ROOT, env=subprocess_env(),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["steps_done"] == 2
  saved = results["context"]["config"]
  assert saved["model"]["hparams"]["dtype"] == "bfloat16" == results["context"]["dtype"]
  assert saved["task"]["seed"] == 3 and saved["model"]["hparams"]["hidden_features"] == 16
