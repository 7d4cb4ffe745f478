"""Speed of seqscale's layers next to the best peers, measured side by side in one run.

``run(settings)`` times, for every registered model (one layer of each family) and for
the attention op, forward and forward+backward steps over lengths T and dtypes, with the
peers in the *same group*: ``torch.nn.LSTM``/``GRU``/``RNN``, ``flax.nnx.RNN`` with Flax's
cells, ``torch.nn.functional.scaled_dot_product_attention``, ``jax.nn.dot_product_attention``,
``flax.nnx.MultiHeadAttention``, and a large matmul for the machine's peak FLOP/s. Within a
group the candidates are compiled first (compile time apart), then run round-robin, so
that a shared, noisy machine slows every candidate alike; each time is the median of the
repetitions. ``targets`` measures the issue's targets (ratios in the same run).

One row per measurement: ``{"layer", "impl", "T", "B", "D", "dtype", "pass", "median_s",
"tokens_per_s", "peak_bytes", "compile_s"}`` (plus ``runs`` and, where a candidate could
not run, ``note``). ``peak_bytes`` is XLA's compiled memory analysis (arguments + outputs
+ temporaries - aliased); PyTorch rows have none. Torch is optional: without it its rows
are absent and ``notes`` says so.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqscale import models
from seqscale.analysis import cost
from seqscale.ops import attention as attn_ops
from seqscale.ops import blockwise_attention as bw_ops

Array = jax.Array
Row = dict[str, Any]
Progress = Callable[[str], None]

PASSES = ("fwd", "fwd_bwd")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. B = max(1, tokens // T), so every T sees the same tokens."""
  lengths: tuple[int, ...] = (128, 512, 2048, 8192)
  bf16_lengths: tuple[int, ...] | None = (512, 2048)  # None: ``lengths`` (a shorter run)
  tokens: int = 4096
  width: int = 256  # D
  head_dim: int = 64  # K; H = D // K
  vocab_size: int = 256  # V of the "lm" models
  dtypes: tuple[str, ...] = ("float32", "bfloat16")
  layers: tuple[str, ...] | None = None  # None: every registered model
  repeats: int = 5  # timed runs per candidate (median reported) ...
  min_repeats: int = 3  # ... cut down to this when a group would exceed group_seconds
  group_seconds: float = 10.0
  max_call_s: float = 5.0  # a slower candidate runs once, and not at longer T
  memory_limit: float = 6e9  # bytes; candidates whose compiled peak exceeds it are skipped
  matmul_size: int = 2048
  targets: bool = True
  quick: bool = False


QUICK = Settings(lengths=(128,), bf16_lengths=None, tokens=512, width=64, head_dim=32,
                 dtypes=("float32",), repeats=3, group_seconds=2.0, max_call_s=1.0,
                 matmul_size=512, quick=True)


@dataclasses.dataclass
class Candidate:
  """One implementation in a group: a JAX function of ``args`` or a PyTorch thunk."""
  impl: str
  fn: Callable[..., Any]
  args: tuple[Any, ...] = ()
  torch: bool = False


# ----------------------------------------------------------------------------- measuring


def peak_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Peak memory of a compiled program (XLA's memory analysis), None if unavailable."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError, AttributeError):
    return None
  if stats is None:
    return None
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
           + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  # On CPU (jax 0.10) peak_memory_in_bytes leaves the temporaries out: take the larger.
  return int(max(total, getattr(stats, "peak_memory_in_bytes", 0) or 0))


def _prepare(c: Candidate, row: Row, memory_limit: float) -> Callable[[], Any] | None:
  """Compiles a JAX candidate (a PyTorch one needs nothing); None when it is skipped."""
  if c.torch:
    return c.fn
  t0 = time.perf_counter()
  compiled = jax.jit(c.fn).lower(*c.args).compile()
  row["compile_s"] = time.perf_counter() - t0
  row["peak_bytes"] = peak_bytes(compiled)
  if row["peak_bytes"] is not None and row["peak_bytes"] > memory_limit:
    row["note"] = (f"skipped: needs {row['peak_bytes'] / 1e9:.1f} GB > memory_limit "
                   f"{memory_limit / 1e9:.1f} GB")
    return None
  return lambda: jax.block_until_ready(compiled(*c.args))


def measure_group(cands: Sequence[Candidate], meta: Row, *, repeats: int, min_repeats: int,
                  group_seconds: float, memory_limit: float, max_call_s: float = math.inf,
                  progress: Progress | None = None) -> list[Row]:
  """Compiles every candidate, then times them round-robin; one row per candidate.

  ``meta`` holds the shared fields (layer, T, B, D, dtype, pass, and ``tokens``, the
  tokens one step processes). A candidate that fails or is skipped keeps its row with a
  ``note`` and no time; one whose first run took over ``max_call_s`` is not repeated
  (``runs`` 1).
  """
  rows, ready = [], []
  for c in cands:
    row = {k: v for k, v in meta.items() if k != "tokens"}
    row.update(impl=c.impl, median_s=None, tokens_per_s=None, peak_bytes=None,
               compile_s=None)
    try:
      call = _prepare(c, row, memory_limit)
    except Exception as e:  # pylint: disable=broad-except  # a peer that cannot run here
      call = None
      row["note"] = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
    rows.append(row)
    if call is not None:  # a first, untimed run (warm-up), which also says how long one is
      t0 = time.perf_counter()
      call()
      ready.append((row, call, time.perf_counter() - t0))
  times = {id(row): [t] for row, _, t in ready if t > max_call_s}
  ready = [r for r in ready if id(r[0]) not in times]
  if ready:
    one_round = sum(t for _, _, t in ready)
    n = max(min(repeats, int(group_seconds / max(one_round, 1e-9))), min_repeats)
    times.update({id(row): [] for row, _, _ in ready})
    for _ in range(n):
      for row, call, _ in ready:
        t0 = time.perf_counter()
        call()
        times[id(row)].append(time.perf_counter() - t0)
  for row in rows:
    if id(row) in times:
      row["median_s"] = statistics.median(times[id(row)])
      row["runs"] = len(times[id(row)])
      if meta.get("tokens"):
        row["tokens_per_s"] = meta["tokens"] / row["median_s"]
  if progress is not None:
    progress(_group_line(meta, rows))
  return rows


def _group_line(meta: Row, rows: Sequence[Row]) -> str:
  parts = [f"{r['impl']}={r['median_s'] * 1e3:.1f}ms" if r["median_s"] else
           f"{r['impl']}=({r.get('note', 'n/a')[:40]})" for r in rows]
  return (f"{meta['layer']} {meta['dtype']} {meta['pass']} T={meta['T']} B={meta['B']}: "
          + ", ".join(parts))


# ----------------------------------------------------------------------------- builders


def _rng_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> Array:
  return jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)


def _jax_pass(apply: Callable[..., Array], params: Any, inputs: tuple[Array, ...],
              pass_: str, rng: np.random.Generator, rest: Any = ()
              ) -> tuple[Callable[..., Any], tuple]:
  """``apply(params, rest, *inputs)`` as a forward or forward+backward function and its args.

  Forward+backward is the value and gradient of ``sum(y * ct)`` (ct a fixed random
  cotangent) with respect to ``params`` and the floating-point inputs (not ``rest``).
  """
  if pass_ == "fwd":
    return apply, (params, rest, *inputs)
  out = jax.eval_shape(apply, params, rest, *inputs)
  ct = _rng_array(rng, out.shape, jnp.float32)
  floats = tuple(i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating))

  def fwd_bwd(ct, p, rest, *xs):
    # ``rest`` is an argument of ``loss`` (not closed over) so that nnx may update its
    # counters inside the gradient's trace.
    loss = lambda p, rest, *xs: jnp.sum(apply(p, rest, *xs).astype(jnp.float32) * ct)
    return jax.value_and_grad(loss, argnums=(0, *(2 + i for i in floats)))(p, rest, *xs)
  return fwd_bwd, (ct, params, rest, *inputs)


def _module_fn(module: nnx.Module) -> tuple[Callable[..., Array], Any, Any]:
  """(apply(params, rest, *xs, **kw), params, rest): the module as a pure function."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return (lambda p, r, *xs, **kw: nnx.merge(graphdef, p, r)(*xs, **kw)), params, rest


def _torch_pass(torch_fn: Callable[..., Any], tensors: Sequence[Any], pass_: str,
                out_shape: Sequence[int], module: Any = None) -> Callable[[], Any]:
  """A PyTorch thunk: forward under ``no_grad``, or forward and ``backward(ct)``."""
  import torch  # pylint: disable=g-import-not-at-top
  if pass_ == "fwd":
    def fwd():
      with torch.no_grad():
        return torch_fn(*tensors)
    return fwd
  ct = torch.randn(*out_shape, dtype=torch.float32, device=tensors[0].device)
  for t in tensors:
    t.requires_grad_(t.is_floating_point())

  def fwd_bwd():
    for t in tensors:
      t.grad = None
    if module is not None:
      module.zero_grad(set_to_none=True)
    y = torch_fn(*tensors)
    y.float().backward(ct)
    if y.is_cuda:
      torch.cuda.synchronize()
  return fwd_bwd


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch


def _torch_device(torch: Any) -> str:
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def model_kwargs(name: str, s: Settings, T: int, dtype: Any, **extra: Any) -> dict[str, Any]:
  """Hyperparameters for one layer of ``name`` at width D: the keywords it accepts."""
  sig = inspect.signature(models.lookup(name).__init__).parameters
  D = s.width
  wanted = dict(vocab_size=s.vocab_size, in_features=D, hidden_features=D, num_layers=1,
                num_heads=max(1, D // s.head_dim), causal=True, dtype=dtype, **extra)
  kw = {k: v for k, v in wanted.items() if k in sig}
  if "max_length" in sig:
    default = sig["max_length"].default
    kw["max_length"] = max(T, default if isinstance(default, int) else 0)
  return kw


def _model_inputs(model: nnx.Module, B: int, T: int, s: Settings, dtype: Any,
                  rng: np.random.Generator) -> tuple[tuple[Array, ...], int]:
  """(inputs, tokens per step) for the model's interface."""
  if model.interface == "lm":
    return (jnp.asarray(rng.integers(0, s.vocab_size, (B, T)), jnp.int32),), B * T
  x = _rng_array(rng, (B, T, s.width), dtype)
  if model.interface == "seq2seq":
    return (_rng_array(rng, (B, T, s.width), dtype), x), 2 * B * T
  return (x,), B * T


def _torch_rnn(torch: Any, name: str, D: int, dtype: str, device: str) -> Any:
  cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[name]
  module = cls(D, D, batch_first=True).to(device)
  return module.to(torch.bfloat16) if dtype == "bfloat16" else module


def _flax_rnn(name: str, D: int, dtype: Any) -> nnx.Module:
  cell = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell, "rnn": nnx.SimpleCell}[name]
  return nnx.RNN(cell(D, D, dtype=dtype, rngs=nnx.Rngs(0)))


def layer_candidates(name: str, s: Settings, T: int, B: int, dtype: str, pass_: str,
                     rng: np.random.Generator, peers: bool = True,
                     **extra: Any) -> tuple[list[Candidate], int]:
  """seqscale's model ``name`` (its default path, and with ``peers`` its reference path
  where it has one and the peers of the recurrent layers); and the tokens per step."""
  dt = DTYPES[dtype]
  sig = inspect.signature(models.lookup(name).__init__).parameters
  variants = [("seqscale", {})]
  for key in ("impl", "attention_impl"):
    if key in sig and peers:
      variants.append(("seqscale_reference", {key: "reference"}))
  cands, tokens = [], 0
  for impl, kw in variants:
    hparams = model_kwargs(name, s, T, dt, **extra, **kw)
    try:
      model = models.create(name, rngs=nnx.Rngs(0), **hparams)
    except ValueError:  # e.g. a model that needs more than one layer: its default depth
      hparams.pop("num_layers", None)
      model = models.create(name, rngs=nnx.Rngs(0), **hparams)
    inputs, tokens = _model_inputs(model, B, T, s, dt, rng)
    apply, params, rest = _module_fn(model)
    cands.append(Candidate(impl, *_jax_pass(apply, params, inputs, pass_, rng, rest)))
  if name in ("lstm", "gru", "rnn") and peers:
    x = inputs[0]
    apply, params, rest = _module_fn(_flax_rnn(name, s.width, dt))
    # An explicit zero carry: Flax's own carry_init draws from an RNG stream, which a
    # merged module may not advance inside jax.grad.
    zero = jnp.zeros((B, s.width), dt)
    carry = (zero, zero) if name == "lstm" else zero
    flax_apply = lambda p, r, x: apply(p, r, x, initial_carry=carry)
    cands.append(Candidate(f"flax_nnx_rnn_{name}cell",
                           *_jax_pass(flax_apply, params, (x,), pass_, rng, rest)))
    torch = _torch()
    if torch is not None:
      device = _torch_device(torch)
      module = _torch_rnn(torch, name, s.width, dtype, device)
      xt = torch.tensor(np.asarray(x.astype(jnp.float32)), device=device).to(
          module.weight_hh_l0.dtype)
      fn = _torch_pass(lambda x: module(x)[0], [xt], pass_, (B, T, s.width), module)
      cands.append(Candidate(f"torch_nn_{name}", fn, torch=True))
  return cands, tokens


def attention_candidates(s: Settings, T: int, B: int, H: int, K: int, dtype: str,
                         pass_: str, rng: np.random.Generator,
                         reference: bool = True) -> list[Candidate]:
  """Causal self-attention on q, k, v [B, T, H, K]: ours, jax.nn's and torch's sdpa."""
  dt = DTYPES[dtype]
  qkv = tuple(_rng_array(rng, (B, T, H, K), dt) for _ in range(3))
  fns = {"seqscale": lambda p, r, q, k, v: bw_ops.attention(q, k, v, causal=True)}
  if reference:
    fns["seqscale_reference"] = lambda p, r, q, k, v: attn_ops.dot_product_attention(
        q, k, v, causal=True)
  impls = ["xla", "cudnn"] if jax.default_backend() == "gpu" else ["xla"]
  for impl in impls:
    fns[f"jax_nn_dpa_{impl}"] = (lambda p, r, q, k, v, impl=impl: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=impl))
  cands = [Candidate(name, *_jax_pass(fn, (), qkv, pass_, rng)) for name, fn in fns.items()]
  torch = _torch()
  if torch is not None:
    device = _torch_device(torch)
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    # torch's own layout [B, H, T, K], as ours is [B, T, H, K]: neither pays a transpose.
    ts = [torch.tensor(np.asarray(a.astype(jnp.float32)).transpose(0, 2, 1, 3).copy(),
                       device=device).to(tdt) for a in qkv]
    sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True)
    cands.append(Candidate("torch_sdpa", _torch_pass(sdpa, ts, pass_, (B, H, T, K)),
                           torch=True))
  return cands


def mha_candidates(s: Settings, T: int, B: int, dtype: str, pass_: str,
                   rng: np.random.Generator) -> list[Candidate]:
  """Causal multi-head self-attention with projections: ours and flax.nnx's."""
  from seqscale.models import transformer  # pylint: disable=g-import-not-at-top
  dt, D = DTYPES[dtype], s.width
  H = max(1, D // s.head_dim)
  x = _rng_array(rng, (B, T, D), dt)
  ours = transformer.MultiHeadAttention(D, H, dtype=dt, rngs=nnx.Rngs(0))
  theirs = nnx.MultiHeadAttention(H, D, dtype=dt, decode=False, rngs=nnx.Rngs(0))
  apply_o, params_o, rest_o = _module_fn(ours)
  apply_t, params_t, rest_t = _module_fn(theirs)
  causal = lambda p, r, x: apply_o(p, r, x, causal=True)
  flax_causal = lambda p, r, x: apply_t(p, r, x, mask=nnx.make_causal_mask(x[..., 0]))
  return [Candidate("seqscale", *_jax_pass(causal, params_o, (x,), pass_, rng, rest_o)),
          Candidate("flax_nnx_mha",
                    *_jax_pass(flax_causal, params_t, (x,), pass_, rng, rest_t))]


def matmul_candidates(n: int, dtype: str, rng: np.random.Generator) -> list[Candidate]:
  """[n, n] @ [n, n]: the machine's matmul FLOP/s, ours (XLA) and torch's."""
  a, b = (_rng_array(rng, (n, n), DTYPES[dtype]) for _ in range(2))
  cands = [Candidate("jax", lambda a, b: a @ b, (a, b))]
  torch = _torch()
  if torch is not None:
    device = _torch_device(torch)
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    at, bt = (torch.tensor(np.asarray(x.astype(jnp.float32)), device=device).to(tdt)
              for x in (a, b))
    cands.append(Candidate("torch", _torch_pass(lambda a, b: a @ b, [at, bt], "fwd", ()),
                           torch=True))
  return cands


# ----------------------------------------------------------------------------- the grid


def _meta(layer: str, T: int, B: int, D: int, dtype: str, pass_: str, tokens: int | None
          ) -> Row:
  return {"layer": layer, "T": T, "B": B, "D": D, "dtype": dtype, "pass": pass_,
          "tokens": tokens}


def _group_kw(s: Settings) -> dict[str, Any]:
  return dict(repeats=s.repeats, min_repeats=s.min_repeats, group_seconds=s.group_seconds,
              memory_limit=s.memory_limit, max_call_s=s.max_call_s)


def _failed(meta: Row, impl: str, e: Exception | None) -> Row:
  row = {k: v for k, v in meta.items() if k != "tokens"}
  row.update(impl=impl, median_s=None, tokens_per_s=None, peak_bytes=None, compile_s=None)
  if e is not None:
    row["note"] = f"failed to build: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
  return row


def matmul_rows(s: Settings, rng: np.random.Generator,
                progress: Progress | None = None) -> list[Row]:
  """The large matmul in each dtype; rows carry ``flops_per_s``."""
  n, rows = s.matmul_size, []
  for dtype in s.dtypes:
    group = measure_group(matmul_candidates(n, dtype, rng),
                          _meta("matmul", n, n, n, dtype, "fwd", None), progress=progress,
                          **_group_kw(s))
    for row in group:
      row["flops_per_s"] = row["median_s"] and 2.0 * n ** 3 / row["median_s"]
    rows += group
  return rows


def grid_layers(s: Settings) -> list[str]:
  """Registered models (or ``s.layers``), then the ops-level "attention" and "mha"."""
  return list(s.layers) if s.layers is not None else [*models.names(), "attention", "mha"]


def probe(name: str, s: Settings, rng: np.random.Generator) -> float | None:
  """Seconds per token of one float32 forward step of ``name`` at B=1 and the shortest T
  (None if it cannot run): a guard against models too slow to measure at full size."""
  T = min(s.lengths)
  try:
    cand = layer_candidates(name, s, T, 1, "float32", "fwd", rng, peers=False)[0][0]
    compiled = jax.jit(cand.fn).lower(*cand.args).compile()
    jax.block_until_ready(compiled(*cand.args))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*cand.args))
    return (time.perf_counter() - t0) / T
  except Exception:  # pylint: disable=broad-except  # the grid reports the failure itself
    return None


def grid_lengths(s: Settings, dtype: str) -> tuple[int, ...]:
  if dtype == "bfloat16" and s.bf16_lengths is not None:
    return tuple(t for t in s.lengths if t in s.bf16_lengths) or s.lengths
  return s.lengths


def grid_rows(s: Settings, rng: np.random.Generator,
              progress: Progress | None = None) -> list[Row]:
  """Every layer x dtype x T x pass, each group with its peers.

  A candidate slower than ``s.max_call_s`` at some T is not run at longer T (its row
  says so): the bench's run time stays bounded whatever a model costs.
  """
  rows = []
  H = max(1, s.width // s.head_dim)
  slow: dict[tuple[str, str, str, str], tuple[int, float]] = {}
  for name in grid_layers(s):
    per_token = None if name in ("attention", "mha") else probe(name, s, rng)
    for dtype in s.dtypes:
      for T in grid_lengths(s, dtype):
        B = max(1, s.tokens // T)
        for pass_ in PASSES:
          meta = _meta(name, T, B, s.width, dtype, pass_, B * T)
          guess = per_token and per_token * B * T * (3 if pass_ == "fwd_bwd" else 1)
          if guess and guess > 3 * s.max_call_s:
            rows.append(_failed(meta, "seqscale", None))
            rows[-1]["note"] = (f"skipped: a B=1 forward predicts ~{guess:.0f} s per step "
                                "> 3 x max_call_s")
            continue
          try:
            if name == "attention":
              cands = attention_candidates(s, T, B, H, s.head_dim, dtype, pass_, rng)
            elif name == "mha":
              cands = mha_candidates(s, T, B, dtype, pass_, rng)
            else:
              cands, meta["tokens"] = layer_candidates(name, s, T, B, dtype, pass_, rng)
          except Exception as e:  # pylint: disable=broad-except  # keep the other layers
            rows.append(_failed(meta, "seqscale", e))
            if progress is not None:
              progress(f"{name} {dtype} {pass_} T={T}: {rows[-1]['note']}")
            continue
          keep = []
          for c in cands:
            if (name, dtype, pass_, c.impl) in slow:
              t_at, secs = slow[(name, dtype, pass_, c.impl)]
              row = _failed(meta, c.impl, None)
              row["note"] = f"skipped: {secs:.1f} s per step at T={t_at} > max_call_s"
              rows.append(row)
            else:
              keep.append(c)
          group = measure_group(keep, meta, progress=progress, **_group_kw(s))
          for row in group:
            if row["median_s"] and row["median_s"] > s.max_call_s:
              slow[(name, dtype, pass_, row["impl"])] = (T, row["median_s"])
          rows += group
  return rows


# ----------------------------------------------------------------------------- targets


def _by_impl(rows: Sequence[Row]) -> dict[str, Row]:
  return {r["impl"]: r for r in rows}


def _ratio(target: str, rows: Sequence[Row], ours: str, peer: str, limit: float = 1.0) -> Row:
  """``ours`` time over ``peer`` time in one group; met when <= ``limit``."""
  by = _by_impl(rows)
  a, b = by.get(ours, {}).get("median_s"), by.get(peer, {}).get("median_s")
  ratio = a / b if a and b else None
  r0 = rows[0]
  return {"target": target, "ours": ours, "peer": peer, "T": r0["T"], "B": r0["B"],
          "dtype": r0["dtype"], "ours_s": a, "peer_s": b, "ratio": ratio,
          "met": None if ratio is None else ratio <= limit}


def lm_train_candidates(*, vocab_size: int, D: int, L: int, H: int, T: int, B: int,
                        impls: Sequence[str], rng: np.random.Generator
                        ) -> list[tuple[Candidate, Callable[..., Any]]]:
  """One AdamW training step of ``transformer_lm`` per attention impl (and its function)."""
  import optax  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray(rng.integers(0, vocab_size, (B, T + 1)), jnp.int32)
  out = []
  for impl in impls:
    model = models.create("transformer_lm", vocab_size=vocab_size, hidden_features=D,
                          num_layers=L, num_heads=H, max_length=T, attention_impl=impl,
                          rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-3)

    def step(params, opt_state, tokens, graphdef=graphdef, rest=rest, tx=tx):
      def loss_fn(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    args = (params, tx.init(params), tokens)
    out.append((Candidate(f"seqscale_{impl}", step, args), step))
  return out


def target_rows(s: Settings, rng: np.random.Generator, peak_flops: float | None = None,
                progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Measures the issue's targets; returns (their measurement rows, the target verdicts).

  With ``s.quick`` the shapes are reduced (and the verdicts say so).
  """
  q = s.quick
  rows, verdicts = [], []
  kw = dict(_group_kw(s), max_call_s=math.inf)
  # 1. lstm / gru forward+backward against torch.nn's.
  B, T, D = (8, 128, 64) if q else (32, 512, 256)
  rs = dataclasses.replace(s, width=D)
  for name in ("lstm", "gru"):
    cands, tokens = layer_candidates(name, rs, T, B, "float32", "fwd_bwd", rng)
    group = measure_group(cands, _meta(f"target_{name}", T, B, D, "float32", "fwd_bwd",
                                       tokens), progress=progress, **kw)
    rows += group
    verdicts.append(_ratio(f"{name} fwd+bwd <= torch.nn.{name.upper()}", group, "seqscale",
                           f"torch_nn_{name}"))
  # 2. causal self-attention against torch's sdpa and jax.nn's.
  B, H, K = (2, 4, 32) if q else (4, 8, 64)
  for T in ((256, 512) if q else (512, 2048)):
    cands = attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng)
    group = measure_group(cands, _meta("target_attention", T, B, H * K, "float32", "fwd_bwd",
                                       B * T), progress=progress, **kw)
    rows += group
    verdicts.append(_ratio("causal attention fwd+bwd <= torch sdpa", group, "seqscale",
                           "torch_sdpa"))
    verdicts.append(_ratio("causal attention fwd+bwd <= jax.nn.dot_product_attention",
                           group, "seqscale", "jax_nn_dpa_xla"))
  # 3. memory-efficient attention at a long T: compiled memory over T, and one run.
  B, H, K = (1, 4, 32) if q else (1, 8, 64)
  T_long = 4096 if q else 32768
  for T in (T_long // 8, T_long // 4, T_long // 2, T_long):
    for impl in ("seqscale", "seqscale_reference"):
      c = next(c for c in attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng)
               if c.impl == impl)
      row = {**_meta("target_long_attention_memory", T, B, H * K, "float32", "fwd_bwd",
                     None), "impl": impl}
      row.pop("tokens")
      row["peak_bytes"] = peak_bytes(jax.jit(c.fn).lower(*c.args).compile())
      rows.append(row)
  cands = [c for c in attention_candidates(s, T_long, B, H, K, "float32", "fwd_bwd", rng,
                                           reference=False) if c.impl == "seqscale"]
  # One run (max_call_s=0: the first run is the measurement): it takes tens of seconds.
  group = measure_group(cands, _meta("target_long_attention", T_long, B, H * K, "float32",
                                     "fwd_bwd", B * T_long), progress=progress,
                        **dict(kw, max_call_s=0.0, memory_limit=math.inf))
  rows += group
  verdicts.append({"target": f"memory-efficient attention fwd+bwd runs at T={T_long}",
                   "T": T_long, "B": B, "dtype": "float32", "ours": "seqscale",
                   "ours_s": group[0]["median_s"], "peak_bytes": group[0]["peak_bytes"],
                   "met": group[0]["median_s"] is not None})
  # 4. model FLOPs utilisation of a Transformer LM training step, next to large matmuls
  # (the peak) in the same group. FLOPs: XLA's count of the same step with the reference
  # attention (a static program; the blockwise one's loops have data-dependent trip
  # counts), less the masked half of its dense causal attention, counted analytically.
  V, D, L, H, T, B = (256, 128, 2, 4, 128, 4) if q else (8192, 512, 6, 8, 512, 8)
  pairs = lm_train_candidates(vocab_size=V, D=D, L=L, H=H, T=T, B=B,
                              impls=("auto", "reference"), rng=rng)
  sizes = (s.matmul_size,) if q else (2048, 4096)
  mms = [dataclasses.replace(matmul_candidates(n, "float32", rng)[0], impl=f"matmul_{n}")
         for n in sizes]
  group = measure_group([c for c, _ in pairs] + mms, _meta(
      "target_lm_train_step", T, B, D, "float32", "train_step", B * T), progress=progress,
                        **kw)
  rows += group
  rates = [2.0 * n ** 3 / r["median_s"] for n, r in zip(sizes, group[len(pairs):])
           if r["median_s"]]
  peak_here = max(rates) if rates else peak_flops
  dense = cost.flops(pairs[1][1], *pairs[1][0].args)
  # Reference attention: 6 [T, T] matmuls per layer (QK^T, PV forward; dV, dP, dQ, dK
  # backward), each 2 B T^2 D FLOPs; the masked upper triangle is (T - 1) / (2 T) of them.
  masked = 6 * 2.0 * B * T * T * D * L * (T - 1) / (2 * T)
  for row in group[:len(pairs)]:
    row.update(flops_dense=dense, flops=dense - masked, peak_flops_per_s=peak_here)
    if row["median_s"] and peak_here:
      row["flops_per_s"] = row["flops"] / row["median_s"]
      row["mfu"] = row["flops_per_s"] / peak_here
  ours = group[0]
  verdicts.append({"target": f"transformer_lm (d={D}, L={L}, T={T}, B={B}, V={V}) train "
                             "step MFU >= 0.5 of measured matmul peak",
                   "T": T, "B": B, "dtype": "float32", "ours": ours["impl"],
                   "ours_s": ours["median_s"], "flops": ours["flops"],
                   "peak_flops_per_s": peak_here, "mfu": ours.get("mfu"),
                   "mfu_reference_attention": group[1].get("mfu"),
                   # Against the best matmul rate of the whole run (often a quieter moment
                   # on a shared machine): the stricter figure.
                   "mfu_vs_run_peak": (ours["flops_per_s"] / max(peak_flops, peak_here)
                                       if ours.get("flops_per_s") and peak_flops else None),
                   "met": None if ours.get("mfu") is None else ours["mfu"] >= 0.5})
  if q:
    for v in verdicts:
      v["target"] += " (--quick: reduced shapes)"
  return rows, verdicts


# ----------------------------------------------------------------------------- run, save


def run(s: Settings = Settings(), progress: Progress | None = None) -> dict[str, Any]:
  """Matmul peak, the grid and (``s.targets``) the targets: one dict for ``save``."""
  for name, value in (("tokens", s.tokens), ("width", s.width), ("repeats", s.repeats),
                      ("min_repeats", s.min_repeats), ("matmul_size", s.matmul_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r}; must be an int >= 1")
  if not s.lengths or any(not isinstance(t, int) or t < 1 for t in s.lengths):
    raise ValueError(f"lengths={s.lengths!r}; must be ints >= 1")
  if s.width % s.head_dim:
    raise ValueError(f"width={s.width} must be divisible by head_dim={s.head_dim}")
  bad = [d for d in s.dtypes if d not in DTYPES]
  if bad or not s.dtypes:
    raise ValueError(f"dtypes={s.dtypes!r}; allowed: {', '.join(DTYPES)}")
  known = set(models.names()) | {"attention", "mha"}
  unknown = sorted(set(s.layers or ()) - known)
  if unknown:
    raise ValueError(f"layers {unknown}; allowed: {', '.join(sorted(known))}")
  rng = np.random.default_rng(0)
  notes = []
  if _torch() is None:
    notes.append("torch is not installed: the PyTorch peers' rows are absent")
  t0 = time.perf_counter()
  load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
  rows = matmul_rows(s, rng, progress)
  f32 = [r["flops_per_s"] for r in rows
         if r["impl"] == "jax" and r["dtype"] == "float32" and r.get("flops_per_s")]
  peak = max(f32) if f32 else None
  rows += grid_rows(s, rng, progress)
  targets, verdicts = ([], [])
  if s.targets:
    targets, verdicts = target_rows(s, rng, peak, progress)
  return {"settings": dataclasses.asdict(s), "rows": rows, "target_rows": targets,
          "targets": verdicts, "peak_flops_per_s": peak, "notes": notes,
          "wall_s": time.perf_counter() - t0, "loadavg_start": load0,
          "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}


def _fmt(v: Any, scale: float = 1.0, digits: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "NO"
  if isinstance(v, (int, float)):
    x = v * scale
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
  return str(v)


def targets_table(verdicts: Sequence[Row]) -> str:
  """Markdown: one line per target with the ratio (ours / peer time) or the number."""
  lines = ["| target | T | B | ours (s) | peer (s) | ratio ours/peer | other | met |",
           "|---|---|---|---|---|---|---|---|"]
  for v in verdicts:
    other = ""
    if v.get("mfu") is not None:
      other = (f"MFU {v['mfu']:.2f} vs the matmul peak measured alongside "
               f"({v['peak_flops_per_s'] / 1e9:.0f} GFLOP/s); {v['flops']:.3g} FLOPs/step")
      if v.get("mfu_vs_run_peak") is not None:
        other += f"; {v['mfu_vs_run_peak']:.2f} vs the run's best matmul rate"
      if v.get("mfu_reference_attention") is not None:
        other += f"; reference attention: MFU {v['mfu_reference_attention']:.2f}"
    elif v.get("peak_bytes"):
      other = f"peak {v['peak_bytes'] / 1e9:.2f} GB"
    lines.append(f"| {v['target']} | {v['T']} | {v['B']} | {_fmt(v.get('ours_s'))} | "
                 f"{_fmt(v.get('peer_s'))} | {_fmt(v.get('ratio'))} | {other} | "
                 f"{_fmt(v.get('met'))} |")
  return "\n".join(lines)


def rows_table(rows: Sequence[Row]) -> str:
  """Markdown: every row, with its time relative to ``seqscale`` in the same group."""
  groups: dict[tuple, dict[str, Row]] = {}
  for r in rows:
    groups.setdefault((r["layer"], r["T"], r["B"], r["dtype"], r["pass"]), {})[r["impl"]] = r
  lines = ["| layer | dtype | pass | T | B | impl | ms/step | tokens/s | peak MB | "
           "compile s | x seqscale |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "median_s" not in r:
      continue
    ours = groups[(r["layer"], r["T"], r["B"], r["dtype"], r["pass"])].get("seqscale", {})
    rel = (r["median_s"] / ours["median_s"] if r["median_s"] and ours.get("median_s")
           else None)
    ms = _fmt(r["median_s"], 1e3) if r["median_s"] else r.get("note", "-")
    lines.append(f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['T']} | {r['B']} | "
                 f"{r['impl']} | {ms} | {_fmt(r['tokens_per_s'])} | "
                 f"{_fmt(r['peak_bytes'], 1e-6)} | {_fmt(r['compile_s'])} | {_fmt(rel)} |")
  return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
  """The whole report: peak FLOP/s, targets, then every measurement."""
  peak = result.get("peak_flops_per_s")
  parts = [f"Matmul peak (jax, float32, {result['settings']['matmul_size']}^2): "
           f"{peak / 1e9:.1f} GFLOP/s" if peak else "Matmul peak: not measured"]
  parts += [f"Note: {n}" for n in result.get("notes", [])]
  if result.get("targets"):
    parts += ["", "## Targets (time ratios in the same run; < 1 is faster than the peer)",
              "", targets_table(result["targets"])]
  parts += ["", "## Every layer (median of the runs; compile time apart)", "",
            rows_table(result["rows"])]
  return "\n".join(parts) + "\n"


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_tokens_per_s(rows: Sequence[Row], path: str, dtype: str = "float32",
                      pass_: str = "fwd_bwd") -> None:
  """tokens/s over T, one panel per layer, one line per implementation."""
  plt = _plt()
  rows = [r for r in rows if r["dtype"] == dtype and r["pass"] == pass_
          and r.get("tokens_per_s") and r["layer"] != "matmul"]
  layers = sorted({r["layer"] for r in rows})
  if not layers:
    return
  cols = 4
  nrows = math.ceil(len(layers) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
  for ax, layer in zip(axes.flat, layers):
    for impl in sorted({r["impl"] for r in rows if r["layer"] == layer}):
      pts = sorted((r["T"], r["tokens_per_s"]) for r in rows
                   if r["layer"] == layer and r["impl"] == impl)
      ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set(title=layer, xscale="log", yscale="log", xlabel="T")
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(layers):]:
    ax.axis("off")
  axes[0][0].set_ylabel(f"tokens/s ({dtype}, {pass_})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_targets(verdicts: Sequence[Row], path: str) -> None:
  """Bar chart of the targets' time ratios (ours / peer), a line at 1."""
  vs = [v for v in verdicts if v.get("ratio")]
  if not vs:
    return
  plt = _plt()
  fig, ax = plt.subplots(figsize=(8, 0.5 * len(vs) + 1))
  labels = [f"{v['target']} (T={v['T']})" for v in vs]
  ax.barh(range(len(vs)), [v["ratio"] for v in vs],
          color=["tab:green" if v["met"] else "tab:red" for v in vs])
  ax.axvline(1.0, color="k", lw=1)
  ax.set_yticks(range(len(vs)), labels, fontsize=7)
  ax.set_xlabel("time ours / peer (same run)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plain(v: Any) -> Any:
  if isinstance(v, dict):
    return {str(k): _plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  if isinstance(v, (np.floating, np.integer)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def save(workdir: str, result: dict[str, Any], context: dict[str, Any]) -> str:
  """Writes results.json, results.md and the plots into ``workdir``; returns the markdown."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(_plain({"context": context, **result}), f, indent=1)
  md = markdown(result)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  for dtype in result["settings"]["dtypes"]:
    plot_tokens_per_s(result["rows"], os.path.join(workdir, f"tokens_per_s_{dtype}.png"),
                      dtype)
  plot_targets(result.get("targets", []), os.path.join(workdir, "targets.png"))
  return md


def versions() -> dict[str, Any]:
  """Versions and machine facts beyond the run context: torch, CPU model and cores."""
  out: dict[str, Any] = {"cpu_count": os.cpu_count()}
  torch = _torch()
  if torch is not None:
    out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  try:
    with open("/proc/cpuinfo") as f:
      out["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                        None)
  except OSError:
    pass
  return out
