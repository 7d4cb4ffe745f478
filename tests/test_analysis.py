"""Analysers on small programs whose answers are known by hand."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale import analysis

KEY = jax.random.PRNGKey(0)


def _chain(x, n):
  for _ in range(n):
    x = x + 1.0
  return x


def _scan(body, x, n, **kwargs):
  return jax.lax.scan(lambda c, _: (body(c), None), x, None, length=n, **kwargs)[0]


# Sequential depth.


@pytest.mark.parametrize("n", [1, 7, 32])
def test_chain_of_n_adds_has_depth_n(n):
  assert analysis.sequential_depth(lambda x: _chain(x, n), jnp.ones(4)) == n


@pytest.mark.parametrize("k", [1, 3, 6])
def test_tree_reduction_has_depth_log2_n(k):
  def tree(x):
    while x.shape[0] > 1:
      x = x[::2] + x[1::2]
    return x
  assert analysis.sequential_depth(tree, jnp.ones(2**k)) == k


def test_matmul_and_reduction_are_one_step_and_data_movement_is_free():
  a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
  assert analysis.sequential_depth(lambda a, b: a @ b, a, b) == 1
  assert analysis.sequential_depth(lambda a, b: (a @ b).T.reshape(-1)[2:], a, b) == 1
  assert analysis.sequential_depth(jnp.sum, a) == 1
  assert analysis.sequential_depth(lambda a: a.T, a) == 0


@pytest.mark.parametrize("n", [1, 5, 100])
def test_scan_counts_its_carry_path_once_per_step(n):
  x = jnp.ones(4)
  assert analysis.sequential_depth(lambda x: _scan(lambda c: c * 2, x, n), x) == n
  assert analysis.sequential_depth(lambda x: _scan(lambda c: jnp.tanh(c * 2), x, n), x) == 2 * n

  def body(c, x_t):  # three steps on x_t that do not wait for the carry, one that does
    y = jnp.sin(jnp.cos(jnp.exp(x_t)))
    return c + y, y
  xs = jnp.ones((n, 4))
  assert analysis.sequential_depth(lambda xs: jax.lax.scan(body, x, xs), xs) == n + 3


def test_scan_of_length_n_appears_in_compiled_hlo():
  x = jnp.ones(4)
  f = lambda x: _scan(lambda c: c * 2, x, 37)
  assert 37 in analysis.loop_trip_counts(f, x)
  assert analysis.sequential_depth(f, x) == 37


@pytest.mark.parametrize("n", [16, 256, 4096, 65536])
def test_associative_scan_depth_is_logarithmic(n):
  log_n = math.log2(n)
  x = jnp.ones(n)
  depth = analysis.sequential_depth(lambda x: jax.lax.associative_scan(jnp.add, x), x)
  assert log_n <= depth <= 2 * log_n + 1

  def linear(x):  # h_t = a_t h_{t-1} + b_t: a multiply and an add per tree level
    combine = lambda e1, e2: (e1[0] * e2[0], e2[0] * e1[1] + e2[1])
    return jax.lax.associative_scan(combine, (x, x))[1]
  assert 2 * log_n <= analysis.sequential_depth(linear, x) <= 4 * log_n + 1
  assert analysis.sequential_depth(lambda x: jnp.cumsum(x), x) == 1  # one primitive


@pytest.mark.parametrize("n", [1, 9])
def test_static_loops_count_their_trips(n):
  x = jnp.ones(4)
  fori = lambda x: jax.lax.fori_loop(0, n, lambda i, c: c * 2, x)
  loop = lambda x: jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 2),
                                      (0, x))[1]
  assert analysis.sequential_depth(fori, x) == n
  assert analysis.sequential_depth(loop, x) == n


def test_dynamic_while_loop_needs_a_trip_count():
  loop = lambda x: jax.lax.while_loop(lambda c: c[1][0] < 10, lambda c: (c[0], c[1] * 2),
                                      (0, x))[1]
  with pytest.raises(ValueError, match="not static"):
    analysis.sequential_depth(loop, jnp.ones(4))
  assert analysis.sequential_depth(loop, jnp.ones(4), default_trip_count=6) == 6


def test_nested_calls_are_followed_and_cond_takes_deepest_branch():
  @jax.custom_jvp
  def cj(x):
    return _chain(x, 2)
  cj.defjvp(lambda p, t: (cj(p[0]), t[0]))

  @jax.custom_vjp
  def cv(x):
    return _chain(x, 3)
  cv.defvjp(lambda x: (cv(x), None), lambda _, g: (g,))

  f = lambda x: cv(cj(jax.checkpoint(lambda y: jax.jit(lambda z: _chain(z, 4))(y))(x)))
  assert analysis.sequential_depth(f, jnp.ones(4)) == 9
  g = lambda x: jax.lax.cond(x[0] > 0, lambda z: _chain(z, 3), lambda z: _chain(z, 7), x)
  assert analysis.sequential_depth(g, jnp.ones(4)) == 7


# FLOPs, memory, timing.


def test_matmul_flops_is_2mkn():
  m, k, n = 8, 16, 32
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  mm = lambda a, b: a @ b
  assert analysis.xla_flops(mm, a, b) == pytest.approx(2 * m * k * n, rel=0.01)
  assert analysis.flops(mm, a, b) == pytest.approx(2 * m * k * n, rel=0.01)
  assert analysis.jaxpr_flops(mm, a, b) == 2 * m * k * n
  # Backward: one matmul for each of the two gradients.
  assert analysis.flops(mm, a, b, backward=True, argnums=(0, 1)) == pytest.approx(
      3 * 2 * m * k * n, rel=0.1)


def test_xla_counts_a_loop_body_once_and_flops_multiplies_it():
  h, w = jnp.ones((4, 8)), jnp.ones((8, 8))
  one = 2 * 4 * 8 * 8
  for f, steps in [(lambda h, w: _scan(lambda c: c @ w, h, 10), 10),
                   (lambda h, w: _scan(lambda c: c @ w, h, 10, unroll=3), 10),
                   (lambda h, w: _scan(lambda c: _scan(lambda d: d @ w, c, 5), h, 7), 35)]:
    assert analysis.xla_flops(f, h, w) < 5 * one  # the finding: body counted once
    assert analysis.flops(f, h, w) == pytest.approx(steps * one, rel=0.02)
    assert analysis.jaxpr_flops(f, h, w) == steps * one


def test_memory_reports_temporaries():
  x, w = jnp.ones((64, 32)), jnp.ones((32, 32))
  f = lambda x, w: jnp.tanh(jnp.tanh(x @ w) @ w)
  mem = analysis.memory(f, x, w, backward=True, argnums=(0, 1))
  if mem is None:
    # The CPU backend (this project's CI) has memory_analysis: there the test must run.
    assert jax.default_backend() != "cpu", "memory_analysis returned None on CPU"
    pytest.skip("memory_analysis unavailable on this backend")
  assert mem.temp_bytes > 0
  assert mem.argument_bytes == x.nbytes + w.nbytes


def test_time_fn_keeps_compile_apart():
  t = analysis.time_fn(lambda x: x @ x, jnp.ones((16, 16)), repeats=3)
  assert t.compile_s > 0 and t.run_s > 0 and len(t.runs) == 3


def test_xla_cost_merges_a_list_of_dicts():
  class Fake:
    def cost_analysis(self):
      return [{"flops": 2.0}, {"flops": 3.0, "bytes accessed": 1.0}]
  assert analysis.xla_cost(Fake()) == {"flops": 5.0, "bytes accessed": 1.0}


def test_trip_count_falls_back_to_the_condition_constant():
  x = jnp.ones(4)
  text = analysis.compile_fn(lambda x: _scan(lambda c: c * 2, x, 37), x).as_text()
  stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\}', "", text)
  assert analysis.trip_counts_in_hlo(stripped) == [37]


def test_cost_summary_has_the_table_columns():
  row = analysis.cost_summary(lambda x: jnp.tanh(x @ x), jnp.ones((8, 8)))
  assert row["flops_fwd"] > 0 and row["flops_fwd_bwd"] > row["flops_fwd"]
  assert row["temp_bytes"] is None or row["temp_bytes"] >= 0


# Path length. Shapes [B, T, D] with B = 1, T = N.

N, D, K = 8, 3, 3
W_DD = jax.random.normal(KEY, (D, D)) * 0.5
W_KDD = jax.random.normal(jax.random.PRNGKey(1), (K, D, D)) * 0.5
X = jax.random.normal(jax.random.PRNGKey(2), (1, N, D))
PAIRS = [(t, s) for t in range(N) for s in range(t)]


def _rnn(x_BTD, project=True):
  xw_TBD = jnp.swapaxes(x_BTD @ W_DD if project else x_BTD, 0, 1)
  step = lambda h, xw: (jnp.tanh(xw + h @ W_DD),) * 2
  return jnp.swapaxes(jax.lax.scan(step, jnp.zeros((1, D)), xw_TBD)[1], 0, 1)


def _attention(x_BTD, window=None):
  scores_BTS = jnp.einsum("BTD,BSD->BTS", x_BTD @ W_DD, x_BTD @ W_DD)
  t = jnp.arange(x_BTD.shape[1])
  mask = t[:, None] >= t[None, :]
  if window:
    mask &= t[:, None] - t[None, :] < window
  weights = jax.nn.softmax(jnp.where(mask, scores_BTS, -jnp.inf), axis=-1)
  return jnp.einsum("BTS,BSD->BTD", weights, x_BTD @ W_DD)


def _conv_stack(x_BTD, layers, dilated=False, residual=True):
  for layer in range(layers):
    dilation = K**layer if dilated else 1
    y = jax.lax.conv_general_dilated(x_BTD, W_KDD, (1,), [((K - 1) * dilation, 0)],
                                     rhs_dilation=(dilation,),
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    x_BTD = x_BTD + jnp.tanh(y) if residual else jnp.tanh(y)
  return x_BTD


def _nonzero_digits(m, base):
  count = 0
  while m:
    m, r = divmod(m, base)
    count += r != 0
  return count


def test_dense_mixing_over_time_is_one_step():
  a_TS = jax.random.normal(KEY, (N, N))
  r = analysis.path_length_by_mixing(lambda x: jnp.einsum("TS,BSD->BTD", a_TS, x), X)
  assert r.length == 1 and (r.matrix == 1).all() and not r.approximated


def test_rnn_path_is_one_matmul_per_step():
  r = analysis.path_length_by_mixing(_rnn, X, causal=True)
  assert r.length == N  # input projection + N - 1 recurrent matmuls from x_0 to y_{N-1}
  assert all(r.matrix[t, s] == t - s + 1 for t, s in PAIRS)
  assert np.isinf(r.matrix[np.triu_indices(N, 1)]).all()
  assert analysis.path_length_by_mixing(lambda x: _rnn(x, False), X, causal=True).length == N - 1
  # Within one layer the recurrence reaches every s <= t: one layer.
  assert analysis.path_length_by_layers(lambda _: _rnn, X, 3, causal=True).length == 1


def test_causal_attention_is_constant_and_masks_cut_paths():
  r = analysis.path_length_by_mixing(_attention, X, causal=True)
  causal = np.tril(np.ones((N, N), bool))
  assert (r.matrix[causal] == 2).all()  # value projection + weights @ values
  assert np.isinf(r.matrix[~causal]).all()
  assert analysis.path_length_by_layers(lambda _: _attention, X, 2, causal=True).length == 1


def test_restricted_attention_needs_n_over_r_layers():
  r_win = 3
  def stack(x):
    for _ in range(N):
      x = x + _attention(x, r_win)
    return x
  r = analysis.path_length_by_mixing(stack, X, causal=True)
  assert all(r.matrix[t, s] == 2 * math.ceil((t - s) / (r_win - 1)) for t, s in PAIRS)


def test_contiguous_conv_stack_needs_n_over_k_layers():
  need = math.ceil((N - 1) / (K - 1))
  r = analysis.path_length_by_layers(
      lambda layers: lambda x: _conv_stack(x, layers, residual=False), X, N, causal=True)
  assert r.length == need
  r = analysis.path_length_by_mixing(lambda x: _conv_stack(x, need), X, causal=True)
  assert all(r.matrix[t, s] == math.ceil((t - s) / (K - 1)) for t, s in PAIRS)
  assert r.length == need


def test_dilated_conv_stack_needs_log_k_n_layers():
  need = math.ceil(math.log(N, K))
  r = analysis.path_length_by_layers(
      lambda layers: lambda x: _conv_stack(x, layers, True, residual=False), X, N,
      causal=True)
  assert r.length == need
  r = analysis.path_length_by_mixing(lambda x: _conv_stack(x, need, True), X, causal=True)
  assert all(r.matrix[t, s] == _nonzero_digits(t - s, K) for t, s in PAIRS)


def test_gated_cell_state_is_a_highway_without_matmuls():
  def gated(x_BTD):  # c_t = sigmoid(xw_t) * c_{t-1} + tanh(xw_t), an LSTM's cell state
    step = lambda c, xw: (jax.nn.sigmoid(xw) * c + jnp.tanh(xw),) * 2
    xw_TBD = jnp.swapaxes(x_BTD @ W_DD, 0, 1)
    return jnp.swapaxes(jax.lax.scan(step, jnp.zeros((1, D)), xw_TBD)[1], 0, 1)
  assert analysis.path_length_by_mixing(gated, X, causal=True).length == 1
  r = analysis.path_length_by_mixing(gated, X, causal=True, mixing=analysis.COMPUTE)
  # x_s -> x_s @ W -> tanh -> add is c_s; then a multiply and an add per step.
  assert all(r.matrix[t, s] == 3 + 2 * (t - s) for t, s in PAIRS)


def test_alternate_takes_the_candidates_in_turn_each_round():
  calls = []
  runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
  wall, cpu = analysis.timing.alternate(runs, 3)
  assert calls == ["a", "b", "c"] * 3
  assert all(len(wall[n]) == len(cpu[n]) == 3 and min(wall[n]) >= 0 for n in runs)
