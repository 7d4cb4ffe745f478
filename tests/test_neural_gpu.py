"""Neural GPU, Extended Neural GPU and binary_arith: the CGRU against a NumPy loop, the
number of CGRU applications against the length, locality and non-causality by gradients,
the decoder's causality and greedy decoding, the task against Python integers, and a short
training run through the trainer."""

import math

import jax
import jax.extend  # noqa: F401  (jaxprs_in_params)
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import data
from seqscale import models
from seqscale.ops import cgru as cgru_ops

I, C, W = 3, 5, 4


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


# -- the CGRU against NumPy ---------------------------------------------------------------


def _np_conv_same(x, k, b):
  """2-D 'same' convolution by explicit loops: x [B, T, W, Ci], k [KT, KW, Ci, Co]."""
  B, T, Wd, _ = x.shape
  KT, KW, _, Co = k.shape
  y = np.zeros((B, T, Wd, Co)) + b
  for t in range(T):
    for w in range(Wd):
      for dt in range(KT):
        for dw in range(KW):
          tt, ww = t + dt - KT // 2, w + dw - KW // 2
          if 0 <= tt < T and 0 <= ww < Wd:
            y[:, t, w] += x[:, tt, ww] @ k[dt, dw]
  return y


def _np_cgru(s, p, params, cutoff):
  sig = lambda z: np.clip(cutoff * (1 / (1 + np.exp(-z))) - (cutoff - 1) / 2, 0, 1)
  extra = [] if p is None else [p]
  gates = sig(_np_conv_same(np.concatenate(extra + [s], -1), params["gates_kernel"],
                            params["gates_bias"]))
  c = s.shape[-1]
  u, r = gates[..., :c], gates[..., c:]
  cand = np.tanh(_np_conv_same(np.concatenate(extra + [r * s], -1), params["cand_kernel"],
                               params["cand_bias"]))
  return u * s + (1 - u) * cand


def _random_params(rng, c_in, c):
  return {"gates_kernel": rng.normal(0, 0.4, (3, 3, c_in, 2 * c)),
          "gates_bias": rng.normal(0, 0.5, (2 * c,)),
          "cand_kernel": rng.normal(0, 0.4, (3, 3, c_in, c)),
          "cand_bias": rng.normal(0, 0.5, (c,))}


@pytest.mark.parametrize("extra,cutoff", [(0, 1.2), (2, 1.2), (0, 1.0)])
def test_cgru_step_equals_numpy(rng, extra, cutoff):
  s = rng.normal(size=(2, 6, W, C))
  p = rng.normal(size=(2, 6, W, extra)) if extra else None
  params = _random_params(rng, C + extra, C)
  want = _np_cgru(s, p, params, cutoff)
  got = cgru_ops.cgru(jnp.asarray(s, jnp.float32),
                      {k: jnp.asarray(v, jnp.float32) for k, v in params.items()},
                      None if p is None else jnp.asarray(p, jnp.float32), cutoff=cutoff)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_sigmoid_cutoff_saturates_and_plain_sigmoid_at_1():
  x = jnp.asarray([-100.0, -3.0, 0.0, 3.0, 100.0])
  y = np.asarray(cgru_ops.sigmoid_cutoff(x, 1.2))
  assert y[0] == 0.0 and y[-1] == 1.0 and y[2] == pytest.approx(0.5)
  assert y[3] == 1.0  # 1.2 * sigmoid(3) - 0.1 = 1.0428..., clipped: the gate can fully open
  np.testing.assert_allclose(cgru_ops.sigmoid_cutoff(x, 1.0), jax.nn.sigmoid(x))


def test_neural_gpu_model_equals_numpy_loop(rng):
  model = models.create("neural_gpu", in_features=I, hidden_features=C, num_layers=2,
                        rngs=nnx.Rngs(1))
  x = rng.normal(size=(2, 5, I)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  params = [{k: np.asarray(v, np.float64) for k, v in layer.params(jnp.float32).items()}
            for layer in model.tape.layers]
  h = x @ np.asarray(model.tape.inp.kernel[...]) + np.asarray(model.tape.inp.bias[...])
  s = np.zeros((2, 5, W, C))
  s[:, :, 0] = h * mask[..., None]
  for _ in range(5):  # T steps of L CGRUs
    for p in params:
      s = _np_cgru(s, None, p, 1.2)
  got = model(jnp.asarray(x), mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), s[:, :, 0], atol=5e-5, rtol=1e-4)


# -- depth grows with length --------------------------------------------------------------


def _count(jaxpr, name="dot_general", times=0):
  """Executions of primitive ``name`` inside loops: a scan body's count times its length."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      total += times
    scan = eqn.primitive.name == "scan"
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _count(sub, name, 1 if scan else times) * (eqn.params["length"] if scan else 1)
  return total


@pytest.mark.parametrize("num_layers", [1, 2])
def test_cgru_applications_equal_the_length(num_layers):
  model = models.create("neural_gpu", in_features=I, hidden_features=C,
                        num_layers=num_layers, rngs=nnx.Rngs(0))
  for T in (3, 7, 16):
    jaxpr = jax.make_jaxpr(lambda x: model(x))(jnp.zeros((1, T, I))).jaxpr
    assert _count(jaxpr) == 2 * num_layers * T  # 2 convolutions (gates, candidate) each
  ext = models.create("extended_neural_gpu", in_features=I, hidden_features=C,
                      num_layers=num_layers, rngs=nnx.Rngs(0))
  jaxpr = jax.make_jaxpr(lambda s, t: ext(s, t))(jnp.zeros((1, 9, I)), jnp.zeros((1, 4, I)))
  assert _count(jaxpr.jaxpr) == 2 * num_layers * (9 + 4)  # encoder S steps, decoder T


def _dep(f, x):
  """M[t, s] = sum |d f(x)[0, t, :] / d x[0, s, :]|."""
  jac = jax.jacrev(lambda z: f(z)[0])(x)  # [T, D, B, S, I]
  return np.asarray(jnp.abs(jac[:, :, 0]).sum(axis=(1, 3)))


def test_non_causal_and_local_per_step():
  """Each CGRU sees 2 positions either side (two 3x3 convolutions in series), so after
  ``n`` steps of L layers position t depends on exactly |t - s| <= 2 n L."""
  x = _x((1, 12, I))
  for steps, layers in [(1, 1), (2, 1), (1, 2)]:
    model = models.create("neural_gpu", in_features=I, hidden_features=C, num_layers=layers,
                          num_steps=steps, rngs=nnx.Rngs(0))
    dep = _dep(lambda z: model(z), x)
    reach = 2 * steps * layers
    t, s = np.indices(dep.shape)
    assert (dep[np.abs(t - s) > reach] == 0).all()
    assert (dep[np.abs(t - s) <= reach] > 0).all()
  model = models.create("neural_gpu", in_features=I, hidden_features=C, rngs=nnx.Rngs(0))
  dep = _dep(lambda z: model(z), x)  # T steps: everything reaches everything
  assert (dep > 0).all() and dep[0, -1] > 0  # the first output reads the last input


def test_padding_is_blank_tape():
  model = models.create("neural_gpu", in_features=I, hidden_features=C, rngs=nnx.Rngs(0))
  x = _x((1, 6, I))
  mask = jnp.asarray([[True] * 4 + [False] * 2])
  y1 = model(x, mask=mask)
  y2 = model(x.at[:, 4:].set(7.0), mask=mask)
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))


# -- Extended Neural GPU ------------------------------------------------------------------


def test_extended_decoder_is_causal_over_the_target_and_reads_all_source():
  model = models.create("extended_neural_gpu", in_features=I, hidden_features=C,
                        rngs=nnx.Rngs(0))
  src, tgt = _x((1, 6, I), 1), _x((1, 5, I), 2)
  dep = _dep(lambda t: model(src, t), tgt)  # [T, T]
  # y_k reads the tape written up to k (tgt[1..k]); tgt[0] (BOS) and the future: nothing.
  assert (np.triu(dep, k=1) == 0).all() and (dep[:, 0] == 0).all()
  k, j = np.indices(dep.shape)
  assert (dep[(j >= 1) & (j <= k)] > 0).all()
  dep_src = _dep(lambda s: model(s, tgt), src)
  assert (dep_src > 0).all()


def test_greedy_decoding_equals_teacher_forcing_on_its_own_outputs():
  model = models.create("extended_neural_gpu", in_features=I, hidden_features=C,
                        rngs=nnx.Rngs(0))
  table = _x((2, I), 3)  # the embeddings of two symbols
  readout = _x((C, 2), 4)

  def next_input(y_BD):
    return table[jnp.argmax(y_BD @ readout, -1)]

  src = _x((2, 7, I), 5)
  y_free, written = model.decode_greedy(src, 6, next_input)
  assert y_free.shape == (2, 6, C) and written.shape == (2, 6, I)
  bos = jnp.zeros((2, 1, I))
  y_forced = model(src, jnp.concatenate([bos, written[:, :-1]], 1))
  np.testing.assert_allclose(np.asarray(y_forced), np.asarray(y_free), atol=1e-5)
  # Both symbols occur, so the check covers the written tape, not a constant.
  symbols = np.asarray(jnp.argmax(y_free @ readout, -1))
  assert len(np.unique(symbols)) == 2


@pytest.mark.parametrize("kwargs,word", [
    (dict(kernel_size=2), "kernel_size=2"), (dict(tape_width=0), "tape_width=0"),
    (dict(cutoff=0.5), "cutoff=0.5"), (dict(num_layers=0), "num_layers=0")])
def test_bad_arguments_name_the_argument(kwargs, word):
  for name in ("neural_gpu", "extended_neural_gpu"):
    with pytest.raises(ValueError, match=word):
      models.create(name, in_features=I, hidden_features=C, rngs=nnx.Rngs(0), **kwargs)


# -- binary_arith ---------------------------------------------------------------------------


def _task(tmp_path, **kw):
  kw = dict(length=6, long_bits=30, num_train=40, num_eval=12, data_dir=str(tmp_path)) | kw
  return data.get_task("binary_arith", **kw)


def _read(inputs, weights, targets):
  """(a, op, b, answer) from one example, decoded independently of the task's code."""
  toks = [int(t) for t in inputs if t]
  k = toks.index(4) if 4 in toks else toks.index(5)
  a = sum((t - 2) << i for i, t in enumerate(toks[:k]))
  b = sum((t - 2) << i for i, t in enumerate(toks[k + 1:]))
  ans = sum(int(t) << i for i, t in enumerate(targets[weights > 0]))
  return a, "+*"[toks[k] - 4], b, ans, k, int((weights > 0).sum())


@pytest.mark.parametrize("problem", ["addition", "multiplication"])
def test_binary_arith_answers_equal_python_integers(tmp_path, problem):
  task = _task(tmp_path, problem=problem)
  assert task.eval_splits == {"test": 6, "test_2x": 12, "test_4x": 24, "test_long": 30}
  assert task.sequence_lengths["test_long"] == 61 and task.vocab_size == 6
  for split in task.splits:
    batch = task.dataset(split, batch_size=4, seed=0)[1]
    n = task.sequence_lengths[split]
    assert batch["inputs"].shape == (4, n) and batch["targets"].shape == (4, n)
    sizes = set()
    for i in range(4):
      a, op, b, ans, k, r = _read(batch["inputs"][i], batch["weights"][i], batch["targets"][i])
      assert ans == (a + b if op == "+" else a * b)
      assert r == (k + 1 if problem == "addition" else 2 * k)
      sizes.add(k)
      # Seq2seq form: the same answer, teacher-forced input shifted right after BOS.
      np.testing.assert_array_equal(batch["src"][i], batch["inputs"][i])
      np.testing.assert_array_equal(batch["tgt_out"][i], batch["targets"][i])
      assert batch["tgt_in"][i, 0] == 1
      np.testing.assert_array_equal(batch["tgt_in"][i, 1:r], batch["targets"][i, :r - 1] + 2)
      assert (batch["tgt_in"][i, r:] == 0).all()
    if split != "train":
      assert sizes == {task.eval_splits[split]}  # eval: exactly n bits


def test_binary_arith_train_sizes_vary_and_long_split_is_optional(tmp_path):
  task = _task(tmp_path, num_train=200)
  ks = [len(ex["a"]) for ex in task.generate_split("train")]
  assert min(ks) == 1 and max(ks) == 6
  assert "test_long" not in _task(tmp_path, long_bits=20).eval_splits  # 20 <= 4 * 6
  with pytest.raises(ValueError, match="problem='division'"):
    _task(tmp_path, problem="division")


# -- training -------------------------------------------------------------------------------


@pytest.mark.slow
def test_neural_gpu_learns_binary_addition_through_the_trainer(tmp_path):
  from experiments.configs import neural_gpu as cfg  # pylint: disable=g-import-not-at-top
  from seqscale.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  c = cfg.get_config("quick")
  c.task.update(length=4, long_bits=0, num_train=2_000, num_eval=100,
                data_dir=str(tmp_path / "data"))
  c.model.hparams.update(in_features=16, hidden_features=16)
  c.update(num_steps=300, log_every=100, checkpoint_every=300)
  results = train_and_evaluate(c, str(tmp_path / "work"))
  acc = results["eval"]["test"]["accuracy"]
  assert acc > 0.8, results["eval"]  # chance is 0.5 per bit
  assert results["eval"]["test"]["loss"] < 0.6 * math.log(2)
