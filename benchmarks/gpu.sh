#!/usr/bin/env bash
# The accelerator run: three benchmarks in at most 8 minutes on one GPU, results as JSON.
#
#   1. convergence (at most 380 s): AdamW, optax's Muon and Scion at nanoGPT's shakespeare_char
#      shape (6 layers, width 384, 6 heads, context 256, batch 64), 800 steps, each at the best
#      setting the CPU sweeps found and 3 learning rates around its best (convergence --tuned).
#   2. polar_accuracy (at most 60 s): polar-factor error and time at float32, TF32 and
#      bfloat16, standard and Gram Newton–Schulz, shapes 768x768 and 768x3072, condition
#      numbers 1, 1e2 and 1e4, against optax.contrib's Newton–Schulz.
#   3. step_overhead (at most 75 s): a full training step of a GPT-2-small-sized example GPT
#      (12 layers, width 768, 12 heads, context 1024) with adamw, optax_muon and scion, and
#      each update alone (10 chained in one jitted call).
#
# Each part runs under its cap (and what is left of the budget), so a slow part cannot take
# the others' time; the convergence sweep writes its JSON after every run, so a cut keeps the
# runs done. Most of the two short parts is compiling.
#
# Usage, from anywhere (it runs in the repository root):
#
#   bash benchmarks/gpu.sh                       # results in benchmarks/results/gpu/
#   OUT=/some/dir PYTHON=/path/to/python bash benchmarks/gpu.sh
#   DATA=tinyshakespeare.txt bash benchmarks/gpu.sh   # convergence on that text file
#   GPU_SCRIPT_TOY=1 bash benchmarks/gpu.sh      # every part at tiny sizes on CPU, 2-4 min
#   GPU_SCRIPT_PLAN=1 bash benchmarks/gpu.sh     # print the parts, caps and commands; run none
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (default
# benchmarks/results/gpu; in toy mode a new temporary folder), DATA (a UTF-8 text file for
# the convergence part; default the example's pydoc_data corpus), GPU_SCRIPT_BUDGET_S (530:
# the whole run's wall-clock cap), STEP_BATCH (8), CONV_STEPS (800), CONV_POINTS (3),
# ALLOW_CPU=1 (run the real sizes without an accelerator: hours). Installs nothing. Writes one
# JSON per part, logs/<part>.log, and gpu_summary.json (each part's status and seconds, the
# device). Exit status 0 only when every part succeeded.
set -euo pipefail

# PYTHON, OUT and DATA given as relative paths are taken from where the script was started.
if [[ ${PYTHON:-} == */* && ${PYTHON:-} != /* ]]; then PYTHON=$PWD/$PYTHON; fi
if [[ -n ${OUT:-} && $OUT != /* ]]; then OUT=$PWD/$OUT; fi
if [[ -n ${DATA:-} && $DATA != /* ]]; then DATA=$PWD/$DATA; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOY=${GPU_SCRIPT_TOY:-0}
PLAN=${GPU_SCRIPT_PLAN:-0}
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
if [[ $TOY == 1 ]]; then
  if [[ $PLAN == 1 ]]; then OUT=${OUT:-'(a new temporary folder)'}; fi
  OUT=${OUT:-$(mktemp -d -t gpu_toy.XXXXXX)}
  BUDGET=${GPU_SCRIPT_BUDGET_S:-600}
else
  OUT=${OUT:-benchmarks/results/gpu}
  BUDGET=${GPU_SCRIPT_BUDGET_S:-530}
fi
if [[ $PLAN != 1 ]]; then mkdir -p "$OUT/logs"; fi
T0=$(date +%s%N)

# Compiling takes much of the time. A compilation cache shared by the parts' processes saves
# the convergence runs of one optimizer from compiling the same model initialization,
# evaluation and norm report again. In toy mode XLA also skips its expensive optimizations.
if [[ $TOY == 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 \
--xla_llvm_disable_expensive_passes=true"
fi
if [[ $PLAN != 1 && -z ${JAX_COMPILATION_CACHE_DIR:-} ]]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d -t gpu_jax_cache.XXXXXX)
  export JAX_COMPILATION_CACHE_DIR
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

elapsed() { echo $(( ($(date +%s%N) - T0) / 1000000000 )); }
json_str() {  # a JSON string literal
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "${s//$'\n'/ }"
}

PARTS=()    # one JSON object per part
LINES=()    # one summary line per part
STATUS=0
DEVICE="unknown"
BACKEND="unknown"
MISSING=""

write_summary() {
  local parts
  parts=$(IFS=,; echo "${PARTS[*]:-}")
  {
    printf '{\n "benchmark": "gpu.sh",\n'
    printf ' "device": %s,\n "backend": %s,\n' "$(json_str "$DEVICE")" "$(json_str "$BACKEND")"
    printf ' "toy": %s,\n' "$([[ $TOY == 1 ]] && echo true || echo false)"
    printf ' "python": %s,\n' "$(json_str "$(basename "$PY")")"
    printf ' "missing_modules": %s,\n' "$(json_str "$MISSING")"
    printf ' "data": %s,\n' "$(json_str "$(basename "${DATA:-pydoc_data.topics}")")"
    printf ' "budget_s": %s,\n "total_s": %s,\n' "$BUDGET" "$(elapsed)"
    printf ' "date": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf ' "command": %s,\n' "$(json_str "bash benchmarks/gpu.sh")"
    printf ' "note": %s,\n' "$(json_str "step_overhead and convergence train in float32 at the\
 backend's default matmul precision (TF32 on NVIDIA Ampere and newer)")"
    printf ' "ok": %s,\n' "$([[ $STATUS == 0 ]] && echo true || echo false)"
    printf ' "parts": [%s]\n}\n' "$parts"
  } > "$OUT/gpu_summary.json"
}

# -- what is installed ------------------------------------------------------------------------

echo "== python: $PY; results: $OUT; toy: $TOY; budget: $BUDGET s"
if [[ $PLAN == 1 ]]; then
  echo "== plan only (GPU_SCRIPT_PLAN=1): the parts in order, 'plan NAME CAP_S COMMAND...'"
else
# One interpreter start for every check: jax and its devices first, then the other modules.
set +e
PROBE=$("$PY" - 2>&1 <<'EOF'
import importlib
import sys

try:
  import jax

  print("devices=" + str(jax.devices()))
except Exception as e:  # noqa: BLE001 - report whatever stops jax
  print(f"jax_error={type(e).__name__}: {e}")
  sys.exit(2)
missing = []
for mod in ("numpy", "optax", "chex", "flax", "orbax.checkpoint", "tqdm", "matplotlib"):
  try:
    importlib.import_module(mod)
  except Exception:  # noqa: BLE001 - any failure to import counts as missing
    missing.append(mod)
try:
  from benchmarks import _common

  device = _common.device_name()
except Exception as e:  # noqa: BLE001
  device = f"{jax.devices()[0]} (benchmarks._common failed: {type(e).__name__})"
print("backend=" + jax.default_backend())
print("device=" + device)
print("missing=" + " ".join(missing))
EOF
)
PROBE_RC=$?
set -e
if (( PROBE_RC != 0 )); then
  echo "$PROBE" >&2
  echo "ERROR: '$PY' cannot import jax or list its devices (exit $PROBE_RC): nothing can run." >&2
  echo "Set PYTHON=/path/to/python of an environment with jax[cuda], optax, chex, flax," \
       "orbax-checkpoint, tqdm and matplotlib (this script installs nothing)." >&2
  MISSING="jax"
  STATUS=2
  write_summary
  exit 2
fi
grep -v '^\(devices\|backend\|device\|missing\)=' <<<"$PROBE" >&2 || true  # jax's warnings
echo "== jax devices: $(sed -n 's/^devices=//p' <<<"$PROBE")"
BACKEND=$(sed -n 's/^backend=//p' <<<"$PROBE")
DEVICE=$(sed -n 's/^device=//p' <<<"$PROBE")
MISSING=$(sed -n 's/^missing=//p' <<<"$PROBE")
echo "== backend: $BACKEND; device: $DEVICE"
if [[ -n $MISSING ]]; then
  echo "MISSING python modules: $MISSING (parts that need them are skipped)" >&2
else
  echo "== every module found (jax, numpy, optax, chex, flax, orbax, tqdm, matplotlib)"
fi
if [[ $BACKEND == cpu && $TOY != 1 && ${ALLOW_CPU:-0} != 1 ]]; then
  echo "ERROR: jax sees no accelerator (backend cpu). The real sizes take hours on a CPU;" \
       "run GPU_SCRIPT_TOY=1 for the toy sizes, or ALLOW_CPU=1 to insist." >&2
  STATUS=3
  write_summary
  exit 3
fi
fi  # not PLAN

# -- the parts --------------------------------------------------------------------------------

# run_part NAME CAP_S "MODULES NEEDED" COMMAND...: runs COMMAND under a time limit (the smaller
# of CAP_S and what is left of the budget), logs it, and records its status and seconds.
run_part() {
  local name=$1 cap=$2 needs=$3
  shift 3
  if [[ $PLAN == 1 ]]; then
    echo "plan $name $cap $*"
    return
  fi
  local left=$(( BUDGET - $(elapsed) )) start rc=0 status seconds lacking="" mod
  for mod in $needs; do
    if [[ " $MISSING " == *" $mod "* ]]; then lacking+="$mod "; fi
  done
  local limit=$(( cap < left ? cap : left ))
  echo
  echo "== part $name (limit ${limit} s): $*"
  start=$(date +%s%N)
  if [[ -n $lacking ]]; then
    status="skipped: missing ${lacking% }"
    rc=-1
  elif (( limit < 10 )); then
    status="skipped: no time left"
    rc=-1
  else
    set +e
    if command -v timeout >/dev/null; then
      timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
      rc=${PIPESTATUS[0]}
    else
      "$@" 2>&1 | tee "$OUT/logs/$name.log"
      rc=${PIPESTATUS[0]}
    fi
    set -e
    if (( rc == 0 )); then status=ok
    elif (( rc == 124 || rc == 137 )); then status="timed out after ${limit} s"
    else status="failed (exit $rc)"
    fi
  fi
  seconds=$(( ($(date +%s%N) - start) / 1000000 ))
  seconds=$(printf '%d.%03d' $((seconds / 1000)) $((seconds % 1000)))
  if [[ $status != ok ]]; then STATUS=1; fi
  echo "== part $name: $status in ${seconds} s"
  LINES+=("$(printf '  %-15s %9s s  %s' "$name" "$seconds" "$status")")
  PARTS+=("{\"name\": $(json_str "$name"), \"status\": $(json_str "$status"), \"rc\": $rc,\
 \"seconds\": $seconds, \"limit_s\": $limit, \"json\": \"$name.json\", \"log\": \"logs/$name.log\"}")
  write_summary
}

CORE="jax numpy optax chex"
EXAMPLE="$CORE flax orbax.checkpoint tqdm"
DATA_FLAG=()
if [[ -n ${DATA:-} ]]; then DATA_FLAG=(--data "$DATA"); fi

if [[ $TOY == 1 ]]; then
  run_part convergence 300 "$EXAMPLE matplotlib" "$PY" -m benchmarks.convergence \
    --preset toy --tuned --optimizers adamw optax_muon scion --points 2 --extend 0 \
    --no-variants --timing-rounds 1 "${DATA_FLAG[@]}" --out "$OUT/convergence.json"
  run_part polar_accuracy 120 "$CORE" "$PY" -m benchmarks.polar_accuracy \
    --shapes 32x8 16x48 --conds 1 1e4 --reps 2 --inner 2 --matmul-size 128 \
    --out "$OUT/polar_accuracy.json"
  run_part step_overhead 180 "$EXAMPLE" "$PY" -m benchmarks.step_overhead \
    --width 32 --depth 1 --heads 2 --seq 16 --batch 2 --reps 1 --warmup 0 --chain 2 \
    --optimizers adamw optax_muon scion --out "$OUT/step_overhead.json"
else
  # The sweep writes its JSON after every run, so a cut keeps the runs done (the JSON says
  # "complete": false).
  run_part convergence 380 "$EXAMPLE matplotlib" "$PY" -m benchmarks.convergence \
    --preset shakespeare_char --tuned --optimizers adamw optax_muon scion \
    --points "${CONV_POINTS:-3}" --extend 0 --no-variants --steps "${CONV_STEPS:-800}" \
    "${DATA_FLAG[@]}" --out "$OUT/convergence.json"
  run_part polar_accuracy 60 "$CORE" "$PY" -m benchmarks.polar_accuracy \
    --shapes 768x768 768x3072 --conds 1 1e2 1e4 --reps 7 --inner 10 \
    --out "$OUT/polar_accuracy.json"
  run_part step_overhead 75 "$EXAMPLE" "$PY" -m benchmarks.step_overhead \
    --width 768 --depth 12 --heads 12 --seq 1024 --batch "${STEP_BATCH:-8}" --reps 3 \
    --warmup 1 --chain 10 --optimizers adamw optax_muon scion --out "$OUT/step_overhead.json"
fi

# -- summary ----------------------------------------------------------------------------------

if [[ $PLAN == 1 ]]; then exit 0; fi
write_summary
echo
echo "== summary ($DEVICE, $(elapsed) s in all; $OUT/gpu_summary.json)"
printf '%s\n' "${LINES[@]}"
exit "$STATUS"
