"""Connectivity pictures and attention maps, against hand-derived reach and references."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import analysis
from seqscale.studies import pictures
from seqscale.models import transformer as transformer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 32


def _expected_reach(kind: str, L: int, n: int) -> np.ndarray:
  """Hand-derived: which s each t depends on after L residual layers (bool [n, n])."""
  back = {"attention": n, "rnn": n, "conv": 2 * L, "dilated_conv": 2**L - 1}[kind]
  t, s = np.arange(n)[:, None], np.arange(n)[None, :]
  return (s <= t) & (t - s <= back)


# -- connectivity ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", pictures.KINDS)
def test_exact_reach_after_each_layer_and_nothing_from_the_future(kind):
  mats = pictures.connectivities(kind, 4, T)
  assert mats.shape == (4, T, T)
  for L, m in enumerate(mats, start=1):
    assert np.array_equal(m > 0, _expected_reach(kind, L, T)), (kind, L)
    assert np.all(np.triu(m, 1) == 0.0)  # exactly zero, not merely small
  # The stack of L layers is the first L layers of a deeper one.
  np.testing.assert_allclose(pictures.connectivity(kind, 2, T), mats[1], rtol=1e-5)


def test_receptive_field_of_the_last_output():
  rf = lambda kind, L: pictures.receptive_field(pictures.connectivity(kind, L, T))
  assert [rf("conv", L) for L in (1, 2, 3, 4)] == [3, 5, 7, 9]  # 2L back, plus itself
  assert [rf("dilated_conv", L) for L in (1, 2, 3, 4)] == [2, 4, 8, 16]  # 2^L - 1 back
  assert rf("attention", 1) == T and rf("rnn", 1) == T
  assert pictures.receptive_field(np.tril(np.ones((5, 5))), t=2) == 3


@pytest.mark.parametrize("kind,expected", [("attention", 1), ("rnn", 1), ("conv", 8),
                                           ("dilated_conv", 4)])
def test_layers_to_connect_all_pairs(kind, expected):
  # T = 16: the conv needs ceil(15 / 2) = 8 layers, the dilated one log2(16) = 4.
  assert pictures.layers_to_connect(kind, 16) == expected
  assert pictures.layers_to_connect("conv", 16, max_layers=3) is None


@pytest.mark.parametrize("kind,L", [("attention", 1), ("conv", 2), ("dilated_conv", 3),
                                    ("rnn", 1)])
def test_agrees_with_the_path_analysers(kind, L):
  # Two other routes: paths.reachability (a reverse-mode Jacobian) and, but for attention
  # (slow there; test_analysis.py covers it), path_length_by_mixing, which follows the
  # jaxpr's dataflow without differentiating.
  n = 10
  f = pictures.stack(kind, L)
  x = pictures.example_input(n)
  reach = pictures.connectivity(kind, L, n) > 0
  assert np.array_equal(reach, analysis.reachability(f, x))
  if kind != "attention":
    assert np.array_equal(reach, np.isfinite(analysis.path_length_by_mixing(f, x).matrix))


def test_bad_arguments_name_the_argument():
  with pytest.raises(ValueError, match="kind='lstm'"):
    pictures.connectivity("lstm", 1)
  with pytest.raises(ValueError, match="num_layers=0"):
    pictures.connectivity("conv", 0)
  with pytest.raises(ValueError, match="matrix has shape"):
    pictures.receptive_field(np.ones(3))


def test_plot_connectivity_writes_a_png(tmp_path):
  path = str(tmp_path / "c.png")
  table = pictures.plot_connectivity(path, kinds=("conv", "attention"), max_layers=2, T=8)
  assert os.path.getsize(path) > 10_000
  assert table["conv"]["receptive_field"] == [3, 5]
  assert table["conv"]["layers_to_connect"] == 4 and table["attention"]["layers_to_connect"] == 1


# -- attention maps ----------------------------------------------------------------------

def _model(norm="post", local_window=None):
  return transformer_lib.Transformer(6, 8, num_layers=2, num_heads=2, causal=True, norm=norm,
                                     local_window=local_window, attention_impl="reference",
                                     rngs=nnx.Rngs(0))


@pytest.mark.parametrize("norm,local_window", [("post", None), ("pre", 3)])
def test_attention_weights_reproduce_each_layer_and_the_model(norm, local_window):
  model = _model(norm, local_window)
  B, n = 2, 9
  x_BTI = jax.random.normal(jax.random.PRNGKey(1), (B, n, 6))
  mask_BT = jnp.arange(n)[None, :] < jnp.array([[n], [6]])  # the second example is padded
  weights = pictures.attention_weights(model, x_BTI, mask=mask_BT)
  assert len(weights) == 2

  t, s = np.arange(n)[:, None], np.arange(n)[None, :]
  allowed_BTS = (s <= t)[None] & np.asarray(mask_BT)[:, None, :]
  if local_window is not None:
    allowed_BTS &= (t - s <= local_window)[None]
  stack = model.stack
  h = stack._add_positions(model.embed(x_BTI), 0)
  for layer, w_BHTS in zip(stack.layers, weights):
    assert w_BHTS.shape == (B, 2, n, n)
    np.testing.assert_allclose(w_BHTS.sum(-1), 1.0, rtol=1e-5)
    assert np.all(w_BHTS[~np.broadcast_to(allowed_BTS[:, None], w_BHTS.shape)] == 0.0)
    attn = layer.self_attn
    normed = layer._pre(h, layer.self_attn_norm)
    q, (k, v) = attn.project_q(normed), attn.project_kv(normed)
    o_BTHK = jnp.einsum("BHTS,BSHK->BTHK", w_BHTS, v)
    ref_BTHK = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(allowed_BTS)[:, None])
    np.testing.assert_allclose(o_BTHK, ref_BTHK, atol=1e-5)
    out_BTD = jnp.einsum("BTHK,HKD->BTD", o_BTHK, attn.out.kernel[...]) + attn.out.bias[...]
    layer_attn = attn(normed, causal=True, key_padding_mask_BS=mask_BT,
                      local_window=local_window)
    np.testing.assert_allclose(out_BTD, layer_attn, atol=1e-5)
    h = layer(h, mask_BT=mask_BT)
  np.testing.assert_allclose(stack._finish(h), model(x_BTI, mask=mask_BT), atol=1e-5)


def test_attention_weights_of_a_language_model_and_bad_models():
  lm = transformer_lib.TransformerLM(11, 8, num_layers=1, num_heads=2,
                                     attention_impl="reference", rngs=nnx.Rngs(0))
  (w,) = pictures.attention_weights(lm, jnp.array([[1, 2, 3, 4, 5]]))
  assert w.shape == (1, 2, 5, 5) and np.all(np.triu(w[0, 0], 1) == 0)
  with pytest.raises(ValueError, match="transformer"):
    pictures.attention_weights(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 3, 2)))


def test_plot_attention_maps(tmp_path):
  w = np.tril(np.ones((5, 5)))
  w = np.broadcast_to(w / w.sum(-1, keepdims=True), (1, 2, 5, 5)).copy()
  w[0, 1] = np.eye(5)  # head 2 is the sharp one
  assert pictures.attention_entropy(w).argmin() == 1
  pictures.plot_attention_maps(str(tmp_path / "a.png"), [w, w], tokens=list("abcde"),
                               heads="sharpest", title="t")
  assert os.path.getsize(tmp_path / "a.png") > 5_000
  with pytest.raises(ValueError, match="heads=\\[2\\]"):
    pictures.plot_attention_maps(str(tmp_path / "b.png"), [w], heads=[2])


# -- the experiment ----------------------------------------------------------------------

def _run(workdir, *flags):
  proc = subprocess.run([sys.executable, "-m", "experiments.pictures", f"--workdir={workdir}",
                         *flags], capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f), proc.stdout


def test_experiment_skip_training(tmp_path):
  results, out = _run(tmp_path, "--skip_training", "--length=8", "--max_layers=2")
  rf = results["connectivity"]["receptive_field_last_output"]
  assert rf == {"attention": [8, 8], "conv": [3, 5], "dilated_conv": [2, 4], "rnn": [8, 8]}
  assert results["connectivity"]["layers_to_connect"]["dilated_conv"] == 3
  assert "| conv | 3 | 5 | 4 |" in out
  assert (tmp_path / "connectivity.png").exists() and (tmp_path / "pictures.md").exists()
  assert results["context"]["jax"] == jax.__version__


@pytest.mark.slow
def test_experiment_trains_and_the_last_layer_looks_back_at_the_symbols(tmp_path):
  results, _ = _run(tmp_path, "--num_steps=400", "--length=8", "--max_layers=2")
  a = results["attention"]
  assert a["eval"]["test"]["accuracy"] > 0.99
  # Outputs 20..29 (delay 10 + 10) recall symbols 0..9: some head of the last layer
  # puts its largest weight on key t - 20 for each of those queries.
  last = np.array(a["argmax_key_per_query"][-1])  # [H, T]
  assert any(np.array_equal(head[20:30], np.arange(10)) for head in last)
  assert (tmp_path / "attention_maps.png").exists()
