"""experiments/colab_tpu.ipynb: a valid notebook whose code cells run on CPU devices.

On a CPU the notebook's cells run with 8 forced host devices (the cores of a TPU v2-8),
its ``QUICK`` parameter set, and the Colab-only install cell left out (the package is
installed already; ``.ci/run`` tests that install).
"""

import json
import os
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")


def _notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _tags(cell):
  return set(cell.metadata.get("tags", []))


def test_notebook_is_valid_and_clean():
  nb = _notebook()
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "outputs saved"
  assert nb.metadata.get("accelerator") == "TPU"
  install = [c for c in code if "colab" in _tags(c)]
  assert len(install) == 1 and 'pip install -q -e ".[tpu]"' in install[0].source
  params = [c for c in code if "parameters" in _tags(c)]
  assert len(params) == 1 and "QUICK = False" in params[0].source
  # Shell and magic lines only in the Colab install cell: every other cell is Python.
  for c in code:
    if "colab" not in _tags(c):
      assert not any(l.lstrip().startswith(("!", "%")) for l in c.source.splitlines()), c.source
      compile(c.source, "<cell>", "exec")
  text = "\n".join(c.source for c in code)
  for needed in ("experiments.overview", "experiments.sharding", "jax.devices()"):
    assert needed in text


def _script(workdir: str) -> str:
  parts = []
  for cell in _notebook().cells:
    if cell.cell_type != "code" or "colab" in _tags(cell):
      continue
    parts.append(cell.source)
    if "parameters" in _tags(cell):
      parts.append(f"WORKDIR = {workdir!r}\nQUICK = True")
  return "\n\n".join(parts)


@pytest.mark.slow
def test_notebook_code_cells_run_on_8_forced_cpu_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=8").strip()
  proc = subprocess.run([sys.executable, "-c", _script(str(tmp_path))], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "8 cpu devices:" in proc.stdout
  overview = tmp_path / "overview"
  assert "## Summary" in (overview / "overview.md").read_text()
  results = json.loads((overview / "results.json").read_text())
  assert results["context"]["device_count"] == 8  # the forced devices reached the overview
  rows = json.loads((tmp_path / "sharding" / "results.json").read_text())["rows"]
  assert {r["devices"] for r in rows} == {1, 8}
  for name in ("story.png", "running_sum.png", "connectivity.png"):  # QUICK: two sections
    assert (overview / name).stat().st_size > 1000
  # The display cell names every plot it shows (outside IPython it prints them).
  for name in ("story.png", "running_sum.png", "flops_per_device.png", "critical_path.png"):
    assert name in proc.stdout
