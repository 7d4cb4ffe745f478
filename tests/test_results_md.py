"""RESULTS.md regeneration: running what is missing (``experiments.launch``), resuming, and
gathering the reports (``seqscale.studies.results_md``)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from experiments import launch
from seqscale.studies import results_md

_FAKE = '''
import json, os, sys
workdir = sys.argv[1].split("=", 1)[1]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "count.txt"), "a") as f:
  f.write("run\\n")
if os.environ.get("FAKE_FAIL"):
  sys.exit(3)
with open(os.path.join(workdir, "results.json"), "w") as f:
  json.dump({"context": {"backend": "cpu", "device_kind": "cpu", "device_count": 1,
                         "jax": "9.9", "git_commit": "abcdef1234567"}}, f)
with open(os.path.join(workdir, "results.md"), "w") as f:
  f.write("# Fake\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n\\n![plot](fake.png)\\n")
with open(os.path.join(workdir, "fake.png"), "wb") as f:
  f.write(b"\\x89PNG fake")
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
  (tmp_path / "mods").mkdir()
  (tmp_path / "mods" / "fake_experiment.py").write_text(_FAKE)
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'mods'}{os.pathsep}{ROOT}")
  return results_md.Experiment("fake", "A fake experiment", ("fake_experiment",
                                                             "--workdir={dir}"))


def test_runs_missing_then_resumes_and_reruns(tmp_path, fake):
  work = str(tmp_path / "work")
  lines = []
  assert launch.run_missing([fake], work, progress=lines.append) == []
  assert launch.run_missing([fake], work, progress=lines.append) == []
  count = lambda: (tmp_path / "work" / "fake" / "count.txt").read_text().count("run")
  assert count() == 1  # the second call kept the finished run
  assert "kept" in lines[-1]
  run = json.loads((tmp_path / "work" / "fake" / "run.json").read_text())
  assert run["exit_code"] == 0 and run["command"].startswith("python -m fake_experiment")
  launch.run_missing([fake], work, rerun=["fake"], progress=lines.append)
  assert count() == 1  # rerun starts from scratch: the folder was removed, then written anew
  assert "done in" in lines[-1]


def test_a_failed_experiment_is_reported_and_not_finished(tmp_path, fake, monkeypatch):
  monkeypatch.setenv("FAKE_FAIL", "1")
  work = str(tmp_path / "work")
  lines = []
  assert launch.run_missing([fake], work, progress=lines.append) == ["fake"]
  assert "FAILED (exit code 3)" in lines[-1]
  assert not results_md.finished(work, fake)


def test_compose_gathers_reports_and_copies_plots(tmp_path, fake):
  work = str(tmp_path / "work")
  launch.run_missing([fake], work, progress=lambda _: None)
  missing = results_md.Experiment("other", "Never run", ("nothing", "--workdir={dir}"))
  out, docs = tmp_path / "RESULTS.md", tmp_path / "docs" / "results"
  text = results_md.compose([fake, missing], work, str(out), str(docs))
  assert out.read_text() == text
  assert "### Fake" in text  # the report's headings sit under the experiment's
  assert "| 1 | 2 |" in text
  assert "python -m fake_experiment --workdir=DIR/fake" in text
  assert "backend cpu" in text and "jax 9.9" in text and "git abcdef1234" in text
  assert "![plot](docs/results/fake/fake.png)" in text
  assert (docs / "fake" / "fake.png").read_bytes() == b"\x89PNG fake"
  assert "Not run into this workdir" in text


def test_every_listed_experiment_module_exists():
  for e in launch.EXPERIMENTS:
    module = e.argv[0].replace(".", os.sep) + ".py"
    assert os.path.exists(os.path.join(ROOT, module)), module
    for arg in e.argv:
      if arg.startswith("--config="):
        path = arg.split("=", 1)[1].split(":")[0]
        assert os.path.exists(os.path.join(ROOT, path)), path


def test_unknown_experiment_names_are_refused():
  with pytest.raises(ValueError, match="nope.*allowed: overview"):
    launch.select(["overview", "nope"])
  proc = subprocess.run([sys.executable, "-m", "experiments.results", "--workdir=/tmp/x",
                         "--only=nope"], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: flag --only=['nope']: allowed: overview")
