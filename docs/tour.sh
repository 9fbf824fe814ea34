#!/usr/bin/env bash
# Regenerates the pictures of the README's guided tour (docs/images/) with the embedded model.
# Each line is one concept; the README shows what it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/images
mkdir -p "$out"
diffx trace --prompt "a yellow heart above a blue circle" --seed 3 --gif "$out/trace.gif" --save-trace "$out/trace.safetensors" --force
diffx noise "$out/trace.png" --out "$out/noise.png" --gif "$out/noise.gif" --sampler ddim --steps 25 --force
diffx denoise --prompt "a yellow star on a pale purple background" --out "$out/denoise.png" --gif "$out/denoise.gif" --force
diffx cfg-sweep --prompt "a large green square in the top left" --scales 1,2,3,5,7.5,10,15 --rows-steps 5,10,20 --out "$out/cfg_sweep.png" --force
diffx compare --x sampler=ddim,euler,euler_a,dpmpp_2m,heun --y steps=3,6,12,25 --prompt "an orange triangle above a cyan circle" --out "$out/compare.png" --force
diffx paths --prompt "a yellow heart above a blue circle" --seed 3 --samplers ddim,euler,euler_a,heun,dpmpp_2m --steps 5,10,25 --out "$out/paths.png" --force
diffx compare --x schedule=linear,scaled_linear,cosine --prompt "a blue circle" --out "$out/schedules_compare.png" --force
diffx edit --prompt "a yellow triangle above a green square" --to "a yellow circle above a green square" --seed 1 --tau 0.8 --self-tau 0.8 --out "$out/edit.png" --force
diffx weights --prompt "a yellow (star:0.3) on a pale blue background" --seed 0 --out "$out/weights.png" --force
diffx invert "$out/trace.png" --prompt "a yellow heart above a blue circle" --out "$out/invert.png" --gif "$out/invert.gif" --force
tmp=$(mktemp -d)  # the attention explorer writes four pictures; the README shows the layer grid
diffx attention --prompt "a yellow heart above a blue circle" --seed 3 --heads --layer up.4 --pixel 64,30 --out "$tmp/layers.png"
mv "$tmp/layers.png" "$out/attention_layers.png" && rm -r "$tmp"
diffx report "$out/trace.safetensors" --html "$out/trace_report.html" --force
rm "$out/trace.safetensors"
