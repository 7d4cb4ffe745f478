"""The C++ attention kernel (``ops.native_attention``): that it builds here, its outputs and
gradients against the einsum reference, jax.nn and PyTorch's SDPA (padded and ragged
lengths, every head-dim panel width, any scale), forward mode and vmap through the
blockwise kernel's rules, the CPU's choice of it, and what it refuses.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.ops import attention as attn_ref
from seqscale.ops import native_attention as native
from tests.conftest import FAST_COMPILE
from tests.test_fast_paths import _close, _qkv, _value_and_grads


def test_native_kernel_builds_here():
  # A machine without a C++ compiler runs the blockwise kernel instead; this one must not.
  assert native.available(), native.unavailable_reason()
  assert native.library_path(native._compiler()).exists()


# T = 13 and 1 pad to one 128-row block; 300 to three (a ragged last block, keys past the
# diagonal in the middle of a panel); 256 needs no padding. K = 48 is a 32- and a 16-wide
# panel, 128 two 64-wide ones. Scales other than 1/sqrt(K), negative included.
@pytest.mark.parametrize("T,K,scale", [
    (13, 16, None), (1, 64, None), (300, 64, None), (256, 48, 0.7), (130, 128, -0.3),
    (140, 32, 2.0)])
def test_flash_cpu_equals_reference(T, K, scale, rng):
  q, k, v = _qkv(rng, B=2, T=T, S=T, H=3, K=K)
  got, want = jax.jit(lambda q, k, v: (
      _value_and_grads(lambda q, k, v: native.flash_attention(q, k, v, scale=scale), q, k, v),
      _value_and_grads(lambda q, k, v: attn_ref.dot_product_attention(
          q, k, v, causal=True, scale=scale), q, k, v)))(q, k, v)
  # Scores of larger magnitude (scale 2, K = 32) give larger gradients; the bound is
  # relative to them.
  _close(got, want, atol=2e-5 * (1 + abs(scale or 0) * np.sqrt(K)), rtol=2e-5)


def test_flash_cpu_equals_jax_nn_and_torch_sdpa(rng):
  torch = pytest.importorskip("torch")
  q, k, v = _qkv(rng, B=2, T=200, S=200, H=4, K=64)
  ct = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * ct)
  ours = jax.jit(jax.value_and_grad(loss(native.flash_attention), argnums=(0, 1, 2)))
  xla = jax.jit(jax.value_and_grad(loss(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="xla")), argnums=(0, 1, 2)))
  (val, grads), (val_x, grads_x) = ours(q, k, v), xla(q, k, v)
  _close((val, grads), (val_x, grads_x), atol=5e-5, rtol=2e-5)
  tq, tk, tv = (torch.tensor(np.asarray(x).transpose(0, 2, 1, 3).copy(), requires_grad=True)
                for x in (q, k, v))
  out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
  out.backward(torch.tensor(np.asarray(ct).transpose(0, 2, 1, 3).copy()))
  np.testing.assert_allclose(np.asarray(native.flash_attention(q, k, v)),
                             out.detach().numpy().transpose(0, 2, 1, 3), atol=2e-6, rtol=2e-5)
  for g, t in zip(grads, (tq, tk, tv)):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy().transpose(0, 2, 1, 3),
                               atol=2e-5, rtol=2e-5)


def test_flash_cpu_forward_mode_and_vmap(rng):
  # Forward mode is the blockwise kernel's JAX tangent around the C++ forward; a
  # Hessian-vector product runs both passes of the kernel inside a jvp.
  q, k, v = _qkv(rng, B=1, T=20, S=20, H=2, K=16)
  tq, tk, tv = _qkv(rng, B=1, T=20, S=20, H=2, K=16)
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                     implementation="xla")
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  jvp = lambda f: jax.jvp(f, (q, k, v), (tq, tk, tv))
  hvp = lambda f: jax.jvp(jax.grad(loss(f), argnums=(0, 1, 2)), (q, k, v), (tq, tk, tv))[1]
  _close(jax.jit(lambda: jvp(native.flash_attention))(), jax.jit(lambda: jvp(ref))())
  _close(jax.jit(lambda: hvp(native.flash_attention))(), jax.jit(lambda: hvp(ref))(),
         atol=5e-5)
  # vmap over a leading axis: each slice as its own call.
  qs, ks, vs = (jnp.stack([x, x[:, ::-1]]) for x in (q, k, v))
  got = jax.vmap(native.flash_attention)(qs, ks, vs)
  for i in range(2):
    _close(got[i], attn_ref.dot_product_attention(qs[i], ks[i], vs[i], causal=True))


def test_cpu_runs_flash_cpu_past_the_chunked_path(monkeypatch):
  choose = lambda **kw: attn_ref.choose_impl(
      "auto", **{"backend": "cpu", "batch_heads": 32, "num_queries": 512, "causal": True,
                 **kw})
  assert choose() == "flash_cpu"
  assert choose(num_queries=8192) == "flash_cpu"
  assert choose(num_queries=256) == "flash_cpu"
  assert choose(num_queries=native.NATIVE_FROM - 1) == "chunked"
  # Cases the kernel does not take run the blockwise kernel.
  assert choose(dtype=jnp.bfloat16) == "blockwise"
  assert choose(head_dim=24) == "blockwise"
  assert choose(causal=False) == "blockwise"
  assert choose(key_padding=True) == "blockwise"
  assert choose(local_window=8) == "blockwise"
  assert choose(offset_zero=False) == "blockwise"
  assert choose(num_keys=600) == "blockwise"
  assert choose(backend="gpu") == "xla"
  line = attn_ref.describe_choice(num_queries=512, causal=True, batch_heads=32,
                                  backend="cpu")
  assert line.startswith("attention: flash_cpu (CPU: the C++ kernel"), line
  # Where the kernel does not build, "auto" runs the blockwise kernel.
  monkeypatch.setattr(native, "available", lambda: False)
  assert choose() == "blockwise"


def test_flash_cpu_refuses_what_it_does_not_compute(rng):
  q, k, v = _qkv(rng, T=13, S=13, K=16)
  for kw, match in ((dict(), "causal self-attention"),
                    (dict(causal=True, query_offset=2), "query offset 0"),
                    (dict(causal=True, local_window=3), "without key padding or window"),
                    (dict(causal=True, mask=jnp.ones((1, 1, 13, 13), bool)), "no `mask`")):
    with pytest.raises(ValueError, match=match):
      attn_ref.attention(q, k, v, impl="flash_cpu", **kw)
  with pytest.raises(ValueError, match=r"impl='flash_cpu': dtype bfloat16"):
    native.flash_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  q24, k24, v24 = _qkv(rng, T=13, S=13, K=24)
  with pytest.raises(ValueError, match=r"head dim 24: .*multiples of 16 up to 128"):
    native.flash_attention(q24, k24, v24)
  with pytest.raises(ValueError, match=r"expected three equal"):
    native.flash_attention(q, k[:, :5], v[:, :5])


def test_flash_cpu_refuses_another_backend(rng, monkeypatch):
  q, k, v = _qkv(rng, T=13, S=13, K=16)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match=r"impl='flash_cpu': the kernel runs on the CPU "
                     r"backend, not gpu"):
    native.flash_attention(q, k, v)


def test_build_says_why_it_cannot(tmp_path, monkeypatch):
  monkeypatch.setenv("SEQSCALE_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler: .*no-such-compiler"):
    native.build()
  monkeypatch.delenv("CXX")
  broken = tmp_path / "broken.cc"
  broken.write_text("this is not C++\n")
  monkeypatch.setattr(native, "SOURCE", broken)
  with pytest.raises(RuntimeError, match="failed on broken.cc"):
    native.build()
  assert not list((tmp_path / "native").glob("*.tmp"))  # nothing half-written left behind
  monkeypatch.setenv("SEQSCALE_NATIVE", "0")
  assert native._load.__wrapped__() == "turned off by SEQSCALE_NATIVE=0"


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
  monkeypatch.setenv("SEQSCALE_CACHE", str(tmp_path))
  path = native.build()
  assert path.parent == tmp_path / "native" and path.exists()
  stamp = os.stat(path).st_mtime_ns
  assert native.build() == path and os.stat(path).st_mtime_ns == stamp  # not rebuilt
  assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_transformer_lm_with_flash_cpu_equals_reference(rng):
  kw = dict(vocab_size=11, hidden_features=16, num_layers=1, num_heads=1)  # K = 16
  ours = models.create("transformer_lm", rngs=nnx.Rngs(0), attention_impl="flash_cpu", **kw)
  ref = models.create("transformer_lm", rngs=nnx.Rngs(0), attention_impl="reference", **kw)
  tokens = jnp.asarray(rng.integers(0, 11, (2, 10)), jnp.int32)

  def fn(model):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return lambda p: nnx.merge(graphdef, p, rest)(tokens)

  params = nnx.state(ours, nnx.Param)
  got, want = jax.jit(lambda p: (_value_and_grads(fn(ours), p), _value_and_grads(fn(ref), p)),
                      compiler_options=FAST_COMPILE)(params)
  _close(got, want)
