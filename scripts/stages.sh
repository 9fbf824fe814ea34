# The stages both embedded-model scripts share (scripts/train_v2.sh, scripts/train_flow.sh), sourced by them: each
# skips itself when its output is newer than its input, so a script called again after a stop goes on.
# Uses $PY (the Python to run) and $SECONDS from the calling script.

stage() { echo; echo "== $1 ($(date +%H:%M:%S), ${SECONDS}s)"; }

# export_model RUN MODEL: the training folder's EMA weights as a model folder (skipped when MODEL is newer)
export_model() {
  if [[ -f "$2/model.safetensors" && "$2/model.safetensors" -nt "$1/unet_state.pt" ]]; then
    echo "up to date"
  else
    "$PY" -c "import sys; from diffx.embedded.export import export_model; export_model(sys.argv[1], sys.argv[2])" \
      "$1" "$2"
    echo "wrote $2"
  fi
}

# tune_guidance MODEL [OPTION…]: benchmarks/tune_guidance.py --write (skipped when its record is newer than MODEL)
tune_guidance() {
  local model="$1"
  shift
  if [[ -f "$model/guidance_tuning.json" && "$model/guidance_tuning.json" -nt "$model/model.safetensors" ]]; then
    echo "up to date: $model/guidance_tuning.json"
  else
    "$PY" -m benchmarks.tune_guidance --model "$model" --write "$@"
  fi
}

# measure_quality RUN MODEL [OPTION…]: benchmarks/embedded_quality.py --card into RUN/quality.json (skipped when
# that is newer than MODEL)
measure_quality() {
  local run="$1" model="$2"
  shift 2
  if [[ -f "$run/quality.json" && "$run/quality.json" -nt "$model/model.safetensors" ]]; then
    echo "up to date: $run/quality.json"
  else
    "$PY" -m benchmarks.embedded_quality --model "$model" --card --out "$run/quality.json.tmp" "$@"
    mv "$run/quality.json.tmp" "$run/quality.json"
  fi
}

# copy_to_out MODEL RUN PATTERN…: on a device machine ($OUT set: what is written under it comes back), MODEL and
# RUN's files matching each PATTERN (a glob relative to RUN) copied under $OUT; nothing without $OUT
copy_to_out() {
  [[ -n "${OUT:-}" ]] || return 0
  local model="$1" run="$2" pattern
  shift 2
  mkdir -p "$OUT/$model" "$OUT/$run"
  cp -r "$model"/. "$OUT/$model"/
  for pattern in "$@"; do
    # shellcheck disable=SC2086  # the pattern is a glob to expand
    cp "$run"/$pattern "$OUT/$run"/ 2>/dev/null || true
  done
  echo "copied $model and $run's results under \$OUT"
}

# background_priority: `nice -n 19` only orders processes *within* one scheduler autogroup, and Linux gives every
# session its own (with /proc/sys/kernel/sched_autogroup_enabled): a run started with setsid then takes a full
# share of the CPU beside a shell's work whatever its nice (measured: 94% of a core beside a test run). Where this
# script leads its own session, lower the whole group as well; started from a shell, it leaves that shell's group be.
background_priority() {
  if [[ "$(ps -o sid= -p $$ | tr -d ' ')" == "$$" && -w /proc/self/autogroup ]]; then
    echo 19 > /proc/self/autogroup 2>/dev/null || true
  fi
}
