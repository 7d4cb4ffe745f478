"""ops.newton: nonlinear cells in parallel over time (DEER, quasi-DEER, ELK-style damping).

Numbers against ``jax.lax.scan`` (``ops.recurrent``): states, gradients, iteration counts,
non-convergence handling and sequential depth.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale.analysis.depth import sequential_depth
from seqscale.ops import newton
from seqscale.ops import recurrent as ref
from tests.conftest import FAST_COMPILE

CELLS = ("rnn", "gru", "lstm")


def _params(cell, I, D, gain, dtype=np.float32, seed=0):
  """PyTorch-layout weights; ``gain`` scales w_hh (0.5: contracting, >= 2: chaotic)."""
  rng = np.random.default_rng(seed)
  G = ref.NUM_GATES[cell]
  p = {"w_ih": rng.standard_normal((I, G * D)) / np.sqrt(I),
       "w_hh": gain * rng.standard_normal((D, G * D)) / np.sqrt(D),
       "b_ih": 0.1 * rng.standard_normal(G * D), "b_hh": 0.1 * rng.standard_normal(G * D)}
  return {k: jnp.asarray(v, dtype) for k, v in p.items()}


def _x(shape, scale=1.0, dtype=np.float32, seed=1):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), dtype)


def _err(a, b):
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _against_scan(cell, dtype):
  """Max abs error (states, final carry) and iterations of every method, padded batch."""
  p = _params(cell, 3, 4, 0.5, dtype)
  x = _x((2, 10, 3), dtype=dtype)
  lengths = jnp.array([10, 6])  # example 0 unpadded, example 1 padded
  y_ref, c_ref = ref.run(cell, x, p, lengths_B=lengths)
  out = {}
  for method in newton.METHODS:
    run = jax.jit(functools.partial(newton.run, cell, method=method, on_fail="raise"),
                  compiler_options=FAST_COMPILE)
    y, c, info = run(x, p, lengths_B=lengths)
    assert bool(info.converged) and not bool(info.fell_back)
    out[method] = (_err(y, y_ref), _err(c, c_ref), int(info.iterations))
  return out


@pytest.mark.parametrize("cell", CELLS)
def test_methods_equal_scan_float32(cell):
  for method, (err_y, err_c, iters) in _against_scan(cell, jnp.float32).items():
    assert err_y < 1e-5 and err_c < 1e-5, (method, err_y, err_c)
    assert 1 <= iters <= 10, (method, iters)


@pytest.mark.parametrize("cell", CELLS)
def test_methods_equal_scan_float64(cell):
  with jax.enable_x64(True):
    for method, (err_y, err_c, iters) in _against_scan(cell, jnp.float64).items():
      assert err_y < 1e-9 and err_c < 1e-9, (method, err_y, err_c)
      assert 1 <= iters <= 10, (method, iters)


def test_user_cell_with_pytree_carry():
  """Any cell(carry, x_t) -> carry, here a dict carry of two widths, equals lax.scan."""
  w = _x((5, 5), 0.3, seed=3)

  def cell(c, x_B2):
    z = jnp.concatenate([c["a"], c["b"]], axis=-1) @ w
    return {"a": jnp.tanh(z[:, :2] + x_B2), "b": jnp.sin(z[:, 2:]) * 0.5}

  h0 = {"a": jnp.zeros((2, 2)), "b": jnp.ones((2, 3))}
  xs = _x((7, 2, 2), seed=4)
  want = jax.lax.scan(lambda c, x: (cell(c, x),) * 2, h0, xs)[1]
  for method in newton.METHODS:
    got, info = newton.parallel_scan(cell, h0, xs, method=method, on_fail="raise")
    assert _err(got, want) < 1e-5 and bool(info.converged), method


def test_deer_gradients_equal_scan_gradients():
  """Implicit differentiation: reverse mode (params, inputs, h0) and forward mode; ELK is
  exact too, quasi-DEER differentiates with its diagonal Jacobians (measured, not exact)."""
  x = _x((2, 8, 3))
  w = _x((2, 8, 4), seed=2)
  for cell in CELLS:
    p = _params(cell, 3, 4, 0.5)
    h0 = jax.tree.map(lambda a: a + 0.3, ref.zero_carry(cell, 2, 4))

    def loss(fn, p, x, h0):
      y, c = fn(x, p, h0)[:2]
      return jnp.sum(y * w) + jnp.sum(jax.tree.leaves(c)[-1] ** 2)

    grad = lambda fn: jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)),
                              compiler_options=FAST_COMPILE)(p, x, h0)
    want = grad(functools.partial(ref.run, cell))
    methods = ("deer", "elk", "quasi_deer") if cell == "gru" else ("deer",)
    got = {m: grad(functools.partial(newton.run, cell, method=m, on_fail="raise"))
           for m in methods}
    assert _err(got["deer"], want) < 2e-5, cell
    if cell == "gru":
      norm = max(float(np.max(np.abs(v))) for v in jax.tree.leaves(want))
      assert _err(got["elk"], want) < 2e-5
      quasi_rel = _err(got["quasi_deer"], want) / norm
      assert 1e-3 < quasi_rel < 1.0, quasi_rel  # 0.11 measured (T=8, gain 0.5)
  # forward mode, the LSTM (two-part carry)
  tangent = jax.tree.map(jnp.ones_like, p)
  _, want = jax.jvp(lambda p: ref.run("lstm", x, p)[0], (p,), (tangent,))
  _, got = jax.jit(lambda p, t: jax.jvp(lambda p: newton.run("lstm", x, p)[0], (p,), (t,)),
                   compiler_options=FAST_COMPILE)(p, tangent)
  assert _err(got, want) < 2e-5


def test_chaotic_cell_converges_within_T_iterations():
  """After k iterations the first k states are exact: T iterations always suffice."""
  T = 12
  p = _params("rnn", 3, 4, 3.0)
  x = _x((2, T, 3))
  y_ref, _ = ref.run("rnn", x, p)
  for method in newton.METHODS:
    y, _, info = newton.run("rnn", x, p, method=method, max_iters=T, on_fail="raise")
    assert bool(info.converged) and int(info.iterations) <= T, method
    assert _err(y, y_ref) < 1e-5, method


def test_elk_converges_where_deer_diverges():
  """tanh RNN, gain 1.5, T=1000: contracting along the solution (Lyapunov ~ -0.17) but
  DEER's first linearisation overflows float32; the damped steps stay finite."""
  p = _params("rnn", 3, 4, 1.5)
  x = _x((1, 1000, 3))
  y_ref, _ = ref.run("rnn", x, p)
  with pytest.raises(FloatingPointError, match=r"method='deer'.*residual=inf"):
    newton.run("rnn", x, p, method="deer", on_fail="raise")
  y, _, info = newton.run("rnn", x, p, method="elk", on_fail="raise")
  assert bool(info.converged) and int(info.iterations) < 100  # 82 measured
  # float32 rounding over 1000 steps, at a residual of 16 epsilons: 1.5e-5 measured
  assert _err(y, y_ref) < 5e-5


def test_non_convergence_is_never_silent():
  p = _params("lstm", 3, 4, 0.5)
  x = _x((2, 10, 3))
  y_ref, _ = ref.run("lstm", x, p)
  y, _, info = jax.jit(lambda x: newton.run("lstm", x, p, max_iters=1))(x)
  assert not bool(info.converged) and bool(info.fell_back)
  assert float(info.residual) > 1e-3 and _err(y, y_ref) == 0
  with pytest.raises(FloatingPointError, match="residual="):
    newton.run("lstm", x, p, max_iters=1, on_fail="raise")
  with pytest.raises(Exception, match="did not converge: residual="):  # under jit
    jax.block_until_ready(jax.jit(
        lambda x: newton.run("lstm", x, p, fixed_iters=1, on_fail="raise"))(x))


def test_depth_grows_with_log_T_not_T():
  """Sequential depth (analysis.depth) with the iteration count fixed, T = 16 and 256."""
  p = _params("lstm", 3, 4, 0.5)
  k = 2
  depth = {}
  for T in (16, 256):
    x = jax.ShapeDtypeStruct((1, T, 3), jnp.float32)
    depth["scan", T] = sequential_depth(lambda x: ref.run("lstm", x, p)[0], x)
    for m in newton.METHODS:
      depth[m, T] = sequential_depth(
          lambda x: newton.run("lstm", x, p, method=m, fixed_iters=k, on_fail="raise")[0], x)
  assert depth["scan", 256] >= 15 * depth["scan", 16]  # 2049 vs 129 measured
  for m in newton.METHODS:
    growth = (depth[m, 256] - depth[m, 16]) / k  # 16 (deer, quasi_deer), 16 (elk)
    assert 0 < growth <= 4 * np.log2(16) + 2, (m, depth[m, 16], depth[m, 256])


def test_bad_input_names_the_argument():
  h0, xs = jnp.zeros((2, 3)), jnp.zeros((5, 2, 1))
  cell = lambda c, x: jnp.tanh(c + x)
  with pytest.raises(ValueError, match=r"method='newton'; allowed: 'deer', 'quasi_deer'"):
    newton.parallel_scan(cell, h0, xs, method="newton")
  for name in ("max_iters", "fixed_iters"):
    with pytest.raises(ValueError, match=rf"{name}=0; must be None or an int >= 1"):
      newton.parallel_scan(cell, h0, xs, **{name: 0})
  with pytest.raises(ValueError, match=r"on_fail='warn'; allowed: 'fallback', 'raise'"):
    newton.parallel_scan(cell, h0, xs, on_fail="warn")
  with pytest.raises(TypeError, match=r"h0 must be a pytree of floating-point arrays.*"
                                      r"h0\['name'\] is a str"):
    newton.parallel_scan(lambda c, x: c, {"h": h0, "name": "state"}, xs)
  with pytest.raises(TypeError, match="h0 must be a pytree of floating-point arrays"):
    newton.parallel_scan(cell, jnp.zeros((2, 3), jnp.int32), xs)
  with pytest.raises(TypeError, match="cell must map a carry to a carry of the same"):
    newton.parallel_scan(lambda c, x: c[0], (h0, h0), xs)


def test_models_accept_newton_impls():
  """rnn, gru, lstm models: impl deer / quasi_deer / elk = impl reference, same weights
  (the LSTM bidirectional; padding)."""
  from flax import nnx
  from seqscale.models import recurrent as models
  x = _x((2, 7, 3))
  mask = jnp.arange(7)[None] < jnp.array([[7], [4]])

  def run(model):
    graphdef, params = nnx.split(model)
    return jax.jit(lambda p, x: nnx.merge(graphdef, p).run(x, mask=mask),
                   compiler_options=FAST_COMPILE)(params, x)

  for cls in (models.RNN, models.GRU, models.LSTM):
    lstm = cls is models.LSTM
    kw = dict(bidirectional=True) if lstm else {}
    want, want_state = run(cls(3, 4, impl="reference", rngs=nnx.Rngs(0), **kw))
    for impl in newton.METHODS if lstm else ("deer",):
      got, state = run(cls(3, 4, impl=impl, rngs=nnx.Rngs(0), **kw))
      assert _err(got, want) < 1e-5 and _err(state, want_state) < 1e-5, (cls, impl)
