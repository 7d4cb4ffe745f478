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

**Attention maps.** ``attention_weights`` asks a ``transformer`` (or ``transformer_lm``)
for each layer's softmax weights through the model's public ``attention_weights``.

Shapes: B batch, T length (queries), S keys, D width, H heads, K head dim, L layers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.checks import check_int
from seqscale.ops import attention as attn_ops
from seqscale.ops import conv as conv_ops
from seqscale.ops import recurrent

Array = jax.Array
KINDS = ("attention", "conv", "dilated_conv", "rnn")
LABELS = {"attention": "causal self-attention", "conv": "causal conv, kernel 3",
          "dilated_conv": "dilated causal conv, kernel 2 (WaveNet)", "rnn": "Elman RNN (tanh)"}
_NUM_HEADS = 2
TASKS = ("copy_memory", "algorithmic")  # tasks the Transformer of the attention maps learns


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` draws. Defaults: about 3 min on 2 CPU cores (35 s without training)."""
  length: int = 32  # T of the connectivity pictures
  max_layers: int = 4  # columns L = 1..max_layers
  width: int = 8  # D of the random stacks
  seed: int = 0  # random weights and inputs of the stacks
  task: str = "copy_memory"  # in TASKS: what the Transformer of the attention maps learns
  # Its trainer ConfigDict (experiments/configs/<task>.py); None: no training, no maps.
  train_config: Any = None
  num_steps: int | None = None  # training steps; None: the config's

  def __post_init__(self):
    for name in ("length", "max_layers", "width"):
      check_int(name, getattr(self, name), 1)
    check_int("seed", self.seed, 0)
    if self.num_steps is not None:
      check_int("num_steps", self.num_steps, 1)
    if self.task not in TASKS:
      raise ValueError(f"task={self.task!r}; allowed: {', '.join(TASKS)}")


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
      return attn_ops.merge_heads(attn_ops.attention(q, k, v, impl="reference", causal=True),
                                  wo)
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

  The model's public ``attention_weights`` runs the stack layer by layer and computes each
  layer's softmax weights (``ops.attention.attention_weights``) with the layer's own mask
  (causal, local window, padding). Dropout is not applied to the weights: call
  ``model.eval()`` first if the model has any.

  Args:
    transformer: a ``seqscale.models.transformer.Transformer`` (then ``x_BTI`` are features
      [B, T, I]) or ``TransformerLM`` (then ``x_BTI`` are tokens [B, T]).
    x_BTI: the input.
    mask: bool [B, T], True at valid positions (``Transformer`` only).

  Returns:
    One float32 array [B, H, T, S] per layer (S = T); rows sum to 1 over allowed keys and
    are 0 at masked ones.
  """
  if not callable(getattr(transformer, "attention_weights", None)):
    raise ValueError(f"transformer={type(transformer).__name__}: expected a 'transformer' "
                     "or 'transformer_lm' model (with .attention_weights)")
  kw = {} if mask is None else {"mask": mask}
  return [np.asarray(w) for w in transformer.attention_weights(x_BTI, **kw)]


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


# ---------------------------------------------------------------------------------- run

def _labels(task: str, tokens: Any) -> list[str]:
  if task == "copy_memory":  # symbols 1..8, blank 9, delimiter 10
    return [{9: "_", 10: ":"}.get(int(t), str(int(t))) for t in tokens]
  return [str(int(t)) for t in tokens]


def draw_attention(settings: Settings, workdir: str) -> dict[str, Any]:
  """Trains ``settings.train_config`` into ``workdir/<task>`` (a second run resumes),
  restores the Transformer and draws ``attention_maps.png``; returns its numbers."""
  from seqscale import train  # pylint: disable=g-import-not-at-top  # only when training
  config, task = settings.train_config.copy_and_resolve_references(), settings.task
  if settings.num_steps is not None:
    config.num_steps = settings.num_steps
    config.checkpoint_every = min(config.checkpoint_every, settings.num_steps)
  run_dir = os.path.join(workdir, task)
  t0 = time.perf_counter()
  trained = train.train_and_evaluate(config, run_dir)
  model, step = train.restore_model(config, run_dir)
  batch = train.get_task(config.task.to_dict()).dataset("test", batch_size=1,
                                                        seed=config.seed)[0]
  weights = attention_weights(model.backbone, model.embed(batch["inputs"]), mask=batch["mask"])
  plot_attention_maps(os.path.join(workdir, "attention_maps.png"), weights,
                      tokens=_labels(task, batch["inputs"][0]),
                      title=f"{task}: causal Transformer after {step} steps, one test example")
  return {"task": task, "checkpoint_step": step, "eval": trained["eval"],
          "train_time_s": trained["train_time_s"], "time_s": time.perf_counter() - t0,
          "inputs": batch["inputs"][0].tolist(),
          "entropy_per_layer_head_nats": [attention_entropy(w).round(3).tolist()
                                          for w in weights],
          # For each layer and head: the key each query attends to most.
          "argmax_key_per_query": [np.asarray(w[0]).argmax(-1).tolist() for w in weights],
          "config": config.to_dict()}


def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] | None = print) -> dict[str, Any]:
  """Draws ``connectivity.png`` and (with a ``train_config``) ``attention_maps.png``;
  writes ``results.json`` and ``pictures.md``. Returns the results with ``markdown``."""
  workdir = outputs.prepare_workdir(workdir)
  s, start = settings, time.perf_counter()
  table = plot_connectivity(os.path.join(workdir, "connectivity.png"),
                            max_layers=s.max_layers, T=s.length, width=s.width, seed=s.seed)
  results: dict[str, Any] = {"connectivity": {
      "T": s.length, "width": s.width, "seed": s.seed,
      "receptive_field_last_output": {k: v["receptive_field"] for k, v in table.items()},
      "layers_to_connect": {k: v["layers_to_connect"] for k, v in table.items()},
      "time_s": time.perf_counter() - start}}
  if progress is not None:
    progress(f"drew {workdir}/connectivity.png")
  if s.train_config is not None:
    results["attention"] = draw_attention(s, workdir)
  config = results.get("attention", {}).pop("config", None)
  results["context"] = outputs.run_context(seed=s.seed, dtype="float32", config=config)
  results["wall_time_s"] = time.perf_counter() - start
  md = markdown(results)
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  outputs.write_text(os.path.join(workdir, "pictures.md"), md)
  return {**results, "markdown": md}
