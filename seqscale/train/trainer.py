"""``train_and_evaluate(config, workdir)``: the training loop and its outputs.

One pass: build the task and the model, restore the latest checkpoint in ``workdir`` if
there is one, compile the step ahead of time (its time reported apart), train while writing
metrics and checkpoints, evaluate every split, and write ``results.json`` / ``results.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from seqscale import outputs
from seqscale import parallel
from seqscale.train import checkpoint as checkpoint_lib
from seqscale.train import config as config_lib
from seqscale.train import evaluate as evaluate_lib
from seqscale.train import model as model_lib
from seqscale.train import optim
from seqscale.train import step as step_lib
from seqscale.train import writers

TASK_FIELDS = ("name", "input_type", "vocab_size", "in_features", "output", "target_type",
               "num_classes", "requires_causal", "train_length", "eval_splits", "dataset")


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient or parameters) became NaN or Inf; the message names the step."""


def get_task(task_config: dict[str, Any]) -> Any:
  """``seqscale.data.get_task(name, **kwargs)`` from ``config.task`` (a registered name or
  a fork's ``package.module:Class``), checked against the Task interface."""
  from seqscale import data  # pylint: disable=g-import-not-at-top
  kwargs = {k: v for k, v in task_config.items() if k != "name"}
  name = task_config["name"]
  try:
    task = data.get_task(name, **kwargs)
  except TypeError as e:
    raise ValueError(f"task {name!r} rejects its config fields {sorted(kwargs)}: {e}") from e
  missing = [f for f in TASK_FIELDS if not hasattr(task, f)]
  if missing:
    raise ValueError(f"task {name!r} lacks {', '.join(missing)} (see docs/CONTRACT.md)")
  return task


def _check_batch(name: str, size: int, strategy: Any) -> None:
  if size % strategy.num_devices or size % jax.process_count():
    raise ValueError(
        f"config.{name}={size} is not divisible by the {strategy.num_devices} devices "
        f"({jax.process_count()} processes); use a multiple of {strategy.num_devices}")


def _tokens_per_step(batch: dict[str, np.ndarray], interface: str) -> int:
  """Input tokens (positions, padding included) in one global batch."""
  if interface == "seq2seq":
    local = batch["src"].shape[0] * (batch["src"].shape[1] + batch["tgt_in"].shape[1])
  elif interface == "qa":
    local = batch["story"].size + batch["query"].size
  else:
    local = batch["inputs"].shape[0] * batch["inputs"].shape[1]
  return int(local) * jax.process_count()


@dataclasses.dataclass
class _Model:
  """The model as the loop sees it: pure functions of ``state``, built from shapes only."""

  spec: model_lib.TaskSpec
  interface: str
  num_params: int
  graphdef: nnx.GraphDef  # train mode (dropout on)
  eval_graphdef: nnx.GraphDef  # eval mode (dropout off)
  abstract_state: nnx.State
  init: Callable[[], nnx.State]  # a pure function making the initial state
  schedule: optax.Schedule


def _model(config: ml_collections.ConfigDict, task: Any, first_batch: dict[str, Any]
           ) -> _Model:
  spec = model_lib.TaskSpec.of(task, has_seq2seq="src" in first_batch,
                               has_qa="story" in first_batch)
  hparams = config.model.hparams.to_dict()
  tx, schedule = optim.make(config.optimizer.to_dict(), num_steps=config.num_steps,
                            model_dim=int(hparams.get("hidden_features", 0)))

  def make():
    model = model_lib.build(config.model.name, hparams, spec, rngs=nnx.Rngs(config.seed),
                            pooling=config.model.pooling)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  abstract = nnx.eval_shape(make)  # raises the model's ValueErrors without computing
  graphdef, abstract_state = nnx.split(abstract)
  eval_model = nnx.view(abstract[0], deterministic=True, raise_if_not_found=False)
  return _Model(
      spec=spec, interface=abstract[0].interface,
      num_params=sum(int(np.prod(x.shape))
                     for x in jax.tree.leaves(nnx.state(abstract[0], nnx.Param))),
      graphdef=graphdef, eval_graphdef=nnx.graphdef((eval_model, abstract[1])),
      abstract_state=abstract_state, init=lambda: nnx.state(make()), schedule=schedule)


def _check_finite(step: int, metrics: dict[str, float], checkpoints: str,
                  last_saved: int | None) -> None:
  """Raises NonFiniteLossError if step ``step`` (1-based, as in metrics.jsonl) went bad."""
  bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics[k])]
  if bad:
    kept = (f"the last good checkpoint is step {last_saved} in {checkpoints}"
            if last_saved is not None else "no checkpoint was saved")
    values = ", ".join(f"{k}={metrics[k]}" for k in bad)
    raise NonFiniteLossError(f"non-finite {values} at step {step}; stopped without saving "
                             f"it ({kept})")


def _train(config, state, start_step, train_step, train_ds, model, strategy, ckpt, writer,
           evaluator, tokens_per_step) -> tuple[Any, dict[str, float] | None, float]:
  """The loop from ``start_step``; returns (state, last log record, seconds training).

  Metrics stay on the device until a log, checkpoint or evaluation step, so the host does
  not wait on every step; every step's loss is checked before a checkpoint is written.
  """
  progress = writers.Progress(config.num_steps, enabled=writer.enabled)
  last_saved = start_step or None
  pending: list[Any] = []  # device metrics not yet read
  interval: list[dict[str, float]] = []  # read since the last log line
  record, train_time, interval_time, tick = None, 0.0, 0.0, time.perf_counter()
  for step in range(start_step, config.num_steps):
    batch = strategy.put_batch(evaluate_lib.select(train_ds[step], model.interface))
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    done = step + 1
    last = done == config.num_steps
    log = done % config.log_every == 0 or last
    save = last or (config.checkpoint_every and done % config.checkpoint_every == 0)
    evaluate = config.eval_every and done % config.eval_every == 0 and not last
    if not (log or save or evaluate):
      continue
    for i, values in enumerate(strategy.get(pending)):  # waits for these steps
      values = {k: float(v) for k, v in values.items()}
      _check_finite(done - len(pending) + i + 1, values, ckpt.directory, last_saved)
      interval.append(values)
    pending = []
    interval_time += time.perf_counter() - tick
    if log:
      steps_per_s = len(interval) / max(interval_time, 1e-9)
      record = {k: float(np.mean([m[k] for m in interval])) for k in interval[0]}
      record.update(learning_rate=float(model.schedule(done - 1)), steps_per_s=steps_per_s,
                    tokens_per_s=steps_per_s * tokens_per_step)
      writer.write(done, record)
      progress.report(done, record["loss"], steps_per_s, record["tokens_per_s"])
      train_time += interval_time
      interval, interval_time = [], 0.0
    if save:
      ckpt.save(done, strategy.to_checkpoint(state))
      last_saved = done
    if evaluate:
      writer.write_eval(done, evaluator(state))
    tick = time.perf_counter()  # saving and evaluating is not training time
  return state, record, train_time


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config.model`` on ``config.task``, evaluates every split, writes ``workdir``.

  Resumes from the latest checkpoint in ``workdir/checkpoints`` if there is one. Writes
  ``metrics.jsonl``, ``eval.jsonl``, ``tensorboard/``, ``checkpoints/``, ``config.json``,
  ``results.json`` and ``results.md`` (process 0 only, apart from checkpoints).

  Returns:
    The contents of ``workdir/results.json``.

  Raises:
    ValueError: a bad config field or value, model/task mismatch or unusable workdir.
    NonFiniteLossError: the loss became NaN/Inf (no checkpoint is written for that state).
  """
  wall_start = time.perf_counter()
  config = config_lib.validate(config)
  par = config.parallel
  parallel.initialize(parallel.cluster_from(par.coordinator_address, par.num_processes,
                                            par.process_id))
  workdir = outputs.prepare_workdir(workdir)
  is_main = jax.process_index() == 0
  task = get_task(config.task.to_dict())
  strategy = parallel.make(par.strategy, par.num_devices)
  eval_batch_size = config.eval_batch_size or config.batch_size
  _check_batch("batch_size", config.batch_size, strategy)
  _check_batch("eval_batch_size", eval_batch_size, strategy)
  shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
  train_ds = task.dataset("train", batch_size=config.batch_size, seed=config.seed, **shard)
  first_batch = train_ds[0]
  model = _model(config, task, first_batch)

  ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=strategy.checkpoint_sharding), model.abstract_state)
    state = strategy.from_checkpoint(ckpt.restore(start_step, target))
    logging.info("resumed from %s/%d", ckpt.directory, start_step)
  else:
    state = strategy.init(model.init)
  if is_main:
    outputs.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  logging.info("%s (%d parameters) on %s, %s on %d devices, steps %d -> %d",
               config.model.name, model.num_params, model.spec.name, strategy.name,
               strategy.num_devices, start_step, config.num_steps)

  train_step, compile_time = strategy.compile(
      step_lib.make_train_step(model.graphdef, strategy.axis_name), state,
      strategy.put_batch(evaluate_lib.select(first_batch, model.interface)), donate_state=True)
  logging.info("train step compiled in %.2f s", compile_time)
  tokens_per_step = _tokens_per_step(first_batch, model.interface)
  writer = writers.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  evaluator = evaluate_lib.Evaluator(task, strategy, model.eval_graphdef, model.interface,
                                     eval_batch_size, config.seed, shard)
  try:
    state, record, train_time = _train(config, state, start_step, train_step, train_ds, model,
                                       strategy, ckpt, writer, evaluator, tokens_per_step)
  finally:
    ckpt.close()  # waits for the last save
    writer.flush()
  evals = evaluator(state)
  writer.write_eval(config.num_steps, evals)
  writer.close()

  if record is None:  # nothing trained in this process (it resumed at the end)
    record = _last_record(os.path.join(workdir, "metrics.jsonl")) or {}
  steps_per_s = (config.num_steps - start_step) / train_time if train_time > 0 else 0.0
  hparams = config.model.hparams
  results = {
      "task": model.spec.name, "model": config.model.name, "num_params": model.num_params,
      "target_type": model.spec.target_type, "num_steps": config.num_steps,
      "resumed_from_step": start_step, "final_train_loss": record.get("loss"),
      "final_train_accuracy": record.get("accuracy"), "train_length": task.train_length,
      "eval": evals, "baseline": dict(getattr(task, "baseline", None) or {}),
      "wall_time_s": time.perf_counter() - wall_start, "compile_time_s": compile_time,
      "eval_compile_time_s": evaluator.compile_time, "train_time_s": train_time,
      "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * tokens_per_step,
      "tokens_per_step": tokens_per_step,
      "context": outputs.run_context(
          seed=config.seed, dtype=str(hparams.get("dtype") or "float32"),
          param_dtype="float32", strategy=strategy.name, num_devices=strategy.num_devices,
          batch_size=config.batch_size, config=config.to_dict()),
  }
  if is_main:
    _write_results(workdir, results)
  return results


def _last_record(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  return json.loads(lines[-1]) if lines else None


def _write_results(workdir: str, results: dict[str, Any]) -> None:
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  table = _markdown(results)
  outputs.write_text(os.path.join(workdir, "results.md"), table)
  print(table, flush=True)


def _markdown(results: dict[str, Any]) -> str:
  loss = "MSE" if results["target_type"] == "regression" else "cross-entropy"
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  lines = [f"{results['model']} on {results['task']}: {results['num_steps']} steps, "
           f"final train loss {fmt(results['final_train_loss'])}", "",
           f"| split | length | loss ({loss}) | accuracy | whole-sequence accuracy |",
           "|---|---|---|---|---|"]
  for split, m in results["eval"].items():
    lines.append(f"| {split} | {m['length']} | {fmt(m.get('loss'))} | "
                 f"{fmt(m.get('accuracy'))} | {fmt(m.get('seq_accuracy'))} |")
  if results["baseline"]:
    lines += ["", "baseline (train length): " + ", ".join(
        f"{k} {v:.4f}" for k, v in results["baseline"].items())]
  lines += ["", f"wall time {results['wall_time_s']:.1f} s; train step compile "
            f"{results['compile_time_s']:.2f} s (not in steps/s); "
            f"{results['steps_per_s']:.1f} steps/s, {results['tokens_per_s']:,.0f} input tokens/s"]
  return "\n".join(lines) + "\n"


def restore_model(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                  ) -> tuple[model_lib.TaskModel, int]:
  """The model ``train_and_evaluate(config, workdir)`` trained, in eval mode.

  Rebuilds the task model from ``config`` and copies in the parameters of checkpoint
  ``step`` (default: the latest) of ``workdir``. Returns ``(model, step)``; the registry
  model is ``model.backbone``.

  Raises:
    ValueError: no checkpoint in ``workdir``, or one that does not fit ``config``'s model.
  """
  config = config_lib.validate(config)
  task = get_task(config.task.to_dict())
  split = next(iter(task.eval_splits))  # finite, unlike "train" (repeated forever)
  batch = task.dataset(split, batch_size=1, seed=config.seed)[0]
  spec = model_lib.TaskSpec.of(task, has_seq2seq="src" in batch, has_qa="story" in batch)
  model = model_lib.build(config.model.name, config.model.hparams.to_dict(), spec,
                          rngs=nnx.Rngs(config.seed), pooling=config.model.pooling)
  step, arrays = checkpoint_lib.load_arrays(workdir, step)
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param):  # a checkpoint is nnx.state((model, optimizer)): "0/..."
      key = "/".join(["0", *map(str, path), "value"])
      if key not in arrays or arrays[key].shape != node.value.shape:
        raise ValueError(f"checkpoint {step} in {workdir} has no parameter {key} of shape "
                         f"{node.value.shape}; was it trained with this config?")
      node.value = jax.numpy.asarray(arrays[key])
  model.eval()
  return model, step
