"""tools/device_check.sh, what can be checked without an accelerator: its syntax, usage
errors, and the plan its ``--dry-run`` writes (every path under the one folder, within the
8-minute limit). The run itself needs a GPU and has its own summary.md."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "tools", "device_check.sh")


def test_syntax():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "usage:"), (["--dry-run"], {}, "usage:"), (["a", "b"], {}, "usage:"),
    (["a", "--dry-run", "c"], {}, "usage:"),
    (["{out}"], {"DEVICE_CHECK_STEPS": "env,bnech"}, "DEVICE_CHECK_STEPS: unknown step 'bnech'"),
    (["{out}"], {"DEVICE_CHECK_DEADLINE_S": "600"}, "DEVICE_CHECK_DEADLINE_S=600: must be"),
])
def test_usage_errors_exit_2(tmp_path, args, env, message):
  args = [a.format(out=tmp_path) for a in args]
  proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                        env=dict(os.environ, **env))
  assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr


def _run(out, **env):
  return subprocess.run(["bash", SCRIPT, str(out)], capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHON=sys.executable, **env))


def test_a_step_runs_into_the_folder_and_the_deadline_skips_the_rest(tmp_path):
  # One real step on CPU: a passing test file, its junit.xml and log in the folder.
  proc = _run(tmp_path / "one", DEVICE_CHECK_STEPS="tests",
              DEVICE_CHECK_TESTS="tests/test_device_check.py::test_syntax")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  summary = (tmp_path / "one" / "summary.md").read_text()
  assert re.search(r"^\| tests \| 0 \| \d+ \| 120 \| tests.log \|$", summary, re.M), summary
  assert "1 passed" in (tmp_path / "one" / "tests.log").read_text()
  assert (tmp_path / "one" / "junit.xml").exists()
  # A deadline under 10 s leaves no step time to run: each is skipped, and the exit is 1.
  proc = _run(tmp_path / "none", DEVICE_CHECK_DEADLINE_S="9")
  assert proc.returncode == 1, proc.stdout + proc.stderr
  summary = (tmp_path / "none" / "summary.md").read_text()
  assert summary.count("skipped: the 8-minute deadline") == 5, summary


def test_dry_run_plans_every_step_in_one_folder_within_8_minutes(tmp_path):
  out = tmp_path / "check here"  # a space: the command lines must quote it
  proc = subprocess.run(["bash", SCRIPT, str(out), "--dry-run"], capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  plan = (out / "commands.txt").read_text().splitlines()
  steps = dict(re.match(r"(\w+) (\d+)s: ", line).groups() for line in plan[1:])
  assert list(steps) == ["env", "attention", "tests", "bench", "overview"]
  assert sum(map(int, steps.values())) + 5 * len(steps) <= 480
  deadline = int(re.search(r"total deadline (\d+)", plan[0]).group(1))
  assert deadline + 5 <= 480
  for line in plan[1:]:  # every absolute path a step names is in the folder, quoted
    words = shlex.split(line.split(": ", 1)[1])
    paths = [w.split("=", 1)[-1] for w in words if "/" in w and not w.startswith("tests/")]
    assert paths and all(p.startswith(str(out) + "/") for p in paths), (paths, line)
  assert f"--workdir={out}/overview" in shlex.split(plan[-1])
  assert sorted(os.listdir(out)) == ["attention_choice.py", "commands.txt", "env.py", "tmp"]
  for program in ("attention_choice.py", "env.py"):
    compile((out / program).read_text(), program, "exec")
