"""tools/recurrent_speed.py: its usage errors, and a tiny run whose torch peer computes the
same layer (the tool checks it) and whose JSON holds every candidate."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "recurrent_speed.py")


def _run(*args):
  return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("flag,shown", [("--shapes=lstm:4:16", "--shapes=lstm:4:16"),
                                        ("--shapes=rnn:1:2:3", "--shapes=rnn:1:2:3"),
                                        ("--rows=0", "--rows=0"),
                                        ("--baseline=/nonexistent.py", "--baseline=")])
def test_usage_errors_one_line_exit_2(flag, shown):
  proc = _run(flag)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {shown}"), proc.stderr


def test_tiny_run_writes_every_candidate(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "speed.json"
  proc = _run("--shapes=lstm:3:7:4,gru:2:5:4", "--rows=4", "--repeats=2", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())["rows"]
  got = {(r["cell"], r["impl"]) for r in rows}
  assert got == {(c, i) for c in ("lstm", "gru")
                 for i in ("seqscale", "rows_4", f"torch_nn_{c}")}
  assert all(r["wall_s"] > 0 and len(r["wall_s_all"]) == 2 for r in rows)
  peers = [r for r in rows if r["impl"].startswith("torch")]
  assert all(r["wall_ratio"] == 1.0 for r in peers)
