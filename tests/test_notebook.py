"""experiments/colab_tpu.ipynb: a valid notebook, as its generator writes it, whose cells can
all be run twice.

The install cell (Colab's ``!``/``%`` lines) runs twice here with its shell commands
recorded instead of run; the other cells run twice, as a rerun in the same kernel would,
on one CPU device with the notebook's ``QUICK`` parameter set (``.ci/run`` tests the real
install).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT, fast_compile_env

NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")


def _notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _tags(cell):
  return set(cell.metadata.get("tags", []))


def _code(tag=None):
  return [c for c in _notebook().cells if c.cell_type == "code"
          and (tag is None or tag in _tags(c))]


def _generator():
  spec = importlib.util.spec_from_file_location(
      "make_colab_notebook", os.path.join(ROOT, "tools", "make_colab_notebook.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_notebook_is_valid_clean_and_generated():
  nb = _notebook()
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "outputs saved"
  assert nb.metadata.get("accelerator") == "TPU"
  gen = _generator()
  assert [c.source for c in nb.cells] == [c.source for c in gen.cells(gen.default_ref())], (
      "experiments/colab_tpu.ipynb is stale: run python tools/make_colab_notebook.py")
  [install] = _code("colab")
  assert 'pip install -q -e ".[tpu]"' in install.source
  [params] = _code("parameters")
  assert "QUICK = False" in params.source
  # Shell and magic lines only in the Colab install cell: every other cell is Python.
  for c in code:
    if "colab" not in _tags(c):
      assert not any(l.lstrip().startswith(("!", "%")) for l in c.source.splitlines()), c.source
      compile(c.source, "<cell>", "exec")
  text = "\n".join(c.source for c in code)
  for needed in ("experiments.overview", "experiments.sharding", "jax.devices()"):
    assert needed in text


def _ipython_to_python(source: str) -> str:
  """The install cell's ``!cmd`` and ``%cd path`` lines as calls of ``_shell``/``_cd``, as
  IPython's input transformer turns them into ``get_ipython().system/run_line_magic``."""
  out = []
  for line in source.splitlines():
    m = re.match(r"(\s*)([!%])(.*)$", line)
    if not m:
      out.append(line)
    elif m.group(2) == "!":
      out.append(f"{m.group(1)}_shell({m.group(3)!r}.format(**globals()))")
    else:
      magic, _, arg = m.group(3).partition(" ")
      assert magic == "cd", f"only %cd is expected in the install cell, not %{magic}"
      out.append(f"{m.group(1)}_cd({arg!r})")
  return "\n".join(out)


def test_install_cell_runs_twice_pinned_and_in_the_repository_root(tmp_path):
  [install] = _code("colab")
  ref = re.search(r'^SEQSCALE_REF = "([^"]+)"', install.source, re.M).group(1)
  assert re.fullmatch(r"v\d+(\.\d+)*|[0-9a-f]{40}", ref), f"not pinned: {ref}"
  assert ref == _generator().default_ref()
  [cd] = re.findall(r"^%cd (.*)$", install.source, re.M)
  assert os.path.isabs(cd), f"%cd {cd}: a relative path enters a new folder on each rerun"
  src = str(tmp_path / "seqscale")
  log = []

  def shell(cmd):
    log.append(("!", cmd))
    if cmd.startswith("git clone"):  # what a clone leaves behind
      os.makedirs(os.path.join(cmd.split()[-1], ".git"))

  ns = {"_shell": shell, "_cd": lambda path: log.append(("%cd", path))}
  script = _ipython_to_python(install.source.replace(cd, src))
  for _ in range(2):  # Runtime -> Run all, then the same again
    exec(compile(script, "<install cell>", "exec"), ns)  # pylint: disable=exec-used
  clones = [c for kind, c in log if c.startswith("git clone")]
  assert clones == [f"git clone -q https://github.com/seqscale/seqscale.git {src}"]
  assert [c for kind, c in log if kind == "%cd"] == [src, src]
  checkouts = [c for kind, c in log if "git checkout" in c]
  assert len(checkouts) == 2 and all(f"git checkout -q {ref}" in c for c in checkouts)
  assert [c for kind, c in log if "pip install" in c] == ['pip install -q -e ".[tpu]"'] * 2
  order = [kind if kind == "%cd" else c.split()[0] for kind, c in log[1:]]
  assert order[:2] == ["%cd", "git"]  # the checkout and pip run in the repository root


def test_log_filter_drops_absl_info_and_warnings_of_any_date():
  [helpers] = [c for c in _code() if "LOG_LINE" in c.source]
  ns = {}
  exec("import re, subprocess, sys\n" + helpers.source, ns)  # pylint: disable=exec-used
  dropped = [f"{level}{month:02d}{day:02d} 09:03:04.123456 {tid} trainer.py:212] text"
             for level in "IW" for month in range(1, 13) for day in (1, 28)
             for tid in (7, 140211)]
  assert all(ns["LOG_LINE"].match(line) for line in dropped)
  kept = ["E0105 09:03:04.123456  77 trainer.py:212] an error stays",
          "I1 line of our own output", "[overview 1/2] running_sum: ...",
          "W1202 is not a log line", "| lstm | 0.98 |", "1 cpu devices:"]
  assert not any(ns["LOG_LINE"].match(line) for line in kept)


def _script(workdir: str) -> str:
  parts = []
  for cell in _code():
    if "colab" in _tags(cell):
      continue
    parts.append(cell.source)
    if "parameters" in _tags(cell):
      parts.append(f"WORKDIR = {workdir!r}\nQUICK = True")
  cells = "\n\n".join(parts)
  return cells + "\n\nprint('=== rerun ===', flush=True)\n\n" + cells  # rerun, same kernel


@pytest.mark.slow
def test_notebook_cells_run_twice_on_one_device(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  # Compiling is most of the run: XLA's backend at optimization level 0 (conftest's
  # fast_compile_env; the checks read what the cells print and write, not their speed).
  env = fast_compile_env(**env)
  proc = subprocess.run([sys.executable, "-c", _script(str(tmp_path))], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  first, second = proc.stdout.split("=== rerun ===")
  for out in (first, second):
    assert "1 cpu devices:" in out
    assert "Skipping the sharding experiment" in out
    assert "The overview exited" not in out
    assert "on 2 forced CPU host devices in a subprocess" in out  # the overview's line
    for name in ("running_sum.png", "sharding.png"):  # the display cell names its plots
      assert name in out
  overview = tmp_path / "overview"
  results = json.loads((overview / "results.json").read_text())
  assert results["context"]["device_count"] == 1 and results["status"] == "finished"
  assert not results["failed"] and list(results["sections"]) == ["running_sum", "sharding"]
  assert {r["forced_cpu_devices"] for r in results["sections"]["sharding"]["rows"]} == {2}
  assert "## Summary" in (overview / "overview.md").read_text()
  assert not (tmp_path / "sharding").exists()
