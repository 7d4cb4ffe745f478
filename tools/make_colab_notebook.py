"""Writes experiments/colab_tpu.ipynb from the cells below (edit here, then run it: python tools/make_colab_notebook.py)."""
import os
import nbformat
from nbformat import v4

md = lambda s, **kw: v4.new_markdown_cell(s.strip("\n"), **kw)
code = lambda s, tags=(): v4.new_code_cell(s.strip("\n"), metadata={"tags": list(tags)} if tags else {})

cells = [
md("""
# seqscale on a Colab TPU

Recurrence serializes work over time, convolution parallelizes but needs depth to connect
distant positions, attention connects every pair of positions in one parallel step.
This notebook installs [seqscale](https://github.com/seqscale/seqscale), shows the TPU cores,
runs the **overview** (the running sum of [2, 5, 3, 7] three ways, Table 1 of "Attention Is
All You Need" measured, step time against length, a sharding check on all cores, a short
training of four model families) and the **sharding experiment** on all TPU cores, then
displays the plots.

Runtime → Change runtime type → **TPU**, then Runtime → Run all (about 10 minutes, most of
it compiling). The same cells run on a CPU: there `tests/test_notebook.py` forces 8 host
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), the count a TPU v2-8 has.
"""),
md("## Install\nClones the repository and installs it with the TPU build of JAX (`.[tpu]`). "
   "Lines starting with `!` or `%` are Colab shell commands; outside Colab install with "
   "`pip install -e \".[test]\"` instead."),
code("""
!git clone -q https://github.com/seqscale/seqscale.git
%cd seqscale
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
import subprocess
import sys

import jax

devices = jax.devices()
print(f"{len(devices)} {jax.default_backend()} devices:")
for d in devices:
  print(" ", d)
NUM_DEVICES = jax.device_count()
"""),
md("## The overview\nThe README's main job. Its sharding section runs on all the cores; each "
   "line it prints is a step of the work, and it ends with the summary table."),
code("""
def run(*args):
  \"\"\"Runs `python -m <args>` here, printing its output as it comes; fails loudly.\"\"\"
  cmd = [sys.executable, "-m", *args]
  print("$", " ".join(cmd), flush=True)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if not line.startswith(("I1", "W1")):  # absl's INFO/WARNING log lines
      print(line, end="")
  if proc.wait():
    raise RuntimeError(f"{' '.join(args[:1])} failed with exit code {proc.returncode}")


overview_dir = os.path.join(WORKDIR, "overview")
quick = ["--quick", "--sections=running_sum,connectivity"] if QUICK else []
run("experiments.overview", f"--workdir={overview_dir}",
    f"--sharding_devices={max(2, NUM_DEVICES)}", *quick)
"""),
md("## Sequence parallelism on all cores\nCompiler-sharded and ring attention, the LSTM with "
   "its carry passed core to core, the layer pipeline and the sharded linear scan, on "
   "1, 2, 4, … cores."),
code("""
counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= max(NUM_DEVICES, 2)]
if QUICK:
  counts = [1, max(NUM_DEVICES, 2)]
sharding_dir = os.path.join(WORKDIR, "sharding")
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
display(Markdown(text[text.index("## Summary"):text.index("## 1.")]))
for name in ("story.png", "connectivity.png", "running_sum.png", "step_time.png",
             "sharding.png", "training.png", "table1/depth_vs_n.png"):
  if os.path.exists(os.path.join(overview_dir, name)):  # QUICK runs two sections only
    display(Image(filename=os.path.join(overview_dir, name)))
for name in ("flops_per_device.png", "critical_path.png", "time.png"):
  display(Image(filename=os.path.join(sharding_dir, name)))
"""),
md("Every number is also in `results.json` beside each report, with the run's context "
   "(versions, backend, device kind and count, git commit). Longer runs: "
   "`--train_steps=3000`, and the full experiments `experiments.running_sum`, "
   "`experiments.table1`, `experiments.bench`, `experiments.long_range`."),
]
nb = v4.new_notebook(cells=cells, metadata={
    "accelerator": "TPU",
    "colab": {"provenance": []},
    "kernelspec": {"display_name": "Python 3", "name": "python3"},
    "language_info": {"name": "python"}})
for i, cell in enumerate(nb.cells):
  cell.id = f"cell-{i}"  # stable ids: regenerating gives the same file
nbformat.validate(nb)
nbformat.write(nb, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "colab_tpu.ipynb"))
