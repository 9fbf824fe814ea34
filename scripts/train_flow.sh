#!/usr/bin/env bash
# Train, export and measure the embedded flow model (shapes-world-flow, issue #36): SD3's architecture at toy size
# (an MMDiT of 6 joint blocks, 128 wide, 2x2 patches over shapes-world-2's 16x16x4 latents: 64 image tokens),
# trained with rectified flow on the same world, with shapes-world-2's VAE (frozen: the latent space is shared) and
# its text encoder (trained on) taken over by --init-from.
#
#   bash scripts/train_flow.sh              # on the CPU, across sittings, at the lowest priority (nice 19): run it
#                                           # again after any stop; every stage resumes
#   THREADS=2 bash scripts/train_flow.sh    # both cores (when nothing else runs); default 1
#   WAIT=ACTIVE THREADS=2 bash …            # OpenMP's idle threads spin instead of sleeping: faster on a machine
#                                           # with nothing else to run (see the sizing below), slower beside work
#   SMOKE=1 bash scripts/train_flow.sh      # smoke test: tiny step counts, writes only under runs/smoke-flow
#   GPU=1 INIT=data/shapes-world-flow RUN=runs/shapes-world-flow-2 bash scripts/train_flow.sh
#                                           # on a CUDA machine (a lent device): batch 512, training and benchmarks on
#                                           # the GPU (the pool on every CPU core),
#                                           # $MODEL and $RUN's results copied under $OUT when it is set; sizing below
#   INIT=data/shapes-world-flow RUN=runs/shapes-world-flow-2 THREADS=2 bash scripts/train_flow.sh
#                                           # go on from the shipped flow model (every weight; a fresh AdamW and
#                                           # warm-up, as the optimiser state is not shipped), into a new run folder
#   ATTENTION_LOSS=0.01 bash …              # with the attention-grounding loss on the joint attention's image→text
#                                           # quadrant (diffx/embedded/grounding.py; default 0; the shipped model's
#                                           # third sitting ran at 0.01, the smoke test does too)
#
# Stages:
#   1. the scene pool, rendered on every core (diffx.embedded.pool_render; skipped when pool.pt exists): on a
#      2-core AMD EPYC 1,000 scenes took 21.5 s on both cores, 34.4 s on one (20,000: ~7 min instead of ~11)
#   2. diffx train --family sd3 (resumes from $RUN's checkpoints), from $INIT: shapes-world-2 (its VAE and text
#      encoder) or a flow model (all of it); the pool's latents are encoded first (on that CPU ~8 min with
#      nothing else running: 256 pictures took 6.0 s; 20-50 min when starved beside other work)
#   3. export to $MODEL (skipped when the model is newer than the last checkpoint)
#   4. benchmarks/tune_guidance.py --write: the default guidance, chosen on 128 validation prompts
#   5. benchmarks/embedded_quality.py --card: the v2 measures on 300 held-out prompts ($RUN/quality.json)
#   6. benchmarks/steps_by_model.py: "every attribute" at 4, 8 and 25 steps, beside $BASE's DDIM (shapes-world-2)
#
# Sizing, measured on this project's 2-core CPU (batch 64, a 40-token context, one AdamW step of the text encoder
# and the MMDiT), on 2 threads with the machine otherwise idle: 0.55-0.57 s a step on an Intel CPU with AMX (the first
# run: 8,000 steps in 76 min, 2026-12-07); on an AMD EPYC 1.22 s with sleeping threads, 0.87-0.97 s with WAIT=ACTIVE
# (the continuation, 2026-12-07). 1.7-2.1 s on 1 thread, ~3 s beside other work. A sitting's run folder does not outlive the
# sitting's machine: go on from the exported model (INIT=data/shapes-world-flow, above). See
# diffx/embedded/flow_model.py for the widths tried.
# GPU=1 (not yet run on a GPU: its settings are estimates, not measurements): batch 512 and lr 1e-3 as train_v2.sh's
# GPU run, 3,000 steps (1.5 M samples, three times the first CPU run's 8,000 at batch 64). A device call is limited
# to 10 minutes: run it under `timeout` and call it again if cut off (every stage resumes while the machine stays
# warm); read the step time in the first minute's log before trusting the estimate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
THREADS="${THREADS:-1}"

if [[ "${SMOKE:-0}" == "1" ]]; then
  : "${RUN:=runs/smoke-flow}" "${MODEL:=runs/smoke-flow/model}" "${POOL:=64}" "${UNET_STEPS:=2}" "${BATCH:=4}"
  : "${CKPT:=2}" "${LR:=1e-3}" "${ATTENTION_LOSS:=0.01}"
  : "${EVAL_ARGS:=--n 4 --open-prompts 1 --seeds 2 --guidances 1,5 --batch 8 --steps 2}"
  : "${TUNE_ARGS:=--n 4 --scales 1,5 --batch 8 --steps 2}"
  : "${STEPS_ARGS:=--n 4 --steps 2}"
  NICE=()
elif [[ "${GPU:-0}" == "1" ]]; then
  : "${RUN:=runs/shapes-world-flow}" "${MODEL:=data/shapes-world-flow}" "${POOL:=20000}" "${UNET_STEPS:=3000}"
  : "${BATCH:=512}" "${CKPT:=250}" "${LR:=1e-3}" "${DEVICE:=cuda}"
  : "${EVAL_ARGS:=--n 300 --open-prompts 16 --seeds 16 --batch 128}"
  : "${TUNE_ARGS:=--n 128 --batch 128}"
  : "${STEPS_ARGS:=--n 300 --steps 4,8,25 --batch 128}"
  NICE=()
else
  : "${RUN:=runs/shapes-world-flow}" "${MODEL:=data/shapes-world-flow}" "${POOL:=20000}" "${UNET_STEPS:=8000}"
  : "${BATCH:=64}" "${CKPT:=250}" "${LR:=3e-4}"
  : "${EVAL_ARGS:=--n 300 --open-prompts 16 --seeds 16 --batch 64}"
  : "${TUNE_ARGS:=--n 128 --batch 64}"
  : "${STEPS_ARGS:=--n 300 --steps 4,8,25}"
  NICE=(nice -n 19)  # other programs come first
fi
: "${INIT:=data/shapes-world-2}" "${BASE:=data/shapes-world-2}"  # where training starts; the U-Net model to compare
: "${DEVICE:=cpu}"
export OMP_NUM_THREADS="$THREADS" OMP_WAIT_POLICY="${WAIT:-PASSIVE}"  # a background run: idle threads sleep
if ! "$PY" -c "import diffx" 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# shellcheck source=scripts/stages.sh
source scripts/stages.sh
if [[ ${#NICE[@]} -gt 0 ]]; then background_priority; fi
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device: GPU=1 is for a CUDA machine; on the CPU leave GPU unset (SMOKE=1: the smoke test)" >&2
  exit 2
fi

stage "1. scene pool ($POOL scenes, on every core)"
"${NICE[@]}" "$PY" -m diffx.embedded.pool_render --out-dir "$RUN" --world shapes2 --pool-size "$POOL"

stage "2. train the MMDiT ($UNET_STEPS steps at batch $BATCH, lr $LR, $THREADS thread(s)) from $INIT"
"${NICE[@]}" "$PY" -m diffx train --family sd3 --world shapes2 --init-from "$INIT" --out-dir "$RUN" \
  --pool-size "$POOL" --unet-steps "$UNET_STEPS" --batch "$BATCH" --lr "$LR" --checkpoint-every "$CKPT" \
  --threads "$THREADS" --device "$DEVICE" --attention-loss "${ATTENTION_LOSS:-0}" --no-previews

stage "3. export to $MODEL"
export_model "$RUN" "$MODEL"

stage "4. default guidance, chosen on validation prompts (never the reported ones)"
# shellcheck disable=SC2086  # TUNE_ARGS is a list of options
tune_guidance "$MODEL" --device "$DEVICE" $TUNE_ARGS

stage "5. quality benchmark"
# shellcheck disable=SC2086  # EVAL_ARGS is a list of options
measure_quality "$RUN" "$MODEL" --device "$DEVICE" $EVAL_ARGS

stage "6. adherence by step count, beside shapes-world-2"
# shellcheck disable=SC2086  # STEPS_ARGS is a list of options
"$PY" -m benchmarks.steps_by_model --models "$BASE,$MODEL" --device "$DEVICE" $STEPS_ARGS | tee "$RUN/steps.txt"
copy_to_out "$MODEL" "$RUN" quality.json steps.txt train_config.json
