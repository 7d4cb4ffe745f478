"""``train_and_evaluate(config, workdir)``: the training loop and its outputs.

One pass: build the task and the model, restore the latest checkpoint in ``workdir`` if
there is one, compile the step ahead of time (its time reported apart), train while writing
metrics and checkpoints, evaluate every split, and write ``results.json`` / ``results.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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
from seqscale.data import prefetch
from seqscale.models import attention as attention_lib
from seqscale.train import checkpoint as checkpoint_lib
from seqscale.train import config as config_lib
from seqscale.train import evaluate as evaluate_lib
from seqscale.train import faults
from seqscale.train import model as model_lib
from seqscale.train import optim
from seqscale.train import step as step_lib
from seqscale.train import writers

TASK_FIELDS = ("name", "input_type", "vocab_size", "in_features", "output", "target_type",
               "num_classes", "requires_causal", "train_length", "eval_splits", "dataset")
# OSErrors a run reports in one line (a full disk, a read-only or forbidden folder).
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


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


def _train(config, state, start_step, train_step, batches, model, strategy, ckpt, writer,
           evaluator, tokens_per_step, meta, signals
           ) -> tuple[Any, dict[str, float] | None, float, int | None]:
  """The loop from ``start_step``; returns (state, last log record, seconds training, the
  step it stopped at on a SIGTERM/SIGINT or None). ``batches.next(step)`` gives the device
  batch of ``step`` (made ahead by ``prefetch.Prefetch``).

  Metrics stay on the device until a log, checkpoint or evaluation step, so the host does
  not wait on every step; every step's loss is checked before a checkpoint is written. A
  checkpoint's ``meta`` keeps the metrics read since the last log line, so that a resumed
  run logs the same means as an uninterrupted one. A signal is acted on after the step in
  flight: that step is saved (and the save waited for) before returning.
  """
  progress = writers.Progress(config.num_steps, enabled=writer.enabled)
  pending: list[Any] = []  # device metrics not yet read
  interval: list[dict[str, float]] = list(meta.get("interval") or [])  # since the last log
  record, train_time, interval_time, timed = None, 0.0, 0.0, 0
  if signals.signum is not None:
    return state, record, train_time, start_step
  tick = time.perf_counter()
  for step in range(start_step, config.num_steps):
    state, metrics = train_step(state, batches.next(step))
    pending.append(metrics)
    ckpt.poll()  # a failed save stops the run here, at the next step
    done = step + 1
    last = done == config.num_steps
    stop = signals.signum is not None and not last  # the last step saves and evaluates
    log = done % config.log_every == 0 or last
    save = last or stop or (config.checkpoint_every and done % config.checkpoint_every == 0)
    evaluate = config.eval_every and done % config.eval_every == 0 and not last
    if not (log or save or evaluate):
      continue
    for i, values in enumerate(strategy.get(pending)):  # waits for these steps
      values = {k: float(v) for k, v in values.items()}
      _check_finite(done - len(pending) + i + 1, values, ckpt.directory, ckpt.latest)
      interval.append(values)
    timed += len(pending)
    pending = []
    interval_time += time.perf_counter() - tick
    if log:
      steps_per_s = timed / max(interval_time, 1e-9)
      record = {k: float(np.mean([m[k] for m in interval])) for k in interval[0]}
      record.update(learning_rate=float(model.schedule(done - 1)), steps_per_s=steps_per_s,
                    tokens_per_s=steps_per_s * tokens_per_step)
      writer.write(done, record)
      progress.report(done, record["loss"], steps_per_s, record["tokens_per_s"])
      train_time += interval_time
      interval, interval_time, timed = [], 0.0, 0
    if save:
      ckpt.save(done, strategy.to_checkpoint(state), dict(meta, interval=interval))
    if evaluate:
      writer.write_eval(done, evaluator(state))
    if stop:
      ckpt.wait()
      return state, record, train_time + interval_time, done
    tick = time.perf_counter()  # saving and evaluating is not training time
  return state, record, train_time, None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config.model`` on ``config.task``, evaluates every split, writes ``workdir``.

  Resumes from the latest readable checkpoint in ``workdir/checkpoints`` if there is one,
  after comparing the config it holds with ``config`` (see ``config.RUN_FIELDS``); a run
  that already finished is left as it is. Holds ``workdir/run.lock`` while it runs. Writes
  ``metrics.jsonl``, ``eval.jsonl``, ``tensorboard/``, ``checkpoints/``, ``config.json``,
  ``results.json`` and ``results.md`` (process 0 only, apart from checkpoints).

  Returns:
    The contents of ``workdir/results.json``.

  Raises:
    ValueError: a bad config field or value, model/task mismatch, unusable path, or a
      config that changes the checkpoint's run (without ``config.resume='force'``).
    NonFiniteLossError: the loss became NaN/Inf (no checkpoint is written for that state).
    faults.RunError: the workdir is in use, a checkpoint cannot be saved or none can be
      read, the disk is full, or (``faults.Interrupted``) SIGTERM/SIGINT stopped the run
      after saving its last step.
  """
  wall_start = time.perf_counter()
  config = config_lib.validate(config)
  par = config.parallel
  parallel.initialize(parallel.cluster_from(par.coordinator_address, par.num_processes,
                                            par.process_id))
  workdir = outputs.prepare_workdir(workdir)
  faults.check_writable(os.path.join(workdir, "checkpoints"), "checkpoint folder")
  if "data_dir" in config.task:
    from seqscale.data.synthetic import default_data_dir  # pylint: disable=g-import-not-at-top
    faults.check_writable(default_data_dir(config.task.data_dir), "config.task.data_dir",
                          may_be_read_only=True)
  try:
    with contextlib.ExitStack() as stack:
      if jax.process_index() == 0:
        stack.enter_context(faults.workdir_lock(workdir))
      ckpt = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
      stack.callback(ckpt.close)  # waits for the last save
      return _run(config, workdir, ckpt, wall_start)
  except OSError as e:
    if e.errno not in WRITE_ERRORS:
      raise
    raise faults.RunError(f"cannot write {e.filename or workdir}: {e.strerror}") from None


def _finished(results: Any, config: ml_collections.ConfigDict) -> bool:
  return (isinstance(results, dict) and results.get("status", "finished") == "finished"
          and results.get("num_steps") == config.num_steps)


def _acceptor(config: ml_collections.ConfigDict, directory: str, history: list[Any]
              ) -> Callable[[int, dict[str, Any]], bool]:
  """``accept(step, meta)`` for ``Checkpointer.restore_latest``: refuses (ValueError, one
  line) a config that changes the checkpoint's run, unless forced; records the changes it
  accepts in ``history`` (those of earlier resumes first)."""
  now = outputs.json_safe(config.to_dict())

  def accept(step: int, meta: dict[str, Any]) -> bool:
    if config.num_steps < step:
      raise ValueError(f"config.num_steps={config.num_steps} is below the step of checkpoint "
                       f"{step} in {directory}; use num_steps >= {step} or a new --workdir")
    diffs = config_lib.changes(meta["config"], now)
    run = [d for d in diffs if d["changes_run"]]
    if run and config.resume != "force":
      raise ValueError(
          f"the config differs from checkpoint {step} in {directory}: " + "; ".join(
              f"{d['field']} {d['old']!r} -> {d['new']!r}" for d in run) +
          "; use a new --workdir, or --config.resume=force to continue anyway")
    history[:] = list(meta.get("changes") or []) + [
        {"step": step, "field": d["field"], "old": d["old"], "new": d["new"],
         "forced": d["changes_run"]} for d in diffs]
    for d in run:
      logging.warning("resume forced: %s %r -> %r at step %d", d["field"], d["old"], d["new"],
                      step)
    return bool(run)

  return accept


def _already_finished(config: ml_collections.ConfigDict, workdir: str,
                      ckpt: checkpoint_lib.Checkpointer, accept: Callable[..., bool]
                      ) -> dict[str, Any] | None:
  """``results.json`` of a run that finished ``config.num_steps`` in ``workdir`` (saying so
  in one line), after ``accept`` has checked the config; None when there is work to do."""
  results_path = os.path.join(workdir, "results.json")
  steps = ckpt.steps()
  done = outputs.read_json(results_path)
  if not (steps and steps[0] == config.num_steps and _finished(done, config)):
    return None
  try:
    meta = ckpt.read_meta(steps[0])
  except Exception:  # pylint: disable=broad-except  # damaged: restore_latest says so
    return None
  accept(steps[0], meta)  # a changed run is refused here too
  if jax.process_index() == 0:
    print(f"this run already finished ({config.num_steps} steps): results in {results_path} "
          "and results.md; raise --config.num_steps to train on", flush=True)
  return done


def _run(config: ml_collections.ConfigDict, workdir: str, ckpt: checkpoint_lib.Checkpointer,
         wall_start: float) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  history: list[dict[str, Any]] = []  # config changes accepted on resumes
  accept = _acceptor(config, ckpt.directory, history)
  done = _already_finished(config, workdir, ckpt, accept)
  if done is not None:
    return done

  task = get_task(config.task.to_dict())
  strategy = parallel.make(config.parallel.strategy, config.parallel.num_devices)
  eval_batch_size = config.eval_batch_size or config.batch_size
  _check_batch("batch_size", config.batch_size, strategy)
  _check_batch("eval_batch_size", eval_batch_size, strategy)
  shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
  train_ds = task.dataset("train", batch_size=config.batch_size, seed=config.seed, **shard)
  first_batch = train_ds[0]
  model = _model(config, task, first_batch)

  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=strategy.checkpoint_sharding), model.abstract_state)
  found = ckpt.restore_latest(target, accept)
  if found:
    start_step, restored, meta = found
    state = strategy.from_checkpoint(restored)
    logging.info("resumed from %s/%d", ckpt.directory, start_step)
  else:
    start_step, meta = 0, {}
    state = strategy.init(model.init)
  meta = {"config": outputs.json_safe(config.to_dict()), "changes": history,
          "interval": meta.get("interval") or []}
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
  flops_per_step = _step_flops(task, model, first_batch)
  attention = _attention_line(model, first_batch, config.batch_size)
  writer = writers.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  evaluator = evaluate_lib.Evaluator(task, strategy, model.eval_graphdef, model.interface,
                                     eval_batch_size, config.seed, shard)
  # Batch ``step`` is read, formatted and sent to the devices up to config.prefetch steps
  # ahead, in a background thread; the batches are the same, in the same order.
  make_batch = lambda step: strategy.put_batch(evaluate_lib.select(train_ds[step],
                                                                   model.interface))
  with faults.catch_signals() as signals, prefetch.Prefetch(
      make_batch, range(start_step, config.num_steps), config.prefetch) as batches:
    state, record, train_time, stopped = _train(
        config, state, start_step, train_step, batches, model, strategy, ckpt, writer,
        evaluator, tokens_per_step, meta, signals)
    ckpt.wait()
  evals = {} if stopped is not None else evaluator(state)
  sample = (None if stopped is not None
            else _text_sample(task, model, strategy.to_checkpoint(state)))
  if stopped is None:
    writer.write_eval(config.num_steps, evals)
  writer.close()

  if record is None:  # no log line in this process (it resumed at the end, or stopped)
    record = _last_record(os.path.join(workdir, "metrics.jsonl")) or {}
  end = config.num_steps if stopped is None else stopped
  steps_per_s = (end - start_step) / train_time if train_time > 0 else 0.0
  hparams = config.model.hparams
  results = {
      "status": "finished" if stopped is None else f"interrupted by {signals.name}",
      "task": model.spec.name, "model": config.model.name, "num_params": model.num_params,
      "target_type": model.spec.target_type, "num_steps": config.num_steps,
      "steps_done": end, "resumed_from_step": start_step, "config_changes": history,
      "final_train_loss": record.get("loss"), "final_train_accuracy": record.get("accuracy"),
      "train_length": task.train_length, "eval": evals,
      "baseline": dict(getattr(task, "baseline", None) or {}),
      "wall_time_s": time.perf_counter() - wall_start, "compile_time_s": compile_time,
      "eval_compile_time_s": evaluator.compile_time, "train_time_s": train_time,
      "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * tokens_per_step,
      "tokens_per_step": tokens_per_step,
      **({} if flops_per_step is None else {
          "flops_per_step": flops_per_step, "flops_per_token": flops_per_step / tokens_per_step}),
      **({"task_info": task.info, "sample": sample} if hasattr(task, "info") else {}),
      "context": outputs.run_context(
          seed=config.seed, dtype=str(hparams.get("dtype") or "float32"),
          param_dtype="float32", strategy=strategy.name, num_devices=strategy.num_devices,
          batch_size=config.batch_size, config=config.to_dict(),
          **({"attention": attention} if attention else {})),
  }
  if is_main:
    _write_results(workdir, results)
  if stopped is not None:
    raise faults.Interrupted(
        f"interrupted by {signals.name} at step {stopped} of {config.num_steps}: saved "
        f"checkpoint {stopped} in {ckpt.directory} and the results so far; run the same "
        "command to continue", signals.signum)
  return results


def _attention_line(model: _Model, batch: dict[str, Any], batch_size: int) -> str | None:
  """What the model's (first) attention layer runs at the training length, and why
  (``models.attention.describe_attention``); None for a model without attention."""
  select = evaluate_lib.select(batch, model.interface)
  T = max((np.shape(x)[1] for x in select.values() if np.ndim(x) >= 2), default=0)
  if not T:
    return None
  module = nnx.merge(model.graphdef, model.abstract_state)
  return attention_lib.describe_attention(module, int(T), batch=batch_size)


def _step_flops(task: Any, model: _Model, batch: dict[str, Any]) -> float | None:
  """FLOPs of one training step on the global batch (``analysis.flops``: XLA's count with
  loops times their trip count), for tasks that ask (``task.count_flops``); else None."""
  if not getattr(task, "count_flops", False):
    return None
  from seqscale import analysis  # pylint: disable=g-import-not-at-top
  return analysis.flops(step_lib.make_train_step(model.graphdef), model.abstract_state,
                        evaluate_lib.select(batch, model.interface))


def _text_sample(task: Any, model: _Model, state: Any) -> str | None:
  """A short sample (``task.sample_prompt`` and 200 tokens, seed 0, top-k 20) from the
  trained model, for text tasks; None otherwise."""
  prompt = getattr(task, "sample_prompt", None)
  if prompt is None:
    return None
  trained = nnx.merge(model.eval_graphdef, state)[0]
  return prompt + evaluate_lib.sample_text(trained, task, prompt, length=200, top_k=20)


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
  status = results.get("status", "finished")
  steps = (f"{results['num_steps']} steps" if status == "finished" else
           f"{status} at step {results['steps_done']} of {results['num_steps']} (no evaluation)")
  lines = [f"{results['model']} on {results['task']}: {steps}, "
           f"final train loss {fmt(results['final_train_loss'])}", "",
           f"| split | length | loss ({loss}) | accuracy | whole-sequence accuracy |",
           "|---|---|---|---|---|"]
  for split, m in results["eval"].items():
    lines.append(f"| {split} | {m['length']} | {fmt(m.get('loss'))} | "
                 f"{fmt(m.get('accuracy'))} | {fmt(m.get('seq_accuracy'))} |")
  if results.get("config_changes"):
    lines += ["", "config changed on resume: " + "; ".join(
        f"{c['field']} {c['old']!r} -> {c['new']!r} at step {c['step']}"
        + (" (forced)" if c["forced"] else "") for c in results["config_changes"])]
  if results["baseline"]:
    lines += ["", "baseline (train length): " + ", ".join(
        f"{k} {v:.4f}" for k, v in results["baseline"].items())]
  lines += ["", f"wall time {results['wall_time_s']:.1f} s; train step compile "
            f"{results['compile_time_s']:.2f} s (not in steps/s); "
            f"{results['steps_per_s']:.1f} steps/s, {results['tokens_per_s']:,.0f} input tokens/s"]
  bits = [f"{split} {m['bits_per_char']:.3f}" for split, m in results["eval"].items()
          if m.get("bits_per_char") is not None]
  if bits:
    lines += ["", "held-out bits per character: " + ", ".join(bits) + (
        f"; {results['flops_per_token']:.3g} training FLOPs per token"
        if results.get("flops_per_token") else "")]
  if results.get("sample") is not None:
    lines += ["", "sample (seed 0, top-k 20):", "", "```", results["sample"], "```"]
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
