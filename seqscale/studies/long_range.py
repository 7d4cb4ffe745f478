"""Long-range dependencies: which models solve the adding problem and copy memory at T.

For every (task, T, model, seed) cell a small model trains with early stopping: chunks of
``eval_every`` steps, each followed by an evaluation on held-out sequences of the training
length; the cell stops at the first evaluation whose loss is below ``SOLVE_FRACTION`` (a
tenth) of the task's baseline (adding: MSE 1/6; copy memory: the memoryless cross-entropy
10 ln 8 / (T + 20)), at a non-finite loss, or at ``max_steps``. It is built from the
trainer's own pieces (``train.model.build``, ``train.optim.make``, ``train.step``), jitted
with the functional ``nnx.split`` / ``nnx.merge`` pattern and compiled ahead of time, so
compile time is measured apart from training time; seeds of one (task, T, model) share the
compiled steps.

``run`` writes one JSON file per finished cell (``cells/<task>_T<T>_<model>_s<seed>.json``,
atomically) and skips those on a rerun, so a stopped run resumes; then the report
(``long_range_report``): ``results.json``, ``long_range.md`` and one PNG per task.

``train_cell`` also returns the trained model (a ``train.model.TaskModel`` in eval mode;
``model.backbone`` is the registry model), e.g. a copy-memory transformer whose attention
maps one wants to look at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from seqscale import outputs
from seqscale.checks import check_names
from seqscale.train import evaluate as evaluate_lib
from seqscale.train import losses
from seqscale.train import model as model_lib
from seqscale.train import optim
from seqscale.train import presets
from seqscale.train import step as step_lib

TASKS = ("adding_problem", "copy_memory")
MODELS = ("lstm", "gru", "wavenet", "transformer", "mingru", "lru")
BASELINE_KEY = {"adding_problem": "mse", "copy_memory": "xent"}
POOLING = {"adding_problem": "last", "copy_memory": "mean"}  # "last": a causal model's answer
SOLVE_FRACTION = 0.1  # solved: held-out loss < SOLVE_FRACTION * baseline


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a run trains. Defaults: the full run (sized in experiments/long_range.py)."""

  tasks: tuple[str, ...] = TASKS  # names in TASKS
  lengths: tuple[int, ...] = (100, 200, 500, 1000)  # T (copy memory: the delay)
  models: tuple[str, ...] = MODELS  # names in MODELS
  seeds: int = 2  # seeds 0 .. seeds-1 per (task, T, model): init and data order
  max_steps: int = 3000  # training steps at most per cell
  max_train_s: float = 15.0  # training seconds at most per cell (0: no limit)
  eval_every: int = 100  # steps between held-out evaluations (the early-stop check)
  batch_size: int = 16  # training and evaluation batch
  num_train: int = 4096  # generated training sequences per (task, T)
  num_eval: int = 64  # held-out sequences of the training length
  hidden: int = 64  # model width
  learning_rate: float = 1e-3  # Adam, constant after warmup (steps to solve do not
  warmup_steps: int = 100  # depend on max_steps), gradient norm clipped at 1
  data_seed: int = 0  # seed of the generated data (the same for every model and seed)

  def __post_init__(self):
    check_names("tasks", self.tasks, TASKS)
    check_names("models", self.models, MODELS)
    _ints("lengths", self.lengths, 2)
    if not self.lengths:
      raise ValueError("lengths=(); give integers >= 2, e.g. 100,200")
    for name in ("seeds", "max_steps", "eval_every", "batch_size", "num_train", "num_eval",
                 "hidden", "warmup_steps", "data_seed"):
      _ints(name, getattr(self, name), 0 if name in ("warmup_steps", "data_seed") else 1)
    if not (isinstance(self.max_train_s, (int, float)) and self.max_train_s >= 0):
      raise ValueError(f"max_train_s={self.max_train_s!r}; must be a number >= 0 "
                       "(0: no limit)")
    if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
      raise ValueError(f"learning_rate={self.learning_rate!r}; must be a number > 0")

  def training_key(self) -> dict[str, Any]:
    """The fields a cell's result depends on (a finished cell is reused only if they match)."""
    skip = ("tasks", "lengths", "models", "seeds")
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def _ints(flag: str, values: Any, minimum: int) -> tuple[int, ...]:
  out = []
  for v in (values if isinstance(values, (list, tuple)) else [values]):
    try:
      i = int(str(v).strip())
    except ValueError:
      i = None
    if i is None or i < minimum or isinstance(v, bool):
      raise ValueError(f"{flag}={v!r}; must be an integer >= {minimum}")
    out.append(i)
  return tuple(dict.fromkeys(out))


QUICK = Settings(lengths=(20, 40), models=("lstm", "transformer"), seeds=1, max_steps=300,
                 eval_every=50, num_train=512, num_eval=64)


def make_settings(quick: bool = False, **overrides: Any) -> Settings:
  """``Settings`` (``QUICK`` with ``quick``) with the non-None ``overrides`` (lists of
  names and lengths may be strings, as flags give them), validated.

  Raises:
    ValueError: naming the field (``tasks``, ``lengths``, ...), the value and what is
      allowed.
  """
  base = QUICK if quick else Settings()
  given = {k: v for k, v in overrides.items() if v is not None}
  unknown = sorted(set(given) - {f.name for f in dataclasses.fields(Settings)})
  if unknown:
    raise ValueError(f"unknown settings {unknown}")
  for name, allowed in (("tasks", TASKS), ("models", MODELS)):
    if name in given:
      given[name] = check_names(name, given[name], allowed)
  if "lengths" in given:
    given["lengths"] = _ints("lengths", given["lengths"], 2)
  return dataclasses.replace(base, **given)


def model_hparams(model: str, seq_len: int, hidden: int = 64) -> dict[str, Any]:
  """Constructor keywords of a small ``model`` for sequences of ``seq_len`` (width ``hidden``).

  The sizes of ``seqscale.train.presets``: WaveNet gets ceil(log2(seq_len)) layers of kernel
  2 with dilations 1, 2, 4, ..., so its receptive field 2^L covers the whole sequence; the
  LRU starts its eigenvalues near the unit circle (|lambda| in [0.9, 0.999]), the
  initialisation its paper uses for long range.
  """
  if model not in MODELS:
    raise ValueError(f"--models={model!r}; allowed: {', '.join(MODELS)}")
  return presets.model_hparams(model, hidden, seq_len=seq_len)


def optimizer_config(settings: Settings) -> dict[str, Any]:
  """The ``config.optimizer`` dict ``train.optim.make`` takes."""
  return dict(name="adam", learning_rate=settings.learning_rate, schedule="constant",
              warmup_steps=settings.warmup_steps, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.0, clip_norm=1.0)


def baseline(task: Any) -> float:
  """The task's baseline loss at its training length (MSE 1/6, or 10 ln 8 / (T + 20))."""
  return float(task.baseline[BASELINE_KEY[task.name]])


def is_solved(loss: float, baseline_loss: float, fraction: float = SOLVE_FRACTION) -> bool:
  """True when ``loss`` is finite and below ``fraction * baseline_loss``."""
  return math.isfinite(loss) and loss < fraction * baseline_loss


# ----------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class LoopResult:
  """What ``train_until_solved`` did."""

  steps: int  # steps trained
  stop: str  # "solved", "max_steps", "max_train_s" or "nan: ..."
  solved_step: int | None  # step of the first evaluation below the threshold
  train_s: float  # seconds in training chunks (evaluation excluded)
  eval_s: float  # seconds in evaluations
  solve_s: float | None  # training seconds up to solved_step
  history: list[dict[str, float]]  # per evaluation: step, train_loss, eval metrics, train_s
  last_eval: dict[str, float]  # metrics of the last evaluation ({} if none)


def train_until_solved(train_chunk: Callable[[int, int, float], np.ndarray],
                       evaluate: Callable[[], dict[str, float]], *, threshold: float,
                       max_steps: int, eval_every: int, max_train_s: float = 0.0,
                       clock: Callable[[], float] = time.perf_counter) -> LoopResult:
  """Trains in chunks of ``eval_every`` steps and evaluates after each.

  Args:
    train_chunk: ``(start, num, seconds) -> losses``: trains steps start, start+1, ...
      (``num`` of them, fewer if ``seconds`` of training run out first; at least one) and
      returns their training losses once they are done.
    evaluate: ``() -> metrics`` with ``loss`` on held-out data.
    threshold: stop at the first evaluation with ``loss < threshold``.
    max_steps: stop after this many steps.
    eval_every: steps per chunk (the last chunk may be shorter).
    max_train_s: stop (after an evaluation) once this many seconds were spent training;
      0: no limit.
    clock: seconds (a parameter so tests can count).

  Returns:
    A ``LoopResult``; a non-finite training or evaluation loss stops with ``stop="nan: ..."``.
  """
  step, train_s, eval_s, history, last_eval = 0, 0.0, 0.0, [], {}
  limit = max_train_s if max_train_s > 0 else math.inf
  while step < max_steps:
    tick = clock()
    chunk = np.asarray(train_chunk(step, min(eval_every, max_steps - step), limit - train_s),
                       np.float64).reshape(-1)
    train_s += clock() - tick
    if not np.all(np.isfinite(chunk)):
      bad = int(np.argmin(np.isfinite(chunk)))
      return LoopResult(step + len(chunk), f"nan: training loss {chunk[bad]} at step "
                        f"{step + bad + 1}", None, train_s, eval_s, None, history, last_eval)
    step += len(chunk)
    tick = clock()
    last_eval = {k: float(v) for k, v in evaluate().items()}
    eval_s += clock() - tick
    history.append({"step": step, "train_loss": float(chunk.mean()), **last_eval,
                    "train_s": train_s})
    if not math.isfinite(last_eval["loss"]):
      return LoopResult(step, f"nan: held-out loss {last_eval['loss']} at step {step}", None,
                        train_s, eval_s, None, history, last_eval)
    if last_eval["loss"] < threshold:
      return LoopResult(step, "solved", step, train_s, eval_s, train_s, history, last_eval)
    if train_s >= limit:
      return LoopResult(step, "max_train_s", None, train_s, eval_s, None, history, last_eval)
  return LoopResult(step, "max_steps", None, train_s, eval_s, None, history, last_eval)


# ---------------------------------------------------------------------------- one cell

class Cache:
  """Tasks per (task, T) and compiled steps per (task, T, model), shared across cells."""

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self.tasks: dict[tuple[Any, ...], Any] = {}
    self.steps: dict[tuple[Any, ...], tuple[Any, Any]] = {}

  def task(self, name: str, length: int, settings: Settings) -> Any:
    from seqscale import data  # pylint: disable=g-import-not-at-top
    key = (name, length, settings.num_train, settings.num_eval, settings.data_seed)
    if key not in self.tasks:
      self.tasks[key] = data.get_task(name, length=length, num_train=settings.num_train,
                                      num_eval=settings.num_eval, seed=settings.data_seed,
                                      data_dir=self.data_dir)
    return self.tasks[key]


def cell_name(task: str, length: int, model: str, seed: int) -> str:
  return f"{task}_T{length}_{model}_s{seed}"


def train_cell(task_name: str, length: int, model_name: str, seed: int, settings: Settings,
               *, cache: Cache) -> tuple[dict[str, Any], nnx.Module]:
  """Trains one cell until solved or ``settings.max_steps``.

  Returns:
    (row, model): the cell's results (JSON-ready; ``None`` for non-finite numbers) and the
    trained ``TaskModel`` in eval mode.
  """
  task = cache.task(task_name, length, settings)
  seq_len = int(task.sequence_lengths["train"])
  hparams = model_hparams(model_name, seq_len, settings.hidden)
  tx, _ = optim.make(optimizer_config(settings), num_steps=settings.max_steps,
                     model_dim=settings.hidden)
  spec = model_lib.TaskSpec.of(task, has_seq2seq=False)
  model = model_lib.build(model_name, hparams, spec, rngs=nnx.Rngs(seed),
                          pooling=POOLING[task_name])
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  eval_model = nnx.view(model, deterministic=True, raise_if_not_found=False)
  eval_graphdef = nnx.graphdef((eval_model, optimizer))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  del model, optimizer, eval_model  # the state is all the loop keeps (donated every step)

  train_ds = task.dataset("train", batch_size=settings.batch_size, seed=seed)
  eval_ds = task.dataset("test", batch_size=settings.batch_size, seed=seed)
  eval_batches = [jax.device_put(evaluate_lib.select(eval_ds[i], "sequence"))
                  for i in range(len(eval_ds))]
  key = (task_name, length, model_name, json.dumps(hparams, sort_keys=True),
         json.dumps(settings.training_key(), sort_keys=True))
  shared = key in cache.steps
  compile_s = 0.0
  if not shared:
    tick = time.perf_counter()
    first = evaluate_lib.select(train_ds[0], "sequence")
    train_step = jax.jit(step_lib.make_train_step(graphdef), donate_argnums=0
                         ).lower(state, first).compile()
    eval_step = jax.jit(step_lib.make_eval_step(eval_graphdef)
                        ).lower(state, eval_batches[0]).compile()
    cache.steps[key] = (train_step, eval_step)
    compile_s = time.perf_counter() - tick
  train_step, eval_step = cache.steps[key]

  def train_chunk(start: int, num: int, seconds: float) -> np.ndarray:
    # One step stays in flight (the next batch loads while it runs); waiting for the one
    # before it tells the time spent, so the time limit stops within a step.
    nonlocal state
    pending, tick = [], time.perf_counter()
    for step in range(start, start + num):
      state, metrics = train_step(state, evaluate_lib.select(train_ds[step], "sequence"))
      pending.append(metrics["loss"])
      if len(pending) > 1:
        pending[-2].block_until_ready()
        if time.perf_counter() - tick >= seconds:
          break
    return np.asarray(jax.device_get(pending))

  def evaluate() -> dict[str, float]:
    sums = jax.device_get([eval_step(state, b) for b in eval_batches])
    totals = {k: float(sum(s[k] for s in sums)) for k in sums[0]}
    return {k: float(v) for k, v in losses.finalize(totals).items()}

  base = baseline(task)
  result = train_until_solved(train_chunk, evaluate, threshold=SOLVE_FRACTION * base,
                              max_steps=settings.max_steps, eval_every=settings.eval_every,
                              max_train_s=settings.max_train_s)
  final = result.last_eval
  row = {
      "task": task_name, "length": length, "seq_len": seq_len, "model": model_name,
      "seed": seed, "solved": result.stop == "solved", "stop": result.stop,
      "steps": result.steps, "steps_to_solve": result.solved_step,
      "seconds_to_solve": result.solve_s, "train_s": result.train_s, "eval_s": result.eval_s,
      "compile_s": compile_s, "compile_shared": shared,
      "ms_per_step": 1e3 * result.train_s / max(result.steps, 1),
      "final_loss": final.get("loss"), "final_accuracy": final.get("accuracy"),
      "final_seq_accuracy": final.get("seq_accuracy"), "baseline": base,
      "threshold": SOLVE_FRACTION * base,
      "ratio": final["loss"] / base if "loss" in final else None,
      "num_params": num_params, "hparams": hparams, "history": result.history,
      "settings": settings.training_key(),
  }
  trained = nnx.merge(eval_graphdef, state)[0]
  return outputs.json_safe(row, nonfinite_as_none=True), trained


def load_cell(path: str, settings: Settings) -> dict[str, Any] | None:
  """A finished cell's row, or None if absent; ValueError if trained with other settings."""
  return outputs.read_cell(path, settings.training_key())


def _line(row: dict[str, Any], note: str = "") -> str:
  fmt = lambda v, f: "-" if v is None else format(v, f)
  return (f"{row['task']} T={row['length']} {row['model']} seed {row['seed']}: "
          f"{row['steps']} steps, {fmt(row['train_s'], '.1f')} s train "
          f"(+{fmt(row['compile_s'], '.1f')} s compile), loss {fmt(row['final_loss'], '.4g')} "
          f"vs threshold {row['threshold']:.4g}: "
          + ("solved" if row["solved"] else f"not solved ({row['stop']})") + note)


def train_cells(settings: Settings, workdir: str, *, data_dir: str | None = None,
        progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains every cell of ``settings`` not already in ``workdir/cells``; returns all rows.

  ``data_dir`` (default ``workdir/data``) holds the generated TFDS datasets.
  """
  cells_dir = os.path.join(workdir, "cells")
  os.makedirs(cells_dir, exist_ok=True)
  cache = Cache(data_dir or os.path.join(workdir, "data"))
  rows = []
  for task in settings.tasks:
    for length in settings.lengths:
      for model in settings.models:
        for seed in range(settings.seeds):
          path = os.path.join(cells_dir, cell_name(task, length, model, seed) + ".json")
          row = load_cell(path, settings)
          if row is not None:
            progress(_line(row, " [done earlier, skipped]"))
          else:
            row, _ = train_cell(task, length, model, seed, settings, cache=cache)
            outputs.write_json(path, row)
            progress(_line(row))
          rows.append(row)
  return rows


def run(settings: Settings, workdir: str, *,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
  """``train_cells`` (resuming from ``workdir/cells``), then the report
  (``long_range_report.save``).

  Returns:
    ``{"rows": [...], "markdown": str, "context": {...}}``.

  Raises:
    ValueError: ``workdir`` is empty, a file or not writable, or holds cells trained with
      other settings.
  """
  from seqscale.studies import long_range_report  # pylint: disable=g-import-not-at-top
  workdir = outputs.prepare_workdir(workdir)
  start, tick = outputs.load_average(), time.perf_counter()
  rows = train_cells(settings, workdir, progress=progress)
  context = outputs.run_context(
      settings=dataclasses.asdict(settings), loadavg_start=start,
      loadavg_end=outputs.load_average(), wall_s=time.perf_counter() - tick)
  md = long_range_report.save(workdir, rows, settings, context)
  return {"rows": rows, "markdown": md, "context": context}
