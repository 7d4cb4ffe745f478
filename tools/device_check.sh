#!/usr/bin/env bash
# One command that checks seqscale on an accelerator (written for one GPU) in at most 8
# minutes, and writes everything it produces under one folder:
#
#   tools/device_check.sh OUT_DIR             # run it (from anywhere; it cds to the repo)
#   tools/device_check.sh OUT_DIR --dry-run   # write OUT_DIR/commands.txt, run nothing
#
# Steps, each with its own time limit (the limits sum to under 8 minutes, and a step that
# would pass the overall deadline is cut to fit or skipped):
#   env        what ran where: nvidia-smi, JAX/PyTorch versions, devices, cuDNN, git commit
#   attention  what attention_impl="auto" resolves to here (ops.attention.choose_impl), and
#              every implementation against the reference on this device
#   tests      the tests that touch device paths (not the slow ones); DEVICE_CHECK_TESTS
#              overrides the list
#   bench      experiments.bench with PyTorch's CUDA peers: torch.nn.LSTM/GRU (cuDNN),
#              sdpa and sdpa restricted to FlashAttention (bfloat16), jax.nn's xla/cudnn
#   overview   experiments.overview --quick (each section written as soon as it finishes,
#              so a cut run keeps what it measured)
# A failed or timed-out step is recorded and the next one runs. OUT_DIR/summary.md has one
# row per step (exit code, seconds, log); the exit code is 1 if any step failed or was
# skipped, 2 on a usage error. Environment: PYTHON (the interpreter, default python),
# DEVICE_CHECK_STEPS (comma-separated, default all five), DEVICE_CHECK_TESTS (test files),
# DEVICE_CHECK_DEADLINE_S (the overall deadline, at most the default 470).
set -euo pipefail

usage() {
  echo "usage: $0 OUT_DIR [--dry-run]" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
[[ -n $1 && $1 != -* ]] || usage
DRY_RUN=0
if [[ $# -eq 2 ]]; then
  [[ $2 == --dry-run ]] || usage
  DRY_RUN=1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PY=${PYTHON:-python}
DEADLINE_S=${DEVICE_CHECK_DEADLINE_S:-470}  # 8 minutes, less the grace a killed step gets
GRACE_S=5
STEPS=",${DEVICE_CHECK_STEPS:-env,attention,tests,bench,overview},"
for step in ${STEPS//,/ }; do
  case $step in
    env | attention | tests | bench | overview) ;;
    *)
      echo "DEVICE_CHECK_STEPS: unknown step '$step' (allowed: env, attention, tests, bench," \
        "overview)" >&2
      exit 2
      ;;
  esac
done
if ! [[ $DEADLINE_S =~ ^[0-9]+$ ]] || ((DEADLINE_S > 470)); then
  echo "DEVICE_CHECK_DEADLINE_S=$DEADLINE_S: must be an integer <= 470 (8 minutes)" >&2
  exit 2
fi
TESTS=${DEVICE_CHECK_TESTS:-"tests/test_attention.py tests/test_fast_paths.py \
tests/test_recurrent.py tests/test_linear_recurrence.py tests/test_moe.py \
tests/test_overview.py tests/test_multihost.py"}

# Everything a step writes stays under OUT: data, temporary files, matplotlib's cache.
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU's memory
export TFDS_DATA_DIR="$OUT/data" TMPDIR="$OUT/tmp" MPLCONFIGDIR="$OUT/tmp/matplotlib"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$TMPDIR" "$MPLCONFIGDIR"
cd "$ROOT"

# ------------------------------------------------------------------ the steps' programs

cat > "$OUT/env.py" <<'EOF'
"""What ran where: versions, devices, the git commit."""
import json
import sys

import jax

from seqscale import outputs

info = {"context": outputs.run_context(), "devices": [str(d) for d in jax.devices()]}
try:
  import torch
  info["torch"] = {"version": torch.__version__, "cuda": torch.cuda.is_available(),
                   "cuda_version": torch.version.cuda,
                   "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
                            else None,
                   "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                             else None}
except ImportError:
  info["torch"] = None
outputs.write_json(sys.argv[1], info)
print(json.dumps(info, indent=1, default=str))
EOF

cat > "$OUT/attention_choice.py" <<'EOF'
"""What attention_impl="auto" resolves to on this backend, and every implementation against
the reference (float32 softmax, the whole [T, S] matrix) on this device."""
import inspect
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.ops import attention as attn

sig = inspect.signature(attn.choose_impl).parameters
out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
       "choose_impl": f"choose_impl{inspect.signature(attn.choose_impl)}", "choices": [],
       "parity": []}
for dtype in ("float32", "bfloat16"):
  for T in (1, 128, 4096):
    for dropout in (False, True):
      known = dict(num_queries=T, num_keys=T, seq_len=T, head_dim=64, num_heads=4,
                   causal=True, dtype=jnp.dtype(dtype), mask=None,
                   dropout_fn=(lambda w: w) if dropout else None,
                   backend=jax.default_backend())
      row = {"dtype": dtype, "T": T, "dropout": dropout}
      try:
        row["auto"] = attn.choose_impl("auto", **{k: v for k, v in known.items() if k in sig})
      except Exception as e:  # pylint: disable=broad-except  # recorded, not fatal
        row["error"] = f"{type(e).__name__}: {e}"
      out["choices"].append(row)
      print("choice", row, flush=True)
outputs.write_json(sys.argv[1], out)  # rewritten after every row: a cut run keeps its rows

rng = np.random.default_rng(0)
for dtype in ("float32", "bfloat16"):
  for T in (256, 2048):
    q, k, v = (jnp.asarray(rng.normal(size=(2, T, 4, 64)), jnp.float32) for _ in range(3))
    ref = attn.dot_product_attention(q, k, v, causal=True)  # float32, the whole matrix
    qd, kd, vd = (a.astype(dtype) for a in (q, k, v))
    for impl in attn.IMPLS:
      row = {"dtype": dtype, "T": T, "impl": impl}
      try:
        fn = jax.jit(lambda q, k, v, impl=impl: attn.attention(q, k, v, impl=impl, causal=True))
        y = jax.block_until_ready(fn(qd, kd, vd))
        times = []
        for _ in range(5):
          t0 = time.perf_counter()
          jax.block_until_ready(fn(qd, kd, vd))
          times.append(time.perf_counter() - t0)
        row["max_abs_err_vs_float32_reference"] = float(jnp.max(jnp.abs(
            y.astype(jnp.float32) - ref)))
        row["median_ms"] = 1e3 * float(np.median(times))
      except Exception as e:  # pylint: disable=broad-except  # e.g. cudnn on float32
        row["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
      out["parity"].append(row)
      print("parity", row, flush=True)
      outputs.write_json(sys.argv[1], out)
EOF

# ------------------------------------------------------------------ running them

NAMES=() BUDGETS=() COMMANDS=()
add_step() {  # add_step NAME SECONDS COMMAND (a bash command line, run in ROOT)
  if [[ $STEPS == *",$1,"* ]]; then
    NAMES+=("$1") BUDGETS+=("$2") COMMANDS+=("$3")
  fi
}
O=$(printf %q "$OUT")  # OUT quoted for the command lines below
add_step env 20 "{ nvidia-smi || echo 'nvidia-smi: not found'; } && $PY $O/env.py $O/env.json"
add_step attention 40 "$PY $O/attention_choice.py $O/attention_choice.json"
add_step tests 120 "$PY -m pytest -q -m 'not slow' -p no:cacheprovider -rfE --durations=15 \
--basetemp=$O/tmp/pytest --junitxml=$O/junit.xml $TESTS"
add_step bench 140 "$PY -m experiments.bench --workdir=$O/bench --layers=lstm,gru,attention \
--lengths=512,2048 --dtypes=float32,bfloat16 --notargets"
add_step overview 120 "$PY -m experiments.overview --workdir=$O/overview --quick"

{
  echo "# tools/device_check.sh $OUT (from $ROOT); limits in seconds, total deadline $DEADLINE_S"
  for i in "${!NAMES[@]}"; do
    echo "${NAMES[$i]} ${BUDGETS[$i]}s: ${COMMANDS[$i]}"
  done
} > "$OUT/commands.txt"
if [[ $DRY_RUN -eq 1 ]]; then
  cat "$OUT/commands.txt"
  exit 0
fi

START=$SECONDS
FAILED=0
SUMMARY="| step | exit code | seconds | limit (s) | log |
|---|---|---|---|---|"
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  left=$((DEADLINE_S - (SECONDS - START)))
  limit=$((BUDGETS[i] < left ? BUDGETS[i] : left))
  if ((limit < 10)); then
    SUMMARY+=$'\n'"| $name | skipped: the 8-minute deadline | 0 | 0 | - |"
    FAILED=1
    continue
  fi
  echo "== $name (limit ${limit} s): ${COMMANDS[$i]}"
  t0=$SECONDS
  rc=0
  timeout --kill-after="$GRACE_S" "$limit" bash -c "${COMMANDS[$i]}" \
    > "$OUT/$name.log" 2>&1 || rc=$?
  note=$rc
  if ((rc == 124 || rc == 137)); then
    note="$rc (timed out)"
  fi
  ((rc == 0)) || FAILED=1
  tail -n 5 "$OUT/$name.log" || true
  SUMMARY+=$'\n'"| $name | $note | $((SECONDS - t0)) | $limit | $name.log |"
done

{
  echo "# device check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>/dev/null | head -n 1 || true)
  echo "GPU: ${gpu:-none found by nvidia-smi}; git $(git -C "$ROOT" rev-parse --short HEAD \
    2>/dev/null || echo '?'); env.json has the rest."
  echo
  echo "$SUMMARY"
  echo
  echo "Total: $((SECONDS - START)) s. Outputs: env.json, attention_choice.json, junit.xml,"
  echo "bench/ (results.md), overview/ (overview.md), and one log per step."
} > "$OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
