"""Pictures of who talks to whom: gradient connectivity of layer stacks, attention maps.

**Connectivity.** For a residual stack ``x + layer(x)`` of L layers built from the pure
functions in ``seqscale.ops`` with random weights, ``connectivity`` is the ``[T, T]`` matrix

  C[t, s] = sum over features i, j of |d y_t,i / d x_s,j|    (``jax.jacfwd``, exact zeros)

so ``C[t, s] > 0`` exactly where output t depends on input s. Four layer types:

  attention      causal self-attention: every s <= t after one layer;
  conv           contiguous causal convolution, kernel 3: 2L positions back after L layers;
  dilated_conv   causal convolution, kernel 2, dilations 1, 2, 4, ... (WaveNet): 2^L - 1 back;
  rnn            Elman (tanh) RNN: every s <= t after one layer, through t - s serial steps
                 (the colour fades with t - s: the gradient shrinks along the chain).

**Attention maps.** ``attention_weights`` reruns a ``transformer`` (or ``transformer_lm``)
layer by layer and recomputes each layer's softmax weights from its own query and key
projections, without touching the model code.

Shapes: B batch, T length (queries), S keys, D width, H heads, K head dim, L layers.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.ops import attention as attn_ops
from seqscale.ops import conv as conv_ops
from seqscale.ops import recurrent

Array = jax.Array
KINDS = ("attention", "conv", "dilated_conv", "rnn")
LABELS = {"attention": "causal self-attention", "conv": "causal conv, kernel 3",
          "dilated_conv": "dilated causal conv, kernel 2 (WaveNet)", "rnn": "Elman RNN (tanh)"}
_NUM_HEADS = 2


def _check(kind: str, num_layers: int, T: int, width: int) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; allowed: {', '.join(KINDS)}")
  for name, value in (("num_layers", num_layers), ("T", T), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r}: must be an int >= 1")
  if kind == "attention" and width % _NUM_HEADS:
    raise ValueError(f"width={width!r}: attention needs a multiple of {_NUM_HEADS} heads")


def _normal(key: Array, shape: tuple[int, ...], fan_in: int) -> Array:
  return jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)


def _layer(kind: str, index: int, D: int, key: Array) -> Callable[[Array], Array]:
  """Layer ``index`` (0-based) of a stack: x_BTD -> the residual branch, [B, T, D]."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  if kind == "attention":
    H = _NUM_HEADS
    wq, wk, wv = (_normal(k, (D, H, D // H), D) for k in (k1, k2, k3))
    wo = _normal(k4, (H, D // H, D), D)

    def attend(x_BTD):
      q, k, v = (attn_ops.project_heads(x_BTD, w) for w in (wq, wk, wv))
      return attn_ops.merge_heads(attn_ops.dot_product_attention(q, k, v, causal=True), wo)
    return attend
  if kind == "rnn":
    params = {"w_ih": _normal(k1, (D, D), D), "w_hh": _normal(k2, (D, D), D),
              "b_ih": jnp.zeros(D), "b_hh": jnp.zeros(D)}
    return lambda x_BTD: recurrent.rnn(x_BTD, params)[0]
  W, dilation = (3, 1) if kind == "conv" else (2, 2**index)
  w_WCC = _normal(k1, (W, D, D), W * D)
  return lambda x_BTD: jnp.tanh(conv_ops.conv1d(x_BTD, w_WCC, dilation=dilation, causal=True))


def stack(kind: str, num_layers: int, *, width: int = 8, seed: int = 0,
          all_outputs: bool = False) -> Callable[[Array], Array]:
  """The residual stack ``x <- x + layer_l(x)``, l = 0..L-1, as a function x_BTD -> y_BTD.

  Args:
    kind: one of ``KINDS`` ("attention", "conv", "dilated_conv", "rnn").
    num_layers: L >= 1 (the dilated stack uses dilations 1, 2, ..., 2^(L-1)).
    width: D, features of x and y.
    seed: the random weights (normal, scaled 1/sqrt(fan in)); layer l's weights do not
      depend on L, so the stack of L layers is the first L layers of a deeper one.
    all_outputs: return every layer's output stacked, [L, B, T, D], instead of the last.
  """
  _check(kind, num_layers, 1, width)
  key = jax.random.PRNGKey(seed)
  layers = [_layer(kind, l, width, jax.random.fold_in(key, l)) for l in range(num_layers)]

  def f(x_BTD: Array) -> Array:
    ys = []
    for layer in layers:
      x_BTD = x_BTD + layer(x_BTD)
      ys.append(x_BTD)
    return jnp.stack(ys) if all_outputs else x_BTD
  return f


def example_input(T: int, width: int = 8, seed: int = 0) -> Array:
  """The input the connectivity is measured at: standard normal, [1, T, D]."""
  return jax.random.normal(jax.random.PRNGKey(seed + 1), (1, T, width), jnp.float32)


def connectivities(kind: str, max_layers: int, T: int = 32, *, width: int = 8,
                   seed: int = 0) -> np.ndarray:
  """``connectivity`` for L = 1..max_layers at once (one forward-mode Jacobian).

  Returns:
    float64 ``[max_layers, T, T]``; entry ``[L - 1]`` is the stack of L layers.
  """
  _check(kind, max_layers, T, width)
  f = stack(kind, max_layers, width=width, seed=seed, all_outputs=True)
  # Forward mode: T * D tangents give every layer's Jacobian in one pass.
  jac_LTDTD = jax.jit(jax.jacfwd(lambda x: f(x[None])[:, 0]))(example_input(T, width, seed)[0])
  return np.abs(np.asarray(jac_LTDTD, np.float64)).sum(axis=(2, 4))


def connectivity(kind: str, num_layers: int, T: int = 32, *, width: int = 8,
                 seed: int = 0) -> np.ndarray:
  """Gradient connectivity of a residual stack: ``C[t, s] = sum_ij |d y_t,i / d x_s,j|``.

  Args:
    kind: "attention", "conv" (kernel 3), "dilated_conv" (kernel 2, dilations 1, 2, 4, ...)
      or "rnn" (Elman, tanh).
    num_layers: L, layers in the stack.
    T: sequence length.
    width: D, features per position.
    seed: weights and input (``example_input``).

  Returns:
    float64 ``[T, T]`` (output position t, input position s); exactly 0 where y_t does not
    depend on x_s.
  """
  return connectivities(kind, num_layers, T, width=width, seed=seed)[-1]


def receptive_field(matrix: np.ndarray, t: int = -1) -> int:
  """How many input positions output ``t`` (default the last) depends on: nonzeros of row t."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2:
    raise ValueError(f"matrix has shape {matrix.shape}; expected [T, S]")
  return int(np.count_nonzero(matrix[t]))


def fully_connected(matrix: np.ndarray) -> bool:
  """Whether every output t depends on every input s <= t."""
  matrix = np.asarray(matrix)
  return bool(np.all(matrix[np.tril(np.ones(matrix.shape, bool))] != 0))


def layers_to_connect(kind: str, T: int = 32, *, max_layers: int | None = None,
                      width: int = 8, seed: int = 0) -> int | None:
  """The fewest layers after which every output t depends on every input s <= t.

  Measured by growing the stack one layer at a time up to ``max_layers`` (default T);
  None if that is not enough.
  """
  max_layers = T if max_layers is None else max_layers
  tried = 0
  while tried < max_layers:  # deeper stacks in doubling steps: few compilations
    tried = min(max(4, 2 * tried), max_layers)
    mats = connectivities(kind, tried, T, width=width, seed=seed)
    for L, m in enumerate(mats, start=1):
      if fully_connected(m):
        return L
  return None


def connectivity_table(kinds: Sequence[str] = KINDS, max_layers: int = 4, T: int = 32, *,
                       width: int = 8, seed: int = 0) -> dict[str, Any]:
  """Matrices and receptive fields for each kind and L = 1..max_layers.

  Returns:
    ``{kind: {"matrices": [C_L as [T, T]], "receptive_field": [int per L],
    "layers_to_connect": int | None}}`` (receptive field: inputs the last output sees).
  """
  table = {}
  for kind in kinds:
    mats = list(connectivities(kind, max_layers, T, width=width, seed=seed))
    need = next((L for L, m in enumerate(mats, start=1) if fully_connected(m)), None)
    if need is None:
      need = layers_to_connect(kind, T, width=width, seed=seed)
    table[kind] = {"matrices": mats, "receptive_field": [receptive_field(m) for m in mats],
                   "layers_to_connect": need}
  return table


def plot_connectivity(path: str, kinds: Sequence[str] = KINDS, max_layers: int = 4,
                      T: int = 32, *, width: int = 8, seed: int = 0,
                      table: dict[str, Any] | None = None) -> dict[str, Any]:
  """Draws a grid of connectivity heatmaps (rows: kinds, columns: L = 1..max_layers) to PNG.

  Colour is log10 of ``C[t, s]`` relative to the panel's largest entry; white is exactly
  zero (not reached). Each title gives the receptive field of the last output; each row
  label the layers needed to connect all pairs s <= t.

  Args:
    path: the PNG to write.
    kinds, max_layers, T, width, seed: as in ``connectivity_table``.
    table: a result of ``connectivity_table`` to draw instead of computing one.

  Returns:
    The table drawn (see ``connectivity_table``).
  """
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  plt = outputs.pyplot()

  table = table or connectivity_table(kinds, max_layers, T, width=width, seed=seed)
  kinds = list(table)
  ncols = len(table[kinds[0]]["matrices"])
  fig, axes = plt.subplots(len(kinds), ncols, figsize=(3.2 * ncols + 1.5, 3.3 * len(kinds)),
                           squeeze=False, constrained_layout=True)
  cmap = plt.get_cmap("viridis").with_extremes(bad="white")
  norm = colors.Normalize(vmin=-6, vmax=0)
  image = None
  for r, kind in enumerate(kinds):
    entry = table[kind]
    for c, (m, rf) in enumerate(zip(entry["matrices"], entry["receptive_field"])):
      ax = axes[r, c]
      size = m.shape[0]
      rel = np.ma.masked_equal(m / m.max(), 0.0)
      image = ax.imshow(np.ma.log10(rel).clip(-6, 0), cmap=cmap, norm=norm, origin="upper",
                        interpolation="nearest")
      ax.set_title(f"L = {c + 1}: last output sees {rf}/{size}", fontsize=10)
      ax.set_xlabel("input position s", fontsize=9)
      ticks = sorted({0, size // 4, size // 2, 3 * size // 4, size - 1})
      ax.set_xticks(ticks)
      ax.set_yticks(ticks)
      ax.tick_params(labelsize=8)
      if c == 0:
        need = entry["layers_to_connect"]
        need = f"all s <= t reached at L = {need}" if need else "not all reached"
        ax.set_ylabel(f"{LABELS.get(kind, kind)}\n{need}\n\noutput position t", fontsize=9)
      else:
        ax.set_ylabel("output position t", fontsize=9)
  fig.colorbar(image, ax=axes, shrink=0.5, label="log10 |dy_t/dx_s| / max  (white: exactly 0)")
  fig.suptitle(f"Which inputs each output depends on: residual stacks of L layers, T = {T}",
               fontsize=13)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return table


# ---------------------------------------------------------------------------------------
# Attention maps


def attention_weights(transformer: Any, x_BTI: Array, mask: Array | None = None
                      ) -> list[np.ndarray]:
  """Self-attention weights of every layer of a ``transformer`` (or ``transformer_lm``).

  Runs the stack layer by layer; each layer's weights are recomputed from its normed input
  with ``self_attn.project_q`` / ``project_kv``, the layer's own mask (causal, local window,
  padding) and softmax over keys. Dropout is not applied: call ``model.eval()`` first if
  the model has any.

  Args:
    transformer: a ``seqscale.models.transformer.Transformer`` (then ``x_BTI`` are features
      [B, T, I]) or ``TransformerLM`` (then ``x_BTI`` are tokens [B, T]).
    x_BTI: the input.
    mask: bool [B, T], True at valid positions (``Transformer`` only).

  Returns:
    One float32 array [B, H, T, S] per layer (S = T); rows sum to 1 over allowed keys and
    are 0 at masked ones.
  """
  if getattr(transformer, "interface", None) == "lm":
    h_BTD = transformer._embed(x_BTI)  # pylint: disable=protected-access
  elif hasattr(transformer, "stack") and hasattr(transformer, "embed"):
    h_BTD = transformer.embed(x_BTI)
  else:
    raise ValueError(f"transformer={type(transformer).__name__}: expected a 'transformer' "
                     "or 'transformer_lm' model (with .embed and .stack)")
  s = transformer.stack
  h_BTD = s._add_positions(h_BTD, 0)  # pylint: disable=protected-access
  T = h_BTD.shape[1]
  out = []
  for layer in s.layers:
    a = layer.self_attn
    n_BTD = layer._pre(h_BTD, layer.self_attn_norm)  # pylint: disable=protected-access
    q_BTHK = a.project_q(n_BTD)
    k_BSHK, _ = a.project_kv(n_BTD)
    scores_BHTS = jnp.einsum("BTHK,BSHK->BHTS", q_BTHK.astype(jnp.float32),
                             k_BSHK.astype(jnp.float32)) / math.sqrt(a.head_dim)
    allowed = attn_ops.make_attention_mask(T, T, causal=layer.causal, key_padding_mask_BS=mask,
                                           local_window=layer.local_window)
    weights_BHTS = jax.nn.softmax(jnp.where(allowed, scores_BHTS, -jnp.inf), axis=-1)
    out.append(np.asarray(jnp.where(allowed, jnp.nan_to_num(weights_BHTS), 0.0)))
    h_BTD = layer(h_BTD, mask_BT=mask)
  return out


def attention_entropy(weights_BHTS: np.ndarray, example: int = 0) -> np.ndarray:
  """Mean entropy (nats) of each head's attention rows for one example: [H]."""
  w = np.asarray(weights_BHTS[example], np.float64)
  return -(w * np.log(np.where(w > 0, w, 1.0))).sum(-1).mean(-1)


def plot_attention_maps(path: str, weights: Sequence[np.ndarray], tokens: Sequence[str] | None
                        = None, *, example: int = 0, heads: str | Sequence[int] = "all",
                        title: str = "") -> None:
  """Heatmaps of attention weights (query position down, key position across) to PNG.

  Colour is the weight on a square-root scale; titles give each head's mean row entropy.

  Args:
    path: the PNG to write.
    weights: per layer [B, H, T, S] (from ``attention_weights``).
    tokens: optional label per position (tick labels when T <= 64).
    example: which batch element.
    heads: "all" (rows: layers, columns: heads), "sharpest" (one panel per layer: the head
      with the lowest mean attention entropy, the one that most visibly picks keys), or a
      list of head indices.
    title: the figure title.
  """
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  plt = outputs.pyplot()

  H = weights[0].shape[1]
  if heads == "all":
    chosen = [list(range(H)) for _ in weights]
  elif heads == "sharpest":
    chosen = [[int(np.argmin(attention_entropy(w, example)))] for w in weights]
  elif isinstance(heads, str) or any(not 0 <= h < H for h in heads):
    raise ValueError(f"heads={heads!r}; allowed: 'all', 'sharpest' or indices in [0, {H})")
  else:
    chosen = [list(heads) for _ in weights]
  ncols = max(len(c) for c in chosen)
  fig, axes = plt.subplots(len(weights), ncols, figsize=(3.6 * ncols + 1, 3.6 * len(weights)),
                           squeeze=False, constrained_layout=True)
  image = None
  for l, (w, hs) in enumerate(zip(weights, chosen)):
    for c in range(ncols):
      ax = axes[l, c]
      if c >= len(hs):
        ax.axis("off")
        continue
      m = np.asarray(w[example, hs[c]], np.float32)
      # A square-root scale keeps the diffuse heads (weights ~ 1/t) visible next to sharp ones.
      image = ax.imshow(m, cmap="magma", norm=colors.PowerNorm(0.5, vmin=0, vmax=1),
                        interpolation="nearest")
      ent = attention_entropy(w, example)[hs[c]]
      ax.set_title(f"layer {l + 1}, head {hs[c] + 1} (entropy {ent:.2f})", fontsize=10)
      ax.set_xlabel("key position s", fontsize=9)
      ax.set_ylabel("query position t", fontsize=9)
      T, S = m.shape
      if tokens is not None and max(T, S) <= 64:
        ax.set_xticks(range(S), [str(tok) for tok in tokens[:S]], fontsize=6)
        ax.set_yticks(range(T), [f"{i} {tok}" for i, tok in enumerate(tokens[:T])], fontsize=6)
  fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
  if title:
    fig.suptitle(title, fontsize=12)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
  """``pictures.md``: the receptive-field table and, if drawn, the attention maps' numbers."""
  c = results["connectivity"]
  rf = c["receptive_field_last_output"]
  num = len(next(iter(rf.values())))
  lines = [f"Receptive field of the last output (inputs it depends on, of T = {c['T']}), "
           "residual stacks of L layers:", "",
           "| layer type | " + " | ".join(f"L = {l}" for l in range(1, num + 1))
           + " | layers to connect all s <= t |",
           "|---|" + "---:|" * (num + 1)]
  for kind, fields in rf.items():
    lines.append(f"| {kind} | " + " | ".join(map(str, fields))
                 + f" | {c['layers_to_connect'][kind]} |")
  if "attention" in results:
    a = results["attention"]
    acc = {k: round(v.get("accuracy", float("nan")), 3) for k, v in a["eval"].items()}
    lines += ["", f"Attention maps: {a['task']}, checkpoint step {a['checkpoint_step']}, "
              f"eval accuracy {acc}; mean attention entropy (nats) per layer and head: "
              f"{a['entropy_per_layer_head_nats']}"]
  return "\n".join(lines) + "\n"
