"""The parallel-RNN study's training parts (``studies.parallel_rnn``): a small running_sum
LSTM trained with impl="deer" and impl="reference" (losses step by step), and the Newton
iterations of an LSTM's first layer before and after training.
Shapes: B batch, T length, D width.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqscale import outputs
from seqscale import train
from seqscale.ops import newton
from seqscale.ops import recurrent as ref
from seqscale.studies import parallel_rnn as pr
from seqscale.train import model as model_lib

Row = dict[str, Any]


def training_config(s: pr.Settings, impl: str, steps: int) -> Any:
  """A small running_sum LSTM config from ``train.default_config()``."""
  c = train.default_config()
  c.task.update(length=s.train_length, num_train=2048 if not s.quick else 256,
                num_eval=64)
  c.model.hparams.update(in_features=s.train_width, hidden_features=s.train_width, impl=impl)
  c.update(batch_size=16, eval_batch_size=16, num_steps=steps, log_every=1,
           checkpoint_every=steps)
  c.optimizer.update(learning_rate=1e-2, warmup_steps=max(1, min(100, steps // 10)))
  c.parallel.num_devices = 1
  return c


def _losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if line.strip()]


def training_rows(s: pr.Settings, workdir: str, progress: pr.Progress) -> tuple[list[Row], str]:
  """impl deer and reference trained ``s.equal_steps`` steps each (same seed and data):
  one ``training`` row each, losses step by step. Returns (rows, the reference's workdir)."""
  rows, losses = [], {}
  for impl in ("reference", "deer"):
    path = os.path.join(workdir, "train", f"equal_{impl}")
    t0 = time.perf_counter()
    train.train_and_evaluate(training_config(s, impl, s.equal_steps), path)
    losses[impl] = _losses(path)
    rows.append(pr.row("training", cell="lstm", method="sequential" if impl == "reference"
                    else "deer", T=s.train_length, D=s.train_width, B=16, dtype="float32",
                    median_s=time.perf_counter() - t0))
    rows[-1].update(impl=impl, losses=losses[impl])
  n = min(map(len, losses.values()))
  diff = [abs(a - b) for a, b in zip(losses["reference"][:n], losses["deer"][:n])]
  for r in rows:
    r["loss_max_abs_diff"] = max(diff) if diff else None
  progress(f"training: {n} steps, max |loss deer - loss reference| = {max(diff):.2e} "
           f"(losses {losses['reference'][0]:.4f} -> {losses['reference'][-1]:.4f})")
  return rows, os.path.join(workdir, "train", "equal_reference")


def trained_rows(s: pr.Settings, workdir: str, reference_dir: str,
                 progress: pr.Progress) -> list[Row]:
  """k of each method on an LSTM's first layer, on running_sum inputs at the training
  length and 4x, before training and after ``s.train_steps`` steps (impl fast)."""
  if s.train_steps == s.equal_steps:
    config, path = training_config(s, "reference", s.train_steps), reference_dir
  else:
    config = training_config(s, "fast", s.train_steps)
    path = os.path.join(workdir, "train", "lstm_fast")
    train.train_and_evaluate(config, path)
  result = outputs.read_json(os.path.join(path, "results.json")) or {}
  task = train.get_task(config.task.to_dict())
  spec = model_lib.TaskSpec.of(task, has_seq2seq=False)
  before = model_lib.build("lstm", config.model.hparams.to_dict(), spec,
                           rngs=nnx.Rngs(config.seed), pooling=config.model.pooling)
  after, _ = train.restore_model(config, path)
  rows = []
  for split in ("test", "test_4x"):
    batch = task.dataset(split, batch_size=8, seed=0)[0]
    T = int(np.shape(batch["inputs"])[1])
    solve = {m: jax.jit(functools.partial(newton.run, "lstm", method=m, max_iters=T))
             for m in s.methods}
    for stage, model in (("before", before), ("after", after)):
      x = model.embed(jnp.asarray(batch["inputs"]))
      p = model.backbone.layers[0].fwd.params(jnp.float32)
      want = ref.run("lstm", x, p)[0]
      for m in s.methods:
        y, _, info = solve[m](x, p)
        r = pr.row("trained", cell="lstm", method=m, T=T, D=s.train_width, B=8,
                dtype="float32", iterations=int(info.iterations),
                converged=bool(info.converged), max_abs_err=pr.max_abs_err(y, want))
        accuracy = result.get("eval", {}).get(split, {}).get("accuracy")
        r.update(stage=stage, train_steps=0 if stage == "before" else s.train_steps,
                 accuracy=accuracy if stage == "after" else None)
        rows.append(r)
      progress(f"trained LSTM {stage}, T={T}: " + ", ".join(
          f"{r['method']} k={r['iterations']}" for r in rows[-len(s.methods):]))
  return rows
