"""Real text: time and FLOPs to reach a held-out bits per character, per model family.

Every (family, size) cell trains a byte-level language model of the Python stdlib's source
(``seqscale.data.text``) with the trainer's pieces (``train.model.build``, ``train.optim``,
``train.step``; Adam, constant rate after warmup, so that a point of the curve does not
depend on the budget). Families at one size have about the same parameter count
(``SIZES``). Each cell trains until it has used **both** budgets, the same for every
family: ``max_train_s`` seconds of training (compilation and evaluation excluded) and
``flop_budget`` training FLOPs (``analysis.flops`` of the compiled step: XLA's count with
every loop times its trip count), or ``cap_factor * max_train_s`` seconds, whichever
comes first. Held-out (validation) bits per character are measured every
``eval_every_s`` seconds of training and exactly at each budget; the final number is on the
test split.

``run`` writes ``cells/<family>_<size>.json`` per finished cell and skips those on a rerun
(per-cell resume, as ``long_range``), then the report (``text_lm_report``):
``results.json``, ``text_lm.md`` (also printed) and ``text_lm.png``.

``generate`` samples from an ``experiments.train`` run's newest checkpoint (the library
side of ``experiments.generate``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from seqscale import analysis
from seqscale import outputs
from seqscale.checks import check_names
from seqscale.train import config as config_lib
from seqscale.train import evaluate as evaluate_lib
from seqscale.train import losses
from seqscale.train import model as model_lib
from seqscale.train import optim
from seqscale.train import step as step_lib

FAMILIES = ("lstm", "gru", "transformer_lm", "wavenet", "mingru", "lru")
# Constructor keywords at matched parameter counts (tests/test_text_lm.py counts them with
# the 256-byte embedding and head). Recurrent and convolutional models read 128-wide
# embeddings ("quick": 64-wide); WaveNet's 8 dilated layers of kernel 2 see 256 positions.
# The Transformer uses dense XLA attention: exact FLOP and depth counts (the blockwise
# default's causal loops have trip counts that are not static).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {  # about 0.15M
        "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
        "gru": dict(in_features=64, hidden_features=144, num_layers=1),
        "transformer_lm": dict(hidden_features=64, num_layers=2, num_heads=4,
                           attention_impl="xla"),
        "wavenet": dict(in_features=64, hidden_features=56, num_layers=6, kernel_size=2,
                        dilation_cycle=6),
        "mingru": dict(in_features=64, hidden_features=128, num_layers=3, mode="associative"),
        "lru": dict(in_features=64, hidden_features=96, num_layers=2, mode="associative"),
    },
    "1m": {
        "lstm": dict(in_features=128, hidden_features=400, num_layers=1),
        "gru": dict(in_features=128, hidden_features=464, num_layers=1),
        "transformer_lm": dict(hidden_features=144, num_layers=4, num_heads=4,
                           attention_impl="xla"),
        "wavenet": dict(in_features=128, hidden_features=136, num_layers=8, kernel_size=2,
                        dilation_cycle=8),
        "mingru": dict(in_features=128, hidden_features=360, num_layers=4, mode="associative"),
        "lru": dict(in_features=128, hidden_features=240, num_layers=3, mode="associative"),
    },
    "5m": {
        "lstm": dict(in_features=128, hidden_features=608, num_layers=2),
        "gru": dict(in_features=128, hidden_features=704, num_layers=2),
        "transformer_lm": dict(hidden_features=256, num_layers=6, num_heads=4,
                           attention_impl="xla"),
        "wavenet": dict(in_features=128, hidden_features=304, num_layers=8, kernel_size=2,
                        dilation_cycle=8),
        "mingru": dict(in_features=128, hidden_features=624, num_layers=7, mode="associative"),
        "lru": dict(in_features=128, hidden_features=432, num_layers=5, mode="associative"),
    },
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a run trains. Defaults: the full CPU run (sized in experiments/text_lm.py)."""

  models: tuple[str, ...] = FAMILIES  # families in FAMILIES
  sizes: tuple[str, ...] = ("1m",)  # keys of SIZES
  max_train_s: float = 100.0  # the wall-clock budget: seconds of training per cell
  flop_budget: float = 3e12  # the FLOP budget: training FLOPs per cell
  cap_factor: float = 2.0  # a cell stops at cap_factor * max_train_s in any case
  eval_every_s: float = 10.0  # training seconds between held-out evaluations
  levels: tuple[float, ...] = (3.5, 3.0, 2.5)  # bits per character the table times
  length: int = 128  # training window T (bytes)
  batch_size: int = 32
  eval_windows: int = 32  # validation windows of T per evaluation (the curves)
  test_windows: int = 128  # test windows of T for the final number
  learning_rate: float = 2e-3  # Adam, constant after warmup, gradient norm clipped at 1
  warmup_steps: int = 100
  tokenizer: str = "bytes"
  seed: int = 0

  def __post_init__(self):
    check_names("models", self.models, FAMILIES)
    check_names("sizes", self.sizes, tuple(SIZES))
    for name in ("max_train_s", "flop_budget", "cap_factor", "eval_every_s",
                 "learning_rate"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}={value!r}; must be a number > 0")
    if self.cap_factor < 1:
      raise ValueError(f"cap_factor={self.cap_factor!r}; must be >= 1")
    for name in ("length", "batch_size", "eval_windows", "test_windows"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}; must be an integer >= 1")
    if not self.levels or any(not (isinstance(v, (int, float)) and v > 0)
                              for v in self.levels):
      raise ValueError(f"levels={self.levels!r}; give bits-per-character levels > 0")

  def training_key(self) -> dict[str, Any]:
    """The fields a cell's result depends on (a finished cell is reused only if they match)."""
    skip = ("models", "sizes", "levels")
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


QUICK = Settings(sizes=("quick",), max_train_s=12.0, flop_budget=1.5e11, eval_every_s=3.0,
                 levels=(3.5, 3.25, 3.0), length=64, batch_size=16, eval_windows=16,
                 test_windows=64, learning_rate=3e-3, warmup_steps=20)
# For a GPU (or a long CPU run): both sizes, 10 minutes and 5e15 FLOPs per cell.
GPU = Settings(sizes=("1m", "5m"), max_train_s=600.0, flop_budget=5e15, eval_every_s=30.0,
               levels=(3.0, 2.5, 2.0, 1.5), length=256, batch_size=64, eval_windows=256,
               test_windows=1024, learning_rate=1e-3, warmup_steps=500)
PRESETS = {"full": Settings(), "quick": QUICK, "gpu": GPU}


def make_settings(preset: str = "full", **overrides: Any) -> Settings:
  """``PRESETS[preset]`` with the non-None ``overrides`` (lists may be strings), validated.

  Raises:
    ValueError: naming the field, the value and what is allowed.
  """
  if preset not in PRESETS:
    raise ValueError(f"preset={preset!r}; allowed: {', '.join(PRESETS)}")
  given = {k: v for k, v in overrides.items() if v is not None}
  unknown = sorted(set(given) - {f.name for f in dataclasses.fields(Settings)})
  if unknown:
    raise ValueError(f"unknown settings {unknown}")
  for name, allowed in (("models", FAMILIES), ("sizes", tuple(SIZES))):
    if name in given:
      given[name] = check_names(name, given[name], allowed)
  if "levels" in given:
    given["levels"] = tuple(float(v) for v in given["levels"])
  return dataclasses.replace(PRESETS[preset], **given)


def cell_name(model: str, size: str) -> str:
  return f"{model}_{size}"


# ----------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class Budgets:
  """When a cell stops and where it must evaluate (seconds of training, steps)."""

  max_train_s: float
  flop_steps: int  # steps that use the FLOP budget
  cap_s: float
  eval_every_s: float


def train_with_budgets(train_chunk: Callable[[int, int, float], np.ndarray],
                       evaluate: Callable[[], dict[str, float]], budgets: Budgets,
                       clock: Callable[[], float] = time.perf_counter
                       ) -> tuple[list[dict[str, float]], str]:
  """Trains in chunks that end at the next evaluation time (``next_mark``), the time
  budget or the FLOP budget's step, evaluating after each, until both budgets are used (or
  the cap).

  Args:
    train_chunk: ``(start, max_steps, seconds) -> losses`` of the steps it ran (at least
      one; it stops early when ``seconds`` of training are used).
    evaluate: ``() -> metrics`` on held-out data (``loss`` in nats per token).
    budgets: the limits.
    clock: seconds (a parameter so tests can count).

  Returns:
    (history: per evaluation ``step``, ``train_s``, ``train_loss`` and the metrics;
    why it stopped: ``budgets``, ``cap`` or ``nan: ...``).
  """
  step, train_s, history = 0, 0.0, []
  while True:
    time_left = budgets.max_train_s - train_s
    next_eval = next_mark(train_s, budgets.eval_every_s)
    limit_s = min(next_eval, budgets.cap_s) - train_s
    if time_left > 0:
      limit_s = min(limit_s, time_left)
    max_steps = budgets.flop_steps - step if step < budgets.flop_steps else 1 << 30
    tick = clock()
    chunk = np.asarray(train_chunk(step, max_steps, max(limit_s, 1e-6)), np.float64)
    train_s += clock() - tick
    if not np.all(np.isfinite(chunk)):
      bad = int(np.argmin(np.isfinite(chunk)))
      return history, f"nan: training loss {chunk[bad]} at step {step + bad + 1}"
    step += len(chunk)
    metrics = {k: float(v) for k, v in evaluate().items()}
    history.append({"step": step, "train_s": train_s, "train_loss": float(chunk.mean()),
                    **metrics})
    if not math.isfinite(metrics["loss"]):
      return history, f"nan: held-out loss at step {step}"
    if train_s >= budgets.max_train_s and step >= budgets.flop_steps:
      return history, "budgets"
    if train_s >= budgets.cap_s:
      return history, "cap"


def next_mark(train_s: float, every: float) -> float:
  """The next evaluation time after ``train_s``: ``every`` / 8, / 4, / 2 (the fast start of
  a learning curve), then every multiple of ``every``."""
  for mark in (every / 8, every / 4, every / 2):
    if train_s < mark:
      return mark
  return every * (math.floor(train_s / every) + 1)


def reach(history: Sequence[dict[str, float]], key: str, level: float, x: str
          ) -> float | None:
  """The first ``history[x]`` at which ``history[key] <= level`` (None: never)."""
  for h in history:
    if h.get(key) is not None and h[key] <= level:
      return h[x]
  return None


def at_budget(history: Sequence[dict[str, float]], key: str, x: str, budget: float
              ) -> float | None:
  """``key`` at the last evaluation with ``x <= budget`` (within 0.1%)."""
  before = [h for h in history if h[x] <= budget * 1.001]
  return before[-1][key] if before else None


# ---------------------------------------------------------------------------- one cell

def _optimizer(settings: Settings) -> dict[str, Any]:
  return dict(name="adam", learning_rate=settings.learning_rate, schedule="constant",
              warmup_steps=settings.warmup_steps, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.0, clip_norm=1.0)


def get_task(settings: Settings, data_dir: str, windows: int) -> Any:
  from seqscale import data  # pylint: disable=g-import-not-at-top
  return data.get_task("python_stdlib", length=settings.length, tokenizer=settings.tokenizer,
                       num_eval=windows, data_dir=data_dir)


def train_cell(model_name: str, size: str, settings: Settings, *, data_dir: str
               ) -> dict[str, Any]:
  """Trains one (family, size) cell under the budgets; returns its row (JSON-ready)."""
  task = get_task(settings, data_dir, settings.eval_windows)
  test_task = get_task(settings, data_dir, settings.test_windows)
  hparams = dict(SIZES[size][model_name])
  tx, _ = optim.make(_optimizer(settings), num_steps=1, model_dim=0)
  spec = model_lib.TaskSpec.of(task, has_seq2seq=False)
  model = model_lib.build(model_name, hparams, spec, rngs=nnx.Rngs(settings.seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  eval_graphdef = nnx.graphdef((nnx.view(model, deterministic=True,
                                         raise_if_not_found=False), optimizer))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  del model, optimizer

  train_ds = task.dataset("train", batch_size=settings.batch_size, seed=settings.seed)
  sel = lambda b: evaluate_lib.select(b, "lm")
  batches = {split: [jax.device_put(sel(ds[i])) for i in range(len(ds))] for split, ds in (
      ("validation", task.dataset("validation", batch_size=settings.batch_size, seed=0)),
      ("test", test_task.dataset("test", batch_size=settings.batch_size, seed=0)))}
  first = sel(train_ds[0])
  tick = time.perf_counter()
  train_fn = step_lib.make_train_step(graphdef)
  train_step = jax.jit(train_fn, donate_argnums=0).lower(state, first).compile()
  eval_fn = step_lib.make_eval_step(eval_graphdef)
  eval_step = jax.jit(eval_fn).lower(state, batches["validation"][0]).compile()
  compile_s = time.perf_counter() - tick
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  tick = time.perf_counter()
  flops_per_step = analysis.flops(train_fn, abstract, first)
  forward = lambda s, b: eval_fn(s, b)["loss"]
  depth = analysis.sequential_depth(forward, abstract, batches["validation"][0])
  measure_s = time.perf_counter() - tick
  tokens_per_step = settings.batch_size * settings.length

  def train_chunk(start: int, num: int, seconds: float) -> np.ndarray:
    nonlocal state
    pending, tick = [], time.perf_counter()
    for step in range(start, start + num):
      state, metrics = train_step(state, sel(train_ds[step]))
      pending.append(metrics["loss"])
      pending[-1].block_until_ready()
      if time.perf_counter() - tick >= seconds:
        break
    return np.asarray(jax.device_get(pending))

  def evaluate(split: str = "validation") -> dict[str, float]:
    sums = jax.device_get([eval_step(state, b) for b in batches[split]])
    totals = {k: float(sum(s[k] for s in sums)) for k in sums[0]}
    out = {k: float(v) for k, v in losses.finalize(totals).items()}
    t = task if split == "validation" else test_task
    return {**out, **evaluate_lib.bits_per(t, split, out)}

  budgets = Budgets(max_train_s=settings.max_train_s,
                    flop_steps=math.ceil(settings.flop_budget / flops_per_step),
                    cap_s=settings.cap_factor * settings.max_train_s,
                    eval_every_s=settings.eval_every_s)
  tick = time.perf_counter()
  history, stop = train_with_budgets(train_chunk, evaluate, budgets)
  loop_s = time.perf_counter() - tick
  for h in history:
    h["flops"] = h["step"] * flops_per_step
  final = evaluate("test")
  steps = history[-1]["step"] if history else 0
  train_s = history[-1]["train_s"] if history else 0.0
  row = {
      "model": model_name, "size": size, "num_params": num_params, "hparams": hparams,
      "stop": stop, "steps": steps, "train_s": train_s, "eval_s": loop_s - train_s,
      "compile_s": compile_s, "measure_s": measure_s, "flops_per_step": flops_per_step,
      "flops_per_token": flops_per_step / tokens_per_step,
      "forward_sequential_depth": depth, "tokens_per_step": tokens_per_step,
      "tokens_per_s": steps * tokens_per_step / max(train_s, 1e-9),
      "flop_budget_steps": budgets.flop_steps,
      "bpc_at_time_budget": at_budget(history, "bits_per_char", "train_s",
                                      settings.max_train_s),
      "bpc_at_flop_budget": at_budget(history, "bits_per_char", "flops",
                                      settings.flop_budget),
      "final_bpc_validation": history[-1].get("bits_per_char") if history else None,
      "final_bpc_test": final.get("bits_per_char"),
      "final_bpb_test": final.get("bits_per_byte"),
      "history": history, "settings": settings.training_key(),
      "corpus": {k: v for k, v in task.info.items() if k != "units_per_token"},
  }
  return outputs.json_safe(row, nonfinite_as_none=True)


def load_cell(path: str, settings: Settings) -> dict[str, Any] | None:
  """A finished cell's row, or None if absent; ValueError if trained with other settings."""
  return outputs.read_cell(path, settings.training_key())


def _line(row: dict[str, Any], note: str = "") -> str:
  fmt = lambda v: "-" if v is None else f"{v:.3f}"
  return (f"{row['model']} {row['size']} ({row['num_params']:,} params): {row['steps']} steps "
          f"in {row['train_s']:.1f} s ({row['stop']}), {row['tokens_per_s']:,.0f} tokens/s, "
          f"{row['flops_per_token']:.3g} FLOPs/token; test bpc {fmt(row['final_bpc_test'])}"
          + note)


def run(settings: Settings, workdir: str, *, data_dir: str | None = None,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains every cell not already in ``workdir/cells``, then writes the report.

  ``data_dir`` (default ``workdir/data``) holds the prepared corpus.

  Returns:
    ``{"rows": [...], "markdown": str, "context": {...}}``.
  """
  from seqscale.studies import text_lm_report  # pylint: disable=g-import-not-at-top
  workdir = outputs.prepare_workdir(workdir)
  cells_dir = os.path.join(workdir, "cells")
  os.makedirs(cells_dir, exist_ok=True)
  data_dir = data_dir or os.path.join(workdir, "data")
  start, tick = outputs.load_average(), time.perf_counter()
  rows, reused = [], 0
  for size in settings.sizes:
    for model in settings.models:
      path = os.path.join(cells_dir, cell_name(model, size) + ".json")
      row = load_cell(path, settings)
      if row is not None:
        reused += 1
        progress(_line(row, " [done earlier, skipped]"))
      else:
        row = train_cell(model, size, settings, data_dir=data_dir)
        outputs.write_json(path, row)
        progress(_line(row) + f" [load {outputs.load_average()}]")
      rows.append(row)
  context = outputs.run_context(
      settings=dataclasses.asdict(settings), loadavg_start=start,
      loadavg_end=outputs.load_average(), wall_s=time.perf_counter() - tick,
      cells_reused=reused)
  md = text_lm_report.save(workdir, rows, settings, context)
  return {"rows": rows, "markdown": md, "context": context}


# ---------------------------------------------------------------------------- sampling

@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  """A sample to draw from the run in ``workdir`` (checked by ``generate_settings``)."""

  workdir: str
  prompt: str
  length: int
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0


def generate_settings(workdir: str | None, **kwargs: Any) -> GenerateSettings:
  """Checks that ``workdir`` holds a run (``config.json``) with a checkpoint.

  Raises:
    ValueError: naming what is missing, or a bad value.
  """
  if not workdir:
    raise ValueError("--workdir is required: the folder of an experiments.train text run")
  workdir = os.path.abspath(workdir)
  if os.path.isfile(workdir):
    raise ValueError(f"--workdir={workdir!r} is a file, not a run's folder")
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} does not exist")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise ValueError(f"--workdir={workdir!r} holds no run (no config.json); train one with "
                     "python -m experiments.train --config=experiments/configs/text_lm.py:quick "
                     f"--workdir={workdir}")
  ckpts = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpts) or not any(n.isdigit() for n in os.listdir(ckpts)):
    raise ValueError(f"--workdir={workdir!r} has no checkpoint in {ckpts}")
  s = GenerateSettings(workdir=workdir, **kwargs)
  if isinstance(s.length, bool) or not isinstance(s.length, int) or s.length < 1:
    raise ValueError(f"length={s.length!r}; must be an integer >= 1")
  if not (isinstance(s.temperature, (int, float)) and s.temperature >= 0):
    raise ValueError(f"temperature={s.temperature!r}; must be a number >= 0 (0: greedy)")
  if not s.prompt:
    raise ValueError("prompt is empty; give at least one character")
  return s


def generate(s: GenerateSettings) -> str:
  """The prompt and ``s.length`` sampled tokens from the newest checkpoint of ``s.workdir``.

  Raises:
    ValueError: a prompt with characters outside the vocabulary, a model that cannot step,
      a task that is not text, or a checkpoint that does not fit the run's config.
    FileNotFoundError: the run's dataset is not prepared here (the message says how).
  """
  from seqscale import train  # pylint: disable=g-import-not-at-top
  config = config_lib.validate(outputs.read_json(os.path.join(s.workdir, "config.json")))
  task = train.get_task(config.task.to_dict())
  if getattr(task, "tokenizer", None) is None:
    raise ValueError(f"the run in {s.workdir} trained on task {task.name!r}, which is not "
                     "text: there is nothing to sample")
  unknown = task.tokenizer.unknown(s.prompt)
  if unknown:  # before the model is restored: a cheap, early message
    raise ValueError(f"prompt has characters outside the {task.tokenizer.kind} vocabulary "
                     f"of task {task.name!r}: {''.join(unknown)!r}")
  model, _ = train.restore_model(config, s.workdir)
  return s.prompt + evaluate_lib.sample_text(model, task, s.prompt, length=s.length,
                                             seed=s.seed, temperature=s.temperature,
                                             top_k=s.top_k)
