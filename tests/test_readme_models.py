"""README.md's model table is the one tools/readme_models.py generates from the registry now."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location(
      "readme_models", os.path.join(ROOT, "tools", "readme_models.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_readme_model_table_is_generated_from_the_registry():
  tool = _tool()
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = tool.readme_table(f.read())
  assert readme == tool.table(), (
      "README.md's model table is out of date: run python tools/readme_models.py")


def test_table_lists_every_seqscale_model_with_what_the_issue_asked():
  from seqscale import models
  tool = _tool()
  names = tool.registered()
  assert len(names) == 21 and set(names) <= set(models.names())
  rows = {line.split(" | ")[1].strip("`"): line for line in tool.table().splitlines()
          if line.startswith("| ") and " | `" in line}
  assert set(rows) == set(names)
  assert "encoder-decoder" in rows["transformer_seq2seq"]
  assert rows["transformer_seq2seq"].split(" | ")[5].startswith("yes")  # it steps
  assert rows["transformer"].split(" | ")[4:6] == ["with `causal=True`", "with `causal=True` |"]
  assert rows["bytenet"].endswith("| no |") and rows["neural_gpu"].endswith("| no | no |")
