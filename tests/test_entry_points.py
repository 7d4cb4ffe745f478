"""Every entry point as a user runs it: --help, a bad value, a workdir that is a file, and a
0 that once meant "the default". Usage errors are one ``error:`` line naming the flag, exit
code 2, no traceback, and come before any work (``experiments.cli``)."""

import fcntl
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from tests.test_cli_hparams import instantiate, readme_commands, readme_train_command

QUICK = "--config=experiments/configs/running_sum.py:quick"
# Entry point -> (a bad value and the flag it names, extra flags for the workdir check).
ENTRY_POINTS = {
    "train": ([QUICK, "--config.num_steps=many"], "--config.num_steps", [QUICK]),
    "table1": (["--n_values=a,b"], "--n_values", ["--quick"]),
    "bench": (["--dtypes=float64"], "--dtypes", ["--quick"]),
    "running_sum": (["--repeats=0"], "--repeats", ["--quick", "--notrain"]),
    "crossover": (["--batch=0"], "--batch", ["--quick"]),
    "sharding": (["--seq_len=0"], "--seq_len", ["--devices=1,2"]),
    "flstm_timing": (["--lengths=a"], "--lengths", []),
    "pictures": (["--task=nope"], "--task", ["--skip_training"]),
    "overview": (["--sections=running_sum,bogus"], "--sections", ["--quick"]),
    "long_range": (["--models=lstm,rnn"], "--models", ["--quick"]),
    "results": (["--only=nope"], "--only", ["--compose_only"]),
    "parallel_rnn": (["--repeats=0"], "--repeats", ["--quick"]),
    "text_lm": (["--models=lstm,rnn"], "--models", ["--quick"]),
    "generate": (["--length=0"], "--length", ["--prompt=x"]),
}
# A 0 that used to mean "the default" (or ran the full sweep) is refused, naming the flag.
ZEROS = {
    ("running_sum", "--max_n"): ["--quick", "--notrain", "--max_n=0"],
    ("running_sum", "--train_steps"): ["--quick", "--max_n=8", "--train_steps=0"],
    ("crossover", "--max_t"): ["--quick", "--max_t=0"],
    ("flstm_timing", "--rank"): ["--rank=0"],
    ("flstm_timing", "--in_features"): ["--in_features=0"],
    ("overview", "--train_steps"): ["--quick", "--train_steps=0"],
}
# Errors that only the study's settings see (not absl), and other usage errors.
OTHER = {
    ("sharding", "--seq_len"): ["--devices=3", "--seq_len=256"],  # not a multiple of 2N
    ("table1", "--d_values"): ["--d_values=30"],  # not a multiple of the 4 heads
    ("table1", "--workdir"): ["NOWORKDIR"],  # no --workdir: one line, not the docstring
    ("bench", "--nosuch"): ["--nosuch=1"],
    ("crossover", "unexpected arguments"): ["stray"],
    ("generate", "no config.json"): ["--workdir=TMPDIR"],  # a folder without a run
}
FAST_S = 30  # a usage error comes before any work: the imports only, even on busy cores


def _flags_of(name):
  source = open(os.path.join(ROOT, "experiments", f"{name}.py")).read()
  return re.findall(r'DEFINE_\w+\(\s*"(\w+)"', source)


def _case_args(args, tmp):
  os.makedirs(tmp, exist_ok=True)
  a_file = os.path.join(tmp, "a_file")
  open(a_file, "w").close()
  if "NOWORKDIR" in args:
    args = [a for a in args if a != "NOWORKDIR"]
  elif not any(a.startswith("--workdir=") for a in args) and "--help" not in args \
      and "--helpfull" not in args:
    args = [*args, f"--workdir={os.path.join(tmp, 'work')}"]
  return [a.replace("FILE", a_file).replace("TMPDIR", tmp) for a in args]


# One interpreter imports the libraries the entry points import (no backend is started),
# then forks one child per case that runs ``python -m experiments.<name> ARGS`` as the
# interpreter does (runpy's _run_module_as_main in the real __main__, argv[0] the module's
# file, an uncaught exception or SystemExit handled by the interpreter at the top level),
# stdout and stderr in the child's own files. What the preload wrote to stderr is put in
# front of every case's stderr, as a fresh process would have written it too.
LIGHT = ["jax", "jax.numpy", "numpy", "flax.nnx", "optax", "seqscale.models"]  # no flags
# What the trainer's entry points import (orbax, tensorflow_datasets and grain define flags).
HEAVY = ["orbax.checkpoint", "tensorflow_datasets", "seqscale.train", "seqscale.outputs"]
HEAVY_ENTRY_POINTS = {"train", "running_sum", "overview", "long_range", "text_lm", "generate"}
_SERVER = r"""
import importlib, json, os, sys, time
from absl import app, flags
n_flags = len(list(flags.FLAGS))
parallel, light = int(sys.argv[1]), sys.argv[2] == "light"
for module in sys.argv[3:]:
  importlib.import_module(module)
from jax._src import xla_bridge
assert not xla_bridge._backends
assert not light or len(list(flags.FLAGS)) == n_flags, "the light preload defines flags"
cases = json.loads(sys.stdin.read())
sys.stdout.flush(); sys.stderr.flush()
running, results, child = {}, {}, None
for key, name, args, out in cases + [[None] * 4] * parallel:
  while len(running) >= parallel or (key is None and running):
    pid, status = os.wait()
    key_, start = running.pop(pid)
    results[key_] = {"code": os.waitstatus_to_exitcode(status),
                     "seconds": time.perf_counter() - start}
  if key is None:
    continue
  start, pid = time.perf_counter(), os.fork()
  if pid == 0:
    child = (name, args, out)
    break
  running[pid] = (key, start)
if child is None:
  print(json.dumps(results))
else:
  name, args, out = child
  for fd, path in ((1, out + ".stdout"), (2, out + ".stderr")):
    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(f, fd)
    os.close(f)
  import runpy
  sys.argv, _run, _name = ["-m", *args], runpy._run_module_as_main, "experiments." + name
  [globals().pop(k) for k in list(globals()) if not k.startswith("__") and k[0] != "_"]
  _run(_name)
"""


def run_forked(cases, out_dir, env, preload=LIGHT, parallel=4):
  """``{key: (entry point, args)}`` -> ``{key: {"code", "stdout", "stderr", "seconds"}}``,
  each case run as ``python -m experiments.<entry point> ARGS`` in ``ROOT`` (see _SERVER)."""
  os.makedirs(out_dir, exist_ok=True)
  keys = {f"case{i}": key for i, key in enumerate(cases)}
  todo = [[k, *cases[key], os.path.join(out_dir, k)] for k, key in keys.items()]
  light = "light" if preload == LIGHT else "heavy"
  proc = subprocess.run([sys.executable, "-c", _SERVER, str(parallel), light, *preload],
                        cwd=ROOT, env=env, input=json.dumps(todo), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = json.loads(proc.stdout.strip().splitlines()[-1])
  out = {}
  for k, key in keys.items():
    read = lambda ext: open(os.path.join(out_dir, f"{k}.{ext}")).read()
    out[key] = dict(done[k], stdout=read("stdout"), stderr=proc.stderr + read("stderr"))
  return out


def _readme_args() -> dict[str, list[list[str]]]:
  """README's command lines per entry point, distinct, without ``--workdir``; but the one
  test_cli_hparams.py trains for real."""
  out = {}
  for name, args in readme_commands():
    if name == "train" and args == readme_train_command():
      continue
    args = instantiate(args, "FILE")[:-1]
    if args not in out.setdefault(name, []):
      out[name].append(args)
  return out


def _run_all(tmp):
  cases = {}
  readme = _readme_args()
  for name, (bad, _, extra) in ENTRY_POINTS.items():
    cases[name, "help"] = ["--help"]
    cases[name, "bad"] = bad
    # Every README command line of the entry point (else `extra`), a file as its workdir:
    # its flags and settings pass, and it stops at the workdir check, before any work.
    for i, args in enumerate(readme.get(name) or [extra]):
      cases[name, "file" if i == 0 else f"file {i}"] = [*args, "--workdir=FILE"]
  cases["train", "helpfull"] = ["--helpfull"]
  cases.update({(name, "zero " + flag): args for (name, flag), args in ZEROS.items()})
  cases.update({(name, "other " + flag): args for (name, flag), args in OTHER.items()})
  dirs = {case: os.path.join(tmp, "_".join(case)) for case in cases}
  todo = {case: (case[0], _case_args(args, dirs[case])) for case, args in cases.items()}
  env, results = dict(os.environ, JAX_PLATFORMS="cpu"), {}
  for preload in (LIGHT, LIGHT + HEAVY):
    group = {case: run for case, run in todo.items()
             if (case[0] in HEAVY_ENTRY_POINTS) == (preload != LIGHT)}
    results.update(run_forked(group, os.path.join(tmp, f"_out{len(preload)}"), env, preload))
  for case, r in results.items():
    r["files"] = sorted(os.listdir(dirs[case]))
  return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
  """Every case at once, a few processes at a time (they spend their time importing).

  Under pytest-xdist each worker would run the module's fixture again; the first worker to
  get here runs the cases and the others read its results (a lock in the session's shared
  temporary folder)."""
  root = tmp_path_factory.getbasetemp()
  if hasattr(request.config, "workerinput"):
    root = root.parent
  cache = root / "entry_points_runs.json"
  with open(root / "entry_points.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if cache.exists():
      return {tuple(k.split("|", 1)): v for k, v in json.loads(cache.read_text()).items()}
    results = _run_all(str(root / "entry_points"))
    cache.write_text(json.dumps({"|".join(k): v for k, v in results.items()}))
    return results


def _one_error_line(r, *words):
  lines = [l for l in r["stderr"].splitlines() if l.strip()]
  assert r["code"] == 2, r["stderr"][-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"][-2000:]
  assert "Traceback" not in r["stderr"] + r["stdout"]
  for word in words:
    assert word in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_exits_0_and_lists_the_flags(name, runs):
  r = runs[name, "help"]
  assert r["code"] == 0, r["stderr"][-2000:]
  names = _flags_of(name)
  assert "workdir" in names
  for flag in names:
    assert re.search(rf"--(\[no\])?{flag}:", r["stdout"]), (flag, r["stdout"][-2000:])
  assert "--verbosity" not in r["stdout"]  # absl's own flags: --helpfull only


def test_helpfull_lists_every_flag_without_config(runs):
  r = runs["train", "helpfull"]
  assert r["code"] == 0, r["stderr"][-2000:]
  assert "--config:" in r["stdout"] and "--verbosity:" in r["stdout"]
  for r in (runs["train", "help"], r):  # the trainer's fields at their defaults, and keywords
    for field in ("seed=0", "optimizer.learning_rate=0.001", "parallel.strategy=jit"):
      assert f"  --config.{field}" in r["stdout"], field
    assert "--config.model.hparams.<keyword>=<value>: any keyword of model 'lstm'" in r["stdout"]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_bad_value_is_one_line_naming_the_flag(name, runs):
  _, flag, _ = ENTRY_POINTS[name]
  _one_error_line(runs[name, "bad"], flag)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_workdir_that_is_a_file_is_refused_before_any_work(name, runs):
  for case in [c for c in runs if c[0] == name and c[1].startswith("file")]:
    r = runs[case]
    _one_error_line(r, "--workdir=", "is a file")
    assert r["files"] == ["a_file"] and r["stdout"] == ""  # nothing written or measured
    assert r["seconds"] < FAST_S, r["seconds"]


@pytest.mark.parametrize("name, flag", sorted(ZEROS))
def test_a_zero_that_meant_the_default_is_refused(name, flag, runs):
  r = runs[name, "zero " + flag]
  _one_error_line(r, f"{flag}=0")
  assert r["files"] == ["a_file"]  # refused before the workdir was even made


@pytest.mark.parametrize("name, words", sorted(OTHER))
def test_other_usage_errors_are_one_line(name, words, runs):
  _one_error_line(runs[name, "other " + words], words)
