"""Causal attention on the CPU through a C++ kernel, built on first use.

XLA's batched matmul at attention's block shapes ([64..512] x 64, batched over B * H) runs
at 0.56 to 0.82 of torch.bmm's rate on the same shapes, so no blocking of the pure-JAX kernels
(ops.blockwise_attention, ops.chunked_attention) reaches PyTorch's SDPA past a few hundred
positions (RESULTS.md, "Causal attention against PyTorch's SDPA"). ``native/
flash_attention.cc`` computes the same forward and reverse passes as the blockwise kernel,
with every product one register-tiled loop and the softmax fused between them, and runs as
an XLA FFI custom call on XLA's own CPU thread pool.

  flash_attention(q, k, v, scale=None)   causal, float32, [B, T, H, K] -> [B, T, H, K]

The math and the differentiation are those of ``ops.blockwise_attention``: its custom JVP
(forward mode, reverse mode as its transpose, Hessian-vector products) with this kernel's
forward and reverse passes, and the blockwise tangent in JAX for forward mode.

Scope: causal self-attention (T == S, query offset 0), float32, K a multiple of 16 up to
128, no key padding or window; T is padded to a multiple of 64 (the padded keys are after
every real query, so causality hides them). ``ops.attention.choose_impl`` picks it on the
CPU from ``NATIVE_FROM`` positions where ``available()``.

Build: the machine's C++ compiler (``$CXX``, else ``c++``) with ``-O3 -march=native``, once
per source, compiler and CPU, into ``$SEQSCALE_CACHE`` (default ``~/.cache/seqscale``);
the library is written under a temporary name and renamed, so concurrent first uses (test
workers, hosts sharing a home) never load a half-written file. Without a compiler, or with
``SEQSCALE_NATIVE=0``, ``available()`` is False, ``unavailable_reason()`` says why, and
"auto" runs the blockwise kernel.

Memory: linear in T, as the blockwise kernel's. Besides its outputs, the kernel keeps per
thread the packed operands of one head (``scratch_bytes``), outside XLA's buffers and so
outside ``compiled.memory_analysis()``. Under ``jax.vmap`` each slice is one call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SOURCE = pathlib.Path(__file__).parent / "native" / "flash_attention.cc"
ALIGN = 64  # T is padded to a multiple of this (kAlign in the source)
# "auto" runs the kernel from this many positions (same-process timings alternating with
# the chunked path and SDPA, B=4, H=8, K=64, causal fwd+bwd, medians of 15 rounds: T=128
# 3.6 to 4.3 ms against the chunked path's 4.3 to 5.4; T=96, padded to 128, 4.2 to 4.6
# against 3.6 to 3.8).
NATIVE_FROM = 128
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_FORWARD, _BACKWARD = "seqscale_flash_forward", "seqscale_flash_backward"


def _cpu_signature() -> str:
  """The CPU model and flags: a library built with -march=native runs only where they
  match."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def cache_dir() -> pathlib.Path:
  root = os.environ.get("SEQSCALE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "seqscale")
  return pathlib.Path(root) / "native"


def _compiler() -> str | None:
  return shutil.which(os.environ.get("CXX", "c++"))


def library_path(compiler: str) -> pathlib.Path:
  """Where the build for this source, compiler, flags and CPU lives."""
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           check=False, timeout=60).stdout
  key = hashlib.sha256("\0".join(
      [SOURCE.read_text(), version, " ".join(FLAGS), jax.ffi.include_dir(),
       _cpu_signature()]).encode()).hexdigest()[:16]
  return cache_dir() / f"flash_attention-{key}.so"


def build() -> pathlib.Path:
  """The compiled library, built here if it is not in the cache; raises RuntimeError with
  the reason (one line) where it cannot be built."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError(f"no C++ compiler: {os.environ.get('CXX', 'c++')!r} is not on PATH "
                       "(set $CXX)")
  path = library_path(compiler)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
      first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
      raise RuntimeError(f"{os.path.basename(compiler)} failed on {SOURCE.name}: {first}")
    os.replace(tmp, path)  # atomic: a concurrent build writes the same bytes
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the kernel once per process: None, or why not."""
  if os.environ.get("SEQSCALE_NATIVE", "1") == "0":
    return "turned off by SEQSCALE_NATIVE=0"
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
  jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.SeqscaleFlashForward),
                              platform="cpu")
  jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.SeqscaleFlashBackward),
                              platform="cpu")
  return None


def available() -> bool:
  """Whether the kernel is built and registered (building it on the first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """None where ``available()``, else one line saying why not."""
  return _load()


def supports(*, head_dim: int, dtype, causal: bool, self_attention: bool,
             key_padding: bool, local_window: int | None, offset_zero: bool) -> str | None:
  """None where the kernel computes this attention, else the first reason it does not."""
  if jnp.dtype(dtype) != jnp.float32:
    return f"dtype {jnp.dtype(dtype).name}: the kernel is float32"
  if not causal or not self_attention or not offset_zero:
    return "the kernel is causal self-attention at query offset 0"
  if key_padding or local_window is not None:
    return "the kernel takes no key padding or window"
  if head_dim % 16 or head_dim > 128:
    return f"head dim {head_dim}: the kernel takes multiples of 16 up to 128"
  return None


def _pad_time(x: Array, T: int) -> Array:
  """[B, t, ...] zero-padded to [B, T, ...]."""
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, T - x.shape[1])
  return jnp.pad(x, pad) if T != x.shape[1] else x


def forward(q: Array, k: Array, v: Array, scale: float) -> tuple[Array, Array]:
  """out [B, T, H, K] and lse [B, H, T] of causal attention. T is padded to a multiple of
  ALIGN for the call: the padded keys follow every real query, so causality hides them.
  The calls run where ``available()``."""
  B, T, H, _ = q.shape
  Tp = padded_length(T)
  out = jax.ShapeDtypeStruct((B, Tp, H, q.shape[-1]), jnp.float32)
  lse = jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)
  call = jax.ffi.ffi_call(_FORWARD, (out, lse), vmap_method="sequential")
  out, lse = call(*(_pad_time(x, Tp) for x in (q, k, v)), scale=np.float32(scale))
  return out[:, :T], lse[..., :T]


def backward(q: Array, k: Array, v: Array, out: Array, lse: Array, dout: Array,
             scale: float) -> tuple[Array, Array, Array]:
  """dq, dk, dv for the cotangent dout of ``forward``'s out."""
  T = q.shape[1]
  Tp = padded_length(T)
  q, k, v, out, dout = (_pad_time(x.astype(jnp.float32), Tp) for x in (q, k, v, out, dout))
  # Padded query rows: lse = inf makes their weights 0, and their cotangent is 0.
  lse = jnp.pad(lse, ((0, 0), (0, 0), (0, Tp - T)), constant_values=jnp.inf)
  delta = jnp.einsum("BTHK,BTHK->BHT", dout, out)  # rowsum(dout * out)
  grad = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  call = jax.ffi.ffi_call(_BACKWARD, (grad, grad, grad), vmap_method="sequential")
  return tuple(g[:, :T] for g in call(q, k, v, dout, lse, delta, scale=np.float32(scale)))


def flash_attention(q_BTHK: Array, k_BSHK: Array, v_BSHK: Array, *,
                    scale: float | None = None) -> Array:
  """Causal attention of float32 q, k, v [B, T, H, K] through the C++ kernel; as
  ``ops.attention.dot_product_attention(q, k, v, causal=True, scale=scale)``.

  Raises ValueError (one line) where the kernel does not take these inputs or is not
  available on this machine.
  """
  from seqscale.ops import blockwise_attention  # pylint: disable=g-import-not-at-top
  if q_BTHK.ndim != 4 or k_BSHK.shape != q_BTHK.shape or v_BSHK.shape != q_BTHK.shape:
    raise ValueError(f"q, k, v shapes {q_BTHK.shape}, {k_BSHK.shape}, {v_BSHK.shape}: "
                     "expected three equal [B, T, H, K]")
  why = supports(head_dim=q_BTHK.shape[-1], dtype=q_BTHK.dtype, causal=True,
                 self_attention=True, key_padding=False, local_window=None,
                 offset_zero=True)
  if why is None and jax.default_backend() != "cpu":
    why = f"the kernel runs on the CPU backend, not {jax.default_backend()}"
  if why is None and not available():
    why = f"the C++ kernel is not available: {unavailable_reason()}"
  if why is not None:
    raise ValueError(f"impl='flash_cpu': {why}")
  return blockwise_attention.native_causal(q_BTHK, k_BSHK, v_BSHK, scale=scale)


def padded_length(T: int) -> int:
  return -(-T // ALIGN) * ALIGN


def scratch_bytes(T: int, K: int, threads: int | None = None) -> int:
  """Memory the kernel holds outside XLA's buffers (so outside ``compiled.
  memory_analysis()``): per thread, the packed operands of one head (forward: k and v, 2 T
  K floats; reverse: q, do, k twice over and dq, 6 T K) and fixed block buffers, kept
  between calls; ``threads`` defaults to the CPU count (XLA's intra-op pool)."""
  threads = (os.cpu_count() or 1) if threads is None else threads
  fixed = 4 * (64 * 128 * 2 + 64 * 2 + 128 * 128 * 2 + 128 * 128 * 2 + 128 * 64)
  return threads * (4 * 8 * padded_length(T) * K + fixed)
