"""The bench's candidates: one layer of each seqscale family and its peers, ready to time.

Each builder returns ``analysis.timing.Candidate``s for one group (one layer, length, batch,
dtype and pass): seqscale's own call, and where one exists the same computation in
``torch.nn`` (LSTM, GRU, RNN, ``scaled_dot_product_attention``), in ``flax.nnx`` (RNN cells,
``MultiHeadAttention``) and ``jax.nn.dot_product_attention``. PyTorch is optional. On a
GPU (JAX's backend ``gpu`` and ``torch.cuda`` available) the PyTorch peers run on CUDA:
``torch.nn.LSTM``/``GRU`` there are cuDNN's fused RNN kernels, and in bfloat16 the
attention group adds ``torch_sdpa_flash`` (sdpa restricted to its FlashAttention kernel).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqscale import models
from seqscale.analysis.timing import Candidate
from seqscale.ops import attention as attn_ops
from seqscale.ops import blockwise_attention as bw_ops

if TYPE_CHECKING:
  from seqscale.studies.bench import Settings

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
    # ``rest`` is an argument of ``loss`` (not closed over), copied inside the gradient's
    # trace, so that nnx may update its counters there (an RNG drawn in the forward pass,
    # e.g. MoE gate noise; without the copy flax raises TraceContextError).
    loss = lambda p, rest, *xs: jnp.sum(
        apply(p, jax.tree.map(jnp.copy, rest), *xs).astype(jnp.float32) * ct)
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
        y = torch_fn(*tensors)
      if y.is_cuda:  # CUDA runs asynchronously: time the work, not its launch
        torch.cuda.synchronize()
      return y
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


def torch_module():
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
    torch = torch_module()
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
  torch = torch_module()
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
    if device == "cuda" and dtype == "bfloat16":  # FlashAttention takes half precision only
      flash = _flash_only(sdpa, ts)
      if flash is not None:
        cands.append(Candidate("torch_sdpa_flash", _torch_pass(flash, ts, pass_, (B, H, T, K)),
                               torch=True))
  return cands


def _flash_only(sdpa: Callable[..., Any], tensors: Sequence[Any]) -> Callable[..., Any] | None:
  """``sdpa`` restricted to PyTorch's FlashAttention kernel; None where that kernel cannot
  run these tensors (tried once here, since a failing PyTorch peer would stop the group)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import attention  # pylint: disable=g-import-not-at-top

  def flash(q, k, v):
    with attention.sdpa_kernel(attention.SDPBackend.FLASH_ATTENTION):
      return sdpa(q, k, v)
  try:
    with torch.no_grad():
      flash(*tensors)
  except RuntimeError:
    return None
  return flash


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


def matmul_chain(n: int) -> int:
  """Products per timed call of an [n, n] matmul: (2048 / n)^3 (at most 512) below n = 2048,
  so every call from n = 256 up does at least 2 * 2048^3 FLOPs. On a loaded machine a call
  of a millisecond otherwise catches a lucky time slice that a call of seconds (a training
  step) cannot."""
  return min(512, max(1, (2048 // n) ** 3))


def matmul_candidates(n: int, dtype: str, rng: np.random.Generator) -> list[Candidate]:
  """``matmul_chain(n)`` chained [n, n] @ [n, n] products (c = c @ b, b scaled by n^-1/2 to
  keep c's size): the machine's matmul FLOP/s, ours (XLA) and torch's."""
  k = matmul_chain(n)
  a = _rng_array(rng, (n, n), DTYPES[dtype])
  b = (_rng_array(rng, (n, n), jnp.float32) / np.sqrt(n)).astype(DTYPES[dtype])
  chain = lambda a, b: a @ b if k == 1 else jax.lax.fori_loop(0, k, lambda i, c: c @ b, a)
  cands = [Candidate("jax", chain, (a, b))]
  torch = torch_module()
  if torch is not None:
    device = _torch_device(torch)
    tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    at, bt = (torch.tensor(np.asarray(x.astype(jnp.float32)), device=device).to(tdt)
              for x in (a, b))

    def torch_chain(c, b):
      for _ in range(k):
        c = c @ b
      return c
    cands.append(Candidate("torch", _torch_pass(torch_chain, [at, bt], "fwd", ()),
                           torch=True))
  return cands


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
