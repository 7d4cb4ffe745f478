"""Writes experiments/colab_tpu.ipynb from the cells below.

  python tools/make_colab_notebook.py                 # pins the tag v<seqscale.__version__>
  python tools/make_colab_notebook.py --ref=<tag or 40-hex commit>

Edit the cells here, then run it; ``tests/test_notebook.py`` checks the file it writes.
"""
import argparse
import os
import re

import nbformat
from nbformat import v4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_URL = "https://github.com/seqscale/seqscale.git"
SRC = "/content/seqscale"  # where Colab clones it: an absolute path, so a rerun lands there


def default_ref() -> str:
  """The release tag of this checkout's version, ``v`` + ``seqscale.__version__``."""
  with open(os.path.join(ROOT, "seqscale", "__init__.py")) as f:
    return "v" + re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


md = lambda s, **kw: v4.new_markdown_cell(s.strip("\n"), **kw)
code = lambda s, tags=(): v4.new_code_cell(s.strip("\n"), metadata={"tags": list(tags)} if tags else {})


def cells(ref: str) -> list:
  return [
md("""
# seqscale on a Colab TPU

Recurrence serializes work over time, convolution parallelizes but needs depth to connect
distant positions, attention connects every pair of positions in one parallel step.
This notebook installs [seqscale](https://github.com/seqscale/seqscale), shows the TPU cores,
runs the **overview** (the running sum of [2, 5, 3, 7] three ways, Table 1 of "Attention Is
All You Need" measured, step time against length, a sharding check, a short training of four
model families) and, where there are several cores, the **sharding experiment** on them,
then displays the plots.

Runtime → Change runtime type → **TPU**, then Runtime → Run all (about 10 minutes, most of
it compiling). Every cell can be run again. A one-chip runtime (v5e-1, v6e-1) works too: the
overview's sharding check then runs on 2 forced CPU host devices in a subprocess, and the
sharding experiment is skipped with a line saying why. The same cells run on a CPU or a GPU:
`tests/test_notebook.py` runs them twice on one CPU device.
"""),
md("## Install\nClones the repository once into `" + SRC + "`, checks out the version this "
   "notebook was written for (`SEQSCALE_REF`: a tag or a commit; `\"main\"` for the newest) "
   "and installs it with the TPU build of JAX (`.[tpu]`). Running the cell again changes "
   "nothing. Lines starting with `!` or `%` are Colab shell commands; outside Colab install "
   "with `pip install -e \".[test]\"` instead."),
code(f"""
import os

SEQSCALE_REF = "{ref}"  # a tag or a commit; "main" for the newest
if not os.path.isdir("{SRC}/.git"):  # clone once; a rerun reuses the clone
  !git clone -q {REPO_URL} {SRC}
%cd {SRC}
!git checkout -q {{SEQSCALE_REF}} 2>/dev/null || (git fetch -q --tags origin && git checkout -q {{SEQSCALE_REF}})
!pip install -q -e ".[tpu]"
""", tags=["colab"]),
md("## Settings\n`QUICK = True` shrinks every experiment to a smoke run of a minute or two "
   "(the notebook test sets it)."),
code("""
WORKDIR = "/content/seqscale_runs"  # where the experiments write their reports and plots
QUICK = False  # True: tiny sizes, a minute or two
""", tags=["parameters"]),
md("## The devices"),
code("""
import os
import re
import subprocess
import sys

import jax

devices = jax.devices()
print(f"{len(devices)} {jax.default_backend()} devices:")
for d in devices:
  print(" ", d)
NUM_DEVICES = jax.device_count()
"""),
md("## Running an experiment\n`run` starts `python -m experiments.<name>` and prints its "
   "output as it comes, leaving out absl's INFO and WARNING log lines (`I0105 13:04:05.123456 "
   "123 file.py:45] ...`, whatever the date)."),
code("""
# absl's INFO/WARNING line: level letter, MMDD, time, thread id, file:line] (any date).
LOG_LINE = re.compile(r"[IW]\\d{4} \\d\\d:\\d\\d:\\d\\d\\.\\d+ +\\d+ [^ ]+:\\d+\\] ")


def run(*args, check=True):
  \"\"\"Runs `python -m <args>` here, printing its output as it comes; returns the exit code
  (with `check`, a failure raises).\"\"\"
  cmd = [sys.executable, "-m", *args]
  print("$", " ".join(cmd), flush=True)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if not LOG_LINE.match(line):
      print(line, end="")
  if proc.wait() and check:
    raise RuntimeError(f"{args[0]} failed with exit code {proc.returncode}")
  return proc.returncode
"""),
md("## The overview\nThe README's main job. Each line it prints is a step of the work, and "
   "it ends with the summary table. Its sharding section runs on all the cores; on one "
   "chip, on 2 forced CPU host devices in a subprocess. Each section is written to "
   "`overview.md` and `results.json` as soon as it finishes; a section that fails is "
   "reported there and the others are kept."),
code("""
overview_dir = os.path.join(WORKDIR, "overview")
quick = ["--quick", "--sections=running_sum,sharding"] if QUICK else []
exit_code = run("experiments.overview", f"--workdir={overview_dir}",
                f"--sharding_devices={max(2, NUM_DEVICES)}", *quick, check=False)
if exit_code:
  print(f"The overview exited with code {exit_code}: the sections that failed are named "
        "above and in overview.md; the others are kept.")
"""),
md("## Sequence parallelism on all cores\nCompiler-sharded and ring attention, the LSTM with "
   "its carry passed core to core, the layer pipeline and the sharded linear scan, on "
   "1, 2, 4, … cores. Skipped on one device."),
code("""
sharding_dir = os.path.join(WORKDIR, "sharding")
if NUM_DEVICES < 2:
  sharding_dir = None
  print(f"Skipping the sharding experiment: it needs several devices and there is one "
        f"{jax.default_backend()} device here. The overview's sharding section above ran on "
        "2 forced CPU host devices instead.")
else:
  counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= NUM_DEVICES]
  if QUICK:
    counts = [1, NUM_DEVICES]
  small = ["--seq_len=64", "--repeats=1"] if QUICK else []
  run("experiments.sharding", f"--workdir={sharding_dir}",
      "--devices=" + ",".join(map(str, counts)), *small)
"""),
md("## The plots"),
code("""
try:
  from IPython.display import Image, Markdown, display
except ImportError:  # run as a script (the notebook test): name the files instead
  Image = lambda filename: filename
  Markdown = lambda text: text
  display = print

with open(os.path.join(overview_dir, "overview.md")) as f:
  text = f.read()
summary = text[text.index("## Summary"):]
end = summary.find("\\n## ")  # the summary ends where the first section begins
display(Markdown(summary if end < 0 else summary[:end]))
for name in ("story.png", "connectivity.png", "running_sum.png", "step_time.png",
             "sharding.png", "training.png", "table1/depth_vs_n.png"):
  if os.path.exists(os.path.join(overview_dir, name)):  # QUICK runs two sections only
    display(Image(filename=os.path.join(overview_dir, name)))
for name in ("flops_per_device.png", "critical_path.png", "time.png"):
  if sharding_dir:
    display(Image(filename=os.path.join(sharding_dir, name)))
"""),
md("Every number is also in `results.json` beside each report, with the run's context "
   "(versions, backend, device kind and count, git commit). Longer runs: "
   "`--train_steps=3000`, and the full experiments `experiments.running_sum`, "
   "`experiments.table1`, `experiments.bench`, `experiments.long_range`."),
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ref", default=default_ref(),
                      help="the tag or commit the install cell checks out (default: %(default)s)")
  ref = parser.parse_args().ref
  if not re.fullmatch(r"v\d+(\.\d+)*|[0-9a-f]{40}", ref):
    parser.error(f"--ref={ref!r}: must be a release tag (v1.2.3) or a full 40-hex commit, so "
                 "that the notebook installs a fixed version")
  nb = v4.new_notebook(cells=cells(ref), metadata={
      "accelerator": "TPU",
      "colab": {"provenance": []},
      "kernelspec": {"display_name": "Python 3", "name": "python3"},
      "language_info": {"name": "python"}})
  for i, cell in enumerate(nb.cells):
    cell.id = f"cell-{i}"  # stable ids: regenerating gives the same file
  nbformat.validate(nb)
  nbformat.write(nb, os.path.join(ROOT, "experiments", "colab_tpu.ipynb"))


if __name__ == "__main__":
  main()
