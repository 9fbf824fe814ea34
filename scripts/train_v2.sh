#!/usr/bin/env bash
# Train, export and measure the embedded default model (shapes-world-2, issue #14).
#
#   bash scripts/train_v2.sh                # on a CUDA machine, from the repository root: about 10 minutes
#   CPU=1 bash scripts/train_v2.sh          # on the CPU, across sittings: smaller batches, many more steps,
#                                           # at the lowest priority (nice 19); run it again after any stop.
#                                           # Multi-threaded PyTorch work beside it still runs several times
#                                           # slower (its threads wait on each other whenever one is
#                                           # preempted): pause training for timings with kill -STOP/-CONT
#   INIT=runs/shapes-world-2/model bash scripts/train_v2.sh
#                                           # go on from a model folder (e.g. the CPU-trained v2, 33 MB, small
#                                           # enough to carry to a device machine): its VAE is kept (no VAE
#                                           # stage), its text encoder and U-Net train on (diffx train --init-from)
#   SMOKE=1 bash scripts/train_v2.sh        # CPU smoke test: tiny step counts, 2 sampling steps in the
#                                           # benchmark, no training preview grids; ~30 s on 2 cores;
#                                           # writes only under runs/smoke-v2 (or $RUN / $MODEL), never data/
#
# Stages, each resumable: run the script again after a cut-off and it goes on where it stopped.
#   0. install check: torch (with CUDA unless SMOKE), diffx importable (else PYTHONPATH=repo root)
#   1. the scene pool, rendered on every core (diffx.embedded.pool_render; skipped when pool.pt exists)
#   2. diffx train --world shapes2: the VAE, then text encoder + U-Net (resumes from $RUN's checkpoints)
#   3. export to $MODEL (skipped when the model is newer than the last U-Net checkpoint)
#   4. benchmarks/tune_guidance.py --write: the default guidance where "all attributes" peaks on 128 validation
#      prompts (guidance_tuning.json; skipped when newer than the model)
#   5. benchmarks/embedded_quality.py on the GPU with --card: MODEL_CARD.md tables, guidance_curve.png,
#      $RUN/quality.json; its last line is color=… shape=… position=… pointing=… gap=… diversity_drop=…
#      (skipped when quality.json is newer than the model)
#   6. with $OUT set (the device machine's output folder), copies $MODEL and $RUN's results there
#
# Sizing (one H100; estimates, not yet measured): the v1 model trained 7,000 U-Net steps at batch 512 in
# 14 min (~0.12 s/step); the v2 U-Net costs ~1.5x per sample (~0.18 s/step), so 1,800 steps at batch 512
# take ~5.5 min, the VAE (4,000 steps of 128 crops of 64 px) ~1.5 min, the pool (20,000 scenes) ~0.5 min,
# the export ~0.5 min and the benchmark (300 prompts x 7 scales + 16 x 16 open pictures per scale, batched,
# judged on the CPU) ~2.5 min: about 10 min in all, one device call. A device command is limited to
# 10 minutes: if a call is cut off, call the script again at once (runs/ survives only while the machine
# stays warm); every stage resumes. Every setting below can be overridden from the environment, e.g.
# UNET_STEPS=1500 bash scripts/train_v2.sh.
# On 2 CPU cores (CPU=1), measured: a VAE step of 16 crops of 64 px takes 0.26-0.32 s, a U-Net step at batch 64
# 0.85-1.1 s: the VAE stage ~1 hour, the U-Net stage (10,000 steps) ~3 hours, so it spans sittings; every stage
# resumes. The shipped CPU run's U-Net was set to 20,000 steps at first and cut to 10,000 at step 4,250 so that
# its cosine decay ended within a sitting (the learning rate then dropped from 0.91 to 0.67 of its peak).
# That run (U-Net 2 h 45 min) did not beat v1, so data/ kept v1: over 300 held-out prompts at w = 7.5, colour
# 0.277, shape 0.727, position 0.170 (position words not learnt: 0.09 on one-object prompts), all 0.013,
# pointing 0.307; its guidance curve is SD's (one-object colour 0.45 at w = 1, 0.81 at 3, 0.44 at 15).
# Fine-tuned from that model (INIT) for 12,000 CPU steps with the recipe below (position words grounded from step
# 2,500), the same benchmark read colour 0.603, shape 0.803, position 0.537 (one object: colour 0.954, position
# 1.000, all 0.780), all 0.323 (2-3 objects 0.063), pointing 0.835, gap +0.080, diversity drop 0.147;
# signal_leak: 0.000 at t = 999. Still below v1 on two or three objects.
# Then 3,500 CPU steps more (lr 3e-4, OBJECT_COUNTS=0.15,0.45,0.4; 78 min) and the default guidance chosen on
# validation prompts (w = 2): colour 0.690, shape 0.883, position 0.540 (one object: 0.991 / 1.000 / 1.000,
# all 0.899), all 0.400 (2-3 objects 0.115, count 0.890), pointing 0.894, gap +0.127. Relations between objects
# (position 0.277 on 2-3 objects) are what is left; a GPU run of this recipe is the way on.
# Then 5,000 CPU steps more from that (lr 2e-4, cosine over 6,000, stopped at 5,000; 79 min), default guidance
# chosen on validation prompts (w = 3): colour 0.787, shape 0.900, position 0.543, fill 0.770, all 0.403 (2-3
# objects 0.120, colour 0.665, count 0.953), pointing 0.898, gap +0.117. That model ships in data/shapes-world-2.
# That VAE stage, run so (resumed from 2,000 steps of the same crops), reached the VAE targets: the v2 judge
# on 200 held-out reconstructions read colour 1.000, shape 0.990, position 1.000 (0.995 / 0.96 / 1.0 at 6,750).
# Why the VAE stage is long: on 2 CPU cores, 1,500 and then 4,000 steps of 32 crops of 32 px left the f8 VAE
# far from v1's fidelity (the v2 judge on 200 held-out reconstructions: colour 0.05 then 0.19, shape 0.52
# then 0.73; target colour >= 0.99, shape >= 0.97); the loss was still falling (0.15 -> 0.10). With the same
# pixels as 2,000 steps of 16 crops of 64 px: colour 0.61, background 0.65, shape 0.78 (world_quality.vae_fidelity):
# larger crops see the backgrounds' gradients and tiles and whole objects, hence 64 px crops here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
TRAIN_EXTRA=()
NICE=()

if [[ "${SMOKE:-0}" == "1" ]]; then
  : "${RUN:=runs/smoke-v2}" "${MODEL:=runs/smoke-v2/model}" "${DEVICE:=cpu}" "${POOL:=64}" "${VAE_STEPS:=2}"
  : "${UNET_STEPS:=2}" "${BATCH:=4}" "${LR:=1e-3}" "${CKPT:=2}" "${VAE_BATCH:=2}" "${VAE_CROP:=32}"
  : "${EVAL_ARGS:=--n 4 --open-prompts 1 --seeds 2 --guidances 1,15 --batch 8 --steps 2}"
  : "${TUNE_ARGS:=--n 4 --scales 1,5 --batch 8 --steps 2}"
  # the same `diffx train` command line, with the preview grids (12 pictures at 25 steps, minutes on a CPU) off
  TRAIN_EXTRA=(--no-previews)
elif [[ "${CPU:-0}" == "1" ]]; then
  : "${RUN:=runs/shapes-world-2}" "${MODEL:=data/shapes-world-2}" "${DEVICE:=cpu}" "${POOL:=20000}"
  : "${VAE_STEPS:=12000}" "${VAE_BATCH:=16}" "${VAE_CROP:=64}" "${UNET_STEPS:=10000}" "${BATCH:=64}" "${LR:=5e-4}"
  : "${CKPT:=250}"
  : "${EVAL_ARGS:=--n 300 --open-prompts 16 --seeds 16 --batch 64}"
  : "${TUNE_ARGS:=--n 128 --batch 64}"
  TRAIN_EXTRA=(--no-previews)
  NICE=(nice -n 19)  # other programs come first
else
  : "${RUN:=runs/shapes-world-2}" "${MODEL:=data/shapes-world-2}" "${DEVICE:=cuda}" "${POOL:=20000}"
  : "${VAE_STEPS:=4000}" "${VAE_BATCH:=128}" "${VAE_CROP:=64}" "${UNET_STEPS:=1800}" "${BATCH:=512}" "${LR:=1e-3}"
  : "${CKPT:=250}"
  : "${EVAL_ARGS:=--n 300 --open-prompts 16 --seeds 16 --batch 128}"
  : "${TUNE_ARGS:=--n 128 --batch 128}"
fi
if [[ -n "${INIT:-}" ]]; then
  TRAIN_EXTRA+=(--init-from "$INIT")
fi
if [[ -n "${OBJECT_COUNTS:-}" ]]; then  # e.g. OBJECT_COUNTS=0.15,0.45,0.4: more steps on 2-3 object scenes
  TRAIN_EXTRA+=(--object-counts "$OBJECT_COUNTS")
fi
# The recipe: v-prediction on a zero-terminal-SNR schedule (Lin et al. 2023) and the attention-grounding loss.
# On SD's schedule the v2 U-Net learnt no position words in 10,000 CPU steps: at 16x16 latents the signal
# left in x_T (sqrt(abar_T) = 0.068) shows where each object lies, so it took the layout from x_T instead
# (benchmarks/signal_leak.py: the empty prompt's x0-hat at t = 999 in the object's own cell 0.53 of the time,
# 0.17 in another scene's); sampling starts from pure noise, so the seed placed every object. Grounding pulls
# colour, shape and rightly-named position words into their objects (diffx/embedded/grounding.py).
RECIPE=(--prediction-type v_prediction --zero-snr --attention-loss "${ATTENTION_LOSS:-0.01}")
# shellcheck source=scripts/stages.sh
source scripts/stages.sh
if [[ ${#NICE[@]} -gt 0 ]]; then background_priority; fi

stage "0. install check"
if ! "$PY" -c "import diffx" 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - "$DEVICE" <<'EOF'
import sys

import matplotlib, numpy, PIL, rich, safetensors, torch, typer  # noqa: F401  (what training and the benchmark use)

import diffx

device = sys.argv[1]
print(f"diffx {diffx.__version__} from {diffx.__file__}; torch {torch.__version__}; "
      f"CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("no CUDA device: run on a GPU machine, or CPU=1 to train on the CPU (SMOKE=1: the smoke test)")
EOF

stage "1. scene pool ($POOL scenes)"
"${NICE[@]}" "$PY" -m diffx.embedded.pool_render --out-dir "$RUN" --world shapes2 --pool-size "$POOL"

stage "2. train (VAE $VAE_STEPS steps, U-Net $UNET_STEPS steps at batch $BATCH, lr $LR, on $DEVICE)"
"${NICE[@]}" "$PY" -m diffx train --world shapes2 --out-dir "$RUN" --pool-size "$POOL" --vae-steps "$VAE_STEPS" \
  --vae-batch "$VAE_BATCH" --vae-crop "$VAE_CROP" \
  --unet-steps "$UNET_STEPS" --batch "$BATCH" --lr "$LR" --checkpoint-every "$CKPT" --device "$DEVICE" \
  "${RECIPE[@]}" "${TRAIN_EXTRA[@]}"

stage "3. export to $MODEL"
export_model "$RUN" "$MODEL"

stage "4. default guidance, chosen on validation prompts (never the reported ones)"
# shellcheck disable=SC2086  # TUNE_ARGS is a list of options
tune_guidance "$MODEL" --device "$DEVICE" $TUNE_ARGS

stage "5. quality benchmark on $DEVICE"
# shellcheck disable=SC2086  # EVAL_ARGS is a list of options
measure_quality "$RUN" "$MODEL" --device "$DEVICE" $EVAL_ARGS
"$PY" - "$RUN/quality.json" <<'EOF'
import json
import sys

from diffx.embedded.world_quality import world_last_line

print(world_last_line(json.load(open(sys.argv[1], encoding="utf-8"))))
EOF
copy_to_out "$MODEL" "$RUN" quality.json '*.png' train_config.json
echo "done in ${SECONDS}s: $MODEL (MODEL_CARD.md, guidance_curve.png), $RUN/quality.json"
